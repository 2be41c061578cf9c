"""MAML and first-order MAML for few-shot classification (Finn, Abbeel & Levine, 2017).

    python maml.py --num_inner_steps 5                     # FO-MAML, 5-way 5-shot Omniglot
    python maml.py --first_order=false                     # full second-order MAML
    python maml.py --run_name my_run --resume              # continue a stopped run

The learner is `MAML` (fewshot/learners/maml.py: `inner_loop`, `meta_objective`, `outer_loop`); its
flags, which every learner of MAML's shape shares (anil.py, boil.py, ...), are fewshot/cli/gradient.py's.
"""

from fewshot.cli import commands, gradient
from fewshot.learners.maml import MAML, Trajectory  # noqa: F401  The assignment's MAML, visible from maml.

COMMAND = gradient.command('maml', MAML, 'FO-MAML', script=__name__)


def run():
    """The command, as `python maml.py` and `fewshot maml` run it."""
    commands.main(COMMAND)
