"""Meta-SGD (Li, Zhou, Chen & Li, 2017): MAML that also learns the inner learning rate of every weight.

    python meta_sgd.py                                     # one inner step, first order, 5-way 5-shot
    python meta_sgd.py --first_order=false                 # second order, as in the paper

The learner is `MetaSGD` (fewshot/learners/meta_sgd.py); the flags are MAML's (fewshot/cli/gradient.py), with
one inner step by default, as in the paper.
"""

from fewshot.cli import commands, gradient
from fewshot.learners.meta_sgd import RATES_FILE, MetaSGD  # noqa: F401  RATES_FILE: what a run keeps.

COMMAND = gradient.command('meta_sgd', MetaSGD, 'FO-Meta-SGD', script=__name__,
                           defaults={'num_inner_steps': 1})  # The paper's one step.


def run():
    """The command, as `python meta_sgd.py` and `fewshot meta_sgd` run it."""
    commands.main(COMMAND)
