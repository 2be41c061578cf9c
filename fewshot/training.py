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

import dataclasses
import datetime
import math
import os
import resource
import time

import numpy as np
import tensorflow as tf
from absl import logging
from tensorboard.plugins.hparams import api as hparams
from tqdm import tqdm

from fewshot import distribution, results
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


def train(learner, train_sampler, val_batches, run, schedule, progress=True, cluster=distribution.Cluster()):
    """Meta-trains `learner`, resuming from the run's checkpoint if there is one.

    Meta-batch i is `train_sampler.sample(i, T)`, so a resumed run sees the same
    tasks as an uninterrupted one. Every `val_interval` iterations the fixed
    validation tasks are evaluated, a row is added to metrics.csv (with the mean
    of each training metric since the previous row, as train_<name>) and the
    state is checkpointed (metrics first: a run killed in between redoes that row).

    On a `distribution.Cluster` of several processes, each runs this loop in step with the others
    (every meta-step and evaluation is a collective operation) and starts where the chief's run
    folder says, from the chief's weights; only the chief's `run` is the run's folder.

    Returns:
      The metrics rows, one per validation.
    """
    loop = _Loop(learner, val_batches, run, schedule, cluster)
    last = loop.rows[-1] if loop.rows else loop.validate(0, None)
    bar = tqdm(total=schedule.num_iterations, initial=loop.start, disable=not progress,
               desc='meta-training', unit='it', dynamic_ncols=True)
    interval = []
    for iteration in range(loop.start + 1, schedule.num_iterations + 1):
        if last['seconds'] >= schedule.time_budget_seconds:
            logging.info('Time budget of %.1f minutes spent at iteration %d', schedule.time_budget_seconds / 60,
                         iteration - 1)
            break
        began = time.perf_counter()
        metrics = learner.meta_train_step(train_sampler.sample(iteration, schedule.meta_batch_size))
        means = loop.record_step(iteration, metrics, time.perf_counter() - began, last)
        interval.append(metrics)
        if iteration % schedule.val_interval == 0 or iteration == schedule.num_iterations:
            last = loop.validate(iteration, {name: np.concatenate([m[name] for m in interval]) for name in metrics})
            interval = []
        bar.update(1)
        bar.set_postfix(loss=f'{means[learner.train_metrics[0]]:.3f}', val=f'{last[f"val_post_{loop.score}"]:.3f}',
                        **{name: f'{means[name]:.3f}' for name in learner.train_metrics[1:2]})
    bar.close()
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
