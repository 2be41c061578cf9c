"""ANIL, Almost No Inner Loop (Raghu, Raghu, Bengio & Vinyals, ICLR 2020).

Its code: fewshot/cli/scripts/anil.py (installed, the command `fewshot anil`);
this script runs it from a checkout.
"""

from fewshot.cli import scripts

scripts.enter(__name__, 'anil')
