"""BOIL, Body Only update in the Inner Loop (Oh, Yoo, Kim & Yun, ICLR 2021).

    python boil.py                                         # first order, 5-way 5-shot Omniglot
    python boil.py --first_order=false                     # second order

The learner is `BOIL` (fewshot/learners/boil.py); the flags are MAML's (fewshot/cli/gradient.py).
"""

import sys

import fewshot  # noqa: F401  First: it sets up TensorFlow's CPU backend, read as TensorFlow loads.
from absl import flags

from fewshot import cli
from fewshot.cli import commands, gradient
from fewshot.learners.boil import BOIL

flags.adopt_module_key_flags(gradient)  # MAML's flags, the shared ones and the network's.

COMMAND = gradient.command('boil', BOIL, 'FO-BOIL')

if __name__ == '__main__':
    cli.run(commands.main_for(COMMAND, sys.modules[__name__]))
