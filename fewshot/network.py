"""The few-shot classifier: a Keras model for storage, a pure forward over explicit weights.

The network is the MAML paper's Omniglot net (`ConvNet`): `num_blocks` blocks of
3x3 convolution (`num_filters` filters, stride 2, or stride 1 and 2x2 max-pool),
batch norm and ReLU, then the spatial mean and a linear head; with `flatten`, the last feature
maps flattened into the head instead, as the MAML paper's mini-ImageNet net; a residual network
over the same pieces (`ResNet`); the Relation Network paper's variant (`RelationEmbedding`,
5x5 feature maps); or MetaOptNet's ResNet-12 (`ResNet12`). `build` makes each by its --backbone name.

With precision 'bfloat16' the convolution blocks compute in bfloat16 (mixed precision): the
weights stay float32 and are cast where a convolution uses them, batch norm's moments and scales
are float32 (the fused kernel's), and the features leave the blocks as float32, so that the head,
the logits, the losses, the inner loop's weights and updates and the meta-optimizer are float32.
Activations between the blocks stay bfloat16: batch norm in float32 there measured no more
accurate and 20% slower.

Meta-learning needs one set of weights per task. `ConvNet.forward` therefore
takes weights with a leading task axis T and evaluates all tasks in one pass:
tasks are folded into the channel axis and every convolution is a grouped
convolution with one group per task, so no task sees another task's weights.
This is the hand-written equivalent of mapping a single-task forward over tasks
(tf.vectorized_map was measured slower on CPU for this network).
"""

import dataclasses
import functools
import numbers
import os

import keras
import tensorflow as tf

from fewshot import results
from fewshot.normalization import BATCH_NORM_EPSILON, batch_norm
from fewshot.errors import SetupError


class LinearHead:
    """A network whose last layer is linear, the head: its weights fall into two named groups,
    {'body': every weight but the head's, 'head': the head's}, which the learners adapting only one
    of them (ANIL, BOIL) or making the head from the support set (Proto-MAML, the metric learners)
    ask for by group, never by name."""
    head_names = ('head/kernel', 'head/bias')  # The head's kernel [F, N] and bias [N] among the weights.

    def groups(self, params):
        """{'body': ..., 'head': ...}: the weights `params` (by name, any leading axes) in their groups."""
        head = {name: params[name] for name in self.head_names}
        return {'body': {name: value for name, value in params.items() if name not in head}, 'head': head}

    def head_weights(self, kernel, bias):
        """The head's weights by name from a kernel [T, F, N] and a bias [T, N]."""
        return dict(zip(self.head_names, (kernel, bias)))

    def head_outputs(self, params, features):
        """The head's outputs (logits) [T, B, N] of features [T, B, F], with the head's weights in
        `params` ([T, ...], other weights ignored)."""
        return head(*(params[name] for name in self.head_names), features)


class Classifier(LinearHead):
    """What a learner asks of a classifier besides its forward: the loss it descends and the score it reports."""
    score_name = 'accuracy'  # What `task_scores` measures: the metrics' names end in it (query_post_accuracy).

    @staticmethod
    def task_losses(logits, labels):
        """The loss a learner descends on each task: `task_losses` (cross-entropy) [T]."""
        return task_losses(logits, labels)

    @staticmethod
    def task_scores(logits, labels):
        """How well each task is solved: `task_accuracies` [T]."""
        return task_accuracies(logits, labels)


@dataclasses.dataclass(frozen=True)
class ConvNet(Classifier):
    """Architecture of the few-shot classifier; `forward` is a pure function of its weights.

    The default is the MAML paper's Omniglot network (Finn et al. 2017, Sec. 5.2): 28x28x1 images,
    four blocks of 64 stride-2 convolutions, and the spatial mean of the last (2x2) feature maps, 64
    features, into the head. Its mini-ImageNet network is

        ConvNet(n_way, num_filters=32, max_pool=True, image_size=84, channels=3, flatten=True, pool_padding='valid'):

    stride-1 convolutions each followed by 2x2 max-pooling that drops an odd edge, 84 -> 42 -> 21 -> 10
    -> 5, and the 5x5x32 maps flattened, 800 features, into the head (the authors' code; learn2learn's
    MiniImagenetCNN likewise).
    """
    n_way: int
    num_filters: int = 64
    num_blocks: int = 4
    max_pool: bool = False
    image_size: int = 28
    precision: str = 'float32'  # Or 'bfloat16': the blocks' convolutions (see the module's docstring).
    channels: int = 1  # Of the images: 1 (grayscale, Omniglot) or 3 (RGB).
    flatten: bool = False  # The head's input: the last feature maps flattened, or (False) their spatial mean.
    # With max_pool: 'same' pools an odd edge on its own (H -> ceil(H/2)); 'valid' drops it (floor(H/2)),
    # as the MAML paper's code and PyTorch's nn.MaxPool2d(2).
    pool_padding: str = 'same'

    def __post_init__(self):
        """ValueError naming the first argument that is not as the fields say, before anything is built."""
        for name, least in (('n_way', 2), ('num_filters', 1), ('num_blocks', 1), ('image_size', 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
                raise ValueError(f'{name}: a whole number, {least} or more, expected; got {value!r}')
        if self.channels not in (1, 3) or isinstance(self.channels, bool):
            raise ValueError(f'channels: 1 (grayscale) or 3 (RGB) expected; got {self.channels!r}')
        if self.precision not in ('float32', 'bfloat16'):
            raise ValueError(f"precision: 'float32' or 'bfloat16' expected; got {self.precision!r}")
        if self.pool_padding not in ('same', 'valid'):
            raise ValueError(f"pool_padding: 'same' or 'valid', not {self.pool_padding!r}")
        if self.pool_padding != 'same' and not self.max_pool:
            raise ValueError('pool_padding: the padding of max_pool\'s pooling; only with max_pool')

    def keras_model(self):
        """The same network as a Keras model; its trainable weights are the meta-parameters."""
        layers = [keras.Input((self.image_size, self.image_size, self.channels))]
        for block in range(1, self.num_blocks + 1):
            layers += [
                keras.layers.Conv2D(self.num_filters, 3, strides=1 if self.max_pool else 2,
                                    padding='same', use_bias=False, name=f'conv{block}'),
                keras.layers.BatchNormalization(epsilon=BATCH_NORM_EPSILON, name=f'bn{block}'),
                keras.layers.ReLU(name=f'relu{block}'),
            ]
            if self.max_pool:
                layers.append(keras.layers.MaxPooling2D(2, padding=self.pool_padding, name=f'pool{block}'))
        return keras.Sequential(layers + self._keras_head(), name='convnet')

    def _keras_head(self):
        """The Keras layers after the body: the spatial mean (or with `flatten`, the flattening) and the head."""
        features = (keras.layers.Flatten(name='flatten') if self.flatten
                    else keras.layers.GlobalAveragePooling2D(name='spatial_mean'))
        return [features, keras.layers.Dense(self.n_way, name='head')]

    def forward(self, params, images, statistics=None):
        """Logits of every task's images under that task's weights.

        Args:
          params: dict name -> [T, *shape] tensor (names as in `parameters`).
          images: [T, B, image_size, image_size, channels] tensor ([T, B, 28, 28, 1] for Omniglot).
          statistics: None, or dict 'bn<i>/moving_mean' and 'bn<i>/moving_variance' -> [T, F]
            (names as in `statistics`).
        Returns:
          [T, B, n_way] logits.
        Without `statistics`, batch norm normalises with the moments of each task's own
        batch (transductive, as MAML does); with them, it uses those fixed statistics.
        """
        return self.head_outputs(params, self.features(params, images, statistics))

    def forward_with_moments(self, params, images):
        """`forward` with each task's own batch moments, and those moments.

        Returns:
          ([T, B, n_way] logits, dict 'bn<i>/moving_mean' and 'bn<i>/moving_variance' -> [T, F]):
          the mean and variance each batch norm normalised with, without gradient: passed
          back as `statistics`, they reproduce this forward exactly.
        """
        features, moments = self._features(params, images, None)
        return self.head_outputs(params, features), moments

    def features(self, params, images, statistics=None):
        """The penultimate features [T, B, F]: everything but the head (see `forward`); F = F', the
        channels of `feature_maps`, or with `flatten` H' * W' * F' (800 for the mini-ImageNet network)."""
        return self._features(params, images, statistics)[0]

    def feature_channels(self):
        """F', the channels of the body's last feature maps."""
        return self.num_filters

    def feature_map_size(self):
        """H' = W' of the body's last feature maps: the image size halved by each block, rounding up
        (stride 2, or max-pooling with padding 'same') or down (padding 'valid')."""
        size = self.image_size
        for _ in range(self.num_blocks):
            size = size // 2 if self.pool_padding == 'valid' else -(-size // 2)
        return size

    def feature_maps(self, params, images):
        """The body's last feature maps [T, B, H', W', F'] (2x2 for 28x28 images), before the spatial
        mean or flattening; F' = num_filters (ResNet-12: 10 num_filters); batch norm with each task's
        own batch moments."""
        return self._feature_maps(params, images, None)[0]

    def _features(self, params, images, statistics):
        """(features [T, B, F], batch moments by name, empty when `statistics` are given)."""
        maps, moments = self._feature_maps(params, images, statistics)
        if self.flatten:  # In Keras' Flatten order: row by row, each position's channels together.
            return tf.reshape(maps, [maps.shape[0], maps.shape[1], -1]), moments
        return tf.reduce_mean(maps, axis=[2, 3]), moments

    def _feature_maps(self, params, images, statistics):
        """(feature maps [T, B, H', W', F], batch moments by name, empty when `statistics` are given)."""
        num_tasks, batch = images.shape[0], images.shape[1]
        moments = {}

        def normalise(h, layer):
            """Batch norm `layer` of grouped activations h [B, H, W, T*F]."""
            gamma, beta = _flat(params[f'{layer}/gamma']), _flat(params[f'{layer}/beta'])
            if statistics is not None:
                mean, variance = (_flat(statistics[f'{layer}/moving_{moment}']) for moment in ('mean', 'variance'))
                return tf.nn.batch_normalization(h, *(tf.cast(x, h.dtype) for x in (mean, variance, beta, gamma)),
                                                 BATCH_NORM_EPSILON)
            h, mean, variance = batch_norm(h, gamma, beta)
            moments[f'{layer}/moving_mean'] = tf.reshape(tf.stop_gradient(mean), [num_tasks, -1])
            moments[f'{layer}/moving_variance'] = tf.reshape(tf.stop_gradient(variance), [num_tasks, -1])
            return h

        # Tasks as channel groups: [B, H, W, T * channels], task t's channels together.
        grouped = tf.transpose(images, [1, 2, 3, 0, 4])
        grouped = tf.reshape(grouped, [batch, grouped.shape[1], grouped.shape[2], -1])
        h = self._body(params, self._compute(grouped), normalise)
        maps = tf.reshape(tf.cast(h, images.dtype), [batch, h.shape[1], h.shape[2], num_tasks, -1])
        return tf.transpose(maps, [3, 0, 1, 2, 4]), moments

    def _compute(self, x):
        """x in the blocks' compute type: bfloat16, or (precision 'float32') its own type, so that
        float64 weights and images (the gradient tests') compute in float64."""
        return tf.cast(x, tf.bfloat16) if self.precision == 'bfloat16' else x

    def _body(self, params, h, normalise):
        """The convolution blocks over grouped images h [B, H, W, T*channels] -> [B, H', W', T*F]."""
        for block in range(1, self.num_blocks + 1):
            h = grouped_conv2d(h, params[f'conv{block}/kernel'], 1 if self.max_pool else 2)
            h = tf.nn.relu(normalise(h, f'bn{block}'))
            if self.max_pool:
                h = tf.nn.max_pool2d(h, 2, 2, self.pool_padding.upper())
        return h


@dataclasses.dataclass(frozen=True)
class ResNet(ConvNet):
    """A residual network for 28x28 images over the same grouped convolutions and exact batch norm.

    A stem block as ConvNet's first (3x3 convolution, stride 2, batch norm, ReLU), then
    `num_blocks` − 1 residual blocks, each halving the resolution (28 -> 14 -> 7 -> 4 -> 2):

        h <- ReLU( BN(conv3x3(ReLU(BN(conv3x3_stride2(h))))) + BN(conv1x1_stride2(h)) ).

    About twice ConvNet's convolution work at 64 filters; larger images only add stride-2 blocks.
    """

    def __post_init__(self):
        if self.max_pool:
            raise ValueError('max_pool: the residual network downsamples with strided convolutions; '
                             'max-pooling is the ConvNet\'s')
        super().__post_init__()

    def keras_model(self):
        inputs = keras.Input((self.image_size, self.image_size, self.channels))
        h = self._keras_conv_bn(inputs, 1, 3, 2, relu=True)
        for block in range(2, self.num_blocks + 1):
            residual = self._keras_conv_bn(h, f'{block}a', 3, 2, relu=True)
            residual = self._keras_conv_bn(residual, f'{block}b', 3, 1, relu=False)
            shortcut = self._keras_conv_bn(h, f'{block}s', 1, 2, relu=False)
            h = keras.layers.ReLU(name=f'relu{block}')(keras.layers.Add(name=f'add{block}')([residual, shortcut]))
        for layer in self._keras_head():
            h = layer(h)
        return keras.Model(inputs, h, name='resnet')

    def _keras_conv_bn(self, h, suffix, size, stride, relu):
        if size == 1 and stride > 1:  # As `grouped_conv2d`: subsample, then a stride-1 1x1 convolution.
            h = keras.layers.MaxPooling2D(1, strides=stride, padding='same', name=f'subsample{suffix}')(h)
            stride = 1
        h = keras.layers.Conv2D(self.num_filters, size, strides=stride, padding='same', use_bias=False,
                                name=f'conv{suffix}')(h)
        h = keras.layers.BatchNormalization(epsilon=BATCH_NORM_EPSILON, name=f'bn{suffix}')(h)
        return keras.layers.ReLU(name=f'relu{suffix}')(h) if relu else h

    def _body(self, params, h, normalise):
        def conv_bn(h, suffix, stride):
            return normalise(grouped_conv2d(h, params[f'conv{suffix}/kernel'], stride), f'bn{suffix}')

        h = tf.nn.relu(conv_bn(h, 1, 2))
        for block in range(2, self.num_blocks + 1):
            residual = conv_bn(tf.nn.relu(conv_bn(h, f'{block}a', 2)), f'{block}b', 1)
            h = tf.nn.relu(residual + conv_bn(h, f'{block}s', 2))
        return h


LEAKY_SLOPE = 0.1  # ResNet-12's LeakyReLU: x for x > 0, 0.1 x otherwise.


@dataclasses.dataclass(frozen=True)
class ResNet12(ConvNet):
    """ResNet-12 as MetaOptNet has it (Lee, Maji, Ravichandran & Soatto, "Meta-Learning with
    Differentiable Convex Optimization", CVPR 2019, and the authors' models/ResNet12_embedding.py),
    over the same grouped convolutions and exact batch norm as `ConvNet`.

    Four residual blocks of `widths` filters, 64, 160, 320 and 640 at num_filters=64 (the paper's;
    another num_filters scales all four alike, num_filters x 1, 2.5, 5, 10), each

        r = BN(conv3x3(a(BN(conv3x3(a(BN(conv3x3(h))))))),    a = LeakyReLU(0.1),
        h <- maxpool2x2(a(r + BN(conv1x1(h)))),

    every convolution stride 1, zero-padded, without bias; the max-pooling drops an odd edge, as
    PyTorch's nn.MaxPool2d(2): 84x84x3 images give 5x5x640 maps (84 -> 42 -> 21 -> 10 -> 5), 28x28
    ones 1x1 (28 -> 14 -> 7 -> 3 -> 1). Kernels start as the authors' (He normal over the fan-out,
    standard deviation sqrt(2 / (k² F)) for k x k kernels of F filters); batch norm at γ = 1, β = 0.

    What the paper does and what this does differently:
    - Its embedding is the 5x5x640 maps flattened, 16,000 features (its training script builds
      resnet12(avg_pool=False)); here their spatial mean, 640 features, as the other backbones'
      (`flatten=True` gives theirs).
    - It regularises training with dropout (rate 0.1) after the first two blocks and DropBlock (rate
      0.1, 5x5 blocks on mini-ImageNet) after the last two; both are left out: the forward is a
      deterministic function of the weights, as the learners' inner loops over explicit weights take it.
    - Its classifier is a differentiable SVM (or ridge regression) solved on each task's support
      features; here, as under every backbone, a linear head that the learner adapts or makes.
    - Its batch norm's ε is PyTorch's 10^-5; here every network's, 10^-3.

    About 3.5 G multiply-adds of convolution per 84x84x3 image forward at num_filters=64: about 130
    times the MAML paper's mini-ImageNet Conv-4 (32 filters).
    """

    def __post_init__(self):
        if self.max_pool:
            raise ValueError('max_pool: ResNet-12 max-pools after each of its residual blocks already; '
                             'max_pool is the ConvNet\'s')
        if self.num_blocks != 4:
            raise ValueError(f'num_blocks: ResNet-12 has four residual blocks, not {self.num_blocks}')
        super().__post_init__()

    @property
    def widths(self):
        """Filters of the four residual blocks: (64, 160, 320, 640) at num_filters=64."""
        return self.num_filters, 5 * self.num_filters // 2, 5 * self.num_filters, 10 * self.num_filters

    def feature_channels(self):
        return self.widths[-1]

    def feature_map_size(self):
        size = self.image_size
        for _ in range(self.num_blocks):
            size //= 2
        return size

    def keras_model(self):
        inputs = keras.Input((self.image_size, self.image_size, self.channels))
        h = inputs
        for block, width in enumerate(self.widths, 1):
            residual = h
            for part in 'ab':
                residual = self._keras_conv_bn(residual, f'{block}{part}', width, 3)
                residual = keras.layers.LeakyReLU(LEAKY_SLOPE, name=f'relu{block}{part}')(residual)
            residual = self._keras_conv_bn(residual, f'{block}c', width, 3)
            shortcut = self._keras_conv_bn(h, f'{block}s', width, 1)
            h = keras.layers.Add(name=f'add{block}')([residual, shortcut])
            h = keras.layers.LeakyReLU(LEAKY_SLOPE, name=f'relu{block}')(h)
            h = keras.layers.MaxPooling2D(2, name=f'pool{block}')(h)
        for layer in self._keras_head():
            h = layer(h)
        return keras.Model(inputs, h, name='resnet12')

    @staticmethod
    def _keras_conv_bn(h, suffix, filters, size):
        initializer = keras.initializers.VarianceScaling(2.0, 'fan_out', 'untruncated_normal')
        h = keras.layers.Conv2D(filters, size, padding='same', use_bias=False, kernel_initializer=initializer,
                                name=f'conv{suffix}')(h)
        return keras.layers.BatchNormalization(epsilon=BATCH_NORM_EPSILON, name=f'bn{suffix}')(h)

    def _body(self, params, h, normalise):
        """The residual blocks over grouped images h [B, H, W, T*channels] -> [B, H', W', T*10*num_filters]."""
        def conv_bn(h, suffix):
            return normalise(grouped_conv2d(h, params[f'conv{suffix}/kernel'], 1), f'bn{suffix}')

        for block in range(1, self.num_blocks + 1):
            residual = h
            for part in 'ab':
                residual = tf.nn.leaky_relu(conv_bn(residual, f'{block}{part}'), LEAKY_SLOPE)
            residual = conv_bn(residual, f'{block}c')
            h = tf.nn.leaky_relu(residual + conv_bn(h, f'{block}s'), LEAKY_SLOPE)
            h = tf.nn.max_pool2d(h, 2, 2, 'VALID')
        return h


@dataclasses.dataclass(frozen=True)
class RelationEmbedding(ConvNet):
    """The Relation Network paper's Omniglot embedding (Sung et al., 2018, and its authors' code):
    four blocks of 3x3 convolution, batch norm and ReLU, the first two unpadded and each followed by
    2x2 max-pooling, the last two padded, so that 28x28 images give 5x5 feature maps
    (28 -> 26 -> 13 -> 11 -> 5 -> 5 -> 5), which the paper's relation module pools twice more. As in
    `ConvNet`, the spatial mean (or with `flatten`, the flattening) and a linear head follow, for the
    learners that ask for features.
    """
    unpadded_blocks = 2  # Blocks whose convolution is unpadded and followed by max-pooling.

    def __post_init__(self):
        if self.max_pool:
            raise ValueError('max_pool: the Relation Network embedding pools after its first two blocks '
                             'and never after the last two; max_pool is the ConvNet\'s')
        super().__post_init__()

    def feature_map_size(self):
        size = self.image_size
        for block in range(1, self.num_blocks + 1):
            size = (size - 2) // 2 if block <= self.unpadded_blocks else size
        return size

    def keras_model(self):
        layers = [keras.Input((self.image_size, self.image_size, self.channels))]
        for block in range(1, self.num_blocks + 1):
            unpadded = block <= self.unpadded_blocks
            layers += [
                keras.layers.Conv2D(self.num_filters, 3, padding='valid' if unpadded else 'same', use_bias=False,
                                    name=f'conv{block}'),
                keras.layers.BatchNormalization(epsilon=BATCH_NORM_EPSILON, name=f'bn{block}'),
                keras.layers.ReLU(name=f'relu{block}'),
            ]
            if unpadded:
                layers.append(keras.layers.MaxPooling2D(2, name=f'pool{block}'))  # Floors 11 to 5, as the paper's.
        return keras.Sequential(layers + self._keras_head(), name='relation_embedding')

    def _body(self, params, h, normalise):
        for block in range(1, self.num_blocks + 1):
            unpadded = block <= self.unpadded_blocks
            h = grouped_conv2d(h, params[f'conv{block}/kernel'], 1, 'VALID' if unpadded else 'SAME')
            h = tf.nn.relu(normalise(h, f'bn{block}'))
            if unpadded:
                h = tf.nn.max_pool2d(h, 2, 2, 'VALID')
        return h


class KerasNetwork(Classifier):
    """Any Keras classifier under a gradient-based learner: its forward over explicit weights is the
    model's own `stateless_call`, one task after another (a loop in the graph, tf.map_fn).

    The network contract, what a learner asks of `net`: `forward(params, images)` -> logits [T, B, N]
    for task weights `params` (name -> [T, *shape], named as `parameters(net.keras_model())`) and
    images [T, B, ...]; `keras_model()`, the model holding θ; `n_way`; `task_losses`, `task_scores`
    and `score_name` (`Classifier`'s). MAML (first and second order), Meta-SGD, Reptile and iMAML ask
    for no more. ANIL, BOIL, Proto-MAML and the Prototypical Network also ask for the head
    (`LinearHead`: `groups`, `head_outputs`, `head_weights`) and `features(params, images)`, the body's
    output [T, B, F]: here the model's last layer is the head, which must be a `Dense` layer with a bias
    and no activation, and the body is every layer before it. The Relation Network (`feature_maps`) and
    MAML++ (per-step batch-norm moments) need `ConvNet` or `ResNet`.

    model: a built Keras model, images [B, ...] -> logits [B, N]. The learner holds this very model
      (`keras_model` returns it), so wrap it for one learner. Its layers run in training mode: batch
      norm normalises each task's batch with its own moments, as MAML does, and no state is updated
      (Keras' batch norm differentiates its variance as a constant of the mean, so second order through
      it is not exact: `ConvNet`'s is).
    """

    def __init__(self, model):
        self.model = model
        self.n_way = model.output_shape[-1]
        self._names = list(parameters(model))

    def keras_model(self):
        return self.model

    def forward(self, params, images):
        """Logits [T, B, N] of each task's images [T, B, ...] under its own weights."""
        return _stateless_per_task(self.model, self._names, params, images)

    def _head_layer(self):
        """The model's last layer, if it is a linear head; ValueError otherwise."""
        last = self.model.layers[-1]
        if not (isinstance(last, keras.layers.Dense) and last.use_bias
                and last.activation is keras.activations.linear):
            raise ValueError(f'net: the Keras model {self.model.name!r} must end in a Dense layer with a bias and no '
                             f'activation (its head) for a learner that adapts or makes the head apart from the '
                             f'body; its last layer is {type(last).__name__} {last.name!r}')
        return last

    @functools.cached_property
    def head_names(self):
        """The names of the last layer's kernel and bias."""
        last = self._head_layer()
        return _name_of(self.model, last.kernel), _name_of(self.model, last.bias)

    @functools.cached_property
    def _body(self):
        """(the model up to its last layer as a Keras model sharing its weights, their names)."""
        body = keras.Model(self.model.inputs, self.model.layers[-1].input, name=f'{self.model.name}_body')
        return body, [_name_of(self.model, variable) for variable in body.trainable_variables]

    def features(self, params, images, statistics=None):
        """The input [T, B, F] of the model's last layer (the head's), each task's images under its own weights."""
        if statistics is not None:
            raise ValueError('a Keras model normalises with each task\'s own batch; it takes no statistics')
        return _stateless_per_task(*self._body, params, images)


def _stateless_per_task(model, names, params, images):
    """model's outputs [T, B, ...] of images [T, B, ...], task t under the weights params[name][t]
    (the model's trainable weights in `names` order), its other state as it is, in training mode.

    A loop over the tasks in the graph (tf.map_fn), not one copy of the model per task: unrolled, an
    evaluation of 32 tasks took 80 s to trace for a 4-block CNN, against 12 s (the same numbers; AVX2 EPYC)."""
    state = [tf.convert_to_tensor(variable) for variable in model.non_trainable_variables]
    output = model.compute_output_spec(keras.KerasTensor(images.shape[1:], images.dtype))

    def task_output(task):
        weights, task_images = task
        return model.stateless_call(list(weights), state, task_images, training=True)[0]
    return tf.map_fn(task_output, ([params[name] for name in names], images),
                     fn_output_signature=tf.TensorSpec(output.shape, output.dtype))


def _name_of(model, variable):
    """The name `parameters(model)` gives `variable`."""
    return next(name for name, value in parameters(model).items() if value is variable)


BACKBONES = {'conv4': ConvNet, 'resnet': ResNet, 'relationnet': RelationEmbedding, 'resnet12': ResNet12}


def build(backbone, n_way, num_filters, max_pool, precision='float32', image_size=28, channels=1, flatten=False,
          pool_padding='same'):
    """The network named `backbone` (a key of BACKBONES) with an `n_way`-output head, of images
    image_size x image_size x channels; flatten and pool_padding as `ConvNet`'s."""
    return BACKBONES[backbone](n_way, num_filters, max_pool=max_pool, precision=precision, image_size=image_size,
                               channels=channels, flatten=flatten, pool_padding=pool_padding)


def head(kernel, bias, features):
    """The linear head of every task: kernel [T, F, N], bias [T, N], features [T, B, F] -> [T, B, N]."""
    return tf.einsum('tbf,tfn->tbn', features, kernel) + bias[:, None, :]


def prototypes(features, labels, n_way):
    """Every task's class prototypes c_k, the mean feature of class k's support examples
    (Snell et al., 2017): features [T, B, F], labels [T, B] in 0..n_way−1 -> [T, N, F]."""
    one_hot = tf.one_hot(labels, n_way, dtype=features.dtype)  # [T, B, N]
    return tf.einsum('tbn,tbf->tnf', one_hot, features) / tf.reduce_sum(one_hot, 1)[..., None]


def prototype_head(features, labels, n_way):
    """The head that scores a feature by its distance to each class prototype c_k (`prototypes`):

        kernel_k = 2 c_k,  bias_k = −‖c_k‖²,   so  logit_k(f) = −‖f − c_k‖² + ‖f‖²,

    features [T, B, F], labels [T, B] in 0..n_way−1 -> (kernel [T, F, N], bias [T, N]).
    """
    centres = prototypes(features, labels, n_way)
    return 2 * tf.transpose(centres, [0, 2, 1]), -tf.reduce_sum(tf.square(centres), -1)


@dataclasses.dataclass(frozen=True)
class SmallCNN(Classifier):
    """The initialization lab's network: conv 32 -> max-pool -> conv 64 -> max-pool -> dense 128
    -> dense n_way, ReLU, no batch norm. `forward` takes per-task weights like `ConvNet.forward`."""
    n_way: int
    image_size: int = 28

    def keras_model(self):
        return keras.Sequential([
            keras.Input((self.image_size, self.image_size, 1)),
            keras.layers.Conv2D(32, 3, padding='same', activation='relu', name='conv1'),
            keras.layers.MaxPooling2D(2, name='pool1'),
            keras.layers.Conv2D(64, 3, padding='same', activation='relu', name='conv2'),
            keras.layers.MaxPooling2D(2, name='pool2'),
            keras.layers.Flatten(name='flatten'),
            keras.layers.Dense(128, activation='relu', name='dense'),
            keras.layers.Dense(self.n_way, name='head'),
        ], name='small_cnn')

    def forward(self, params, images):
        """Logits [T, B, n_way] of images [T, B, 28, 28, 1] under weights dict name -> [T, *shape]."""
        num_tasks, batch = images.shape[0], images.shape[1]
        h = tf.transpose(images[..., 0], [1, 2, 3, 0])  # [B, H, W, T]: tasks as channel groups.
        for layer in ('conv1', 'conv2'):
            h = grouped_conv2d(h, params[f'{layer}/kernel'], 1) + _flat(params[f'{layer}/bias'])
            h = tf.nn.max_pool2d(tf.nn.relu(h), 2, 2, 'VALID')
        height, width = h.shape[1], h.shape[2]
        h = tf.reshape(h, [batch, height, width, num_tasks, -1])
        h = tf.reshape(tf.transpose(h, [3, 0, 1, 2, 4]), [num_tasks, batch, -1])  # Keras' Flatten order.
        h = tf.nn.relu(head(params['dense/kernel'], params['dense/bias'], h))
        return self.head_outputs(params, h)


def grouped_conv2d(h, kernels, stride, padding='SAME'):
    """Convolves channel group t of `h` [B, H, W, T*C] with kernels[t] [3, 3, C, F], in h's type,
    zero-padded to keep the size ('SAME') or unpadded ('VALID').

    One grouped convolution where TensorFlow can differentiate it on this CPU, else one convolution
    per task (the same numbers, slower): see `grouped_gradient_available`.
    """
    kernels = tf.cast(kernels, h.dtype)
    num_tasks, height, width, channels, filters = kernels.shape
    if height == width == 1 and stride > 1:
        # The same function (SAME padding adds nothing for a 1x1 kernel): oneDNN's float32 kernel
        # gradient of a strided 1x1 convolution is wrong on some CPUs (tens of units off on an AVX2
        # AMD EPYC, TensorFlow 2.21, even-sized inputs), and its stride-1 kernel is not.
        h, stride = h[:, ::stride, ::stride, :], 1
    if num_tasks > 1 and not grouped_gradient_available(h.dtype):
        groups = tf.split(h, num_tasks, axis=-1)
        return tf.concat([tf.nn.conv2d(group, kernels[t], stride, padding) for t, group in enumerate(groups)], -1)
    kernel = tf.reshape(tf.transpose(kernels, [1, 2, 3, 0, 4]), [height, width, channels, num_tasks * filters])
    return tf.nn.conv2d(h, kernel, stride, padding)


@functools.cache
def grouped_gradient_available(dtype):
    """True if TensorFlow has the CPU gradient kernels of a grouped convolution in `dtype`.

    Only oneDNN has them: for float32, and for bfloat16 only on AVX-512 CPUs (elsewhere TensorFlow
    emulates bfloat16 with its own kernels); never for float64. Asked of the two kernels directly,
    since a tape cannot record inside the init_scope that lets this run while a tf.function traces.
    """
    strides = [1, 1, 1, 1]
    with tf.init_scope():
        h, out = tf.ones([1, 4, 4, 2], dtype), tf.ones([1, 4, 4, 2], dtype)  # Two groups of one channel.
        kernel = tf.ones([3, 3, 1, 2], dtype)
        try:
            tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.shape(h), filter=kernel, out_backprop=out,
                                           strides=strides, padding='SAME')
            tf.raw_ops.Conv2DBackpropFilter(input=h, filter_sizes=tf.shape(kernel), out_backprop=out,
                                            strides=strides, padding='SAME')
        except tf.errors.OpError:
            return False
    return True


def _flat(x):
    """[T, C] -> [T*C], matching the channel layout of grouped activations."""
    return tf.reshape(x, [-1])


@keras.saving.register_keras_serializable(package='fewshot')
class TransductiveBatchNormalization(keras.layers.BatchNormalization):
    """Batch norm that normalises every batch by its own moments, in inference as in training.

    What the transductive learners do (`batch_norm`): a task's query set is normalised with its own
    mean and variance. A model.keras of such a learner uses this layer, so that
    `keras.models.load_model` gives a model that predicts as the learner did (give a task's whole
    query set as one batch); its moving statistics are kept but never used. Loading it needs
    `import fewshot` first, which registers the layer with Keras.
    """

    def call(self, inputs, training=None, mask=None):
        del training, mask
        axes = [axis for axis in range(len(inputs.shape)) if axis != self.axis % len(inputs.shape)]
        mean, variance = keras.ops.moments(inputs, axes=axes)
        return keras.ops.batch_normalization(inputs, mean, variance, axis=self.axis, offset=self.beta,
                                             scale=self.gamma, epsilon=self.epsilon)


def with_transductive_batch_norm(model):
    """A copy of `model` (same weights) whose BatchNormalization layers are `TransductiveBatchNormalization`."""
    def clone(layer):
        kind = TransductiveBatchNormalization if isinstance(layer, keras.layers.BatchNormalization) else type(layer)
        return kind.from_config(layer.get_config())
    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def parameters(model):
    """The trainable weights of `model` by name: each variable's path below the model ('conv1/kernel',
    'bn1/gamma', ..., 'head/bias'; a nested model's 'body/dense/kernel'), as checkpoints name them."""
    return _by_path(model, model.trainable_variables)


def layer_parameters(model, layers):
    """The trainable weights of `layers` (layers of `model`) by name, as `parameters` names them."""
    owned = {id(variable) for layer in layers for variable in layer.trainable_variables}
    return {name: variable for name, variable in parameters(model).items() if id(variable) in owned}


def batch_norm_parameters(model):
    """The trainable weights of the batch-norm layers of `model` (its own layers) by name
    ('bn1/gamma', 'bn1/beta', ...)."""
    return layer_parameters(model, [layer for layer in model.layers
                                    if isinstance(layer, keras.layers.BatchNormalization)])


def statistics(model):
    """The batch-norm running statistics of `model` by name ('bn1/moving_mean', ...)."""
    return _by_path(model, [variable for variable in model.non_trainable_variables if 'moving' in variable.name])


def _by_path(model, variables):
    named = {variable.path.removeprefix(model.name + '/'): variable for variable in variables}
    if len(named) != len(variables):
        raise ValueError(f'two weights of the Keras model {model.name!r} share a name; name its layers apart')
    return named


def tile(params, num_tasks):
    """Stacks `num_tasks` copies of each weight: dict name -> [T, *shape]."""
    return {name: tf.tile(tf.convert_to_tensor(value)[None], [num_tasks] + [1] * len(value.shape))
            for name, value in params.items()}


def task_losses(logits, labels):
    """Mean cross-entropy of each task. logits [T, B, N], labels [T, B] -> [T]."""
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits), axis=1)


def task_accuracies(logits, labels):
    """Fraction of correct predictions per task. logits [T, B, N], labels [T, B] -> [T]."""
    correct = tf.equal(tf.argmax(logits, axis=-1, output_type=labels.dtype), labels)
    return tf.reduce_mean(tf.cast(correct, logits.dtype), axis=1)


def check_grouped_convolutions():
    """SetupError unless TensorFlow can differentiate float32 grouped convolutions on this CPU.

    Without them every meta-step would convolve task by task, about half as fast. TensorFlow's
    start-up banner invites users to turn oneDNN off with TF_ENABLE_ONEDNN_OPTS=0, which removes them.
    """
    if not grouped_gradient_available(tf.float32):
        switch = os.environ.get('TF_ENABLE_ONEDNN_OPTS', '')
        cause = (f'TF_ENABLE_ONEDNN_OPTS={switch} turns oneDNN off, and' if switch in ('0', 'false', 'False')
                 else 'in this TensorFlow build')
        raise SetupError(f'{cause} TensorFlow has no CPU gradient for grouped convolutions, which the '
                         'task-batched network needs for its speed; unset TF_ENABLE_ONEDNN_OPTS (or set it to 1)')


def save_model(model, path, batch_norm=''):
    """Saves a Keras model atomically (Keras insists on the .keras suffix); nothing is left
    behind if saving fails.

    batch_norm: the learner's batch-norm mode (`Learner.batch_norm`); a transductive learner's model
      is saved with `TransductiveBatchNormalization`, so that the loaded model normalises as
      the learner did, in Keras' inference mode too (a plain BatchNormalization would use moving
      statistics the learner never set).
    Raises ValueError, before anything is written, if `path` does not end in .keras (Keras would write
    another format, legacy HDF5 for .h5, that its docstring does not promise).
    """
    if not str(path).endswith('.keras'):
        raise ValueError(f'path: a file ending in .keras expected (the Keras format, which '
                         f'keras.models.load_model reads back); got {str(path)!r}')
    if batch_norm.startswith('transductive'):
        model = with_transductive_batch_norm(model)
    with results.replacing(path) as temporary:
        model.save(temporary)
