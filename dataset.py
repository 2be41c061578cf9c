"""Prepare a named dataset and see what it costs: its cache, its splits, and the memory and time of

Its code: fewshot/cli/scripts/dataset.py (installed, the command `fewshot dataset`);
this script runs it from a checkout.
"""

from fewshot.cli import scripts

scripts.enter(__name__, 'dataset')
