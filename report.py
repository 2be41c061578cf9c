"""The hand-in report, report.md and report.pdf, written from the run folders alone.

Its code: fewshot/cli/scripts/report.py (installed, the command `fewshot report`);
this script runs it from a checkout.
"""

from fewshot.cli import scripts

scripts.enter(__name__, 'report')
