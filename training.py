"""The meta-training loop shared by every algorithm: evaluate, checkpoint, log, resume.

A learner is any object with
    meta_train_step(episodes) -> dict name -> [T] per-task metrics (NumPy)
    evaluate(episodes, num_steps) -> the same, without changing the learner
    state_variables() -> every variable a checkpoint must hold
and the metrics 'query_pre_loss', 'query_post_loss', 'query_pre_accuracy',
'query_post_accuracy'. `maml.MAML` is one.
"""

import dataclasses
import math
import time

import numpy as np
import tensorflow as tf
from absl import logging
from tqdm import tqdm

import results

METRIC_COLUMNS = [
    'iteration', 'seconds',
    'train_pre_loss', 'train_post_loss', 'train_pre_accuracy', 'train_post_accuracy',
    'val_pre_accuracy', 'val_pre_ci95', 'val_post_accuracy', 'val_post_ci95',
]


class TrainingError(RuntimeError):
    """Training cannot go on (for instance the loss became NaN); the message says why."""


@dataclasses.dataclass(frozen=True)
class Schedule:
    """How long to train and how often to validate.

    num_iterations: meta-iterations in total.
    meta_batch_size: tasks per meta-iteration (T).
    val_interval: validate, log a metrics row and checkpoint every this many iterations.
    num_eval_inner_steps: inner steps when evaluating (may differ from training).
    """
    num_iterations: int
    meta_batch_size: int
    val_interval: int
    num_eval_inner_steps: int


def evaluate(learner, batches, num_steps):
    """Per-task metrics of `learner` on fixed evaluation `batches`, concatenated over tasks."""
    per_batch = [learner.evaluate(batch, num_steps) for batch in batches]
    return {name: np.concatenate([m[name] for m in per_batch]) for name in per_batch[0]}


def train(learner, train_sampler, val_batches, run, schedule, progress=True):
    """Meta-trains `learner`, resuming from the run's checkpoint if there is one.

    Meta-batch i is `train_sampler.sample(i, T)`, so a resumed run sees the same
    tasks as an uninterrupted one. Every `val_interval` iterations the fixed
    validation tasks are evaluated, a row is added to metrics.csv and the state
    is checkpointed (metrics first: a run killed in between redoes that row).

    Returns:
      The metrics rows, one per validation.
    """
    variables = learner.state_variables()
    start = run.restore_checkpoint(variables)
    rows = [row for row in run.read_metrics() if row['iteration'] <= start]
    if start:
        logging.info('Resuming %s from iteration %d', run.path, start)
    elapsed = rows[-1]['seconds'] if rows else 0.0
    writer = tf.summary.create_file_writer(run.file('tensorboard'))

    def validate(iteration, train_metrics):
        val = evaluate(learner, val_batches, schedule.num_eval_inner_steps)
        pre, pre_ci = results.confidence_interval(val['query_pre_accuracy'])
        post, post_ci = results.confidence_interval(val['query_post_accuracy'])
        row = {'iteration': iteration, 'seconds': elapsed + time.perf_counter() - clock,
               'val_pre_accuracy': pre, 'val_pre_ci95': pre_ci,
               'val_post_accuracy': post, 'val_post_ci95': post_ci}
        for name in ('pre_loss', 'post_loss', 'pre_accuracy', 'post_accuracy'):
            row[f'train_{name}'] = float(np.mean(train_metrics[f'query_{name}'])) if train_metrics else math.nan
        rows.append(row)
        run.write_metrics(rows, METRIC_COLUMNS)
        run.save_checkpoint(variables, iteration)
        with writer.as_default(step=iteration):
            for name in ('val_pre_accuracy', 'val_post_accuracy'):
                tf.summary.scalar(name, row[name])
        return row

    clock = time.perf_counter()
    last = rows[-1] if rows else validate(0, None)
    bar = tqdm(total=schedule.num_iterations, initial=start, disable=not progress,
               desc='meta-training', unit='it', dynamic_ncols=True)
    interval = []
    for iteration in range(start + 1, schedule.num_iterations + 1):
        metrics = learner.meta_train_step(train_sampler.sample(iteration, schedule.meta_batch_size))
        meta_loss = float(np.mean(metrics['query_post_loss']))
        if not math.isfinite(meta_loss):
            raise TrainingError(
                f'the meta-loss became {meta_loss} at iteration {iteration}; the last good '
                f'checkpoint (iteration {int(last["iteration"])}) is kept in {run.path}. '
                'Try a smaller --meta_lr or --inner_lr.')
        interval.append(metrics)
        with writer.as_default(step=iteration):
            for name, values in metrics.items():
                tf.summary.scalar(f'train/{name}', float(np.mean(values)))
        if iteration % schedule.val_interval == 0 or iteration == schedule.num_iterations:
            merged = {name: np.concatenate([m[name] for m in interval]) for name in metrics}
            last = validate(iteration, merged)
            interval = []
        bar.update(1)
        bar.set_postfix(loss=f'{meta_loss:.3f}',
                        train=f'{np.mean(metrics["query_post_accuracy"]):.3f}',
                        val=f'{last["val_post_accuracy"]:.3f}')
    bar.close()
    writer.flush()
    return rows
