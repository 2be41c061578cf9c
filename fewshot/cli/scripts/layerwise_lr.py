"""MAML with one learned inner learning rate per layer (fewshot/learners/layerwise_lr.py); MAML's flags.

    python layerwise_lr.py                                 # first order, 5-way 5-shot Omniglot
"""

from fewshot.cli import commands, gradient
from fewshot.learners.layerwise_lr import LayerwiseLR

COMMAND = gradient.command('layerwise_lr', LayerwiseLR, 'FO-MAML-LayerLR', script=__name__)


def run():
    """The command, as `python layerwise_lr.py` and `fewshot layerwise_lr` run it."""
    commands.main(COMMAND)
