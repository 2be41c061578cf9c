"""Reference results: runs under the papers' protocols, kept small in reference/, and their table.

Its code: fewshot/cli/scripts/reference.py (installed, the command `fewshot reference`);
this script runs it from a checkout.
"""

from fewshot.cli import scripts

scripts.enter(__name__, 'reference')
