"""Redraws every figure of run folders from their logs alone: no retraining, no TensorFlow.

Its code: fewshot/cli/scripts/figures.py (installed, the command `fewshot figures`);
this script runs it from a checkout.
"""

from fewshot.cli import scripts

scripts.enter(__name__, 'figures')
