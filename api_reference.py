"""The API reference, docs/api.md, generated from the docstrings of the package's public surface.

Its code: fewshot/cli/scripts/api_reference.py (installed, the command `fewshot api_reference`);
this script runs it from a checkout.
"""

from fewshot.cli import scripts

scripts.enter(__name__, 'api_reference')
