"""The GPU self-check: does a GPU compute what the CPU computes, and how fast (fewshot/devices.py).

Its code: fewshot/cli/scripts/gpu_check.py (installed, the command `fewshot gpu_check`);
this script runs it from a checkout.
"""

from fewshot.cli import scripts

scripts.enter(__name__, 'gpu_check')
