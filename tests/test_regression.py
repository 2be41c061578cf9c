"""Few-shot regression: the MLP agrees with its Keras model, sine tasks are the paper's, and the
gradient learners of the family (MAML, Meta-SGD, ANIL), unchanged, meta-learn sine waves."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from fewshot import network, regression
from test_maml import _directional_fd, _dot, _meta_gradient, _params, _random_direction
import anil
import maml
import meta_sgd
import reptile

LEARNERS = {'FO-MAML': (maml.MAML, True), 'MAML': (maml.MAML, False), 'Meta-SGD': (meta_sgd.MetaSGD, False),
            'ANIL': (anil.ANIL, False)}


def _learner(name, inner_lr=0.01, num_inner_steps=1, hidden=(40, 40), seed=0):
    keras.utils.set_random_seed(seed)
    net = regression.MLP(hidden=hidden)
    if name == 'Reptile':  # sine.py's: 5 SGD steps of 0.02 on minibatches of 10 points, ε from 1 to 0.
        step_size = keras.optimizers.schedules.PolynomialDecay(1.0, 1000, 0.0)
        return reptile.Reptile(net, net.keras_model(), 0.02, 5, keras.optimizers.SGD(step_size), 'sgd', 10)
    learner_class, first_order = LEARNERS[name]
    return learner_class(net, net.keras_model(), inner_lr, num_inner_steps, first_order,
                         keras.optimizers.Adam(1e-3))


def _as(episodes, dtype):
    return type(episodes)(*(tf.constant(x, dtype) for x in episodes))


def test_forward_matches_the_keras_model_task_by_task():
    keras.utils.set_random_seed(0)
    net = regression.MLP()
    models = [net.keras_model() for _ in range(3)]
    params = {name: tf.stack([tf.convert_to_tensor(network.parameters(m)[name]) for m in models])
              for name in network.parameters(models[0])}
    x = tf.random.uniform([3, 7, 1], -5, 5)
    predictions = net.forward(params, x)
    assert predictions.shape == (3, 7, 1)
    for t, model in enumerate(models):
        np.testing.assert_allclose(predictions[t], model(x[t]), rtol=1e-5, atol=1e-6)


def test_sine_tasks_are_the_papers_and_a_meta_batch_depends_only_on_seed_and_index():
    sampler = regression.SineSampler(k_shot=5, num_query=7, seed=3)
    batch = sampler.sample(4, 50)
    assert batch.support_images.shape == batch.support_labels.shape == (50, 5, 1)
    assert batch.query_images.shape == batch.query_labels.shape == (50, 7, 1)
    x, y, amplitude, phase = regression.sine_tasks(np.random.default_rng([3, 4]), 50, 12)
    np.testing.assert_array_equal(batch.query_labels, y[:, 5:])
    np.testing.assert_allclose(y, amplitude[:, None, None] * np.sin(x - phase[:, None, None]), rtol=1e-5,
                               atol=1e-5)
    assert 0.1 <= amplitude.min() and amplitude.max() <= 5.0 and 0 <= phase.min() and phase.max() <= np.pi
    assert -5 <= x.min() and x.max() <= 5
    for a, b in zip(batch, regression.SineSampler(5, 7, seed=3).sample(4, 50)):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(batch.support_images, sampler.sample(5, 50).support_images)


@pytest.mark.parametrize('name', ['MAML', 'Meta-SGD', 'ANIL'])
def test_second_order_meta_gradient_on_sine_tasks_matches_float64_finite_differences(name):
    learner = _learner(name, inner_lr=0.1, num_inner_steps=2, hidden=(8, 8))
    params = _params(learner, tf.float64)
    episodes = _as(regression.SineSampler(5, 5, seed=0).sample(0, 3), tf.float64)
    gradient = _meta_gradient(learner, params, episodes, 2, first_order=False)
    rng = np.random.default_rng(1)
    for _ in range(3):
        direction = _random_direction(params, rng)
        numeric = _directional_fd(learner, params, episodes, 2, direction)
        np.testing.assert_allclose(_dot(gradient, direction), numeric, rtol=1e-6, atol=1e-8)


def test_first_order_differs_from_second_order_on_sine_tasks():
    learner = _learner('MAML', inner_lr=0.1, num_inner_steps=2)
    episodes = _as(regression.SineSampler(5, 5, seed=0).sample(0, 4), tf.float32)
    gradients = {}
    for first_order in (True, False):
        with tf.GradientTape() as tape:
            loss = learner.meta_objective(learner.params, episodes, 2, first_order=first_order)[0]
        gradients[first_order] = tape.gradient(loss, learner.params)
    difference = max(float(tf.reduce_max(tf.abs(gradients[True][k] - gradients[False][k]))) for k in learner.params)
    scale = max(float(tf.reduce_max(tf.abs(g))) for g in gradients[False].values())
    assert difference > 1e-3 * scale


@pytest.mark.parametrize('name', [*LEARNERS, 'Reptile'])
def test_the_learner_meta_learns_sine_waves(name):
    """The paper's setting (K = 10, one inner step of 0.01, meta-batch 25) for 1,000 meta-iterations:
    the mean squared error after one step on 100 new tasks falls well below the start's, and below
    the error before adaptation. Measured: 3.9 to 4.0 at the start; after, FO-MAML 1.0, MAML 0.95,
    Meta-SGD 0.44, ANIL 2.6 (its body learns only through the head's adaptation), each below the
    3.0 to 3.1 before adaptation; Reptile, adapting with its 5 steps, from 4.0 to 0.45."""
    learner = _learner(name)
    sampler = regression.SineSampler(k_shot=10, num_query=10, seed=0)
    test = regression.SineSampler(k_shot=10, num_query=100, seed=1).fixed_batches(100, 100)[0]
    steps = learner.num_inner_steps
    before = learner.evaluate(test, steps)
    assert set(before) >= {'query_pre_mse', 'query_post_mse', 'query_pre_loss', 'query_post_loss'}
    for iteration in range(1000):
        metrics = learner.meta_train_step(sampler.sample(iteration, 25))
    assert set(metrics) == set(learner.train_metrics) and learner.train_metrics[1] == 'query_post_mse'
    after = learner.evaluate(test, steps)
    assert after['query_post_mse'].mean() < 0.75 * before['query_post_mse'].mean()
    assert after['query_post_mse'].mean() < after['query_pre_mse'].mean()
