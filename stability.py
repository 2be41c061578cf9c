"""MAML vs MAML++ training stability: the same seeds, tasks and iterations for both.

Its code: fewshot/cli/scripts/stability.py (installed, the command `fewshot stability`);
this script runs it from a checkout.
"""

from fewshot.cli import scripts

scripts.enter(__name__, 'stability')
