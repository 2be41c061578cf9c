"""Speed and memory of a meta-iteration (MAML, its family, MAML++) against this machine's convolution peak.

Its code: fewshot/cli/scripts/benchmark.py (installed, the command `fewshot benchmark`);
this script runs it from a checkout.
"""

from fewshot.cli import scripts

scripts.enter(__name__, 'benchmark')
