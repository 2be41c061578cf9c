"""The submission zip: {Name}_{StudentNumber}_Assignment2.zip with the code, the report and the results.

Its code: fewshot/cli/scripts/submit.py (installed, the command `fewshot submit`);
this script runs it from a checkout.
"""

from fewshot.cli import scripts

scripts.enter(__name__, 'submit')
