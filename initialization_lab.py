"""The MNIST "initialization matters" lab: how a 2-way few-shot classifier should start.

Its code: fewshot/cli/scripts/initialization_lab.py (installed, the command `fewshot initialization_lab`);
this script runs it from a checkout.
"""

from fewshot.cli import scripts

scripts.enter(__name__, 'initialization_lab')
