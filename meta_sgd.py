"""Meta-SGD (Li, Zhou, Chen & Li, 2017): MAML that also learns the inner learning rate of every weight.

Its code: fewshot/cli/scripts/meta_sgd.py (installed, the command `fewshot meta_sgd`);
this script runs it from a checkout.
"""

from fewshot.cli import scripts

scripts.enter(__name__, 'meta_sgd')
