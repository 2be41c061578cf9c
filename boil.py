"""BOIL, Body Only update in the Inner Loop (Oh, Yoo, Kim & Yun, ICLR 2021).

    python boil.py                                         # first order, 5-way 5-shot Omniglot
    python boil.py --first_order=false                     # second order

The learner is `BOIL` (fewshot/learners/boil.py); the flags are MAML's (see maml.py).
"""

import sys

import fewshot  # noqa: F401  First: it sets up TensorFlow's CPU backend, read as TensorFlow loads.
from absl import flags

from fewshot import cli
from fewshot.cli import commands, config, strategy
from fewshot.learners.boil import BOIL
import maml

flags.adopt_module_key_flags(config)  # --help lists the shared flags too.
flags.adopt_module_key_flags(strategy)  # --strategy and --cpu_replicas.
for _name in (*maml.LEARNER_FLAGS, "flatten", "pool_padding"):  # And the network's head, as maml.py's.
    flags.declare_key_flag(_name)  # MAML's flags, meaning the same here.

COMMAND = maml.command('boil', BOIL, 'FO-BOIL')

if __name__ == '__main__':
    cli.run(commands.main_for(COMMAND, sys.modules[__name__]))
