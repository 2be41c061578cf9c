"""Relation Networks (Sung, Yang, Zhang, Xiang, Torr & Hospedales, "Learning to Compare", CVPR 2018).

No inner loop: an embedding module f (the --backbone's body, without its spatial mean) maps a
task's images to feature maps, each class is the sum of its support images' maps, and a learned
relation module g scores every (class, query) pair from their concatenated maps:

    r_{q,k} = g([Σ_{(x, k) ∈ support} f(x), f(x_q)]) ∈ [0, 1],
    L = 1/T Σ_t mean_{q,k} (r_{q,k} − 1[y_q = k])²,

the mean-squared error against one-hot targets the paper trains with (a regression of the
relation score, not a classification); the prediction is the class of highest score. f and g
are trained together with Adam, episodically.

The relation module is `relation_blocks` blocks of 3x3 convolution (F filters), batch norm and
ReLU on the 2F concatenated channels, each followed by 2x2 max-pooling if `relation_max_pool`, then
the spatial mean, a hidden layer of 8 ReLU units and a sigmoid output. The paper's, over its
embedding's 5x5 maps (`network.RelationEmbedding`, --backbone relationnet): two blocks with
max-pooling (5 -> 2 -> 1, so the mean is its flattening). The default, one block without pooling
and the mean, is that module adapted to the 2x2 maps of this project's ConvNet. Batch norm
normalises each task's support and query images together, and each task's pairs together.

`clip_norm` clips the gradient of each group, f's and g's, to that global norm before Adam's step,
as the authors' code does (0.5 for Omniglot).

relationnet.py at the top of the repository is its command.
"""

import keras
import tensorflow as tf

from fewshot import network, normalization
from fewshot.learner import MetricLearner

RELATION = 'relation_'  # Names the relation module's layers apart from the embedding network's.
HIDDEN_UNITS = 8


def block_names(relation_blocks):
    """(convolution, batch norm) layer names of each block of the relation module; the first block
    keeps the unnumbered names of the runs made when the module had one block."""
    return [(f'{RELATION}conv{suffix}', f'{RELATION}bn{suffix}')
            for suffix in ['', *range(2, relation_blocks + 1)]]


def max_pooled_blocks(net):
    """How many blocks with 2x2 max-pooling the feature maps of `net` allow before they fall below 1x1."""
    return net.feature_map_size().bit_length() - 1


def keras_model(net, relation_blocks=1, relation_max_pool=False):
    """The embedding network `net` and the relation module as one Keras model (for storage and the
    checkpoint): inputs an image and a pair of concatenated feature maps [H', W', 2F]; outputs the
    network's logits (its head unused) and the relation score. ValueError if max-pooling would take
    the embedding's feature maps below 1x1."""
    size = net.feature_map_size()
    if relation_max_pool and relation_blocks > max_pooled_blocks(net):
        raise ValueError(f'relation_blocks={relation_blocks} with max-pooling: the {size}x{size} feature maps of '
                         f'this network allow at most {max_pooled_blocks(net)} pooled block(s)')
    embedding = net.keras_model()
    pairs = keras.Input((size, size, 2 * net.feature_channels()), name='pairs')
    h = pairs
    for conv, bn in block_names(relation_blocks):
        h = keras.layers.Conv2D(net.num_filters, 3, padding='same', use_bias=False, name=conv)(h)
        h = keras.layers.BatchNormalization(epsilon=normalization.BATCH_NORM_EPSILON, name=bn)(h)
        h = keras.layers.ReLU(name=f'{conv}_relu')(h)
        if relation_max_pool:
            h = keras.layers.MaxPooling2D(2, name=f'{conv}_pool')(h)  # Floors 5 to 2, as the paper's.
    h = keras.layers.GlobalAveragePooling2D(name=f'{RELATION}mean')(h)
    h = keras.layers.Dense(HIDDEN_UNITS, activation='relu', name=f'{RELATION}hidden')(h)
    score = keras.layers.Dense(1, activation='sigmoid', name=f'{RELATION}score')(h)
    # Named as the embedding network, so that checkpoints key its weights as every learner's (conv1/kernel, ...).
    return keras.Model([embedding.inputs[0], pairs], [embedding.outputs[0], score], name=embedding.name)


class RelationNetwork(MetricLearner):
    """Scores (class, query) pairs with a learned relation module (see the module docstring). The
    meta-parameters are two named groups, {'embedding': f's weights, 'relation': g's}."""

    def __init__(self, net, model=None, meta_optimizer=None, train_n_way=None, relation_blocks=1,
                 relation_max_pool=False, clip_norm=None):
        """Arguments as for `MetricLearner`; the model (default: `keras_model(net, relation_blocks,
        relation_max_pool)`) holds the embedding network and the relation module. clip_norm: the
        largest global norm of each group's gradient (None: no clipping)."""
        model = keras_model(net, relation_blocks, relation_max_pool) if model is None else model
        self.blocks, self.relation_max_pool, self.clip_norm = block_names(relation_blocks), relation_max_pool, clip_norm
        layers = [name for block in self.blocks for name in block] + [f'{RELATION}hidden', f'{RELATION}score']
        relation = network.layer_parameters(model, [model.get_layer(name) for name in layers])
        embedding = {name: value for name, value in net.groups(network.parameters(model))['body'].items()
                     if name not in relation}
        super().__init__(net, model, meta_optimizer, train_n_way, params={'embedding': embedding, 'relation': relation})

    def relation(self, params, pairs):
        """g: relation scores [T, P] in [0, 1] of pairs [T, P, H', W', 2F] under the relation module's
        weights `params`, batch norm over each task's pairs."""
        num_tasks, num_pairs = pairs.shape[:2]
        h = tf.reshape(pairs, [num_tasks * num_pairs, *pairs.shape[2:]])
        for conv, bn in self.blocks:
            h = tf.nn.conv2d(h, params[f'{conv}/kernel'], 1, 'SAME')
            h = tf.nn.relu(_per_task_batch_norm(h, params[f'{bn}/gamma'], params[f'{bn}/beta'], num_tasks))
            if self.relation_max_pool:
                h = tf.nn.max_pool2d(h, 2, 2, 'VALID')
        h = tf.reshape(tf.reduce_mean(h, axis=[1, 2]), [num_tasks, num_pairs, -1])  # [T, P, F]
        h = tf.nn.relu(h @ params[f'{RELATION}hidden/kernel'] + params[f'{RELATION}hidden/bias'])
        return tf.sigmoid(h @ params[f'{RELATION}score/kernel'] + params[f'{RELATION}score/bias'])[..., 0]

    def apply(self, gradients):
        """Adam's step, after clipping each group's gradient to `clip_norm` if given."""
        if self.clip_norm is not None:
            gradients = {group: dict(zip(named, tf.clip_by_global_norm(list(named.values()), self.clip_norm)[0]))
                         for group, named in gradients.items()}
        super().apply(gradients)

    def scores(self, params, episodes, n_way):
        """r_{q,k} [T, N*Q, N] for every query q and class k of `n_way`-way tasks."""
        support, query = self.embed(self.net.feature_maps, params['embedding'], episodes)  # [T, B, H', W', F]
        one_hot = tf.one_hot(episodes.support_labels, n_way, dtype=support.dtype)
        classes = tf.einsum('tbn,tbhwf->tnhwf', one_hot, support)  # The sum of each class's maps.
        num_tasks, num_queries = query.shape[:2]
        pairs = tf.concat([tf.broadcast_to(classes[:, None], [num_tasks, num_queries, *classes.shape[1:]]),
                           tf.broadcast_to(query[:, :, None], [num_tasks, num_queries, n_way, *query.shape[2:]])],
                          axis=-1)  # [T, Q, N, H', W', 2F]
        pairs = tf.reshape(pairs, [num_tasks, num_queries * n_way, *pairs.shape[3:]])
        scores = self.relation(params['relation'], pairs)
        return tf.reshape(scores, [num_tasks, num_queries, n_way])

    def losses(self, scores, labels):
        """The paper's loss: the mean squared error of the scores [T, Q, N] against one-hot labels [T, Q] -> [T]."""
        targets = tf.one_hot(labels, scores.shape[-1], dtype=scores.dtype)
        return tf.reduce_mean(tf.square(scores - targets), axis=[1, 2])

    @staticmethod
    def uniform_scores(scores):
        """Every pair equally related: a score of 1/N, the MSE-optimal constant."""
        return tf.ones_like(scores) / scores.shape[-1]


def _per_task_batch_norm(h, gamma, beta, num_tasks):
    """Batch norm of the pairs' maps h [T*P, H, W, F], each task's P pairs with their own moments."""
    _, height, width, channels = h.shape
    # Tasks as channel groups [P, H, W, T*F], so that one batch norm gives each task its moments.
    grouped = tf.reshape(tf.transpose(tf.reshape(h, [num_tasks, -1, height, width, channels]), [1, 2, 3, 0, 4]),
                         [-1, height, width, num_tasks * channels])
    grouped = normalization.batch_norm(grouped, tf.tile(gamma, [num_tasks]), tf.tile(beta, [num_tasks]))[0]
    h = tf.transpose(tf.reshape(grouped, [-1, height, width, num_tasks, channels]), [3, 0, 1, 2, 4])
    return tf.reshape(h, [-1, height, width, channels])
