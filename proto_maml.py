"""Proto-MAML (Triantafillou et al., "Meta-Dataset", ICLR 2020): MAML whose head starts at the prototypes.

    python proto_maml.py                                   # first order, 5-way 5-shot Omniglot
    python proto_maml.py --first_order=false               # second order, through the initial head too

The learner is `ProtoMAML` (fewshot/learners/proto_maml.py); the flags are MAML's (see maml.py).
"""

import sys

import fewshot  # noqa: F401  First: it sets up TensorFlow's CPU backend, read as TensorFlow loads.
from absl import flags

from fewshot import cli
from fewshot.cli import commands, config, strategy
from fewshot.learners.proto_maml import ProtoMAML
import maml

flags.adopt_module_key_flags(config)  # --help lists the shared flags too.
flags.adopt_module_key_flags(strategy)  # --strategy and --cpu_replicas.
for _name in (*maml.LEARNER_FLAGS, "flatten", "pool_padding"):  # And the network's head, as maml.py's.
    flags.declare_key_flag(_name)  # MAML's flags, meaning the same here.

COMMAND = maml.command('proto_maml', ProtoMAML, 'FO-Proto-MAML')

if __name__ == '__main__':
    cli.run(commands.main_for(COMMAND, sys.modules[__name__]))
