"""Meta-SGD (Li, Zhou, Chen & Li, 2017): MAML that also learns the inner learning rate of every weight.

The inner step is θ' = θ − α ∘ ∇ L_support(θ), with α a tensor of the same shape as θ (one rate
per weight, initialised at `inner_lr`), and (θ, α) are meta-learned together. As in the paper,
adaptation is a single inner step by default. `save` writes the learned rates into a run folder
(meta_sgd_learning_rates.npz) and plots their distribution per weight tensor
(meta_sgd_learning_rates.png).

meta_sgd.py at the top of the repository is its command.
"""

import os

import keras
import numpy as np

from fewshot import network, plotting, results
from fewshot.learner import named_groups
from fewshot.learners.maml import MAML, tensors

RATES_FILE = 'meta_sgd_learning_rates.npz'


class MetaSGD(MAML):
    """MAML with a learned learning rate per weight. The meta-parameters are two named groups,
    {'network': θ by name, 'inner_lr': α by the same names}; the inner loop adapts the first and
    reads the second."""

    def __init__(self, net, model=None, inner_lr=0.4, num_inner_steps=1, first_order=True, meta_optimizer=None):
        """Arguments as for `MAML`; every weight's learned rate starts at `inner_lr`."""
        model = net.keras_model() if model is None else model
        weights = network.parameters(model)
        rates = {name: keras.Variable(np.full(value.shape, inner_lr, np.float32),
                                      name=f'meta_sgd_lr_{name.replace("/", "_")}')
                 for name, value in weights.items()}
        super().__init__(net, model, inner_lr, num_inner_steps, first_order, meta_optimizer,
                         params={'network': weights, 'inner_lr': rates})

    def split(self, params, training):
        """The network's weights adapt; the learning rates are context."""
        del training
        return params['network'], tensors(params['inner_lr'])

    def inner_update(self, params, grads, step, rates, state):
        """θ'_{s+1} = θ'_s − α ∘ g, elementwise (every task [T, ...] with the same α [...])."""
        del step
        return {name: params[name] - rates[name] * grads[name] for name in params}, state

    def state_variables(self):
        """By name: the model's weights, the learning rates (inner_lr/<weight>), the optimizer's state."""
        return {**results.named_variables('model', self.model),
                **named_groups({'inner_lr': self.params['inner_lr']}),
                **results.named_variables('optimizer', self.meta_optimizer)}

    def learning_rates(self):
        """{weight tensor name: its learned rates (NumPy, same shape)}."""
        return {name: value.numpy() for name, value in self.params['inner_lr'].items()}

    def save(self, folder):
        """Writes the learned rates (npz) and the distribution of each tensor's rates (png)."""
        rates = self.learning_rates()
        results.atomic_write(os.path.join(folder, RATES_FILE), lambda f: np.savez(f, **rates))
        plotting.plot_distributions(rates, os.path.join(folder, 'meta_sgd_learning_rates.png'),
                                    'Meta-SGD: learned inner learning rates per weight tensor',
                                    'inner learning rate')
