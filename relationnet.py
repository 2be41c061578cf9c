"""Relation Networks (Sung, Yang, Zhang, Xiang, Torr & Hospedales, "Learning to Compare", CVPR 2018).

Its code: fewshot/cli/scripts/relationnet.py (installed, the command `fewshot relationnet`);
this script runs it from a checkout.
"""

from fewshot.cli import scripts

scripts.enter(__name__, 'relationnet')
