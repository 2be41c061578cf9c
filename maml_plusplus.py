"""MAML++ (Antoniou, Edwards & Storkey, "How to train your MAML", ICLR 2019).

Its code: fewshot/cli/scripts/maml_plusplus.py (installed, the command `fewshot maml_plusplus`);
this script runs it from a checkout.
"""

from fewshot.cli import scripts

scripts.enter(__name__, 'maml_plusplus')
