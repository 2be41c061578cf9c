"""network.KerasNetwork: any Keras classifier under the gradient-based learners."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from fewshot import data, network
from fewshot.cli import gradient
from fewshot.learners import ANIL, IMAML, MAML, ProtoMAML, PrototypicalNetwork, Reptile
from test_maml import _assert_gradient_matches_finite_differences, _dot, _improvement
import discovered

# The learners of MAML's shape (built by gradient.command: ANIL, BOIL, Meta-SGD, ...), found, not listed.
MAML_SHAPED = sorted({command.learner_class for command, _ in discovered.learners().values()
                      if command.learner_flags == gradient.LEARNER_FLAGS}, key=lambda kind: kind.__name__)


def _model(dtype='float32', batch_norm=True, n_way=3):
    """A small convolutional classifier of 12x12 RGB images, written as any Keras user would."""
    layers = [keras.Input((12, 12, 3), dtype=dtype),
              keras.layers.Conv2D(4, 3, strides=2, padding='same', dtype=dtype, name='conv')]
    if batch_norm:
        layers.append(keras.layers.BatchNormalization(dtype=dtype, name='bn'))
    layers += [keras.layers.Activation('tanh', dtype=dtype), keras.layers.Flatten(dtype=dtype),
               keras.layers.Dense(n_way, dtype=dtype, name='logits')]
    return keras.Sequential(layers, name='mine')


def _episodes(num_tasks, dtype=np.float32, seed=0):
    """Tasks of 3 classes whose images are noisy copies of a class pattern: learnable in a few steps."""
    rng = np.random.default_rng(seed)
    patterns = rng.random((10, 1, 12, 12, 3))
    images = patterns + 0.2 * rng.normal(size=(10, 8, 12, 12, 3))
    episodes = data.sample_episodes(images.astype(dtype), 3, 2, 3, num_tasks, rng)
    return data.Episodes(*(tf.constant(x) for x in episodes))


def test_the_forward_is_the_models_own_with_each_task_its_weights():
    keras.utils.set_random_seed(0)
    net = network.KerasNetwork(_model())
    params = network.tile(network.parameters(net.keras_model()), 2)
    params['conv/kernel'] = params['conv/kernel'] * tf.constant([1.0, -1.5])[:, None, None, None, None]
    images = tf.random.uniform([2, 6, 12, 12, 3])
    logits = net.forward(params, images)
    other = keras.models.clone_model(net.keras_model())
    for name, variable in network.parameters(other).items():
        variable.assign(params[name][1])
    expected = tf.stack([net.keras_model()(images[0], training=True), other(images[1], training=True)])
    np.testing.assert_allclose(logits, expected, atol=1e-5)


def test_second_order_maml_of_a_keras_model_matches_float64_finite_differences():
    keras.utils.set_random_seed(1)
    learner = MAML(network.KerasNetwork(_model('float64', batch_norm=False)), inner_lr=0.3, num_inner_steps=2,
                   first_order=False)
    params = {name: tf.convert_to_tensor(value) for name, value in learner.params.items()}
    episodes = _episodes(2, np.float64)
    _assert_gradient_matches_finite_differences(lambda p: learner.meta_objective(p, episodes, 2)[0], params)

    def gradient(first_order):
        with tf.GradientTape() as tape:
            tape.watch(params)
            loss = learner.meta_objective(params, episodes, 2, first_order)[0]
        return tape.gradient(loss, params)
    difference = {name: value - gradient(True)[name] for name, value in gradient(False).items()}
    assert _dot(difference, difference) > 1e-8 * _dot(gradient(False), gradient(False))  # Second order counts.


@pytest.mark.parametrize('learner_class', [Reptile, IMAML])
def test_each_learner_of_the_bare_contract_meta_trains_and_evaluates_a_keras_model(learner_class):
    keras.utils.set_random_seed(2)
    model = _model()
    learner = learner_class(network.KerasNetwork(model), inner_lr=0.1, num_inner_steps=2)
    episodes = _episodes(4)
    before = [v.numpy().copy() for v in model.trainable_variables]
    learner.meta_train_step(episodes)
    assert any(not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables))
    scores = learner.evaluate(episodes, num_steps=2)
    assert scores['query_post_accuracy'].shape == (4,)


def test_the_last_layer_is_the_head_and_the_layers_before_it_the_features():
    keras.utils.set_random_seed(4)
    net = network.KerasNetwork(_model())
    params = network.tile(network.parameters(net.keras_model()), 2)
    params['conv/kernel'] = params['conv/kernel'] * tf.constant([1.0, -1.5])[:, None, None, None, None]
    groups = net.groups(params)
    assert set(groups['head']) == {'logits/kernel', 'logits/bias'}
    assert set(groups['body']) | set(groups['head']) == set(params)
    images = tf.random.uniform([2, 6, 12, 12, 3])
    features = net.features(groups['body'], images)  # The body's weights suffice.
    assert features.shape == (2, 6, 6 * 6 * 4)  # Flattened.
    np.testing.assert_allclose(net.head_outputs(params, features), net.forward(params, images), atol=1e-5)


@pytest.mark.parametrize('learner_class', MAML_SHAPED, ids=lambda kind: kind.__name__)
def test_each_learner_of_maml_s_shape_meta_trains_and_evaluates_a_keras_model(learner_class):
    keras.utils.set_random_seed(5)
    model = _model()
    net = network.KerasNetwork(model)
    learner = learner_class(net, inner_lr=0.1, num_inner_steps=2)
    episodes = _episodes(4)
    # What the inner loop adapts is the group of the network's the learner names (with prototype heads, θ
    # holds no head).
    adapted = learner.split(learner.params, training=True)[0]
    groups = net.groups(network.parameters(model))
    expected = {'all': {**groups['body'], **groups['head']}, 'head': groups['head'], 'body': groups['body']}
    made = learner.head_start == 'prototypes'
    assert set(adapted) == set(expected[learner.adapted]) - (set(groups['head']) if made else set())
    before = [v.numpy().copy() for v in model.trainable_variables]
    learner.meta_train_step(episodes)
    changed = [not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables)]
    assert any(changed) and (not made or not any(changed[-2:]))  # A head made per task is not learned.
    scores = learner.evaluate(episodes, num_steps=2)
    assert scores['query_post_accuracy'].shape == (4,) and scores['support_feature_similarity'].shape == (4,)
    if learner.adapted == 'head':  # The body does not adapt: the features do not move.
        np.testing.assert_allclose(scores['support_feature_similarity'], 1.0, rtol=1e-5)


@pytest.mark.parametrize('learner_class', [ANIL, ProtoMAML])
def test_second_order_learners_of_the_head_match_float64_finite_differences_on_a_keras_model(learner_class):
    keras.utils.set_random_seed(6)
    learner = learner_class(network.KerasNetwork(_model('float64', batch_norm=False)), inner_lr=0.3,
                            num_inner_steps=2, first_order=False)
    params = {name: tf.convert_to_tensor(value) for name, value in learner.params.items()}
    episodes = _episodes(2, np.float64)
    _assert_gradient_matches_finite_differences(lambda p: learner.meta_objective(p, episodes, 2)[0], params)


def test_the_prototypical_network_embeds_with_a_keras_models_body():
    keras.utils.set_random_seed(7)
    model = _model()
    learner = PrototypicalNetwork(network.KerasNetwork(model))
    assert set(learner.params) == {'conv/kernel', 'conv/bias', 'bn/gamma', 'bn/beta'}
    before = [v.numpy().copy() for v in model.trainable_variables]
    learner.meta_train_step(_episodes(4))
    changed = [not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables)]
    assert any(changed[:-2]) and not any(changed[-2:])  # The body learns; the head is not used.
    assert learner.evaluate(_episodes(4, seed=1))['query_post_accuracy'].shape == (4,)


def test_a_keras_model_without_a_linear_head_runs_under_maml_and_is_refused_by_anil_in_one_sentence():
    keras.utils.set_random_seed(8)
    model = keras.Sequential([keras.Input((12, 12, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(3, activation='softmax', name='probabilities')], name='soft')
    MAML(network.KerasNetwork(model), inner_lr=0.1, num_inner_steps=1).meta_train_step(_episodes(2))
    with pytest.raises(ValueError, match="'soft' must end in a Dense layer with a bias and no activation.*"
                                         "its last layer is Dense 'probabilities'"):
        ANIL(network.KerasNetwork(model), inner_lr=0.1, num_inner_steps=1).meta_train_step(_episodes(2))


def test_fo_maml_of_a_keras_model_improves_on_real_validation_tasks(real_omniglot):
    """A Keras CNN of 28x28 grayscale images, batch norm included: a few dozen first-order
    meta-iterations beat its initial weights on the same fixed real tasks."""
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((28, 28, 1))]
                             + [layer for _ in range(4) for layer in (
                                 keras.layers.Conv2D(32, 3, strides=2, padding='same', use_bias=False),
                                 keras.layers.BatchNormalization(), keras.layers.ReLU())]
                             + [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(5)], name='theirs')
    learner = MAML(network.KerasNetwork(model), inner_lr=0.4, num_inner_steps=3)
    initial, trained = _improvement(learner, real_omniglot, k_shot=1, num_query=5, meta_batch_size=8,
                                     iterations=60)
    assert trained > initial + 0.05, (initial, trained)
