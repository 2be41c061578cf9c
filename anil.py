"""ANIL, Almost No Inner Loop (Raghu, Raghu, Bengio & Vinyals, ICLR 2020).

    python anil.py                                         # first order, 5-way 5-shot Omniglot
    python anil.py --first_order=false                     # second order

The learner is `ANIL` (fewshot/learners/anil.py); the flags are MAML's (fewshot/cli/gradient.py).
"""

import sys

import fewshot  # noqa: F401  First: it sets up TensorFlow's CPU backend, read as TensorFlow loads.
from absl import flags

from fewshot import cli
from fewshot.cli import commands, gradient
from fewshot.learners.anil import ANIL

flags.adopt_module_key_flags(gradient)  # MAML's flags, the shared ones and the network's.

COMMAND = gradient.command('anil', ANIL, 'FO-ANIL')

if __name__ == '__main__':
    cli.run(commands.main_for(COMMAND, sys.modules[__name__]))
