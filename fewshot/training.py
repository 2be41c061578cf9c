"""The meta-training loop shared by every algorithm: evaluate, checkpoint, log, resume.

A learner is any object with
    train_metrics: names of the metrics its training step returns; the first is its loss
    meta_train_step(batch) -> dict name -> NumPy array of values (per task, or per example)
    score_name: what its evaluation scores a task by, 'accuracy' (or a regressor's 'mse')
    evaluate(episodes, num_steps) -> per-task 'query_pre_<score_name>' and 'query_post_<score_name>'
        (and possibly more), adapting to each task without changing the learner
    state_variables() -> dict name -> every variable a checkpoint must hold, by a name that
        does not change between processes (see `results.named_variables`)
    summaries() -> dict tag -> scalar for TensorBoard at each validation (optional; `learner.Learner`'s)
`fewshot.learners.maml.MAML` is one; a pretrained classifier scored by transfer is another.
"""

import contextlib
import dataclasses
import datetime
import math
import os
import resource
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging
from tensorboard.plugins.hparams import api as hparams
from tqdm import tqdm

from fewshot import data, distribution, results
from fewshot.errors import SetupError, TrainingError, named


def peak_memory_gb():
    """The peak resident memory of this process, in GB: since `reset_peak_memory` where Linux allows
    it (VmHWM), else since the process started."""
    try:
        with open('/proc/self/status') as f:
            return next(int(line.split()[1]) for line in f if line.startswith('VmHWM:')) / 1e6  # kB.
    except (OSError, StopIteration, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def reset_peak_memory():
    """Starts `peak_memory_gb` afresh from the memory held now (so that, after the data is loaded, it
    measures training and not preprocessing); False where the system cannot (then it keeps counting
    from the start)."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')  # Linux: reset the peak resident set size to the current one.
        return True
    except OSError:
        return False


@dataclasses.dataclass(frozen=True)
class Schedule:
    """How long to train and how often to validate.

    num_iterations: meta-iterations in total.
    meta_batch_size: tasks per meta-iteration (T).
    val_interval: validate, log a metrics row and checkpoint every this many iterations.
    num_eval_inner_steps: inner steps when evaluating (may differ from training).
    time_budget_seconds: training stops at the first validation after this much of it, even
      before `num_iterations`.
    keep_checkpoint_at: a validation score (post-adaptation): the checkpoint of the first validation
      that reaches it is kept beside the run's (`keep_first_reaching`); None: none is kept.
    """
    num_iterations: int
    meta_batch_size: int
    val_interval: int
    num_eval_inner_steps: int
    time_budget_seconds: float = math.inf
    keep_checkpoint_at: float = None


def tasks_per_chunk_within(learner, episodes, budget_gb, probe=4):
    """The most tasks per chunk (`Learner.tasks_per_chunk`) of the meta-batch `episodes` whose meta-step
    of `learner` fits in `budget_gb` GB for the whole process: the meta-gradient of `probe` of its tasks
    is computed once to measure the memory a task takes (TensorFlow's allocator peak), and what the
    process already holds (its peak so far) is set aside. SetupError if not even one task fits."""
    episodes = type(episodes)(*(tf.convert_to_tensor(x) for x in episodes))
    num_tasks = episodes.support_labels.shape[0]
    probe = min(probe, num_tasks)
    tf.config.experimental.reset_memory_stats('CPU:0')
    allocated = tf.config.experimental.get_memory_info('CPU:0')['current']
    learner._meta_direction(type(episodes)(*(x[:probe] for x in episodes)), **learner.train_step_options())
    # Tiny networks allocate too little for the allocator to see: 1 kB at least.
    per_task = max(tf.config.experimental.get_memory_info('CPU:0')['peak'] - allocated, 1e3) / probe / 1e9
    held_gb = peak_memory_gb()
    if budget_gb - held_gb < per_task:
        raise SetupError(f'{named("memory_budget_gb")} {budget_gb:g}: this process already holds {held_gb:.2f} GB '
                         f'and a task of the meta-step needs {per_task:.3f} GB more; give a larger budget')
    chosen = min(num_tasks, int((budget_gb - held_gb) / per_task))
    chosen = -(-num_tasks // -(-num_tasks // chosen))  # As many chunks, as even as they can be.
    logging.info('%s %g: a task takes %.3f GB (measured on %d), %.2f GB is held: %d of the %d tasks per chunk',
                 named('memory_budget_gb'), budget_gb, per_task, probe, held_gb, chosen, num_tasks)
    return chosen


def keep_first_reaching(run, rows, score, target):
    """If the last validation of `rows` (the run's, in order) is its first whose post-adaptation `score`
    reaches `target` (an error, 'mse', at or below it), keeps a copy of the checkpoint just saved,
    results.REACHED_CHECKPOINT_FILE, and then results.REACHED_FILE (its iteration, score and the target),
    so that how soon the run reached a number can be meta-tested later, at that point. A run that reached
    it before, kept or not (resumed with a target it had already reached), keeps no later one."""
    def reached(row):
        value = float(row[f'val_post_{score}'])
        return value <= target if score == 'mse' else value >= target
    row = rows[-1]
    value = row[f'val_post_{score}']
    if not reached(row) or any(map(reached, rows[:-1])) or os.path.exists(run.file(results.REACHED_FILE)):
        return
    with open(run.file(results.CHECKPOINT_FILE), 'rb') as f:
        checkpoint = f.read()
    results.atomic_write(run.file(results.REACHED_CHECKPOINT_FILE), lambda f: f.write(checkpoint))
    results.write_json(run.file(results.REACHED_FILE), {'iteration': int(row['iteration']), f'val_post_{score}': value,
                                                        'val_post_ci95': row['val_post_ci95'], 'target': target})
    logging.info('Iteration %d: validation %s reached %g; its checkpoint is kept in %s', row['iteration'], score,
                 target, run.file(results.REACHED_CHECKPOINT_FILE))


def evaluate(learner, batches, num_steps):
    """Per-task metrics of `learner` on fixed evaluation `batches`, concatenated over tasks."""
    per_batch = [learner.evaluate(batch, num_steps) for batch in batches]
    return {name: np.concatenate([m[name] for m in per_batch]) for name in per_batch[0]}


def finiteness_check(variables):
    """A compiled function () -> True if every floating-point value of `variables` is finite."""
    floating = [v for v in variables if v.dtype in ('float16', 'bfloat16', 'float32', 'float64')]

    @tf.function
    def all_finite():
        return tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in floating])
    return lambda: bool(all_finite())


def chief_resume_point(cluster, start, rows, columns):
    """(start, rows) of `RunFolder.resume_point` as the chief read them, on every process of `cluster`:
    another process has no run folder, and learns the iteration and the last row (for the time
    budget) from the chief."""
    if cluster.num_workers == 1:
        return start, rows
    last = [float(rows[-1].get(column, math.nan)) if rows else math.nan for column in columns]
    start, has_rows, last = cluster.broadcast([np.int64(start), np.int64(bool(rows)), np.array(last)])
    if cluster.is_chief:
        return int(start), rows
    return int(start), ([dict(zip(columns, last.tolist()))] if has_rows else [])


def tensorboard_writer(run, start):
    """The run's TensorBoard writer; a new run also records its flags (hyperparameters.json) as hparams."""
    writer = tf.summary.create_file_writer(run.file('tensorboard'))
    recorded = run.file(results.HYPERPARAMETERS_FILE)
    if not start and os.path.exists(recorded):
        flags = results.read_hyperparameters(run.path)['flags']
        with writer.as_default():
            hparams.hparams({name: value if isinstance(value, (bool, int, float, str)) else str(value)
                             for name, value in flags.items() if value is not None})
    return writer


def write_test_summary(run, summary):
    """The meta-test's figures of `summary` (test_post_accuracy, test_post_ci95, ...; summary.json's) as
    TensorBoard scalars test/<name> at the run's last iteration: its HParams table then sorts runs by them."""
    writer = tf.summary.create_file_writer(run.file('tensorboard'))
    with writer.as_default(step=int(summary['iterations'])):
        for name, value in summary.items():
            if name.startswith('test_') and isinstance(value, (int, float)) and name != 'test_tasks':
                tf.summary.scalar(f'test/{name[len("test_"):]}', value)
    writer.close()


def train(learner, train_sampler, val_batches, run, schedule, progress=True, cluster=distribution.Cluster(),
          callbacks=None):
    """Meta-trains `learner`, resuming from the run's checkpoint if there is one.

    Meta-batch i is `train_sampler.sample(i, T)`, so a resumed run sees the same
    tasks as an uninterrupted one. Every `val_interval` iterations the fixed
    validation tasks are evaluated, a row is added to metrics.csv (with the mean
    of each training metric since the previous row, as train_<name>) and the
    state is checkpointed (metrics first: a run killed in between redoes that row).

    On a `distribution.Cluster` of several processes, each runs this loop in step with the others
    (every meta-step and evaluation is a collective operation) and starts where the chief's run
    folder says, from the chief's weights; only the chief's `run` is the run's folder.

    callbacks: a `keras.callbacks.CallbackList` (its model the learner's), told as Keras's `fit` tells
      it, a meta-iteration being a batch and the iterations up to a validation an epoch: epoch e ends
      with the validation of metrics row e, whose values are its logs (val_post_accuracy, ...); a
      callback that sets the model's `stop_training` (EarlyStopping) stops training there.

    Returns:
      The metrics rows, one per validation.
    """
    callbacks = callbacks or keras.callbacks.CallbackList()
    loop = _Loop(learner, val_batches, run, schedule, cluster)
    last = loop.rows[-1] if loop.rows else loop.validate(0, None)
    callbacks.on_train_begin()
    callbacks.on_epoch_begin(len(loop.rows))
    bar = tqdm(total=schedule.num_iterations, initial=loop.start, disable=not progress,
               desc='meta-training', unit='it', dynamic_ncols=True)
    interval = []
    for iteration in range(loop.start + 1, schedule.num_iterations + 1):
        if last['seconds'] >= schedule.time_budget_seconds:
            logging.info('Time budget of %.1f minutes spent at iteration %d', schedule.time_budget_seconds / 60,
                         iteration - 1)
            break
        began = time.perf_counter()
        callbacks.on_train_batch_begin(iteration)
        metrics = learner.meta_train_step(train_sampler.sample(iteration, schedule.meta_batch_size))
        means = loop.record_step(iteration, metrics, time.perf_counter() - began, last)
        callbacks.on_train_batch_end(iteration, means)
        interval.append(metrics)
        bar.update(1)
        if iteration % schedule.val_interval == 0 or iteration == schedule.num_iterations:
            last = loop.validate(iteration, {name: np.concatenate([m[name] for m in interval]) for name in metrics})
            interval = []
            callbacks.on_epoch_end(len(loop.rows) - 1, dict(last))
            if getattr(getattr(callbacks, 'model', None), 'stop_training', False):
                logging.info('Stopped by a callback at iteration %d', iteration)
                break
            callbacks.on_epoch_begin(len(loop.rows))
        bar.set_postfix(loss=f'{means[learner.train_metrics[0]]:.3f}', val=f'{last[f"val_post_{loop.score}"]:.3f}',
                        **{name: f'{means[name]:.3f}' for name in learner.train_metrics[1:2]})
    bar.close()
    callbacks.on_train_end(dict(last))
    loop.writer.flush()
    return loop.rows


class _Loop:
    """The state of `train` and its steps: resuming, a meta-iteration's record, a validation."""

    def __init__(self, learner, val_batches, run, schedule, cluster):
        """Restores the run's checkpoint (the chief's, on a cluster) into the learner's variables."""
        self.learner, self.val_batches, self.run, self.schedule, self.cluster = (learner, val_batches, run, schedule,
                                                                                 cluster)
        self.score = learner.score_name
        self.columns = list(results.metrics_columns(self.score)) + [f'train_{n}' for n in learner.train_metrics]
        self.variables = learner.state_variables()
        start, rows = run.resume_point()
        run.restore_checkpoint(self.variables)
        self.start, self.rows = chief_resume_point(cluster, start, rows, self.columns)
        cluster.broadcast_variables(self.variables)
        self.state_is_finite = finiteness_check(list(self.variables.values()))
        if self.start:
            logging.info('Resuming %s from iteration %d', run.path, self.start)
        self.elapsed = self.rows[-1]['seconds'] if self.rows else 0.0  # Training seconds of earlier sessions.
        self.writer = tensorboard_writer(run, self.start)
        self.clock = time.perf_counter()

    def record_step(self, iteration, metrics, seconds, last):
        """The means of a meta-iteration's per-task metrics, written to TensorBoard; TrainingError if they or
        the state are no longer finite (`last`: the last validation's row, whose checkpoint is kept)."""
        means = {name: float(np.mean(values)) for name, values in metrics.items()}
        # NaN weights can give a finite loss (a ReLU passes NaN as 0 on some kernels): check both.
        broken = [name for name, value in means.items() if not math.isfinite(value)]
        if broken or not self.state_is_finite():
            what = (f'the training metrics {", ".join(broken)}' if broken
                    else 'the weights or the optimizer state')
            if not self.start and last['iteration'] == 0 and self.run.discard():  # Only the initial weights saved.
                raise TrainingError(f'{what} became NaN or infinite at iteration {iteration}; stopped there, '
                                    f'before anything worth resuming, so the new run folder {self.run.path} was '
                                    'removed. Try smaller learning rates.')
            raise TrainingError(
                f'{what} became NaN or infinite at iteration {iteration}; stopped there, and the last '
                f'finite checkpoint (iteration {int(last["iteration"])}) is kept in {self.run.path}. '
                'Try smaller learning rates.')
        with self.writer.as_default(step=iteration):
            for name, value in means.items():
                tf.summary.scalar(f'train/{name}', value)
            tf.summary.scalar('seconds_per_iteration', seconds)  # The task draw and the meta-step.
        return means

    def validate(self, iteration, train_metrics):
        """Evaluates the validation tasks, appends and writes the metrics row (with the means of
        `train_metrics`, the per-task metrics since the last row), checkpoints; returns the row."""
        score = self.score
        val = evaluate(self.learner, self.val_batches, self.schedule.num_eval_inner_steps)
        pre, pre_ci = results.confidence_interval(val[f'query_pre_{score}'])
        post, post_ci = results.confidence_interval(val[f'query_post_{score}'])
        # The chief's clock: every process must make the same time-budget decision.
        seconds, = self.cluster.broadcast([self.elapsed + time.perf_counter() - self.clock])
        row = {'iteration': iteration, 'seconds': float(seconds),
               f'val_pre_{score}': pre, 'val_pre_ci95': pre_ci,
               f'val_post_{score}': post, 'val_post_ci95': post_ci}
        for name in self.learner.train_metrics:
            row[f'train_{name}'] = float(np.mean(train_metrics[name])) if train_metrics else math.nan
        self.rows.append(row)
        self.run.write_metrics(self.rows, self.columns)
        self.run.save_checkpoint(self.variables, iteration)
        if self.schedule.keep_checkpoint_at is not None and self.cluster.is_chief:
            keep_first_reaching(self.run, self.rows, score, self.schedule.keep_checkpoint_at)
        with self.writer.as_default(step=iteration):
            for when in ('pre', 'post'):
                tf.summary.scalar(f'validation/{when}_{score}', row[f'val_{when}_{score}'])
                tf.summary.scalar(f'validation/{when}_ci95', row[f'val_{when}_ci95'])
            for tag, value in getattr(self.learner, 'summaries', dict)().items():
                tf.summary.scalar(tag, value)
        self.log_progress(row)
        return row

    def log_progress(self, row):
        """A log line per validation with the time left at this session's pace: runs of hours are
        often watched through their log rather than the progress bar."""
        done = row['iteration'] - self.start
        if done <= 0:
            return
        pace = (row['seconds'] - self.elapsed) / done
        left = datetime.timedelta(seconds=round(pace * (self.schedule.num_iterations - row['iteration'])))
        value, ci = row[f'val_post_{self.score}'], row['val_post_ci95']
        shown = f'{100 * value:.2f}% +- {100 * ci:.2f}%' if self.score == 'accuracy' else f'{value:.4g} +- {ci:.2g}'
        logging.info('Iteration %d of %d: validation %s %s; %.3f s per iteration, %s left',
                     row['iteration'], self.schedule.num_iterations, self.score, shown, pace, left)


def fit(learner, tasks, validation_tasks, num_iterations, meta_batch_size, val_interval, num_eval_steps, callbacks,
        run_dir, resume, overwrite, progress):
    """`Learner.fit` (its docstring says what each argument is): the arguments checked, the run folder
    made or resumed as a command's (`results.RunFolder`), `train` with the callbacks and a History."""
    num_eval_steps = learner.num_inner_steps if num_eval_steps is None else num_eval_steps
    val_batches = _checked_fit_arguments(learner, tasks, validation_tasks, num_iterations, meta_batch_size,
                                         val_interval, num_eval_steps, callbacks, run_dir)
    history = keras.callbacks.History()
    callback_list = keras.callbacks.CallbackList([*callbacks, history], model=learner.model)
    callback_list.set_params({'epochs': math.ceil(num_iterations / val_interval), 'steps': val_interval,
                              'verbose': 0})
    learner.model.stop_training = False  # As Keras's fit: a callback's stop of an earlier call is over.
    # Meta-batch 1's tasks and the validation tasks identify the task sources: a run resumes only on them.
    recorded = {'learner': type(learner).__name__, 'meta_batch_size': meta_batch_size, 'val_interval': val_interval,
                'num_eval_steps': num_eval_steps, 'num_iterations': num_iterations,
                'training_tasks': data.tasks_checksum([tasks.sample(1, meta_batch_size)]),
                'validation_tasks': data.tasks_checksum(val_batches),
                **{f'learner.{name}': value for name, value in sorted(vars(learner).items())
                   if isinstance(value, (bool, int, float, str)) and not name.startswith('_')}}
    with tempfile.TemporaryDirectory() if run_dir is None else contextlib.nullcontext() as scratch:
        folder = os.path.join(scratch, 'run') if run_dir is None else os.fspath(run_dir)
        run = results.RunFolder(os.path.dirname(folder) or '.', os.path.basename(folder), resume=resume,
                                overwrite=overwrite, create=False)
        run.check_algorithm(type(learner).__name__)
        with run.started():
            run.write_hyperparameters(recorded, {'algorithm': type(learner).__name__, 'command': 'Learner.fit'})
            train(learner, tasks, val_batches, run, Schedule(num_iterations, meta_batch_size, val_interval,
                                                             num_eval_steps), progress, callbacks=callback_list)
        learner.save_model(run.file(results.MODEL_FILE))
    return history


def _checked_fit_arguments(learner, tasks, validation_tasks, num_iterations, meta_batch_size, val_interval,
                           num_eval_steps, callbacks, run_dir):
    """The validation meta-batches [Episodes], if every argument of `fit` is as its docstring says;
    else ValueError naming the first that is not, before anything is traced or written."""
    for name, value, least in (('num_iterations', num_iterations, 1), ('meta_batch_size', meta_batch_size, 1),
                               ('val_interval', val_interval, 1), ('num_eval_steps', num_eval_steps, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise ValueError(f'{name}: a whole number, {least} or more, expected; got {value!r}')
    if not callable(getattr(tasks, 'sample', None)):
        raise ValueError(f'tasks: a task source, sample(i, T) -> meta-batch i of T tasks (data.EpisodeSampler), '
                         f'expected; got {type(tasks).__name__}')
    val_batches = [validation_tasks] if isinstance(validation_tasks, data.Episodes) else validation_tasks
    if not isinstance(val_batches, (list, tuple)) or not val_batches or not all(
            isinstance(batch, data.Episodes) for batch in val_batches):
        raise ValueError('validation_tasks: a meta-batch (data.Episodes, e.g. sampler.sample(0, 100)) or a list '
                         f'of them expected; got {type(validation_tasks).__name__}')
    for batch in val_batches:
        learner.checked(batch)
    if not isinstance(callbacks, (list, tuple)) or not all(isinstance(c, keras.callbacks.Callback) for c in callbacks):
        raise ValueError(f'callbacks: a list of Keras callbacks (keras.callbacks.Callback) expected; got '
                         f'{callbacks!r}')
    if run_dir is not None and not isinstance(run_dir, (str, os.PathLike)):
        raise ValueError(f'run_dir: a folder path expected; got {type(run_dir).__name__}')
    return list(val_batches)
