"""Relation Networks (Sung, Yang, Zhang, Xiang, Torr & Hospedales, "Learning to Compare", CVPR 2018).

No inner loop: an embedding module f (the --backbone's body, without its spatial mean) maps a
task's images to feature maps, each class is the sum of its support images' maps, and a learned
relation module g scores every (class, query) pair from their concatenated maps:

    r_{q,k} = g([Σ_{(x, k) ∈ support} f(x), f(x_q)]) ∈ [0, 1],
    L = 1/T Σ_t mean_{q,k} (r_{q,k} − 1[y_q = k])²,

the mean-squared error against one-hot targets the paper trains with (a regression of the
relation score, not a classification); the prediction is the class of highest score. f and g
are trained together with Adam, episodically.

The relation module here is the paper's shape adapted to this network's 2x2 feature maps (the
paper's Omniglot embedding keeps 5x5): one block of 3x3 convolution, batch norm and ReLU on the
2F concatenated channels, the spatial mean, a hidden layer of 8 ReLU units and a sigmoid output,
where the paper has two convolution blocks with max-pooling before the same two layers. Batch
norm normalises each task's support and query images together, and each task's pairs together.

relationnet.py at the top of the repository is its command.
"""

import keras
import tensorflow as tf

from fewshot import network, normalization
from fewshot.learner import MetricLearner

RELATION = 'relation_'  # Names the relation module's layers apart from the embedding network's.
RELATION_LAYERS = tuple(f'{RELATION}{layer}' for layer in ('conv', 'bn', 'hidden', 'score'))  # Those with weights.
HIDDEN_UNITS = 8


def keras_model(net):
    """The embedding network `net` and the relation module as one Keras model (for storage and the
    checkpoint): inputs an image and a pair of concatenated feature maps [H', W', 2F]; outputs the
    network's logits (its head unused) and the relation score."""
    embedding = net.keras_model()
    pairs = keras.Input((None, None, 2 * net.num_filters), name='pairs')
    h = keras.layers.Conv2D(net.num_filters, 3, padding='same', use_bias=False, name=f'{RELATION}conv')(pairs)
    h = keras.layers.BatchNormalization(epsilon=normalization.BATCH_NORM_EPSILON, name=f'{RELATION}bn')(h)
    h = keras.layers.GlobalAveragePooling2D(name=f'{RELATION}mean')(keras.layers.ReLU(name=f'{RELATION}relu')(h))
    h = keras.layers.Dense(HIDDEN_UNITS, activation='relu', name=f'{RELATION}hidden')(h)
    score = keras.layers.Dense(1, activation='sigmoid', name=f'{RELATION}score')(h)
    # Named as the embedding network, so that checkpoints key its weights as every learner's (conv1/kernel, ...).
    return keras.Model([embedding.inputs[0], pairs], [embedding.outputs[0], score], name=embedding.name)


class RelationNetwork(MetricLearner):
    """Scores (class, query) pairs with a learned relation module (see the module docstring). The
    meta-parameters are two named groups, {'embedding': f's weights, 'relation': g's}."""

    def __init__(self, net, model=None, meta_optimizer=None, train_n_way=None):
        """Arguments as for `MetricLearner`; the model (default: `keras_model(net)`) holds the
        embedding network and the relation module."""
        model = keras_model(net) if model is None else model
        relation = network.layer_parameters(model, [model.get_layer(name) for name in RELATION_LAYERS])
        embedding = {name: value for name, value in net.groups(network.parameters(model))['body'].items()
                     if name not in relation}
        super().__init__(net, model, meta_optimizer, train_n_way, params={'embedding': embedding, 'relation': relation})

    def relation(self, params, pairs):
        """g: relation scores [T, P] in [0, 1] of pairs [T, P, H', W', 2F] under the relation module's
        weights `params`, batch norm over each task's pairs."""
        num_tasks, num_pairs, height, width, channels = pairs.shape
        h = tf.nn.conv2d(tf.reshape(pairs, [-1, height, width, channels]), params[f'{RELATION}conv/kernel'], 1,
                         'SAME')
        # Tasks as channel groups [P, H', W', T*F], so that each task's pairs have their own moments.
        h = tf.reshape(tf.transpose(tf.reshape(h, [num_tasks, num_pairs, height, width, -1]), [1, 2, 3, 0, 4]),
                       [num_pairs, height, width, -1])
        gamma, beta = (tf.tile(params[f'{RELATION}bn/{name}'], [num_tasks]) for name in ('gamma', 'beta'))
        h = tf.reduce_mean(tf.nn.relu(normalization.batch_norm(h, gamma, beta)[0]), axis=[1, 2])  # [P, T*F]
        h = tf.transpose(tf.reshape(h, [num_pairs, num_tasks, -1]), [1, 0, 2])  # [T, P, F]
        h = tf.nn.relu(h @ params[f'{RELATION}hidden/kernel'] + params[f'{RELATION}hidden/bias'])
        return tf.sigmoid(h @ params[f'{RELATION}score/kernel'] + params[f'{RELATION}score/bias'])[..., 0]

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
