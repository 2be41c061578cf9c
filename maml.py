"""MAML and first-order MAML for few-shot classification (Finn, Abbeel & Levine, 2017).

    python maml.py --num_inner_steps 5                     # FO-MAML, 5-way 5-shot Omniglot
    python maml.py --first_order=false                     # full second-order MAML
    python maml.py --run_name my_run --resume              # continue a stopped run

The learner is `MAML` (fewshot/learners/maml.py: `inner_loop`, `meta_objective`, `outer_loop`);
this command holds its flags, which every learner of MAML's shape takes (anil.py, boil.py, ...),
and builds it from them (`command`).
"""

import sys

import fewshot  # noqa: F401  First: it sets up TensorFlow's CPU backend, read as TensorFlow loads.
import keras
from absl import flags

from fewshot import cli
from fewshot.cli import commands, config, strategy
from fewshot.learners.maml import MAML, Trajectory  # noqa: F401  The assignment's MAML, visible from maml.

flags.adopt_module_key_flags(config)  # --help lists the shared flags too.
flags.adopt_module_key_flags(strategy)  # --strategy and --cpu_replicas.
flags.adopt_module_key_flags(commands)  # --backbone and --meta_lr.

flags.DEFINE_float('inner_lr', 0.4, 'Inner-loop SGD learning rate (alpha).', lower_bound=1e-12)
flags.DEFINE_integer('num_inner_steps', 5, 'Inner-loop SGD steps during meta-training.', lower_bound=1)
flags.DEFINE_integer('num_eval_inner_steps', 0, 'Inner-loop steps at validation and test '
                     '(0: the same as --num_inner_steps).', lower_bound=0)
flags.DEFINE_boolean('first_order', True, 'First-order MAML (FO-MAML, the assignment\'s setting); '
                     '--first_order=false differentiates through the inner loop (second order).')
FLAGS = flags.FLAGS
# MAML's flags, which every learner extending `MAML` takes, meaning the same there.
LEARNER_FLAGS = ('inner_lr', 'num_inner_steps', 'num_eval_inner_steps', 'first_order', 'meta_lr', 'backbone')


def eval_inner_steps():
    """Adaptation steps at validation and test: --num_eval_inner_steps, else --num_inner_steps."""
    return FLAGS.num_eval_inner_steps or FLAGS.num_inner_steps


def command(name, learner_class, algorithm, defaults=None):
    """The `commands.Command` of a learner of MAML's shape, built from MAML's flags: its constructor
    takes (net, inner_lr=, num_inner_steps=, first_order=, meta_optimizer=), meta-trained by Adam."""
    def build_learner(net, first_order):
        return learner_class(net, inner_lr=FLAGS.inner_lr, num_inner_steps=FLAGS.num_inner_steps,
                             first_order=first_order, meta_optimizer=keras.optimizers.Adam(FLAGS.meta_lr))
    return commands.Command(name, learner_class, algorithm, build_learner, LEARNER_FLAGS, defaults or {},
                            eval_inner_steps)


COMMAND = command('maml', MAML, 'FO-MAML')

if __name__ == '__main__':
    cli.run(commands.main_for(COMMAND, sys.modules[__name__]))
