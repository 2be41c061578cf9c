"""iMAML, implicit MAML (Rajeswaran, Finn, Kakade & Levine, "Meta-Learning with Implicit
Gradients", NeurIPS 2019).

    python imaml.py                                        # 5-way 5-shot Omniglot
    python imaml.py --lam 1 --cg_steps 10

The learner is `IMAML` (fewshot/learners/imaml.py, whose docstring gives the algorithm); the
defaults run it as its authors' Omniglot code does, and `--regularization every_step
--cg_damping 0 --lam_damping 0` runs the inner problem and the linear system as the paper writes
them (which learns far more slowly here: protocols/README.md).
"""

import sys

import fewshot  # noqa: F401  First: it sets up TensorFlow's CPU backend, read as TensorFlow loads.
import keras
from absl import flags

from fewshot import cli
from fewshot.cli import commands, config, gradient, strategy
from fewshot.learners.imaml import (IMAML, REGULARIZATIONS, conjugate_gradient,  # noqa: F401  (visible from imaml)
                                    implicit_gradient)

flags.adopt_module_key_flags(config)  # --help lists the shared flags too.
flags.adopt_module_key_flags(strategy)  # --strategy and --cpu_replicas.
OWN_MAML_FLAGS = ('inner_lr', 'num_inner_steps', 'num_eval_inner_steps', 'meta_lr', 'backbone')  # Not the order.
for _name in OWN_MAML_FLAGS:
    flags.declare_key_flag(_name)  # MAML's flags, meaning the same here.
flags.DEFINE_float('lam', 2.0, 'λ, the strength of the inner problem\'s pull toward θ.', lower_bound=1e-12)
flags.DEFINE_integer('cg_steps', 5, 'Conjugate-gradient steps solving ((1 + c) I + H/(λ + d)) x = ∇L_query per '
                     'task.', lower_bound=1)
flags.DEFINE_enum('regularization', 'pull_back', list(REGULARIZATIONS),
                  "How the inner problem pulls toward θ: 'pull_back', the authors' code (steps on L_support "
                  "alone, then in training one step on λ/2 ‖φ − θ‖²; evaluation on L_support alone); "
                  "'every_step', the paper's (gradient descent on L_support + λ/2 ‖φ − θ‖², also at evaluation).")
flags.DEFINE_float('cg_damping', 1.0, "c of the system above (the authors' code 1; the paper's 0).", lower_bound=0)
flags.DEFINE_float('lam_damping', 10.0, "d of the system above (the authors' code 10; the paper's 0).", lower_bound=0)
FLAGS = flags.FLAGS


def build_learner(net, first_order):
    """iMAML as the flags say, meta-trained by Adam."""
    del first_order  # The implicit gradient is exact at the inner solution: there is no order to choose.
    return IMAML(net, inner_lr=FLAGS.inner_lr, num_inner_steps=FLAGS.num_inner_steps,
                 meta_optimizer=keras.optimizers.Adam(FLAGS.meta_lr), lam=FLAGS.lam, cg_steps=FLAGS.cg_steps,
                 regularization=FLAGS.regularization, cg_damping=FLAGS.cg_damping, lam_damping=FLAGS.lam_damping)


# Runs made before these flags (2026-12-05) solved the paper's inner problem and system.
PAPER_WAY = {'regularization': 'every_step', 'cg_damping': 0.0, 'lam_damping': 0.0}
COMMAND = commands.Command('imaml', IMAML, 'iMAML', build_learner, OWN_MAML_FLAGS,
                           defaults={'inner_lr': 0.1, 'num_inner_steps': 16}, older_runs=PAPER_WAY,
                           eval_inner_steps=gradient.eval_inner_steps)


def run():
    """The command, as `python imaml.py` and `fewshot imaml` run it."""
    cli.run(commands.main_for(COMMAND, sys.modules[__name__]))
