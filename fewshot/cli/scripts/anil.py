"""ANIL, Almost No Inner Loop (Raghu, Raghu, Bengio & Vinyals, ICLR 2020).

    python anil.py                                         # first order, 5-way 5-shot Omniglot
    python anil.py --first_order=false                     # second order

The learner is `ANIL` (fewshot/learners/anil.py); the flags are MAML's (fewshot/cli/gradient.py).
"""

from fewshot.cli import commands, gradient
from fewshot.learners.anil import ANIL

COMMAND = gradient.command('anil', ANIL, 'FO-ANIL', script=__name__)


def run():
    """The command, as `python anil.py` and `fewshot anil` run it."""
    commands.main(COMMAND)
