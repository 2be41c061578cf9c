"""Prototypical Networks: prototypes are class means, logits are negative squared distances to
them, a query equal to a support image is its class, the gradient agrees with float64 finite
differences, and the learner improves on real Omniglot."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl.testing import flagsaver

from fewshot import data, errors, network
from test_maml import _assert_gradient_matches_finite_differences, _episodes, _improvement, _params
import protonet


def _protonet(n_way=3, num_filters=4, seed=0, train_n_way=None):
    keras.utils.set_random_seed(seed)
    net = network.ConvNet(n_way, num_filters)
    return protonet.PrototypicalNetwork(net, net.keras_model(), keras.optimizers.Adam(1e-3), train_n_way or n_way)


def _embeddings(learner, episodes):
    """NumPy embeddings of each task's support and query images, computed as one batch per task."""
    images = tf.concat([episodes.support_images, episodes.query_images], 1)
    features = learner.net.features(network.tile(learner.params, images.shape[0]), images).numpy()
    num_support = episodes.support_labels.shape[1]
    return features[:, :num_support], features[:, num_support:]


def test_prototypes_are_the_class_means_of_the_support_embeddings():
    features = np.random.default_rng(0).normal(size=(2, 6, 5)).astype(np.float32)
    labels = np.array([[0, 1, 2, 0, 1, 2], [2, 2, 0, 0, 1, 1]], np.int32)
    prototypes = network.prototypes(tf.constant(features), tf.constant(labels), 3).numpy()
    for task in range(2):
        for k in range(3):
            np.testing.assert_allclose(prototypes[task, k], features[task][labels[task] == k].mean(0), rtol=1e-6)


def test_logits_are_negative_squared_distances_to_the_prototypes():
    learner = _protonet()
    episodes = _episodes(2, n_way=3, k_shot=2, num_query=2)
    support, query = _embeddings(learner, episodes)
    labels = episodes.support_labels.numpy()
    logits = learner.scores(learner.params, episodes, 3).numpy()
    assert logits.shape == (2, 6, 3)
    for task in range(2):
        for k in range(3):
            prototype = support[task][labels[task] == k].mean(0)
            np.testing.assert_allclose(logits[task, :, k], -((query[task] - prototype) ** 2).sum(-1),
                                       rtol=1e-5, atol=1e-5)


def test_a_query_equal_to_a_support_image_is_classified_as_its_class():
    learner = _protonet()
    one_shot = _episodes(2, n_way=3, k_shot=1, num_query=1)
    order = np.array([2, 0, 1])  # The queries are the support images, in another order.
    episodes = data.Episodes(one_shot.support_images, one_shot.support_labels,
                             tf.gather(one_shot.support_images, order, axis=1),
                             tf.gather(one_shot.support_labels, order, axis=1))
    metrics = learner.evaluate(episodes)
    np.testing.assert_array_equal(metrics['query_post_accuracy'], 1.0)
    logits = learner.scores(learner.params, episodes, 3).numpy()
    own = np.take_along_axis(logits, episodes.query_labels.numpy()[..., None], -1)
    np.testing.assert_allclose(own, 0, atol=1e-4)  # Its distance to its own (one-image) prototype.
    np.testing.assert_allclose(metrics['query_pre_accuracy'], 1 / 3)  # No prototypes: uniform.


def test_gradient_matches_float64_finite_differences():
    learner = _protonet(n_way=2)
    params = _params(learner, tf.float64)
    episodes = _episodes(1, dtype=np.float64)  # One task: TensorFlow has no float64 grouped convolution.

    def loss(weights):
        logits = learner.scores(weights, episodes, 2)
        return tf.reduce_mean(network.task_losses(logits, episodes.query_labels))
    _assert_gradient_matches_finite_differences(loss, params)


def test_a_training_step_moves_the_body_and_reports_per_task_metrics():
    learner = _protonet()
    before = {name: value.numpy().copy() for name, value in learner.params.items()}
    head = learner.model.get_layer('head').kernel.numpy().copy()
    metrics = learner.meta_train_step(data.Episodes(*(x.numpy() for x in _episodes(2, n_way=3))))
    assert set(metrics) == set(protonet.PrototypicalNetwork.train_metrics) and metrics['query_loss'].shape == (2,)
    assert not any(name.startswith('head/') for name in learner.params)
    assert all(np.abs(learner.params[name].numpy() - before[name]).max() > 0 for name in before)
    np.testing.assert_array_equal(learner.model.get_layer('head').kernel.numpy(), head)


def test_meta_lr_halving_interval_halves_the_rate_every_that_many_steps():
    """--meta_lr_halving_interval: the paper's Adam rate, halved every 2000 episodes (here every 2 steps)."""
    if not protonet.FLAGS.is_parsed():
        protonet.FLAGS(['test'])
    net = network.ConvNet(3, 4)
    rates = {}
    for interval in (0, 2):
        with flagsaver.flagsaver(meta_lr=0.01, meta_lr_halving_interval=interval, n_way=3, train_n_way=0):
            learner = protonet.build_learner(net, first_order=True)
        rates[interval] = []
        for _ in range(5):
            rates[interval].append(float(learner.summaries()['meta_learning_rate']))
            learner.meta_train_step(data.Episodes(*(x.numpy() for x in _episodes(1, n_way=3))))
    assert rates[0] == pytest.approx([0.01] * 5)
    assert rates[2] == pytest.approx([0.01, 0.01, 0.005, 0.005, 0.0025])


def test_training_tasks_have_train_n_way_classes(real_omniglot):
    splits = data.make_splits(real_omniglot)
    if not protonet.FLAGS.is_parsed():
        protonet.FLAGS(['test'])  # The defaults, but for the flags saved below.
    with flagsaver.flagsaver(k_shot=1, train_n_way=12):
        episodes = protonet.training_stream(splits).sample(0, 2)
    assert episodes.support_labels.shape == (2, 12) and set(episodes.support_labels[0]) == set(range(12))
    with flagsaver.flagsaver(train_n_way=5000), pytest.raises(errors.DataError, match='--train_n_way 5000 exceeds'):
        protonet.training_stream(splits)


def test_learner_improves_on_real_validation_tasks(real_omniglot):
    """A few dozen meta-iterations beat the initial weights on the same fixed 5-way 1-shot tasks."""
    initial, trained = _improvement(_protonet(n_way=5, num_filters=32), real_omniglot, k_shot=1, num_query=5,
                                    meta_batch_size=8)
    assert trained > initial + 0.05, (initial, trained)
