"""What every meta-learner shares, whatever its shape: the meta-parameters θ in a Keras model, a
meta-optimizer, compiled training and evaluation steps, and what a checkpoint holds.

A learner (MAML in fewshot/learners/maml.py, the Prototypical Network in
fewshot/learners/protonet.py, ...) subclasses `Learner` and defines two pure steps over a
meta-batch of T tasks (`data.Episodes` of tensors):

    meta_direction(episodes, **options) -> (the direction the meta-step descends, by name like θ:
        the meta-gradient, or Reptile's θ − θ'; per-task metrics [T] named as `train_metrics`,
        the first its loss; `measured`, means over tasks of what `track` keeps across
        meta-iterations), θ untouched
    test_step(episodes, num_steps) -> per-task metrics [T], at least 'query_pre_accuracy'
        (before the task's support set is used) and 'query_post_accuracy' (after), θ untouched

which `Learner` compiles and exposes as `training.train` expects them (`meta_train_step`,
`evaluate`, `state_variables`). A learner is built from keyword arguments alone; how a command's
flags build one is the command's business (`commands.Command`).

The meta-step (`train_step`) applies the direction and tracks what was measured. Both are means
over the meta-batch's tasks, so a meta-batch can be processed in chunks of tasks whose results
are averaged (`tasks_per_chunk`): the same meta-step in the memory of one chunk.
"""

import numpy as np
import tensorflow as tf
import keras

from fewshot import data, distribution, network, results

class Learner:
    """Meta-parameters θ (`params`: variables by name, or named groups of them) in a Keras model,
    meta-trained by `meta_optimizer`."""

    # What train_step reports, per task; the first is the loss the meta-step descends.
    train_metrics = ('loss',)
    # How batch norm normalises in this learner's forward passes, recorded in hyperparameters.json.
    batch_norm = 'transductive (statistics of the batch being normalised)'

    def __init__(self, net, model=None, meta_optimizer=None, params=None):
        """
        Args:
          net: a `network.ConvNet` (or `ResNet`, or `regression.MLP`), whose forward is evaluated
            over explicit weights and which scores a task (`score_name`).
          model: its Keras model, holding the meta-parameters θ (default: `net.keras_model()`).
          meta_optimizer: a Keras optimizer for θ (default: Adam at 1e-3).
          params: the meta-parameters: variables by name (default: the model's trainable weights,
            `network.parameters(model)`), or a dict of such named groups (Meta-SGD's
            {'network': ..., 'inner_lr': ...}); gradients and directions have the same structure.
        """
        model = net.keras_model() if model is None else model
        meta_optimizer = keras.optimizers.Adam(1e-3) if meta_optimizer is None else meta_optimizer
        self.net = net
        self.model = model
        self.meta_optimizer = meta_optimizer
        self.params = network.parameters(model) if params is None else params
        # Tasks of a meta-batch whose direction is computed at once (None: the whole meta-batch);
        # fewer bound the memory of the meta-step, which stays the same.
        self.tasks_per_chunk = None
        meta_optimizer.build(tf.nest.flatten(self.params))
        # Built inside a tf.distribute strategy's scope, the meta-batch is split across its replicas.
        self.replicated = distribution.Replicated(self, tf.distribute.get_strategy()) \
            if tf.distribute.has_strategy() else None
        self._train_step = tf.function(self.train_step)
        self._meta_direction = tf.function(self.meta_direction)
        self._update = tf.function(self.update)
        self._test_step = tf.function(self.test_step)

    @property
    def score_name(self):
        """What evaluation scores a task by: the network's 'accuracy' (a regressor's 'mse')."""
        return self.net.score_name

    def meta_direction(self, episodes, **options):
        """(the direction the meta-step descends by name like `params`, per-task `train_metrics` [T],
        `measured`) of a meta-batch, without changing θ; the direction and `measured` are means over
        its tasks."""
        raise NotImplementedError

    def update(self, gradients, measured):
        """The meta-step: the meta-optimizer's step along `gradients`, then `track(measured)`."""
        self.apply(gradients)
        self.track(measured)

    def track(self, measured):
        """Updates state kept across meta-iterations from what `meta_direction` measured (none here;
        MAML++: batch norm's running statistics)."""
        del measured

    def train_step(self, episodes, **options):
        """One meta-step on a meta-batch; returns the per-task `train_metrics`."""
        gradients, metrics, measured = self.meta_direction(episodes, **options)
        self.update(gradients, measured)
        return metrics

    def test_step(self, episodes, num_steps):
        """Adapts to each task with `num_steps` steps and scores its query set; per-task metrics."""
        raise NotImplementedError

    def apply(self, gradients):
        """Takes the meta-optimizer's step along `gradients` (structured like `params`)."""
        self.meta_optimizer.apply_gradients(zip(tf.nest.flatten(gradients), tf.nest.flatten(self.params)))

    def state_variables(self):
        """What a checkpoint must hold, by name: the model's weights and the meta-optimizer's state."""
        return {**results.named_variables('model', self.model),
                **results.named_variables('optimizer', self.meta_optimizer)}

    def train_step_options(self):
        """Arguments of `train_step` for the next meta-iteration (none here; MAML++ follows
        schedules). Each distinct set of Python values compiles the training step once."""
        return {}

    def save_model(self, path):
        """Saves the model (the meta-learned θ) to `path` (.keras), atomically, so that
        `keras.models.load_model` (after `from fewshot import network`) normalises as this learner does
        (`network.save_model`)."""
        network.save_model(self.model, path, self.batch_norm)

    def save(self, folder):
        """Writes what the learner learned besides the model's weights into its run folder
        (nothing here; Meta-SGD: its learning rates)."""
        del folder

    def summaries(self):
        """Scalars for TensorBoard at each validation besides the metrics, by tag (the meta learning
        rate here; MAML++ adds its learned inner learning rates)."""
        # A tensor first: under a tf.distribute strategy the rate is a mirrored variable.
        return {'meta_learning_rate': float(tf.convert_to_tensor(self.meta_optimizer.learning_rate))}

    def meta_train_step(self, episodes):
        """One meta-iteration on a meta-batch (compiled); returns per-task metrics as NumPy.

        With `tasks_per_chunk` below the meta-batch's T tasks, the direction of each chunk is
        computed in turn (one compiled call each, so that only one chunk's activations are alive)
        and the mean over the T tasks, Σ_c (T_c / T) · chunk c's mean, takes the meta-step. Across
        the replicas of a tf.distribute strategy the tasks are split the same way (distribution.py).
        """
        episodes, options = _as_tensors(episodes), self.train_step_options()
        if self.replicated:
            return self.replicated.meta_train_step(episodes, options)
        num_tasks = data.num_tasks(episodes)
        if not self.tasks_per_chunk or self.tasks_per_chunk >= num_tasks:
            return {k: v.numpy() for k, v in self._train_step(episodes, **options).items()}
        total, metrics = None, []
        for start in range(0, num_tasks, self.tasks_per_chunk):
            chunk = data.task_slice(episodes, start, start + self.tasks_per_chunk)
            gradients, chunk_metrics, measured = self._meta_direction(chunk, **options)
            weighted = tf.nest.map_structure(lambda x: x * (data.num_tasks(chunk) / num_tasks),
                                             (gradients, measured))
            total = weighted if total is None else tf.nest.map_structure(tf.add, total, weighted)
            metrics.append(chunk_metrics)
        self._update(*total)
        return {k: np.concatenate([m[k].numpy() for m in metrics]) for k in metrics[0]}

    def evaluate(self, episodes, num_steps=0):
        """Adapts to each task and scores its query set, without touching θ; per-task NumPy metrics."""
        if self.replicated:
            return self.replicated.evaluate(_as_tensors(episodes), num_steps)
        return {k: v.numpy() for k, v in self._test_step(_as_tensors(episodes), num_steps).items()}


class MetricLearner(Learner):
    """A learner with no inner loop: it embeds a task's support and query images with the body and
    scores each query against the support set's classes (`scores`, [T, Q, N]), trained episodically
    on a per-task loss of those scores (`losses`). The Prototypical and Relation Networks are two.

    The meta-parameters are the network's weights but its head's (the run's model.keras keeps an
    unused head), or the groups of weights a learner gives (the Relation Network's). Batch norm
    normalises a task's support and query images together, with their moments, in training and
    evaluation alike.
    """

    train_metrics = ('query_loss', 'query_accuracy')
    batch_norm = "transductive (statistics of each task's support and query images together)"
    # Classes of the tasks `evaluate` is given when they are not the network's N (None): nothing here has a
    # head of N outputs, so a task of any N can be scored (cross-domain meta-testing, 10-way on a 5-way
    # model). Another N gives the tasks other shapes, so the compiled test step is traced anew for them.
    test_n_way = None

    def __init__(self, net, model=None, meta_optimizer=None, train_n_way=None, params=None):
        """
        Args:
          net, model, meta_optimizer: as for `Learner`.
          train_n_way: classes per meta-training task (N of `scores` in training; default the
            network's N).
          params: the meta-parameters (default: the network's body, `net.groups(...)['body']`).
        """
        model = net.keras_model() if model is None else model
        params = net.groups(network.parameters(model))['body'] if params is None else params
        super().__init__(net, model, meta_optimizer, params=params)
        self.train_n_way = train_n_way or net.n_way

    def embed(self, embedding, params, episodes):
        """(support, query): `embedding(task weights, images)` of each task's support [T, N*K, ...] and
        query [T, N*Q, ...] images, computed as one batch per task (`net.features` or `net.feature_maps`)."""
        num_tasks, num_support = episodes.support_labels.shape
        images = tf.concat([episodes.support_images, episodes.query_images], axis=1)
        embedded = embedding(network.tile(params, num_tasks), images)
        return embedded[:, :num_support], embedded[:, num_support:]

    def scores(self, params, episodes, n_way):
        """Query scores [T, N*Q, N] of `n_way`-way tasks under the weights `params`; the highest is the prediction."""
        raise NotImplementedError

    def losses(self, scores, labels):
        """The loss of each task [T] from its query scores [T, Q, N] and labels [T, Q]: cross-entropy."""
        return network.task_losses(scores, labels)

    def meta_direction(self, episodes):
        with tf.GradientTape() as tape:
            scores = self.scores(self.params, episodes, self.train_n_way)
            losses = self.losses(scores, episodes.query_labels)
            loss = tf.reduce_mean(losses)
        metrics = {'query_loss': losses, 'query_accuracy': network.task_accuracies(scores, episodes.query_labels)}
        return tape.gradient(loss, self.params), metrics, {}

    def test_step(self, episodes, num_steps):
        """Per-task query loss and accuracy after seeing the support set ('post') and before it
        ('pre': with no support set every class scores the same, the uniform prediction)."""
        del num_steps  # Nothing adapts.
        scores = self.scores(self.params, episodes, self.test_n_way or self.net.n_way)
        uniform, labels = self.uniform_scores(scores), episodes.query_labels
        return {'query_pre_loss': self.losses(uniform, labels), 'query_post_loss': self.losses(scores, labels),
                'query_pre_accuracy': network.task_accuracies(uniform, labels),
                'query_post_accuracy': network.task_accuracies(scores, labels)}

    @staticmethod
    def uniform_scores(scores):
        """Scores that prefer no class, shaped as `scores`."""
        return tf.zeros_like(scores)


def named_groups(groups):
    """{group/name: value} of named groups {group: {name: value}}: how a checkpoint keys a learner's
    own meta-parameters (Meta-SGD's inner_lr/conv1/kernel)."""
    return {f'{group}/{name}': value for group, named in groups.items() for name, value in named.items()}


def _as_tensors(episodes):
    return type(episodes)(*(tf.convert_to_tensor(x) for x in episodes))
