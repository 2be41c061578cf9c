"""Meta-SGD (Li, Zhou, Chen & Li, 2017): MAML that also learns the inner learning rate of every weight.

The inner step is θ' = θ − α ∘ ∇ L_support(θ), with α a tensor of the same shape as θ (one rate
per weight, initialised at `inner_lr`), and (θ, α) are meta-learned together. As in the paper,
adaptation is a single inner step by default. `save` writes the learned rates into a run folder
(meta_sgd_learning_rates.npz), whose figures (`folders.redraw`) draw their distribution per weight
tensor (meta_sgd_learning_rates.png).

meta_sgd.py at the top of the repository is its command.
"""

import os

import numpy as np

from fewshot import results
from fewshot.learners import inner
from fewshot.learners.maml import MAML

RATES_FILE = results.LEARNED_RATES_FILE
# The rates' variables keep the names Meta-SGD's checkpoints know their optimizer slots by.
RATES = inner.LearnedRates('weight', variable_name='meta_sgd_lr')


class MetaSGD(MAML):
    """MAML with a learned learning rate per weight: `MAML(..., inner_rule=inner.LearnedRates('weight'))`.
    The meta-parameters are two named groups, {'network': θ by name, 'inner_lr': α by the same names};
    the inner loop adapts the first and reads the second."""

    def __init__(self, net, model=None, inner_lr=0.4, num_inner_steps=1, first_order=True, meta_optimizer=None,
                 **variant):
        """Arguments as for `MAML`, whose other variants (`adapted`, `head_start`) it takes too; every
        weight's learned rate starts at `inner_lr`."""
        super().__init__(net, model, inner_lr, num_inner_steps, first_order, meta_optimizer, inner_rule=RATES,
                         **variant)

    def learning_rates(self):
        """{weight tensor name: its learned rates (NumPy, same shape)}."""
        return {name: value.numpy() for name, value in self.params[inner.RATES].items()}

    def save(self, folder):
        """Writes the learned rates (npz)."""
        rates = self.learning_rates()
        results.atomic_write(os.path.join(folder, RATES_FILE), lambda f: np.savez(f, **rates))
