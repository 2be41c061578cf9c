"""Reptile (Nichol, Achiam & Schulman, "On First-Order Meta-Learning Algorithms", 2018).

Its code: fewshot/cli/scripts/reptile.py (installed, the command `fewshot reptile`);
this script runs it from a checkout.
"""

from fewshot.cli import scripts

scripts.enter(__name__, 'reptile')
