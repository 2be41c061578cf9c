"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017).

Its code: fewshot/cli/scripts/protonet.py (installed, the command `fewshot protonet`);
this script runs it from a checkout.
"""

from fewshot.cli import scripts

scripts.enter(__name__, 'protonet')
