"""Learners side by side: the same seed, tasks and budget for every learner.

Its code: fewshot/cli/scripts/compare.py (installed, the command `fewshot compare`);
this script runs it from a checkout.
"""

from fewshot.cli import scripts

scripts.enter(__name__, 'compare')
