"""One command, one run: tasks -> learner -> meta-training -> meta-test -> results folder.

Every learner command (maml.py, maml_plusplus.py, ... through commands.run; maml_transfer.py) and
every learner of a study (sine.py, navigation.py) hands `run` what differs: its flags, a function
building its learner, where its tasks come from (`image_tasks` for the image commands) and how it
is tested (`accuracy_test` for them). The run folder, the recorded flags and checksums, resuming,
training, validation and the summary are `run`'s, the same for all.
"""

import atexit
import dataclasses
import shutil
import sys
import tempfile
from typing import Callable, NamedTuple, Sequence

import keras
import numpy as np
from absl import logging

from fewshot import data, datasets, machine, network, plotting, results, training
from fewshot.cli import config, strategy
from fewshot.errors import FlagError

FLAGS = config.FLAGS
# Settings of how a run computes, not of what: a resumed run takes each group from its
# hyperparameters.json unless the command line gives one of the group (see `run_settings`).
RESTORED_ON_RESUME = (('precision',), ('tasks_per_chunk', 'memory_budget_gb'))


def load_splits():
    """The class splits of --dataset (Omniglot's characters as the flags choose them, a named dataset's
    standard split, or a folder's classes), and the data's checksum."""
    if FLAGS.dataset in config.NAMED_DATASETS:
        dataset = datasets.load(FLAGS.dataset, FLAGS.dataset_dir, FLAGS.cache_dir)
        if not len(dataset.splits.train):
            raise FlagError(f'--dataset {FLAGS.dataset}: its classes are all meta-test (too few to meta-train on); '
                            f'meta-train on another dataset and meta-test on it with --test_dataset {FLAGS.dataset}')
        return dataset.splits, dataset.checksum
    if FLAGS.dataset.startswith('folder:'):
        folder = FLAGS.dataset.removeprefix('folder:')
        check_fits(sum(map(len, data.image_folder_files(folder)[1])), 4 * FLAGS.image_size ** 2 * FLAGS.channels,
                   f'--image_size {FLAGS.image_size}', 'images')
        names, classes = data.load_image_folder(folder, FLAGS.image_size, FLAGS.channels)
        data.check_class_sizes([len(images) for images in classes], FLAGS.k_shot, FLAGS.num_query, folder, names)
        splits = data.split_classes(classes, FLAGS.num_train_classes, FLAGS.num_val_classes, FLAGS.split_seed)
        return splits, data.classes_checksum(names, classes)
    omniglot = data.load_omniglot(FLAGS.data_dir or None, FLAGS.cache_dir)
    splits = data.make_splits(omniglot, FLAGS.split, FLAGS.num_train_classes, FLAGS.num_val_classes,
                              FLAGS.split_seed, FLAGS.rotations)
    return splits, omniglot.checksum


def image_shape():
    """(H, W, channels) of --dataset's images as the network takes them."""
    if FLAGS.dataset in config.NAMED_DATASETS:
        return datasets.source(FLAGS.dataset).image_shape
    return FLAGS.image_size, FLAGS.image_size, FLAGS.channels


def evaluation_batches(images, split_name, num_tasks, offset, n_way=None, k_shot=None, num_query=None):
    """The fixed evaluation tasks of a split: the same for every script given --eval_seed.

    offset: 0 for validation, 1 for test, so the two never share a task stream.
    n_way, k_shot, num_query: the task shape (default: the flags).
    """
    sampler = episode_sampler(images, n_way or FLAGS.n_way, k_shot or FLAGS.k_shot, num_query or FLAGS.num_query,
                              FLAGS.eval_seed + offset, split_name, FLAGS.task_rotations == 'all')
    return fixed_batches(sampler, num_tasks, ('--num_val_tasks', '--num_test_tasks')[offset])


def fixed_batches(sampler, num_tasks, flag, batch_size=None):
    """`sampler.fixed_batches(num_tasks, batch_size)` (default --meta_batch_size); first FlagError naming
    `flag` (the flag that chose `num_tasks`) if they cannot fit in the memory this machine has free:
    refused before they are drawn, not found by the system killing the process."""
    check_fits(num_tasks, sum(np.asarray(field).nbytes for field in sampler.sample(0, 1)), f'{flag} {num_tasks}',
               'tasks')
    return sampler.fixed_batches(num_tasks, batch_size or FLAGS.meta_batch_size)


def check_fits(count, item_bytes, flag, what):
    """FlagError naming `flag` (e.g. '--num_val_tasks 100000') if `count` items of `item_bytes` bytes
    each cannot fit twice (the items, and what they are stacked into) in the memory this machine has free."""
    needed, available = 2 * count * item_bytes, machine.available_memory_bytes()
    if available is not None and needed > available:
        raise FlagError(f'{flag}: {count:,} {what} would take {needed / 1e9:.3g} GB of memory, and this machine has '
                        f'{available / 1e9:.3g} GB free')


def episode_stream(splits, n_way=None, n_way_flag='--n_way'):
    """The meta-training task stream given by the flags, of `n_way` classes per task (default
    --n_way; n_way_flag: the flag that chose it)."""
    return episode_sampler(splits.train, n_way or FLAGS.n_way, FLAGS.k_shot, FLAGS.num_query, FLAGS.seed,
                           'meta-train', FLAGS.task_rotations != 'none', n_way_flag)


def episode_sampler(images, n_way, k_shot, num_query, seed, split_name, rotate, n_way_flag='--n_way'):
    """A `data.EpisodeSampler`, whose task shape is checked first in the flags' terms."""
    data.check_task_shape(len(images), n_way, k_shot, num_query, split_name, data.images_per_class(images),
                          (n_way_flag, '--k_shot', '--num_query'))
    return data.EpisodeSampler(images, n_way, k_shot, num_query, seed, split_name, rotate,
                               rotate_per_task=FLAGS.task_rotations_per == 'task')


class Tasks(NamedTuple):
    """What a run trains and is scored on.

    val, test: the fixed validation and test meta-batches (the same for every run given --eval_seed).
    stream: the meta-training task stream (a `data.TaskStream`).
    checksum: of the data the tasks come from; a resumed run must have the same.
    facts: recorded beside it in hyperparameters.json (the image tasks' classes per split).
    splits: the image tasks' `data.Splits` (given to `build` and `schedule_for`), else None.
    cross_domain: a `CrossDomain` meta-test for each --test_dataset.
    """
    val: list
    test: list
    stream: object
    checksum: str
    facts: dict
    splits: object = None
    cross_domain: tuple = ()


class CrossDomain(NamedTuple):
    """Another dataset's meta-test (--test_dataset): its fixed `batches`, their task shape, and the data's
    checksum."""
    dataset: str
    n_way: int
    k_shot: int
    num_query: int
    batches: list
    checksum: str

    @property
    def file(self):
        """Where a run folder keeps its result."""
        return f'meta_test_{self.dataset}_{self.n_way}way{self.k_shot}shot.json'


def cross_domain_tasks():
    """A `CrossDomain` meta-test for each --test_dataset, with --test_n_way, --test_k_shot and --test_num_query:
    tasks of the dataset's meta-test classes, drawn as the in-domain test's (--num_test_tasks, --eval_seed + 1),
    so every run of that task shape is scored on the same ones."""
    tests = []
    for name in FLAGS.test_dataset:
        dataset = datasets.load(name, FLAGS.test_dataset_dir, FLAGS.cache_dir)
        if tuple(dataset.image_shape) != tuple(image_shape()):
            raise FlagError(f'--test_dataset {name}: its images are {"x".join(map(str, dataset.image_shape))}; the '
                            f'network takes {"x".join(map(str, image_shape()))} (--dataset {FLAGS.dataset})')
        n_way, k_shot = FLAGS.test_n_way or FLAGS.n_way, FLAGS.test_k_shot or FLAGS.k_shot
        num_query = FLAGS.test_num_query or FLAGS.num_query
        sampler = episode_sampler(dataset.splits.test, n_way, k_shot, num_query, FLAGS.eval_seed + 1,
                                  f'{name} meta-test', False, '--test_n_way')
        tests.append(CrossDomain(name, n_way, k_shot, num_query,
                                 fixed_batches(sampler, FLAGS.num_test_tasks, '--num_test_tasks'), dataset.checksum))
    return tuple(tests)


def check_cross_domain(learner, cross_domain, algorithm):
    """FlagError, before training, if `learner` cannot score the `cross_domain` meta-tests' tasks: another N
    than its network's needs a learner without a head of N outputs (`learner.MetricLearner.test_n_way`)."""
    for test in cross_domain:
        if test.n_way != learner.net.n_way and not hasattr(learner, 'test_n_way'):
            raise FlagError(f'--test_n_way {test.n_way}: {algorithm} adapts a head of {learner.net.n_way} outputs, '
                            f'so it meta-tests {learner.net.n_way}-way tasks only')


def cross_domain_test(learner, cross_domain, folder, num_eval_inner_steps):
    """Meta-tests `learner` on `cross_domain`'s tasks and writes the result into the run folder; returns
    what to print."""
    if cross_domain.n_way != learner.net.n_way:
        learner.test_n_way = cross_domain.n_way
    try:
        test = training.evaluate(learner, cross_domain.batches, num_eval_inner_steps)
    finally:
        if hasattr(learner, 'test_n_way'):
            learner.test_n_way = None
    result = {'test_dataset': cross_domain.dataset, 'n_way': cross_domain.n_way, 'k_shot': cross_domain.k_shot,
              'num_query': cross_domain.num_query, 'test_tasks': len(test['query_post_accuracy']),
              'data_checksum': cross_domain.checksum, 'task_checksum': data.tasks_checksum(cross_domain.batches)}
    for when in ('pre', 'post'):
        result[f'test_{when}_accuracy'], result[f'test_{when}_ci95'] = results.confidence_interval(
            test[f'query_{when}_accuracy'])
    results.write_json(folder.file(cross_domain.file), result)
    return (f'{cross_domain.dataset} {cross_domain.n_way}-way {cross_domain.k_shot}-shot meta-test accuracy '
            f'{result["test_post_accuracy"]:.2%} ± {result["test_post_ci95"]:.2%} over {result["test_tasks"]} tasks '
            f'(in {folder.file(cross_domain.file)})')


def image_tasks(training_stream=episode_stream):
    """The image commands' tasks as the flags say (--dataset's classes, --n_way, --k_shot, ...): a
    function making `Tasks`. training_stream: function(splits) -> the meta-training stream."""
    def load():
        network.check_grouped_convolutions()
        splits, checksum = load_splits()
        return Tasks(evaluation_batches(splits.val, 'meta-validation', FLAGS.num_val_tasks, 0),
                     evaluation_batches(splits.test, 'meta-test', FLAGS.num_test_tasks, 1),
                     training_stream(splits), checksum,
                     {'classes': {'train': len(splits.train), 'val': len(splits.val), 'test': len(splits.test)}},
                     splits, cross_domain_tasks())
    return load


def accuracy_test(learner, tasks, folder, num_eval_inner_steps):
    """The image commands' meta-test: accuracy before and after adaptation ± 95% CI over the test
    tasks, the mean of whatever else the learner measures, and val_accuracy.png. Returns (summary
    entries, what to print)."""
    test = training.evaluate(learner, tasks.test, num_eval_inner_steps)
    summary = {}
    for when in ('pre', 'post'):
        mean, ci = results.confidence_interval(test[f'query_{when}_accuracy'])
        summary[f'test_{when}_accuracy'], summary[f'test_{when}_ci95'] = mean, ci
    for name in test.keys() - {'query_pre_accuracy', 'query_post_accuracy'}:
        summary[f'test_{name}'] = float(np.mean(test[name]))  # Whatever else the learner measures.
    plotting.plot_run(folder.path)
    return summary, (f'meta-test accuracy {summary["test_post_accuracy"]:.2%} ± {summary["test_post_ci95"]:.2%} '
                     f'over {len(test["query_post_accuracy"])} tasks (before adaptation '
                     f'{summary["test_pre_accuracy"]:.2%})')


def convnet(n_way=None, backbone='conv4', precision=None, flatten=False, pool_padding='same'):
    """The network `backbone` as the shared flags shape it, with an `n_way`-output head (default --n_way),
    computing in `precision` (default --precision); flatten, pool_padding: `network.ConvNet`'s (the
    learner commands' --flatten and --pool_padding)."""
    size, _, channels = image_shape()
    return network.build(backbone, n_way or FLAGS.n_way, FLAGS.num_filters, FLAGS.max_pool,
                         precision or FLAGS.precision, size, channels, flatten, pool_padding)


def run_settings(run_folder):
    """{flag: value} of the flags of RESTORED_ON_RESUME as this run uses them: the command line's,
    but on --resume each group the command line leaves at its defaults as the run recorded it. The
    flags themselves are left as parsed."""
    recorded = run_folder.recorded_flags()
    settings = {}
    for group in RESTORED_ON_RESUME:
        restore = all(FLAGS[name].using_default_value for name in group)
        for name in group:
            settings[name] = recorded[name] if restore and name in recorded else FLAGS[name].value
            if settings[name] != FLAGS[name].value:
                logging.info('--%s=%s as the run recorded it', name, settings[name])
    return settings


def log_precision(precision):
    """Says in the run log which precision runs and, for bfloat16, whether this CPU computes it natively
    (a float32 run is told nothing of bfloat16: it would read as a warning about a run that has none)."""
    if precision != 'bfloat16':
        logging.info('Precision %s (--precision)', precision)
    elif machine.native_bfloat16():
        logging.info('Precision bfloat16 (--precision); %s computes it natively (%s)', machine.cpu_model(),
                     ', '.join(machine.bfloat16_flags()))
    else:
        logging.info('Precision bfloat16 (--precision); %s has no native bfloat16, so TensorFlow emulates it: '
                     'slower than float32 here', machine.cpu_model())


def _results_dir_and_resume(cluster, results_dir, resume):
    """(results folder, resume, overwrite) for this process's `RunFolder`: `results_dir`, `resume` and
    --overwrite on the chief.

    Every other process of a cluster runs the same code but writes into a temporary folder of its
    own, removed when it exits: the chief's folder is the run's, and there the other processes write
    nothing (they may not even share its file system).
    """
    if cluster.is_chief:
        return results_dir, resume, FLAGS.overwrite
    folder = tempfile.mkdtemp(prefix='fewshot-worker-')
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder, False, False


class Outcome(NamedTuple):
    """What `run` produced: the summary (also in summary.json), the trained learner, the tasks'
    splits (None for tasks not of images) and the run folder, for scripts that do more afterwards."""
    summary: dict
    learner: object
    splits: object
    folder: results.RunFolder


@dataclasses.dataclass(frozen=True)
class Run:
    """What a command runs: one experiment, from the flags, into one run folder (see `run`).

    algorithm: name recorded in the hyperparameters, e.g. 'FO-MAML'.
    default_run_name: folder name if --run_name is empty.
    build: function(splits, precision) -> learner (see training.py), its network computing in
      `precision` ('float32', 'bfloat16': --precision, or a resumed run's own); splits: the
      tasks' (`Tasks.splits`).
    flag_modules: modules whose key flags are recorded in hyperparameters.json (the shared ones
      are `config`'s).
    num_eval_inner_steps: adaptation steps at validation and test.
    extra: further facts for hyperparameters.json (e.g. the batch-norm mode).
    schedule_for: function(splits) -> training.Schedule (default: from the flags).
    fixed_on_resume: flags a resumed run must keep even though runs may usually change them
      (see results.RunFolder).
    tasks: function() -> `Tasks`, called after the flags are checked and before the run folder is
      made (default: `image_tasks()`).
    test: function(learner, tasks, folder, num_eval_inner_steps) -> (summary entries, what to
      print), the meta-test after training (default: `accuracy_test`).
    location: (folder of run folders, run folder name) of a study's learner (default: --results_dir
      and --run_name or default_run_name).
    unrecorded_flags: flags of `flag_modules` not recorded (a study's --learners: each run is one).
    older_runs: {flag: value} a resumed run that did not record the flag was trained with (default:
      the flag's default; see `commands.Command`).
    resume: whether to continue the run folder (default --resume; see `studies.resumes`).
    """
    algorithm: str
    default_run_name: str
    build: Callable
    flag_modules: Sequence
    num_eval_inner_steps: int
    extra: dict = None
    schedule_for: Callable = None
    fixed_on_resume: tuple = ()
    tasks: Callable = None
    test: Callable = accuracy_test
    location: tuple = None
    unrecorded_flags: tuple = ()
    older_runs: dict = None
    resume: bool = None


def run(description):
    """Runs the experiment `description` (a `Run`) from the flags and writes its run folder: everything
    that can be checked is checked before the data is loaded and the folder made; returns an `Outcome`."""
    cluster = strategy.cluster_from_flags()  # First: TensorFlow must not have started yet.
    cluster.check_meta_batch(FLAGS.meta_batch_size)
    run_folder, flag_values, flag_defaults, settings = _checked_folder(description, cluster)
    memory_budget_gb = settings.get('memory_budget_gb', 0)
    if 0 < memory_budget_gb <= training.peak_memory_gb():
        raise FlagError(f'--memory_budget_gb {memory_budget_gb:g}: this process already holds '
                        f'{training.peak_memory_gb():.2f} GB before any data or learner')
    tasks = (description.tasks or image_tasks())()
    cluster.check_same({**{name: value for name, value in flag_values.items() if name not in strategy.LOCAL_FLAGS},
                        'data (its checksum)': tasks.checksum})
    run_folder.check_data(tasks.checksum)
    # Peak memory from here on: the data's preprocessing (several GB the first time) is not the run's.
    memory_after = 'data loading' if training.reset_peak_memory() else 'process start'
    learner = _learner(description, tasks, settings, cluster)
    run_folder.check_checkpoint(learner.state_variables())  # The last check that can refuse a --resume.
    # Only now is anything written. A failure before the first checkpoint (the first validation, an
    # interrupt) leaves no folder behind.
    with run_folder.started():
        run_folder.write_hyperparameters(
            flag_values,
            {'algorithm': description.algorithm, 'seed': FLAGS.seed, 'data_checksum': tasks.checksum,
             'task_checksums': {'val': data.tasks_checksum(tasks.val), 'test': data.tasks_checksum(tasks.test)},
             'command': ' '.join(sys.argv), 'replicas': cluster.num_replicas, 'workers': cluster.num_workers,
             **tasks.facts, **(description.extra or {})}, flag_defaults)
        rows = training.train(learner, tasks.stream, tasks.val, run_folder, _schedule(description, tasks),
                              FLAGS.progress and cluster.is_chief, cluster)
    summary, message = _tests(description, learner, tasks, run_folder, rows, memory_after)
    if cluster.is_chief:  # Another process's folder is temporary: not a result to point at.
        print(f'{description.algorithm}: {message}; results in {run_folder.path}')
    return Outcome(summary, learner, tasks.splits, run_folder)


def _checked_folder(description, cluster):
    """(the run folder, the flags' values and defaults to record, the settings a resumed run restores),
    once the flags are checked against the folder's run if it is resumed (--check_reuse ends here)."""
    parent, run_name = description.location or (FLAGS.results_dir, FLAGS.run_name or description.default_run_name)
    results_dir, resume, overwrite = _results_dir_and_resume(
        cluster, parent, FLAGS.resume if description.resume is None else description.resume)
    run_folder = results.RunFolder(results_dir, run_name, resume, overwrite, create=False,
                                   fixed_on_resume=description.fixed_on_resume)
    flag_values, flag_defaults = (_recorded(config.flag_values(description.flag_modules, kind),
                                            description.unrecorded_flags) for kind in ('value', 'default'))
    flag_defaults.update(description.older_runs or {})  # Only what a run did not record is read from these.
    # Settings restored on resume, for a command that has them.
    settings = {name: value for name, value in run_settings(run_folder).items() if name in flag_values}
    flag_values.update(settings)
    run_folder.check_flags(flag_values, flag_defaults)
    run_folder.check_algorithm(description.algorithm)
    if FLAGS.check_reuse:
        if not FLAGS.resume:
            raise FlagError('--check_reuse: give --resume and the --run_name of the run folder to check')
        print(f'{run_folder.path}: a run of {description.algorithm} with these flags')
        sys.exit(0)
    return run_folder, flag_values, flag_defaults, settings


def _learner(description, tasks, settings, cluster):
    """The run's learner, seeded, in its precision and with its tasks per chunk (a resumed run's own)."""
    precision = settings.get('precision', FLAGS.precision)
    if 'precision' in settings:
        log_precision(precision)
    keras.utils.set_random_seed(FLAGS.seed)
    with cluster.scope():
        learner = description.build(tasks.splits, precision)
    if hasattr(learner, 'tasks_per_chunk'):  # A meta-learner (not maml_transfer.py's classifier).
        if settings.get('tasks_per_chunk'):  # Else the learner's own (second order: chunks of 8).
            learner.tasks_per_chunk = settings['tasks_per_chunk']
        memory_budget_gb = settings.get('memory_budget_gb', 0)
        if memory_budget_gb:
            meta_batch = tasks.stream.sample(1, FLAGS.meta_batch_size)
            learner.tasks_per_chunk = training.tasks_per_chunk_within(learner, meta_batch, memory_budget_gb)
    check_cross_domain(learner, tasks.cross_domain, description.algorithm)
    return learner


def _schedule(description, tasks):
    """The run's `training.Schedule`: the description's, or the flags', with the flags' time budget and
    checkpoint to keep."""
    schedule = description.schedule_for(tasks.splits) if description.schedule_for else training.Schedule(
        num_iterations=FLAGS.num_iterations, meta_batch_size=FLAGS.meta_batch_size,
        val_interval=FLAGS.val_interval, num_eval_inner_steps=description.num_eval_inner_steps)
    if FLAGS.time_budget_minutes:
        schedule = dataclasses.replace(schedule, time_budget_seconds=60 * FLAGS.time_budget_minutes)
    if FLAGS.keep_checkpoint_at is not None:
        schedule = dataclasses.replace(schedule, keep_checkpoint_at=FLAGS.keep_checkpoint_at)
    return schedule


def _tests(description, learner, tasks, run_folder, rows, memory_after):
    """The run's meta-test and its cross-domain ones: (the summary, what to print)."""
    finished = results.read_summary(run_folder.path) if tasks.cross_domain else None
    if finished and finished['iterations'] == int(rows[-1]['iteration']):
        # A finished run resumed for a cross-domain test: its own meta-test, summary and model stay as they are.
        summary, message = finished, f'its own meta-test in {run_folder.file(results.SUMMARY_FILE)}, unchanged'
    else:
        summary, message = in_domain_test(learner, tasks, run_folder, rows, memory_after, description.test,
                                          description.num_eval_inner_steps,
                                          (description.extra or {}).get('batch_norm', ''))
    for cross_domain in tasks.cross_domain:
        message += '; ' + cross_domain_test(learner, cross_domain, run_folder, description.num_eval_inner_steps)
    return summary, message


def in_domain_test(learner, tasks, run_folder, rows, memory_after, test, num_eval_inner_steps, batch_norm):
    """The run's own meta-test (`test`), written with its training's summary into summary.json, and its
    model.keras; returns (the summary, what to print)."""
    logging.info('Meta-testing on %d tasks', FLAGS.num_test_tasks)
    score = learner.score_name
    summary = {'iterations': int(rows[-1]['iteration']), 'training_seconds': rows[-1]['seconds'],
               f'val_post_{score}': rows[-1][f'val_post_{score}'],
               'val_post_ci95': rows[-1]['val_post_ci95'], 'test_tasks': FLAGS.num_test_tasks,
               # Of the process that finished the run (a resumed run's earlier processes are not seen).
               'peak_memory_gb': training.peak_memory_gb(), 'peak_memory_since': memory_after}
    tested, message = test(learner, tasks, run_folder, num_eval_inner_steps)
    summary.update(tested)
    results.write_json(run_folder.file(results.SUMMARY_FILE), summary)
    training.write_test_summary(run_folder, summary)
    network.save_model(learner.model, run_folder.file(results.MODEL_FILE), batch_norm)
    return summary, message


def _recorded(flag_values, unrecorded):
    return {name: value for name, value in flag_values.items() if name not in unrecorded}

