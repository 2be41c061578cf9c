"""Proto-MAML (Triantafillou et al., "Meta-Dataset", ICLR 2020): MAML whose head starts at the prototypes.

    python proto_maml.py                                   # first order, 5-way 5-shot Omniglot
    python proto_maml.py --first_order=false               # second order, through the initial head too

The learner is `ProtoMAML` (fewshot/learners/proto_maml.py); the flags are MAML's (fewshot/cli/gradient.py).
"""

import sys

import fewshot  # noqa: F401  First: it sets up TensorFlow's CPU backend, read as TensorFlow loads.
from absl import flags

from fewshot import cli
from fewshot.cli import commands, gradient
from fewshot.learners.proto_maml import ProtoMAML

flags.adopt_module_key_flags(gradient)  # MAML's flags, the shared ones and the network's.

COMMAND = gradient.command('proto_maml', ProtoMAML, 'FO-Proto-MAML')

if __name__ == '__main__':
    cli.run(commands.main_for(COMMAND, sys.modules[__name__]))
