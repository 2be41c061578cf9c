"""MAML with one learned inner learning rate per layer (fewshot/learners/layerwise_lr.py); MAML's flags.

Its code: fewshot/cli/scripts/layerwise_lr.py (installed, the command `fewshot layerwise_lr`);
this script runs it from a checkout.
"""

from fewshot.cli import scripts

scripts.enter(__name__, 'layerwise_lr')
