"""Meta-SGD (Li, Zhou, Chen & Li, 2017): MAML that also learns the inner learning rate of every weight.

    python meta_sgd.py                                     # one inner step, first order, 5-way 5-shot
    python meta_sgd.py --first_order=false                 # second order, as in the paper

The learner is `MetaSGD` (fewshot/learners/meta_sgd.py); the flags are MAML's (fewshot/cli/gradient.py), with
one inner step by default, as in the paper.
"""

import sys

import fewshot  # noqa: F401  First: it sets up TensorFlow's CPU backend, read as TensorFlow loads.
from absl import flags

from fewshot import cli
from fewshot.cli import commands, gradient
from fewshot.learners.meta_sgd import RATES_FILE, MetaSGD  # noqa: F401  RATES_FILE: what a run keeps.

flags.adopt_module_key_flags(gradient)  # MAML's flags, the shared ones and the network's.

COMMAND = gradient.command('meta_sgd', MetaSGD, 'FO-Meta-SGD', defaults={'num_inner_steps': 1})  # The paper's one step.

if __name__ == '__main__':
    cli.run(commands.main_for(COMMAND, sys.modules[__name__]))
