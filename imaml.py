"""iMAML, implicit MAML (Rajeswaran, Finn, Kakade & Levine, "Meta-Learning with Implicit
Gradients", NeurIPS 2019).

    python imaml.py                                        # 5-way 5-shot Omniglot
    python imaml.py --lam 1 --cg_steps 10

The learner is `IMAML` (fewshot/learners/imaml.py, whose docstring gives the algorithm); the
defaults are the paper's code's Omniglot ones.
"""

import sys

import fewshot  # noqa: F401  First: it sets up TensorFlow's CPU backend, read as TensorFlow loads.
import keras
from absl import flags

from fewshot import cli
from fewshot.cli import commands, config, strategy
from fewshot.learners.imaml import IMAML, conjugate_gradient, implicit_gradient  # noqa: F401  (visible from imaml)
import maml

flags.adopt_module_key_flags(config)  # --help lists the shared flags too.
flags.adopt_module_key_flags(strategy)  # --strategy and --cpu_replicas.
OWN_MAML_FLAGS = ('inner_lr', 'num_inner_steps', 'num_eval_inner_steps', 'meta_lr', 'backbone')  # Not the order.
for _name in OWN_MAML_FLAGS:
    flags.declare_key_flag(_name)  # MAML's flags, meaning the same here.
flags.DEFINE_float('lam', 2.0, 'λ, the strength of the inner problem\'s pull toward θ.', lower_bound=1e-12)
flags.DEFINE_integer('cg_steps', 5, 'Conjugate-gradient steps solving (I + H/λ) x = ∇L_query per task.',
                     lower_bound=1)
FLAGS = flags.FLAGS


def build_learner(net, first_order):
    """iMAML as the flags say, meta-trained by Adam."""
    del first_order  # The implicit gradient is exact at the inner solution: there is no order to choose.
    return IMAML(net, inner_lr=FLAGS.inner_lr, num_inner_steps=FLAGS.num_inner_steps,
                 meta_optimizer=keras.optimizers.Adam(FLAGS.meta_lr), lam=FLAGS.lam, cg_steps=FLAGS.cg_steps)


COMMAND = commands.Command('imaml', IMAML, 'iMAML', build_learner, OWN_MAML_FLAGS,
                           defaults={'inner_lr': 0.1, 'num_inner_steps': 16}, eval_inner_steps=maml.eval_inner_steps)

if __name__ == '__main__':
    cli.run(commands.main_for(COMMAND, sys.modules[__name__]))
