"""Sine-wave regression, the MAML paper's first experiment (Finn, Abbeel & Levine, 2017, Section 5.1).

Its code: fewshot/cli/scripts/sine.py (installed, the command `fewshot sine`);
this script runs it from a checkout.
"""

from fewshot.cli import scripts

scripts.enter(__name__, 'sine')
