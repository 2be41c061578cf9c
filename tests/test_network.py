"""The functional network: agrees with its Keras model, keeps tasks apart; the mini-ImageNet networks
of the MAML paper (Conv-4, flattened into the head) and of MetaOptNet (ResNet-12) as their papers'."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from fewshot import network
from test_contract import assert_second_order_matches_finite_differences
from test_maml import _assert_gradient_matches_finite_differences
import maml


@pytest.fixture(scope='module')
def net_and_model():
    tf.keras.utils.set_random_seed(0)
    net = network.ConvNet(n_way=5, num_filters=8)
    return net, net.keras_model()


@pytest.mark.parametrize('backbone,max_pool', [('conv4', False), ('conv4', True), ('resnet', False),
                                              ('relationnet', False), ('resnet12', False)])
def test_forward_matches_keras_model_in_training_mode(backbone, max_pool):
    tf.keras.utils.set_random_seed(1)
    net = network.build(backbone, 3, 6, max_pool)
    model = net.keras_model()
    images = tf.random.uniform([4, 7, 28, 28, 1])
    logits = net.forward(network.tile(network.parameters(model), 4), images)
    expected = tf.stack([model(images[t], training=True) for t in range(4)])
    assert logits.shape == (4, 7, 3)
    np.testing.assert_allclose(logits, expected, atol=float32_tolerance(expected))


@pytest.mark.parametrize('backbone', ['conv4', 'resnet', 'relationnet', 'resnet12'])
def test_colour_images_of_another_size_forward_as_the_keras_model_with_each_task_its_own_weights(backbone):
    # RGB 32x32 images: task t's three channels must meet task t's kernel alone.
    tf.keras.utils.set_random_seed(2)
    net = network.BACKBONES[backbone](3, 6, image_size=32, channels=3)
    model = net.keras_model()
    params = network.tile(network.parameters(model), 2)
    first = next(iter(params))  # The first convolution's kernel: conv1/kernel (ResNet-12's conv1a/kernel).
    params[first] = params[first] * tf.constant([1.0, -2.0])[:, None, None, None, None]
    images = tf.random.uniform([2, 5, 32, 32, 3])
    logits = net.forward(params, images)
    second = keras_clone(model, {name: value[1] for name, value in params.items()})
    expected = tf.stack([model(images[0], training=True), second(images[1], training=True)])
    np.testing.assert_allclose(logits, expected, atol=float32_tolerance(expected))


def float32_tolerance(expected):
    """10^-5 of the logits' scale (at least 10^-5): float32's rounding grows with it and with depth
    (ResNet-12's sixteen convolutions, batch norm over few images, measured 3 x 10^-6 of it)."""
    return 1e-5 * max(1.0, float(np.abs(expected).max()))


def keras_clone(model, weights):
    """A copy of `model` with its trainable weights set from `weights` (by `network.parameters` name)."""
    clone = keras.models.clone_model(model)
    for name, variable in network.parameters(clone).items():
        variable.assign(weights[name])
    return clone


@pytest.mark.parametrize('backbone', ['conv4', 'resnet', 'relationnet', 'resnet12'])
def test_forward_with_running_statistics_matches_keras_inference_mode(backbone):
    tf.keras.utils.set_random_seed(2)
    net = network.build(backbone, 3, 6, False)
    model = net.keras_model()
    for _ in range(3):  # Move the running statistics away from their initial values.
        model(tf.random.uniform([16, 28, 28, 1]), training=True)
    images = tf.random.uniform([2, 5, 28, 28, 1])
    logits = net.forward(network.tile(network.parameters(model), 2), images,
                         network.tile(network.statistics(model), 2))
    expected = tf.stack([model(images[t], training=False) for t in range(2)])
    np.testing.assert_allclose(logits, expected, atol=float32_tolerance(expected))


@pytest.mark.parametrize('backbone', ['conv4', 'resnet'])
def test_bfloat16_forward_agrees_with_float32_and_returns_float32(backbone):
    """Tolerance: bfloat16 keeps 8 significant bits (relative rounding 2^-9 ≈ 0.2%), through up to
    seven convolutions; 3% of the logits' scale holds with a wide margin (measured about 1%)."""
    tf.keras.utils.set_random_seed(3)
    full, mixed = (network.build(backbone, 3, 6, False, precision) for precision in ('float32', 'bfloat16'))
    model = full.keras_model()
    params = network.tile(network.parameters(model), 2)
    images = tf.random.uniform([2, 9, 28, 28, 1])
    logits, moments = full.forward_with_moments(params, images)
    mixed_logits, mixed_moments = mixed.forward_with_moments(params, images)
    assert mixed_logits.dtype == tf.float32 and all(m.dtype == tf.float32 for m in mixed_moments.values())
    scale = float(tf.reduce_max(tf.abs(logits)))
    np.testing.assert_allclose(mixed_logits, logits, atol=0.03 * scale)
    np.testing.assert_allclose(mixed.forward(params, images, moments), logits, atol=0.03 * scale)
    assert not np.array_equal(mixed_logits, logits)  # It did compute in bfloat16.


def test_tasks_do_not_see_each_others_weights(net_and_model):
    net, model = net_and_model
    params = network.tile(network.parameters(model), 3)
    images = tf.random.uniform([3, 5, 28, 28, 1])
    before = net.forward(params, images)
    changed = dict(params)
    changed['conv2/kernel'] = tf.tensor_scatter_nd_update(
        params['conv2/kernel'], [[1]], params['conv2/kernel'][1:2] * -3.0)
    after = net.forward(changed, images)
    np.testing.assert_allclose(after[0], before[0], atol=1e-6)
    np.testing.assert_allclose(after[2], before[2], atol=1e-6)
    assert np.abs(after[1] - before[1]).max() > 1e-3


@pytest.mark.parametrize('dtype', [tf.float32, tf.bfloat16, tf.float64])
@pytest.mark.parametrize('grouped', [True, False])
def test_grouped_convolution_is_each_tasks_own_convolution_with_its_gradient(dtype, grouped, monkeypatch):
    """One grouped convolution (where TensorFlow can differentiate it) or one per task (elsewhere, e.g.
    bfloat16 without AVX-512, float64): the per-task convolutions and their gradients, in float64."""
    if not grouped:
        monkeypatch.setattr(network, 'grouped_gradient_available', lambda dtype: False)
    rng = np.random.default_rng(0)
    h64 = tf.constant(rng.normal(size=[2, 7, 7, 3 * 4]))  # Three tasks of four channels.
    kernels64 = tf.constant(rng.normal(size=[3, 3, 3, 4, 5]))
    h64, kernels64 = (tf.cast(tf.cast(x, dtype), tf.float64) for x in (h64, kernels64))  # Representable.
    upstream = tf.constant(rng.normal(size=[2, 4, 4, 3 * 5]))

    def value_and_gradients(h, kernels, convolve):
        with tf.GradientTape() as tape:
            tape.watch([h, kernels])
            output = convolve(h, kernels)
            loss = tf.reduce_sum(tf.cast(output, tf.float64) * upstream)
        return [tf.cast(x, tf.float64) for x in [output, *tape.gradient(loss, [h, kernels])]]

    def task_by_task(h, kernels):
        return tf.concat([tf.nn.conv2d(h[..., 4 * t:4 * (t + 1)], kernels[t], 2, 'SAME') for t in range(3)], -1)

    expected = value_and_gradients(h64, kernels64, task_by_task)
    actual = value_and_gradients(tf.cast(h64, dtype), tf.cast(kernels64, dtype),
                                 lambda h, kernels: network.grouped_conv2d(h, kernels, 2))
    tolerance = {tf.float32: 1e-5, tf.bfloat16: 2e-2, tf.float64: 1e-12}[dtype]
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, atol=tolerance * float(tf.reduce_max(tf.abs(e))))


@pytest.mark.parametrize('size, kernel, stride, num_tasks', [(14, 1, 2, 1), (14, 1, 2, 2), (8, 1, 2, 1),
                                                             (7, 1, 2, 1), (14, 3, 2, 2)])
def test_strided_convolution_gradients_in_float32_equal_float64(size, kernel, stride, num_tasks):
    """The ResNet's 1x1 stride-2 shortcut: oneDNN's float32 kernel gradient of it was tens of units off
    on an AVX2 AMD EPYC (TensorFlow 2.21) for even-sized inputs, so the ResNet learners stepped along
    wrong meta-gradients there; `grouped_conv2d` subsamples first. float64 runs TensorFlow's own kernels."""
    rng = np.random.default_rng(0)
    h = rng.normal(size=(6, size, size, 3 * num_tasks))
    kernels = rng.normal(size=(num_tasks, kernel, kernel, 3, 4))
    upstream = rng.normal(size=(6, -(-size // stride), -(-size // stride), 4 * num_tasks))

    def gradients(dtype):
        x, k = tf.constant(h, dtype), tf.constant(kernels, dtype)
        with tf.GradientTape() as tape:
            tape.watch([x, k])
            loss = tf.reduce_sum(network.grouped_conv2d(x, k, stride) * tf.constant(upstream, dtype))
        return [g.numpy().astype(np.float64) for g in tape.gradient(loss, [x, k])]
    for single, double in zip(gradients(tf.float32), gradients(tf.float64)):
        np.testing.assert_allclose(single, double, atol=1e-4 * np.abs(double).max())


def test_parameters_are_named_by_layer(net_and_model):
    _, model = net_and_model
    names = list(network.parameters(model))
    assert names[:3] == ['conv1/kernel', 'bn1/gamma', 'bn1/beta']
    assert names[-2:] == ['head/kernel', 'head/bias']
    assert len(names) == 4 * 3 + 2


def test_every_weight_of_a_nested_keras_model_has_its_own_name():
    # The old naming, layer/variable of the top-level layers, gave body/a's and body/b's kernels one
    # name, 'body/kernel', and kept one of them: a learner would silently have meta-learned half a body.
    body = keras.Sequential([keras.layers.Dense(3, name='a'), keras.layers.Dense(3, name='b')], name='body')
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2, name='head')(body(inputs)), name='net')
    assert list(network.parameters(model)) == ['body/a/kernel', 'body/a/bias', 'body/b/kernel', 'body/b/bias',
                                               'head/kernel', 'head/bias']


def test_forward_with_moments_reports_each_tasks_batch_norm_moments():
    net = network.ConvNet(n_way=3, num_filters=4)
    params = network.tile(network.parameters(net.keras_model()), 2)
    images = tf.random.normal([2, 7, 28, 28, 1])
    logits, moments = net.forward_with_moments(params, images)
    np.testing.assert_allclose(logits, net.forward(params, images), rtol=1e-6)
    assert sorted(moments) == sorted(f'bn{b}/moving_{m}' for b in range(1, 5) for m in ('mean', 'variance'))
    # Task 1 alone measures the same moments as in the pair.
    _, alone = net.forward_with_moments({k: v[1:] for k, v in params.items()}, images[1:])
    for name in moments:
        assert moments[name].shape == (2, 4)
        np.testing.assert_allclose(moments[name][1], alone[name][0], rtol=1e-4, atol=1e-6)
    # Normalising with the reported moments reproduces the forward.
    np.testing.assert_allclose(net.forward(params, images, moments), logits, rtol=1e-4, atol=1e-5)


def test_resnet_adds_residual_blocks_and_halves_the_resolution_in_each():
    params = network.parameters(network.ResNet(n_way=5, num_filters=8).keras_model())
    assert {name.split('/')[0] for name in params} == {
        'conv1', 'bn1', 'head', *(f'{kind}{block}{part}' for kind in ('conv', 'bn') for block in (2, 3, 4)
                                  for part in 'abs')}
    assert params['conv3s/kernel'].shape == (1, 1, 8, 8)
    with pytest.raises(ValueError, match='^max_pool: '):
        network.ResNet(n_way=5, max_pool=True)


@pytest.mark.parametrize('backbone,image_size', [('conv4', 28), ('conv4', 84), ('resnet', 28), ('resnet', 32),
                                                 ('relationnet', 28), ('relationnet', 32), ('relationnet', 10),
                                                 ('resnet12', 84), ('resnet12', 28), ('resnet12', 16)])
def test_feature_map_size_is_that_of_the_keras_model(backbone, image_size):
    net = network.BACKBONES[backbone](2, 4, image_size=image_size)
    assert net.keras_model().get_layer('spatial_mean').input.shape[1:3] == (net.feature_map_size(),) * 2


def test_the_relation_network_embedding_keeps_5x5_maps_of_28x28_images_as_the_paper():
    """Two unpadded convolutions each pooled (28 -> 26 -> 13 -> 11 -> 5), then two padded ones (5 -> 5)."""
    tf.keras.utils.set_random_seed(3)
    net = network.build('relationnet', 3, 4, False)
    model = net.keras_model()
    maps = net.feature_maps(network.tile(network.parameters(model), 2), tf.random.uniform([2, 6, 28, 28, 1]))
    assert maps.shape == (2, 6, 5, 5, 4)
    assert [model.get_layer(f'conv{block}').padding for block in range(1, 5)] == ['valid', 'valid', 'same', 'same']


def miniimagenet_conv4(n_way=5, num_filters=32):
    """The MAML paper's mini-ImageNet network (Finn et al. 2017, Sec. 5.2, and its code) at `num_filters`."""
    return network.build('conv4', n_way, num_filters, True, 'float32', 84, 3, flatten=True, pool_padding='valid')


def test_the_maml_papers_miniimagenet_conv4_flattens_its_5x5x32_maps_into_800_features():
    """84 -> 42 -> 21 -> 10 -> 5 (the max-pooling drops an odd edge, as the paper's code and learn2learn's
    MiniImagenetCNN), the maps flattened into the head, not averaged; the Omniglot default is as it was."""
    tf.keras.utils.set_random_seed(4)
    net = miniimagenet_conv4()
    model = net.keras_model()
    assert net.feature_map_size() == 5 and model.get_layer('flatten').input.shape[1:] == (5, 5, 32)
    assert [model.get_layer(f'pool{block}').padding for block in range(1, 5)] == ['valid'] * 4
    params = network.parameters(model)
    assert params['conv1/kernel'].shape == (3, 3, 3, 32) and params['head/kernel'].shape == (800, 5)
    assert net.features(network.tile(params, 2), tf.random.uniform([2, 6, 84, 84, 3])).shape == (2, 6, 800)
    omniglot = network.ConvNet(5, max_pool=True).keras_model()
    assert isinstance(omniglot.get_layer('spatial_mean'), keras.layers.GlobalAveragePooling2D)
    assert [omniglot.get_layer(f'pool{block}').padding for block in range(1, 5)] == ['same'] * 4
    with pytest.raises(ValueError, match='^pool_padding: '):
        network.ConvNet(5, pool_padding='valid')  # Without max-pooling there is nothing to pad.


MINIIMAGENET_NETWORKS = {'conv4, flattened, 84x84': miniimagenet_conv4(3, 8),
                         'resnet12, 16x16': network.ResNet12(3, 2, image_size=16, channels=3),
                         'resnet12, flattened, 32x32': network.ResNet12(3, 2, image_size=32, channels=3, flatten=True)}


@pytest.mark.parametrize('which', MINIIMAGENET_NETWORKS)
def test_miniimagenet_networks_forward_as_their_keras_models_each_task_its_own_weights(which):
    """Training mode (each task's batch moments), task 1 under other weights than task 0; inference mode
    (the running statistics, moved away from their initial values)."""
    tf.keras.utils.set_random_seed(5)
    net = MINIIMAGENET_NETWORKS[which]
    size = net.image_size
    model = net.keras_model()
    for _ in range(3):
        model(tf.random.uniform([16, size, size, 3]), training=True)
    params = network.tile(network.parameters(model), 2)
    first = next(iter(params))  # The first convolution's kernel.
    changed = {**params, first: params[first] * tf.constant([1.0, -2.0])[:, None, None, None, None]}
    images = tf.random.uniform([2, 5, size, size, 3])
    second = keras_clone(model, {name: value[1] for name, value in changed.items()})
    expected = tf.stack([model(images[0], training=True), second(images[1], training=True)])
    np.testing.assert_allclose(net.forward(changed, images), expected, atol=float32_tolerance(expected))
    expected = tf.stack([model(images[t], training=False) for t in range(2)])
    logits = net.forward(params, images, network.tile(network.statistics(model), 2))
    np.testing.assert_allclose(logits, expected, atol=float32_tolerance(expected))


@pytest.mark.parametrize('which', ['conv4, flattened, 84x84', 'resnet12, flattened, 32x32'])
def test_a_saved_miniimagenet_network_loads_and_predicts_as_the_functional_forward(which, tmp_path):
    tf.keras.utils.set_random_seed(6)
    net = MINIIMAGENET_NETWORKS[which]
    model = net.keras_model()
    network.save_model(model, str(tmp_path / 'model.keras'), maml.MAML.batch_norm)
    loaded = keras.models.load_model(str(tmp_path / 'model.keras'))
    images = tf.random.uniform([1, 6, net.image_size, net.image_size, 3])
    expected = net.forward(network.tile(network.parameters(model), 1), images)[0]
    np.testing.assert_allclose(loaded(images[0], training=False), expected, atol=float32_tolerance(expected))


def test_resnet12_has_metaoptnets_widths_and_gives_5x5x640_maps_of_84x84_images():
    """Lee et al. 2019 and the authors' models/ResNet12_embedding.py: blocks of 64, 160, 320, 640 filters,
    three 3x3 convolutions and a 1x1 shortcut each, LeakyReLU(0.1), 12.4 M weights before the head."""
    net = network.ResNet12(5, image_size=84, channels=3)
    model = net.keras_model()
    params = network.parameters(model)
    assert net.widths == (64, 160, 320, 640) and net.feature_map_size() == 5
    assert model.get_layer('spatial_mean').input.shape[1:] == (5, 5, 640) and params['head/kernel'].shape == (640, 5)
    width_in = 3
    for block, width in enumerate(net.widths, 1):
        assert params[f'conv{block}a/kernel'].shape == (3, 3, width_in, width)
        assert params[f'conv{block}b/kernel'].shape == params[f'conv{block}c/kernel'].shape == (3, 3, width, width)
        assert params[f'conv{block}s/kernel'].shape == (1, 1, width_in, width)
        width_in = width
    # 12,414,848 convolution weights and 9,472 batch-norm scales and offsets, as the authors' PyTorch module.
    assert sum(int(np.prod(v.shape)) for name, v in params.items() if not name.startswith('head/')) == 12_424_320
    assert model.get_layer('relu1a').negative_slope == pytest.approx(0.1)
    assert network.ResNet12(5, 4, image_size=84, channels=3, flatten=True).keras_model().get_layer(
        'head').kernel.shape == (5 * 5 * 40, 5)  # MetaOptNet's own embedding: the maps flattened.
    for wrong, message in (({'max_pool': True}, '^max_pool: '), ({'num_blocks': 3}, '^num_blocks: ')):
        with pytest.raises(ValueError, match=message):
            network.ResNet12(5, **wrong)


def test_resnet12_gradient_matches_float64_finite_differences():
    """Every weight's gradient of the loss through the residual blocks (LeakyReLU, the shortcut's add,
    max-pooling, exact batch norm), along random directions: one task (float64 convolves task by task)."""
    tf.keras.utils.set_random_seed(7)
    net = network.ResNet12(3, 2, image_size=16, channels=3)
    params = network.tile({name: tf.cast(value, tf.float64) for name, value in
                           network.parameters(net.keras_model()).items()}, 1)
    images = tf.constant(np.random.default_rng(0).random((1, 6, 16, 16, 3)))
    labels = tf.constant([[0, 1, 2, 0, 1, 2]])
    _assert_gradient_matches_finite_differences(lambda p: net.task_losses(net.forward(p, images), labels)[0], params)


def test_second_order_maml_through_resnet12_matches_float64_finite_differences():
    """MAML's inner loop over ResNet-12's explicit weights, differentiated through (28x28 images: 1x1 maps).
    At the mini-ImageNet inner rate, 0.01: at Omniglot's 0.4 this tiny network's meta-objective curves so
    fast that differences over 10^-7 are off by 10^-4 (over 10^-8 they agree)."""
    keras.utils.set_random_seed(0)
    net = network.ResNet12(2, 2)
    learner = maml.MAML(net, net.keras_model(), 0.01, 2, False, keras.optimizers.Adam(1e-3))
    assert_second_order_matches_finite_differences(learner, directions=2, first_order_gap=1e-2)


@pytest.mark.parametrize('which', ['conv4, flattened, 84x84', 'resnet12, 16x16'])
def test_float32_gradients_of_a_task_batch_equal_float64_task_by_task(which):
    """What training runs, float32 grouped convolutions (oneDNN's kernels, one of which was found wrong on
    this CPU: see the strided test above), against float64 (TensorFlow's own, task by task)."""
    tf.keras.utils.set_random_seed(8)
    net = MINIIMAGENET_NETWORKS[which]
    model = net.keras_model()
    rng = np.random.default_rng(1)
    params = {name: value.numpy()[None] * rng.uniform(0.5, 1.5, (2, *value.shape))
              for name, value in network.parameters(model).items()}  # Two tasks, each its own weights.
    images = rng.random((2, 6, net.image_size, net.image_size, 3))
    labels = tf.constant([[0, 1, 2, 0, 1, 2]] * 2)

    def gradients(dtype):
        weights = {name: tf.constant(value, dtype) for name, value in params.items()}
        with tf.GradientTape() as tape:
            tape.watch(weights)
            loss = tf.reduce_sum(net.task_losses(net.forward(weights, tf.constant(images, dtype)), labels))
        return {name: g.numpy().astype(np.float64) for name, g in tape.gradient(loss, weights).items()}
    double = gradients(tf.float64)
    for name, single in gradients(tf.float32).items():
        np.testing.assert_allclose(single, double[name], atol=1e-4 * np.abs(double[name]).max(), err_msg=name)
