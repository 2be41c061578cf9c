"""Transfer learning baseline: pretrain a classifier, freeze it, replace the head, adapt per task.

Its code: fewshot/cli/scripts/maml_transfer.py (installed, the command `fewshot maml_transfer`);
this script runs it from a checkout.
"""

from fewshot.cli import scripts

scripts.enter(__name__, 'maml_transfer')
