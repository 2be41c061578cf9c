"""Proto-MAML (Triantafillou et al., "Meta-Dataset", ICLR 2020): MAML whose head starts at the prototypes.

Its code: fewshot/cli/scripts/proto_maml.py (installed, the command `fewshot proto_maml`);
this script runs it from a checkout.
"""

from fewshot.cli import scripts

scripts.enter(__name__, 'proto_maml')
