"""MAML and first-order MAML for few-shot classification (Finn, Abbeel & Levine, 2017).

    python maml.py --num_inner_steps 5                     # FO-MAML, 5-way 5-shot Omniglot
    python maml.py --first_order=false                     # full second-order MAML
    python maml.py --run_name my_run --resume              # continue a stopped run

The learner is `MAML` (fewshot/learners/maml.py: `inner_loop`, `meta_objective`, `outer_loop`); its
flags, which every learner of MAML's shape shares (anil.py, boil.py, ...), are fewshot/cli/gradient.py's.
"""

import sys

import fewshot  # noqa: F401  First: it sets up TensorFlow's CPU backend, read as TensorFlow loads.
from absl import flags

from fewshot import cli
from fewshot.cli import commands, gradient
from fewshot.learners.maml import MAML, Trajectory  # noqa: F401  The assignment's MAML, visible from maml.

flags.adopt_module_key_flags(gradient)  # MAML's flags, the shared ones and the network's.

COMMAND = gradient.command('maml', MAML, 'FO-MAML')

if __name__ == '__main__':
    cli.run(commands.main_for(COMMAND, sys.modules[__name__]))
