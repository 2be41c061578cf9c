"""BOIL, Body Only update in the Inner Loop (Oh, Yoo, Kim & Yun, ICLR 2021).

    python boil.py                                         # first order, 5-way 5-shot Omniglot
    python boil.py --first_order=false                     # second order

The learner is `BOIL` (fewshot/learners/boil.py); the flags are MAML's (fewshot/cli/gradient.py).
"""

from fewshot.cli import commands, gradient
from fewshot.learners.boil import BOIL

COMMAND = gradient.command('boil', BOIL, 'FO-BOIL', script=__name__)


def run():
    """The command, as `python boil.py` and `fewshot boil` run it."""
    commands.main(COMMAND)
