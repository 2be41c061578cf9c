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

What a user calls (the rest are a learner's hooks):

    fit(tasks, validation_tasks, num_iterations)   meta-training, Keras-style: callbacks, a run folder
                                              that resumes exactly, a History
    meta_train_step(episodes)                 one meta-step on a meta-batch
    evaluate(episodes, num_steps)             per-task metrics of a meta-batch, θ untouched
    predict(support_images, support_labels, query_images)
                                              one task's query scores [Q, N] after its support set
    adapt(support_images, support_labels)     a Keras model adapted to one support set
    save_model(path)                          θ as a .keras file

The meta-step (`train_step`) applies the direction and tracks what was measured. Both are means
over the meta-batch's tasks, so a meta-batch can be processed in chunks of tasks whose results
are averaged (`tasks_per_chunk`): the same meta-step in the memory of one chunk.
"""

import gc
import os
import weakref

import numpy as np
import tensorflow as tf
import keras

from fewshot import data, distribution, network, results, training

# Keras model -> the learner whose θ it holds (weakly: a learner no longer used frees its model).
_OWNERS = weakref.WeakKeyDictionary()


class Learner:
    """Meta-parameters θ (`params`: variables by name, or named groups of them) in a Keras model,
    meta-trained by `meta_optimizer`."""

    # What train_step reports, per task; the first is the loss the meta-step descends.
    train_metrics = ('loss',)
    # How batch norm normalises in this learner's forward passes, recorded in hyperparameters.json.
    batch_norm = 'transductive (statistics of the batch being normalised)'
    # Inner steps a task is adapted with when none are asked for (none without an inner loop).
    num_inner_steps = 0
    # Whether a task may have another number of classes than the network's head (nothing to adapt has N outputs).
    any_n_way = False

    def __init__(self, net, model=None, meta_optimizer=None, params=None):
        """
        Args:
          net: a `network.ConvNet` (or `ResNet`, or `regression.MLP`), whose forward is evaluated
            over explicit weights and which scores a task (`score_name`).
          model: its Keras model, holding the meta-parameters θ (default: `net.keras_model()`, which
            must not hold another living learner's: a `KerasNetwork`'s model is the user's own, and
            two learners would silently train the same weights; pass `model` to share it on purpose).
          meta_optimizer: a Keras optimizer for θ (default: Adam at 1e-3).
          params: the meta-parameters: variables by name (default: the model's trainable weights,
            `network.parameters(model)`), or a dict of such named groups (Meta-SGD's
            {'network': ..., 'inner_lr': ...}); gradients and directions have the same structure.
        """
        model = model_for(net, model)
        _OWNERS[model] = weakref.ref(self)
        meta_optimizer = keras.optimizers.Adam(1e-3) if meta_optimizer is None else meta_optimizer
        self.net = net
        self.model = model
        self.meta_optimizer = meta_optimizer
        self.params = network.parameters(model) if params is None else params
        self.image_shape = _input_shape(model)
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
        self._task_scores = tf.function(self.task_scores)

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

    def task_scores(self, episodes, num_steps, n_way):
        """Query scores [T, Q, N] of `n_way`-way tasks whose query labels are not known (None) after their
        support sets, with `num_steps` inner steps if the learner adapts; θ untouched."""
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

    def save_model(self, path: str | os.PathLike) -> None:
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

    def meta_train_step(self, episodes: data.Episodes) -> dict[str, np.ndarray]:
        """One meta-iteration on a meta-batch (compiled); returns per-task metrics as NumPy.

        With `tasks_per_chunk` below the meta-batch's T tasks, the direction of each chunk is
        computed in turn (one compiled call each, so that only one chunk's activations are alive)
        and the mean over the T tasks, Σ_c (T_c / T) · chunk c's mean, takes the meta-step. Across
        the replicas of a tf.distribute strategy the tasks are split the same way (distribution.py).
        """
        episodes, options = _as_tensors(self.checked(episodes)), self.train_step_options()
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

    def evaluate(self, episodes: data.Episodes, num_steps: int = 0) -> dict[str, np.ndarray]:
        """Adapts to each task and scores its query set, without touching θ; per-task NumPy metrics."""
        episodes = self.checked(episodes)
        if self.replicated:
            return self.replicated.evaluate(_as_tensors(episodes), num_steps)
        return {k: v.numpy() for k, v in self._test_step(_as_tensors(episodes), num_steps).items()}

    def predict(self, support_images: np.ndarray, support_labels: np.ndarray, query_images: np.ndarray,
                num_steps: int | None = None) -> np.ndarray:
        """The scores of one task's query images after its support set, θ untouched: the logits after
        adapting to the support set (`adapt`), or a metric learner's scores; each row's highest is the
        predicted class.

        Args:
          support_images: [N*K, H, W, C] float, the task's labelled images, prepared as the learner's
            training images were (Omniglot's: 28x28x1 in [0, 1]); H, W, C the network's.
          support_labels: [N*K] integers, the classes 0..N-1, each at least once (N: the network's
            head's outputs, or any N for a learner without a head).
          query_images: [Q, H, W, C] float, the images to classify.
          num_steps: inner steps on the support set (default `num_inner_steps`; none without an inner loop).
        Returns:
          NumPy [Q, N].
        Raises:
          ValueError naming the argument that is not as above, before anything is computed.
        """
        episodes, n_way = self.one_task(support_images, support_labels, query_images)
        return self._task_scores(episodes, self.steps(num_steps), n_way)[0].numpy()

    def adapt(self, support_images: np.ndarray, support_labels: np.ndarray,
              num_steps: int | None = None) -> keras.Model:
        """A Keras model [B, H, W, C] -> [B, N] adapted to one task's support set (arguments as `predict`'s)."""
        del support_images, support_labels, num_steps
        raise NotImplementedError(f'{type(self).__name__} adapts no Keras model to a support set; '
                                  f'predict(support_images, support_labels, query_images) classifies with it')

    def fit(self, tasks: data.TaskStream, validation_tasks: data.Episodes | list[data.Episodes],
            num_iterations: int, meta_batch_size: int = 32, val_interval: int = 100, num_eval_steps: int | None = None,
            callbacks: list[keras.callbacks.Callback] = (), run_dir: str | os.PathLike | None = None,
            resume: bool = False, overwrite: bool = False, progress: bool = True) -> keras.callbacks.History:
        """Meta-trains θ as the commands do, Keras-style; returns a `keras.callbacks.History` whose
        `history` holds, for each validation of this call, its metrics row (val_post_accuracy,
        val_post_ci95, val_pre_accuracy, train_loss, iteration, seconds).

        Args:
          tasks: a task source, `sample(i, T)` -> meta-batch i of T tasks (`data.EpisodeSampler`). Meta-batch
            i depends on i alone, so a resumed run meets the tasks an uninterrupted one would.
          validation_tasks: the fixed tasks every validation scores: a meta-batch (`data.Episodes`, e.g.
            `sampler.sample(0, 100)`) or a list of them (`sampler.fixed_batches(600, 50)`).
          num_iterations: meta-iterations in all, those of earlier calls on `run_dir` included.
          meta_batch_size: tasks per meta-iteration, T.
          val_interval: validate every this many iterations: a metrics row, a checkpoint, and for the
            callbacks the end of an epoch (a meta-iteration is a batch).
          num_eval_steps: inner steps at validation (default `num_inner_steps`).
          callbacks: Keras callbacks, their model `self.model` (CSVLogger, EarlyStopping on
            'val_post_accuracy', a LambdaCallback, ...); one that stops training stops it at a validation.
          run_dir: the run folder, as a command writes it (hyperparameters.json, metrics.csv, the
            checkpoint of the last validation, tensorboard/, and model.keras at the end); None: a
            temporary one, removed after.
          resume: continue `run_dir` from its checkpoint, exactly as if never stopped (RunError if the
            learner, its settings, the task sources or the schedule are not those it recorded).
          overwrite: replace `run_dir` (without `resume` or this, an existing run folder is an error).
          progress: show a progress bar.

        Arguments are checked before anything is traced or written (ValueError naming the argument).
        """
        return training.fit(self, tasks, validation_tasks, num_iterations, meta_batch_size, val_interval,
                            num_eval_steps, callbacks, run_dir, resume, overwrite, progress)

    def checked(self, episodes):
        """`episodes` (a meta-batch, `data.Episodes`), if its images fit the network and a classifier's labels
        its head; ValueError naming the first part that does not, before anything is traced. (Another kind
        of task, the navigation's goals, is the learner's own business.)"""
        if not isinstance(episodes, data.Episodes) or self.image_shape is None:
            return episodes
        shape = self.image_shape
        num_tasks = None
        for part in ('support', 'query'):
            images, labels = getattr(episodes, f'{part}_images'), getattr(episodes, f'{part}_labels')
            if not _fits(images.shape, shape, batch_axes=2) or images.shape[0] != (num_tasks or images.shape[0]):
                raise ValueError(f'episodes.{part}_images: a meta-batch [T, B, '
                                 f'{", ".join(map(str, shape))}] expected (T tasks of B images the network takes); '
                                 f'got shape {tuple(images.shape)}')
            num_tasks = images.shape[0]
            if tuple(labels.shape[:2]) != tuple(images.shape[:2]):
                raise ValueError(f'episodes.{part}_labels: [T, B] = {tuple(images.shape[:2])} '
                                 f'expected, a label per image; got shape {tuple(labels.shape)}')
            if self.score_name == 'accuracy' and not self.any_n_way and np.max(labels) >= self.net.n_way:
                raise ValueError(f'episodes.{part}_labels: classes 0..{self.net.n_way - 1} '
                                 f'expected (the head has {self.net.n_way} outputs); got {int(np.max(labels))}')
        return episodes

    def steps(self, num_steps):
        """`num_steps`, checked, or `num_inner_steps` if None."""
        if num_steps is None:
            return self.num_inner_steps
        if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 0:
            raise ValueError(f'num_steps: a whole number of inner steps, 0 or more, '
                             f'not {num_steps!r}')
        return int(num_steps)

    def one_task(self, support_images, support_labels, query_images=None):
        """(`data.Episodes` of the one task, T = 1, with no query labels, its N): the arguments of
        `predict` checked against the network, ValueError naming the first that is not as it says."""
        shape = self.image_shape or np.shape(support_images)[1:]
        support_images = _images('support_images', support_images, shape)
        query_images = support_images if query_images is None else _images('query_images', query_images, shape)
        labels = np.asarray(support_labels)
        if labels.shape != support_images.shape[:1] or labels.dtype.kind not in 'iu':
            raise ValueError(f'support_labels: {len(support_images)} integer class labels, one '
                             f'per support image, expected; got {labels.dtype} of shape {labels.shape}')
        n_way = int(labels.max()) + 1 if labels.size else 0
        missing = sorted(set(range(n_way)) - set(labels.tolist()))
        if labels.min(initial=0) < 0 or missing or n_way < 2:
            raise ValueError(f'support_labels: the classes 0..N-1 with N ≥ 2, each at least once '
                             f'expected; got {sorted(set(labels.tolist()))}')
        if n_way != self.net.n_way and not self.any_n_way:
            raise ValueError(f'support_labels: {n_way} classes, but the network\'s head has '
                             f'{self.net.n_way} outputs: a task of {self.net.n_way} classes expected')
        episodes = data.Episodes(support_images[None], labels.astype(np.int32)[None], query_images[None], None)
        return episodes, n_way


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
    any_n_way = True
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
        model = model_for(net, model)
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

    def task_scores(self, episodes, num_steps, n_way):
        del num_steps  # Nothing adapts.
        return self.scores(self.params, episodes, n_way)

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


def model_for(net, model=None):
    """The Keras model a new learner over `net` holds θ in: `model` if given (shared on purpose), else
    `net.keras_model()`, unless that holds another living learner's θ (a `KerasNetwork`'s model is the
    user's own, and two learners would silently train the same weights): ValueError naming `net`."""
    if model is not None:
        return model
    model = net.keras_model()
    owner = _OWNERS.get(model, lambda: None)
    if owner() is not None:
        gc.collect()  # A learner no longer reachable may live on in reference cycles (its compiled steps).
    owner = owner()
    if owner is not None:
        raise ValueError(f'net: its Keras model {model.name!r} already holds the meta-parameters of another '
                         f'learner ({type(owner).__name__}), which would be trained as well; give each learner a '
                         f'model of its own (keras.models.clone_model), or pass model= to share it on purpose')
    return model


def named_groups(groups):
    """{group/name: value} of named groups {group: {name: value}}: how a checkpoint keys a learner's
    own meta-parameters (Meta-SGD's inner_lr/conv1/kernel)."""
    return {f'{group}/{name}': value for group, named in groups.items() for name, value in named.items()}


def _input_shape(model):
    """The shape of one image [H, W, C] (None: any size) the model's first input takes; None if the
    model does not say (a subclassed model called on nothing yet)."""
    try:
        return tuple(model.inputs[0].shape[1:])
    except (AttributeError, IndexError, ValueError):
        return None


def _fits(have, want, batch_axes):
    """Whether an array of shape `have` holds images of shape `want` [H, W, C] (None: any size) behind
    `batch_axes` leading axes ([B] or [T, B])."""
    return len(have) == len(want) + batch_axes and all(
        size in (None, got) for size, got in zip(want, have[batch_axes:]))


def _images(argument, images, shape):
    """`images` as float32 [B, *shape] (None in `shape`: any size), B ≥ 1; ValueError naming `argument`
    otherwise (integers too: pixels of 0..255 where the network was trained on 0..1 would be a silent error)."""
    array = np.asarray(images)
    if array.dtype.kind != 'f' or not _fits(array.shape, shape, batch_axes=1) or not len(array):
        raise ValueError(f'{argument}: float images [B, {", ".join(map(str, shape))}] (the network\'s '
                         f'input) expected; got {array.dtype} of shape {array.shape}')
    return array.astype(np.float32)


def _as_tensors(episodes):
    return type(episodes)(*(tf.convert_to_tensor(x) for x in episodes))
