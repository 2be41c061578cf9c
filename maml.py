"""MAML and first-order MAML for few-shot classification (Finn, Abbeel & Levine, 2017).

Its code: fewshot/cli/scripts/maml.py (installed, the command `fewshot maml`);
this script runs it from a checkout.
"""

from fewshot.cli import scripts

scripts.enter(__name__, 'maml')
