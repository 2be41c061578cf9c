"""MAML with a learned inner rate per layer: one rate per weight tensor, starting where MAML's α is, so
that its first adaptation is MAML's; the meta-step learns them. (The contract, the command and the
improvement on real Omniglot come from the learner being found: test_contract.py, test_family.py.)"""

import keras
import numpy as np
import tensorflow as tf

from fewshot import data, network
from fewshot.learners import MAML
from fewshot.learners.layerwise_lr import LayerwiseLR
from test_maml import _episodes


def _learner(kind):
    keras.utils.set_random_seed(0)
    return kind(network.ConvNet(n_way=2, num_filters=4), inner_lr=0.3, num_inner_steps=2,
                meta_optimizer=keras.optimizers.SGD(0.1))


def test_one_rate_per_layer_adapts_as_maml_until_it_is_learned():
    learner, maml = _learner(LayerwiseLR), _learner(MAML)
    rates = learner.params['inner_lr']
    assert set(rates) == set(learner.params['network']) and all(rate.shape == () for rate in rates.values())
    episodes = data.Episodes(*(np.array(x) for x in _episodes(2)))
    for a, b in zip(learner.evaluate(episodes).values(), maml.evaluate(episodes).values(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    learner.meta_train_step(episodes)
    assert all(float(tf.abs(rate - 0.3)) > 0 for rate in rates.values())
