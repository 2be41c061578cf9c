"""The transfer-learning baseline as a learner: a classifier pretrained over every meta-training
class, then, for each few-shot task, its body frozen and a new N-way head fitted on the support set
(`transfer_learn`), the baseline of the assignment's third part (maml_transfer.py is its command).
"""

import dataclasses
import functools

import keras
import numpy as np
import tensorflow as tf

from fewshot import network, results
from fewshot.errors import named


@dataclasses.dataclass(frozen=True)
class Adaptation:
    """How a pretrained network is adapted to a task (see the flags of the same names)."""
    steps: int = 100
    lr: float = 0.01
    optimizer: str = 'adam'
    head_init: str = 'random'
    finetune_all: bool = False
    batch_statistics: bool = False
    seed: int = 0


def transfer_learn(net, model, episodes, n_way, adaptation):
    """Replaces the head of `model` by a new `n_way` head, adapts it on each task's support set
    and scores it on the query set. `model` itself is not changed.

    Args:
      net: the `network.ConvNet` of `model` (its head size is irrelevant).
      model: the pretrained Keras model.
      episodes: a `data.Episodes` of T tasks.
      n_way: outputs of the new head; must cover the tasks' labels.
      adaptation: an `Adaptation`.
    Returns:
      dict of [T] NumPy arrays: query accuracy and loss before and after adaptation.
    """
    labels = np.asarray(episodes.support_labels)
    if labels.max() >= n_way:
        raise ValueError(f'the new head has {n_way} outputs but the tasks have '
                         f'{labels.max() + 1} classes; the head size must equal {named("n_way")}')
    def tensors(variables):
        return {name: tf.convert_to_tensor(v) for name, v in variables.items()}
    metrics = _compiled_transfer(net, n_way, adaptation)(
        tensors(network.parameters(model)), tensors(network.statistics(model)),
        tuple(tf.convert_to_tensor(x) for x in episodes))
    return {name: value.numpy() for name, value in metrics.items()}


@functools.lru_cache(maxsize=None)
def _compiled_transfer(net, n_way, adaptation):
    """`_transfer` compiled once per setting (tf.function would retrace on every new Python object)."""
    return tf.function(functools.partial(_transfer, net, n_way=n_way, adaptation=adaptation))


def _transfer(net, params, statistics, episodes, n_way, adaptation):
    support_images, support_labels, query_images, query_labels = episodes
    num_tasks = support_images.shape[0]
    frozen = network.tile(net.groups(params)['body'], num_tasks)
    stats = None if adaptation.batch_statistics else network.tile(statistics, num_tasks)
    support_features = net.features(frozen, support_images, stats)
    head = net.head_weights(*_initial_head(support_features, support_labels, n_way, adaptation))
    # Only the head adapts, unless finetune_all: then every weight does.
    adapted = {**frozen, **head} if adaptation.finetune_all else head

    def logits(weights, images, features):
        if adaptation.finetune_all:
            return net.forward(weights, images, stats)
        return net.head_outputs(weights, features)

    query_features = None if adaptation.finetune_all else net.features(frozen, query_images, stats)
    pre = logits(adapted, query_images, query_features)
    adapted = _fit(lambda w: tf.reduce_sum(network.task_losses(
        logits(w, support_images, support_features), support_labels)), adapted, adaptation)
    post = logits(adapted, query_images, query_features)
    return {'query_pre_accuracy': network.task_accuracies(pre, query_labels),
            'query_post_accuracy': network.task_accuracies(post, query_labels),
            'query_pre_loss': network.task_losses(pre, query_labels),
            'query_post_loss': network.task_losses(post, query_labels)}


def _initial_head(features, labels, n_way, adaptation):
    """A new head for every task: kernel [T, F, N], bias [T, N]."""
    num_tasks, _, width = features.shape
    if adaptation.head_init == 'prototype':
        return network.prototype_head(features, labels, n_way)
    kernel = tf.zeros([num_tasks, width, n_way])
    if adaptation.head_init == 'random':
        limit = np.sqrt(6.0 / (width + n_way))  # Glorot uniform, as Keras' Dense.
        kernel = tf.random.stateless_uniform([num_tasks, width, n_way], [adaptation.seed, 0], -limit, limit)
    return kernel, tf.zeros([num_tasks, n_way])


def _fit(loss_fn, weights, adaptation):
    """`adaptation.steps` steps of SGD or Adam on loss_fn(weights); tasks are independent
    because loss_fn sums per-task losses of per-task weights."""
    moments = {k: (tf.zeros_like(w), tf.zeros_like(w)) for k, w in weights.items()}
    for step in tf.range(1, adaptation.steps + 1):
        with tf.GradientTape() as tape:
            tape.watch(weights)
            loss = loss_fn(weights)
        grads = tape.gradient(loss, weights)
        if adaptation.optimizer == 'sgd':
            updates = {k: adaptation.lr * g for k, g in grads.items()}
        else:
            beta1, beta2, t = 0.9, 0.999, tf.cast(step, tf.float32)
            moments = {k: (beta1 * m + (1 - beta1) * grads[k], beta2 * v + (1 - beta2) * tf.square(grads[k]))
                       for k, (m, v) in moments.items()}
            scale = adaptation.lr * tf.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
            updates = {k: scale * m / (tf.sqrt(v) + 1e-7) for k, (m, v) in moments.items()}
        weights = {k: w - updates[k] for k, w in weights.items()}
    return weights


class PretrainedClassifier:
    """A classifier over all meta-train classes, scored by transfer to few-shot tasks.

    It plays the learner's part in training.train: a training step is one minibatch
    of ordinary classification, and `evaluate` is `transfer_learn`.
    """
    train_metrics = ('loss', 'accuracy')
    score_name = 'accuracy'

    def __init__(self, net, optimizer, adaptation, n_way):
        self.net, self.adaptation, self.n_way = net, adaptation, n_way
        self.model = net.keras_model()
        self.optimizer = optimizer
        self.optimizer.build(self.model.trainable_variables)
        self._step = tf.function(self._train_step)

    def _train_step(self, images, labels):
        with tf.GradientTape() as tape:
            logits = self.model(images, training=True)
            losses = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
            loss = tf.reduce_mean(losses)
        variables = self.model.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32)
        return {'loss': losses, 'accuracy': correct}

    def meta_train_step(self, batch):
        images, labels = batch
        return {k: v.numpy() for k, v in self._step(tf.constant(images), tf.constant(labels)).items()}

    def evaluate(self, episodes, num_steps):
        adaptation = dataclasses.replace(self.adaptation, steps=num_steps)
        return transfer_learn(self.net, self.model, episodes, self.n_way, adaptation)

    def state_variables(self):
        return {**results.named_variables('model', self.model),
                **results.named_variables('optimizer', self.optimizer)}
