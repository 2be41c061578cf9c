"""Proto-MAML (Triantafillou et al., "Meta-Dataset", ICLR 2020): MAML whose head starts at the prototypes.

    python proto_maml.py                                   # first order, 5-way 5-shot Omniglot
    python proto_maml.py --first_order=false               # second order, through the initial head too

The learner is `ProtoMAML` (fewshot/learners/proto_maml.py); the flags are MAML's (fewshot/cli/gradient.py).
"""

from fewshot.cli import commands, gradient
from fewshot.learners.proto_maml import ProtoMAML

COMMAND = gradient.command('proto_maml', ProtoMAML, 'FO-Proto-MAML', script=__name__)


def run():
    """The command, as `python proto_maml.py` and `fewshot proto_maml` run it."""
    commands.main(COMMAND)
