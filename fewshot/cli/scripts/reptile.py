"""Reptile (Nichol, Achiam & Schulman, "On First-Order Meta-Learning Algorithms", 2018).

    python reptile.py                                      # 5-way 5-shot Omniglot, Adam in the inner loop
    python reptile.py --inner_optimizer sgd --inner_lr 0.1 # plain SGD inner steps
    python reptile.py --flagfile protocols/reptile_paper_5way1shot.flags   # the paper's protocol

The learner is `Reptile` (fewshot/learners/reptile.py, whose docstring gives the algorithm and how
it departs from the paper); ε anneals linearly from --meta_step_size to --final_meta_step_size over
--num_iterations. The defaults are the paper's Omniglot ones where this machine allows.
"""

import sys

import fewshot  # noqa: F401  First: it sets up TensorFlow's CPU backend, read as TensorFlow loads.
import keras
from absl import flags

from fewshot import cli
from fewshot.cli import commands, config, gradient, strategy
from fewshot.learners.reptile import INNER_ADAM_STATES, Reptile, every_example  # noqa: F401  (visible from reptile)

flags.adopt_module_key_flags(config)  # --help lists the shared flags too.
flags.adopt_module_key_flags(strategy)  # --strategy and --cpu_replicas.
OWN_MAML_FLAGS = ('inner_lr', 'num_inner_steps', 'num_eval_inner_steps', 'backbone')  # Not the order, nor Adam's β.
for _name in OWN_MAML_FLAGS:
    flags.declare_key_flag(_name)  # MAML's flags, meaning the same here (--inner_lr: the inner optimizer's).

flags.DEFINE_enum('inner_optimizer', 'adam', ['adam', 'sgd'],
                  "The inner loop's optimizer: 'adam' (β1 = 0, β2 = 0.999, as the paper) or 'sgd'.")
flags.DEFINE_integer('inner_batch_size', 10, 'Examples per inner step (0: all of them).',
                     lower_bound=0)
flags.DEFINE_enum('inner_adam_state', 'carried', list(INNER_ADAM_STATES),
                  "The inner Adam's second-moment estimates: 'carried' across tasks and meta-iterations as the "
                  "paper's code keeps them (its optimizer's slots are never reset), or 'fresh', zero for every "
                  'task (slower to learn); see fewshot/learners/reptile.py. Only with --inner_optimizer=adam.')
flags.register_multi_flags_validator(
    ['inner_optimizer', 'inner_adam_state'],
    # Given with SGD it would be ignored: a run that is not what its command line says.
    lambda values: values['inner_optimizer'] == 'adam' or not FLAGS['inner_adam_state'].present,
    message='--inner_adam_state: only with --inner_optimizer=adam (SGD keeps no moments); leave it out')
flags.DEFINE_float('meta_step_size', 1.0, 'ε, the outer step size toward the adapted weights, at the first '
                   'meta-iteration.', lower_bound=0)
flags.DEFINE_float('final_meta_step_size', 0.0, 'ε at the last meta-iteration (linear in between; at most '
                   '--meta_step_size: the schedule anneals).', lower_bound=0)
flags.register_multi_flags_validator(
    ['meta_step_size', 'final_meta_step_size'],
    lambda values: not values['final_meta_step_size'] > values['meta_step_size'],  # NaN: the finiteness check's.
    message='--final_meta_step_size: at most --meta_step_size (ε anneals from --meta_step_size down to it)')
FLAGS = flags.FLAGS


def build_learner(net, first_order):
    """Reptile as the flags say; ε is the learning rate of the meta-optimizer, SGD."""
    del first_order  # Reptile has no order: nothing is differentiated through the inner loop.
    step_size = keras.optimizers.schedules.PolynomialDecay(
        FLAGS.meta_step_size, max(FLAGS.num_iterations, 1), FLAGS.final_meta_step_size)
    return Reptile(net, inner_lr=FLAGS.inner_lr, num_inner_steps=FLAGS.num_inner_steps,
                   meta_optimizer=keras.optimizers.SGD(step_size), inner_optimizer=FLAGS.inner_optimizer,
                   inner_batch_size=FLAGS.inner_batch_size, inner_adam_state=FLAGS.inner_adam_state)


def fixed_on_resume():
    """--num_iterations, when ε anneals over them."""
    return ('num_iterations',) if FLAGS.meta_step_size != FLAGS.final_meta_step_size else ()


COMMAND = commands.Command('reptile', Reptile, 'Reptile', build_learner, OWN_MAML_FLAGS,
                           defaults={'inner_lr': 1e-3, 'num_inner_steps': 5, 'num_eval_inner_steps': 50},
                           older_runs={'inner_adam_state': 'fresh'},  # Runs before the flag (2026-12-05).
                           eval_inner_steps=gradient.eval_inner_steps, fixed_on_resume=fixed_on_resume)


def run():
    """The command, as `python reptile.py` and `fewshot reptile` run it."""
    cli.run(commands.main_for(COMMAND, sys.modules[__name__]))
