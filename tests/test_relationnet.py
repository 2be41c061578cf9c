"""Relation Networks: scores in [0, 1] of shape [T, Q, N], the paper's squared-error loss, the
relation module (one block, or the paper's two pooled blocks over its embedding's 5x5 maps) equal to
its Keras layers with each task's pairs normalised apart, class maps summed over shots, each
module's gradient clipped apart, gradients against float64 finite differences, and the learner
improving on real Omniglot."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from fewshot import network
from test_maml import _assert_gradient_matches_finite_differences, _episodes, _improvement, _params
import relationnet


PAPER = dict(backbone='relationnet', relation_blocks=2, relation_max_pool=True)  # The paper's network.


def _relationnet(n_way=3, num_filters=4, seed=0, backbone='conv4', optimizer=None, **module):
    keras.utils.set_random_seed(seed)
    net = network.build(backbone, n_way, num_filters, False)
    return relationnet.RelationNetwork(net, meta_optimizer=optimizer or keras.optimizers.Adam(1e-3),
                                       train_n_way=n_way, **module)


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


def test_the_papers_relation_module_pools_two_blocks_and_equals_its_keras_layers():
    learner = _relationnet(num_filters=6, **PAPER)
    assert learner.net.feature_map_size() == 5
    assert learner.model.get_layer('relation_hidden').input.shape[-1] == 6  # 5x5 -> 2x2 -> 1x1 maps.
    assert {'relation_conv2/kernel', 'relation_bn2/gamma', 'relation_bn2/beta'} <= set(learner.params['relation'])
    pairs = tf.constant(np.random.default_rng(1).normal(size=(1, 10, 5, 5, 12)), tf.float32)
    keras_scores = learner.model([tf.zeros([10, 28, 28, 1]), pairs[0]], training=True)[1].numpy()[:, 0]
    np.testing.assert_allclose(learner.relation(learner.params['relation'], pairs).numpy()[0], keras_scores,
                               rtol=1e-5, atol=1e-6)


def test_each_tasks_pairs_are_normalised_with_their_own_moments():
    learner = _relationnet(num_filters=6, **PAPER)
    pairs = np.random.default_rng(2).normal(size=(2, 10, 5, 5, 12)).astype(np.float32)
    pairs[1] = 3 * pairs[1] + 1  # Other moments: a batch norm shared by the tasks would mix them.
    together = learner.relation(learner.params['relation'], tf.constant(pairs)).numpy()
    apart = [learner.relation(learner.params['relation'], tf.constant(pairs[t:t + 1])).numpy()[0] for t in range(2)]
    np.testing.assert_allclose(together, np.stack(apart), rtol=1e-5, atol=1e-6)


def test_too_many_pooled_blocks_for_the_feature_maps_is_an_error():
    with pytest.raises(ValueError, match='2x2 feature maps'):
        _relationnet(relation_blocks=2, relation_max_pool=True)  # conv4's 2x2 maps pool once at most.


def test_each_modules_gradient_is_clipped_to_the_norm_apart():
    """With SGD at rate 1 the meta-step is θ − g': g' is each group's gradient scaled to norm 0.5 if larger,
    the embedding's and the relation module's apart (the authors' code clips each module's)."""
    learner = _relationnet(optimizer=keras.optimizers.SGD(1.0), clip_norm=0.5)
    before = tf.nest.map_structure(lambda v: v.numpy(), learner.params)
    rng = np.random.default_rng(3)
    gradients = {'embedding': {name: rng.normal(size=v.shape).astype(np.float32)
                               for name, v in learner.params['embedding'].items()},  # Norm far above 0.5.
                 'relation': {name: np.full(v.shape, 1e-3, np.float32)
                              for name, v in learner.params['relation'].items()}}  # Norm below 0.5.
    learner.apply(tf.nest.map_structure(tf.constant, gradients))
    steps = {group: {name: before[group][name] - learner.params[group][name].numpy() for name in named}
             for group, named in gradients.items()}
    norm = np.sqrt(sum(np.sum(g ** 2) for g in gradients['embedding'].values()))
    for name, g in gradients['embedding'].items():
        np.testing.assert_allclose(steps['embedding'][name], g * 0.5 / norm, rtol=1e-4, atol=1e-7)
    for name, g in gradients['relation'].items():
        np.testing.assert_allclose(steps['relation'][name], g, rtol=1e-4, atol=1e-7)


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


@pytest.mark.parametrize('network_and_module', [{}, PAPER], ids=['conv4_one_block', 'paper'])
def test_gradient_matches_float64_finite_differences(network_and_module):
    learner = _relationnet(n_way=2, **network_and_module)
    params = _params(learner, tf.float64)
    episodes = _episodes(1, dtype=np.float64)  # One task: TensorFlow has no float64 grouped convolution.

    def loss(weights):
        return tf.reduce_mean(learner.losses(learner.scores(weights, episodes, 2), episodes.query_labels))
    _assert_gradient_matches_finite_differences(loss, params, absolute=1e-9)


@pytest.mark.parametrize('network_and_module', [{}, dict(PAPER, clip_norm=0.5)], ids=['conv4_one_block', 'paper'])
def test_learner_improves_on_real_validation_tasks(real_omniglot, network_and_module):
    """A few dozen meta-iterations beat the initial weights on the same fixed 5-way 1-shot tasks."""
    initial, trained = _improvement(_relationnet(n_way=5, num_filters=32, **network_and_module), real_omniglot,
                                    k_shot=1, num_query=5, meta_batch_size=8)
    assert trained > initial + 0.05, (initial, trained)


def test_the_relation_module_takes_the_embedding_s_own_channels():
    """ResNet-12's maps have 10 x num_filters channels (its last block's), not num_filters: the module's
    input is a pair of them."""
    from fewshot.learners import relationnet as relation
    net = network.build('resnet12', 3, 4, False, image_size=16)
    model = relation.keras_model(net, relation_blocks=1)
    pairs = [layer for layer in model.inputs if layer.name.startswith('pairs')][0]
    assert pairs.shape[-1] == 2 * 40
