"""iMAML, implicit MAML (Rajeswaran, Finn, Kakade & Levine, "Meta-Learning with Implicit

Its code: fewshot/cli/scripts/imaml.py (installed, the command `fewshot imaml`);
this script runs it from a checkout.
"""

from fewshot.cli import scripts

scripts.enter(__name__, 'imaml')
