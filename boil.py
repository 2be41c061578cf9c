"""BOIL, Body Only update in the Inner Loop (Oh, Yoo, Kim & Yun, ICLR 2021).

Its code: fewshot/cli/scripts/boil.py (installed, the command `fewshot boil`);
this script runs it from a checkout.
"""

from fewshot.cli import scripts

scripts.enter(__name__, 'boil')
