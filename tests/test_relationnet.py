"""Relation Networks: scores in [0, 1] of shape [T, Q, N], the paper's squared-error loss, the
relation module equal to its Keras layers, class maps summed over shots, gradients against float64
finite differences, and the learner improving on real Omniglot."""

import keras
import numpy as np
import tensorflow as tf

from fewshot import network
from test_maml import _assert_gradient_matches_finite_differences, _episodes, _improvement, _params
import relationnet


def _relationnet(n_way=3, num_filters=4, seed=0):
    keras.utils.set_random_seed(seed)
    net = network.ConvNet(n_way, num_filters)
    return relationnet.RelationNetwork(net, relationnet.keras_model(net), keras.optimizers.Adam(1e-3), n_way)


def test_scores_are_relations_in_the_unit_interval_for_every_query_and_class():
    learner = _relationnet()
    episodes = _episodes(2, n_way=3, k_shot=2, num_query=4)
    scores = learner.scores(learner.params, episodes, 3).numpy()
    assert scores.shape == (2, 12, 3)
    assert np.all((scores > 0) & (scores < 1)) and scores.std() > 0


def test_the_loss_is_the_squared_error_against_one_hot_targets():
    learner = _relationnet()
    scores = np.random.default_rng(0).random((2, 4, 3)).astype(np.float32)
    labels = np.array([[0, 1, 2, 1], [2, 2, 0, 1]], np.int32)
    expected = ((scores - np.eye(3)[labels]) ** 2).mean(axis=(1, 2))
    np.testing.assert_allclose(learner.losses(tf.constant(scores), tf.constant(labels)), expected, rtol=1e-6)


def test_the_relation_module_equals_its_keras_layers():
    learner = _relationnet(num_filters=6)
    pairs = tf.constant(np.random.default_rng(1).normal(size=(1, 10, 2, 2, 12)), tf.float32)
    images = tf.zeros([10, 28, 28, 1])
    keras_scores = learner.model([images, pairs[0]], training=True)[1].numpy()[:, 0]  # Batch norm on the batch.
    assert set(learner.params['relation']) == {f'{layer}/{weight}' for layer, weight in (
        ('relation_conv', 'kernel'), ('relation_bn', 'gamma'), ('relation_bn', 'beta'), ('relation_hidden', 'kernel'),
        ('relation_hidden', 'bias'), ('relation_score', 'kernel'), ('relation_score', 'bias'))}
    np.testing.assert_allclose(learner.relation(learner.params['relation'], pairs).numpy()[0], keras_scores,
                               rtol=1e-5, atol=1e-6)


def test_a_pair_is_the_sum_of_the_class_maps_then_the_query_maps():
    learner = _relationnet()
    episodes = _episodes(2, n_way=3, k_shot=2, num_query=2)  # Support sets class by class: 0, 0, 1, 1, 2, 2.
    support, query = (x.numpy() for x in learner.embed(learner.net.feature_maps, learner.params['embedding'],
                                                        episodes))
    classes = support[:, 0::2] + support[:, 1::2]  # [T, N, H', W', F]
    pairs = np.concatenate([np.broadcast_to(classes[:, None], (2, 6, *classes.shape[1:])),
                            np.broadcast_to(query[:, :, None], (2, 6, 3, *query.shape[2:]))], axis=-1)
    expected = learner.relation(learner.params['relation'], tf.constant(pairs.reshape(2, 18, *pairs.shape[3:]))).numpy()
    np.testing.assert_allclose(learner.scores(learner.params, episodes, 3).numpy().reshape(2, 18), expected,
                               rtol=1e-5, atol=1e-6)


def test_gradient_matches_float64_finite_differences():
    learner = _relationnet(n_way=2)
    params = _params(learner, tf.float64)
    episodes = _episodes(1, dtype=np.float64)  # One task: TensorFlow has no float64 grouped convolution.

    def loss(weights):
        return tf.reduce_mean(learner.losses(learner.scores(weights, episodes, 2), episodes.query_labels))
    _assert_gradient_matches_finite_differences(loss, params, absolute=1e-9)


def test_learner_improves_on_real_validation_tasks(real_omniglot):
    """A few dozen meta-iterations beat the initial weights on the same fixed 5-way 1-shot tasks."""
    initial, trained = _improvement(_relationnet(n_way=5, num_filters=32), real_omniglot, k_shot=1, num_query=5,
                                    meta_batch_size=8)
    assert trained > initial + 0.05, (initial, trained)
