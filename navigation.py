"""Meta-reinforcement learning on 2D navigation, the MAML paper's RL experiment (Finn, Abbeel & Levine,

Its code: fewshot/cli/scripts/navigation.py (installed, the command `fewshot navigation`);
this script runs it from a checkout.
"""

from fewshot.cli import scripts

scripts.enter(__name__, 'navigation')
