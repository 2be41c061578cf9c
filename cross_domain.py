"""Cross-domain meta-testing: runs meta-trained on one dataset, meta-tested on other datasets' classes.

Its code: fewshot/cli/scripts/cross_domain.py (installed, the command `fewshot cross_domain`);
this script runs it from a checkout.
"""

from fewshot.cli import scripts

scripts.enter(__name__, 'cross_domain')
