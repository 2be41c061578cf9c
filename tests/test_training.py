"""The training loop and run folders: resume equals an uninterrupted run, failures are safe."""

import dataclasses
import json
import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

import launch
from conftest import wait_for_checkpoint
from fewshot import data, errors, network, results, training
import maml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEDULE = training.Schedule(num_iterations=7, meta_batch_size=2, val_interval=2, num_eval_inner_steps=1)


def _learner(seed):
    keras.utils.set_random_seed(seed)
    net = network.ConvNet(n_way=3, num_filters=4)
    return maml.MAML(net, net.keras_model(), 0.4, 1, True, keras.optimizers.Adam(1e-2))


def _task_sources():
    images = np.random.default_rng(0).random((10, 20, 28, 28)).astype(np.float32)
    train = data.EpisodeSampler(images, 3, 1, 2, seed=5)
    val = data.EpisodeSampler(images, 3, 1, 2, seed=6).fixed_batches(4, 2)
    return train, val


class _Interrupted(Exception):
    pass


class _DiesAt:
    """A task stream that stops the run at a given iteration, as a kill would."""

    def __init__(self, sampler, iteration):
        self.sampler, self.iteration = sampler, iteration

    def sample(self, index, num_tasks):
        if index == self.iteration:
            raise _Interrupted
        return self.sampler.sample(index, num_tasks)


def _run_folder(results_dir, name, **options):
    """A run folder as the commands make it: hyperparameters first."""
    folder = results.RunFolder(results_dir, name, **options)
    if not os.path.exists(folder.file(results.HYPERPARAMETERS_FILE)):
        folder.write_hyperparameters({'n_way': 3, 'k_shot': 1}, {})
    return folder


def _without_time(rows):
    return [{k: v for k, v in row.items() if k != 'seconds'} for row in rows]


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    train, val = _task_sources()
    whole = _learner(seed=0)
    rows = training.train(whole, train, val, _run_folder(str(tmp_path), 'whole'), SCHEDULE,
                          progress=False)

    broken = _learner(seed=0)
    with pytest.raises(_Interrupted):
        training.train(broken, _DiesAt(train, 5), val, _run_folder(str(tmp_path), 'broken'),
                       SCHEDULE, progress=False)
    # A new process starts from other weights; the checkpoint must replace them.
    resumed = _learner(seed=123)
    folder = results.RunFolder(str(tmp_path), 'broken', resume=True)
    assert folder.restore_checkpoint(resumed.state_variables()) == 4
    resumed_rows = training.train(resumed, train, val, folder, SCHEDULE, progress=False)

    assert [row['iteration'] for row in rows] == [0, 2, 4, 6, 7]
    np.testing.assert_equal(_without_time(resumed_rows), _without_time(rows))
    np.testing.assert_equal(_without_time(folder.read_metrics()), _without_time(rows))
    assert list(whole.state_variables()) == list(resumed.state_variables())
    for a, b in zip(whole.state_variables().values(), resumed.state_variables().values()):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_the_checkpoint_of_the_first_validation_reaching_a_score_is_kept(tmp_path):
    """keep_checkpoint_at: a copy of the checkpoint of the first validation at or above it, with
    reached.json saying when; later validations, above it too, leave that copy alone."""
    train, val = _task_sources()
    schedule = dataclasses.replace(SCHEDULE, num_iterations=16)
    rows = training.train(_learner(seed=0), train, val, _run_folder(str(tmp_path), 'plain'), schedule, progress=False)
    scores = [row['val_post_accuracy'] for row in rows]
    first = next(i for i, score in enumerate(scores) if score > scores[0])
    target = (scores[0] + scores[first]) / 2  # First reached at validation `first`,
    assert max(scores[first + 1:]) >= target  # and again after it.
    folder = _run_folder(str(tmp_path), 'kept')
    schedule = dataclasses.replace(schedule, keep_checkpoint_at=target)
    assert _without_time(training.train(_learner(seed=0), train, val, folder, schedule, progress=False)) == \
        _without_time(rows)
    reached = json.load(open(folder.file(results.REACHED_FILE)))
    assert reached == {'iteration': rows[first]['iteration'], 'val_post_accuracy': scores[first],
                       'val_post_ci95': rows[first]['val_post_ci95'], 'target': target}
    assert np.load(folder.file(results.REACHED_CHECKPOINT_FILE))['iteration'] == rows[first]['iteration'] < \
        np.load(folder.file(results.CHECKPOINT_FILE))['iteration'] == rows[-1]['iteration']
    # A run that reached it before it was asked to keep it (resumed with the target) keeps no later copy.
    late = _run_folder(str(tmp_path), 'late')
    early = dataclasses.replace(SCHEDULE, num_iterations=int(rows[first]['iteration']))
    training.train(_learner(seed=0), train, val, late, early, progress=False)
    late = results.RunFolder(str(tmp_path), 'late', resume=True)
    training.train(_learner(seed=0), train, val, late, schedule, progress=False)
    assert not os.path.exists(late.file(results.REACHED_FILE))
    assert not os.path.exists(late.file(results.REACHED_CHECKPOINT_FILE))


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path):
    train, val = _task_sources()
    learner = _learner(seed=0)
    step = learner.meta_train_step

    def poisoned(episodes, calls=[]):
        calls.append(1)
        metrics = step(episodes)
        if len(calls) == 3:
            metrics['query_post_loss'] = metrics['query_post_loss'] * np.nan
        return metrics
    learner.meta_train_step = poisoned
    folder = _run_folder(str(tmp_path), 'nan')
    with pytest.raises(training.TrainingError, match=r'iteration 3; stopped there, and the last finite '
                                                     r'checkpoint \(iteration 2\)'):
        training.train(learner, train, val, folder, SCHEDULE, progress=False)
    with np.load(folder.file(results.CHECKPOINT_FILE)) as checkpoint:
        assert int(checkpoint['iteration']) == 2
        assert all(np.isfinite(checkpoint[k]).all() for k in checkpoint.files)


def test_existing_run_folder_is_kept_unless_asked(tmp_path):
    folder = _run_folder(str(tmp_path), 'run')
    with open(folder.file('notes.txt'), 'w') as f:
        f.write('precious')
    with pytest.raises(results.RunError, match='already exists; pass (--)?resume .* or (--)?overwrite'):
        results.RunFolder(str(tmp_path), 'run')
    assert open(folder.file('notes.txt')).read() == 'precious'
    results.RunFolder(str(tmp_path), 'run', resume=True)
    assert os.path.exists(folder.file('notes.txt'))
    results.RunFolder(str(tmp_path), 'run', overwrite=True)
    assert not os.path.exists(folder.file('notes.txt'))


def test_a_run_that_fails_before_its_first_checkpoint_leaves_no_folder(tmp_path):
    """A folder with only hyperparameters.json was left behind by a command failing after it made
    the folder (building the learner, sizing its chunks): nothing to resume, yet it blocked the name."""
    fresh = results.RunFolder(str(tmp_path), 'run', create=False)
    with pytest.raises(KeyboardInterrupt), fresh.started():
        fresh.write_hyperparameters({'n_way': 5}, {})
        raise KeyboardInterrupt
    assert not os.path.exists(fresh.path)
    with pytest.raises(ValueError), fresh.started():  # Past a checkpoint there is a run to resume.
        fresh.write_hyperparameters({'n_way': 5}, {})
        fresh.save_checkpoint({'w': keras.Variable([1.0])}, 0)
        raise ValueError
    assert os.path.exists(fresh.file(results.CHECKPOINT_FILE))
    os.remove(fresh.file(results.CHECKPOINT_FILE))
    resumed = results.RunFolder(str(tmp_path), 'run', resume=True, create=False)
    with pytest.raises(ValueError), resumed.started():  # Not this run's folder: the user's, kept.
        raise ValueError
    assert os.path.exists(resumed.file(results.HYPERPARAMETERS_FILE))


def test_unwritable_results_dir_is_refused(tmp_path):
    blocker = tmp_path / 'a_file'
    blocker.write_text('')
    with pytest.raises(errors.OutputError, match='results_dir .*a_file is a file, not a folder'):
        results.RunFolder(str(blocker), 'run')
    assert not os.path.exists(blocker / 'run')


def test_resume_with_other_settings_is_refused(tmp_path):
    folder = results.RunFolder(str(tmp_path), 'run')
    shape = {'n_way': 5, 'k_shot': 1}
    folder.write_hyperparameters({**shape, 'inner_lr': 0.4, 'num_iterations': 10}, {})
    resumed = results.RunFolder(str(tmp_path), 'run', resume=True)
    resumed.write_hyperparameters({**shape, 'inner_lr': 0.4, 'num_iterations': 20}, {})  # Allowed.
    resumed.write_hyperparameters({**shape, 'inner_lr': 0.4, 'run_name': 'run'}, {})  # The same folder.
    with pytest.raises(results.RunError, match=r'other settings \(inner_lr\)'):
        resumed.write_hyperparameters({**shape, 'inner_lr': 0.1, 'num_iterations': 20}, {})
    with pytest.raises(results.RunError, match=r'other data \(its checksum differs\)'):
        resumed.write_hyperparameters({**shape, 'inner_lr': 0.4}, {'data_checksum': 'other'})


def test_a_run_may_fix_a_flag_that_runs_usually_change_on_resume(tmp_path):
    """MAML++'s cosine schedule is spread over --num_iterations, so its runs cannot be extended."""
    folder = _run_folder(str(tmp_path), 'run')
    folder.write_hyperparameters({'n_way': 5, 'k_shot': 1, 'num_iterations': 10}, {})
    results.RunFolder(str(tmp_path), 'run', resume=True).check_flags({'n_way': 5, 'k_shot': 1, 'num_iterations': 20})
    fixed = results.RunFolder(str(tmp_path), 'run', resume=True, fixed_on_resume=('num_iterations',))
    with pytest.raises(results.RunError, match=r'other settings \(num_iterations\)'):
        fixed.check_flags({'n_way': 5, 'k_shot': 1, 'num_iterations': 20})


def test_runs_record_the_code_version(tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=repo, capture_output=True, text=True,
                          check=True).stdout.strip()
    assert results.library_versions()['code'] in (head, head + '+changes')
    assert results.code_version(str(tmp_path)) is None  # Not a git checkout.


def test_truncated_metrics_are_read_up_to_the_last_complete_row(tmp_path):
    folder = results.RunFolder(str(tmp_path), 'run')
    folder.write_metrics([{**dict.fromkeys(results.METRICS_COLUMNS, 0.5), 'iteration': i} for i in (0, 5)],
                         results.METRICS_COLUMNS)
    path = folder.file(results.METRICS_FILE)
    with open(path, 'a') as f:
        f.write('10,not-a-num')
    assert [row['iteration'] for row in folder.read_metrics()] == [0, 5]


# The command line ---------------------------------------------------------------

TINY = ['--num_filters=4', '--n_way=3', '--k_shot=1', '--num_query=2', '--meta_batch_size=2',
        '--num_val_classes=4', '--num_train_classes=10', '--num_val_tasks=4', '--num_test_tasks=4',
        '--num_inner_steps=1', '--progress=false']


def _maml_command(data_dir, results_dir, *flags):
    return [sys.executable, os.path.join(REPO, 'maml.py'), f'--data_dir={data_dir}',
            f'--cache_dir={results_dir}/cache', f'--results_dir={results_dir}', *TINY, *flags]


def _run(command, **kwargs):
    return launch.run(command, capture_output=True, text=True, cwd=REPO, timeout=300, **kwargs)


def test_kill_9_then_resume_equals_uninterrupted_run(synthetic_dir, tmp_path):
    out = str(tmp_path)
    whole = _run(_maml_command(synthetic_dir, out, '--run_name=whole', '--num_iterations=40',
                               '--val_interval=5'))
    assert whole.returncode == 0, whole.stderr[-2000:]

    command = _maml_command(synthetic_dir, out, '--run_name=killed', '--num_iterations=40',
                            '--val_interval=5')
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = os.path.join(out, 'killed', results.CHECKPOINT_FILE)
    wait_for_checkpoint(process, checkpoint, 10)
    process.send_signal(signal.SIGKILL)
    process.wait()
    with np.load(checkpoint) as saved:
        stopped_at = int(saved['iteration'])
    assert 10 <= stopped_at < 40, 'the run finished before it could be killed'

    resumed = _run(command + ['--resume'])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    read = results.read_metrics
    np.testing.assert_equal(_without_time(read(os.path.join(out, 'killed', results.METRICS_FILE))),
                            _without_time(read(os.path.join(out, 'whole', results.METRICS_FILE))))
    summaries = [json.load(open(os.path.join(out, name, results.SUMMARY_FILE))) for name in ('whole', 'killed')]
    assert summaries[0]['test_post_accuracy'] == summaries[1]['test_post_accuracy']
    for name in ('hyperparameters.json', 'model.keras', 'val_accuracy.png'):
        assert os.path.exists(os.path.join(out, 'killed', name))
    hyperparameters = json.load(open(os.path.join(out, 'killed', 'hyperparameters.json')))
    assert hyperparameters['flags']['inner_lr'] == 0.4 and hyperparameters['seed'] == 0
    assert hyperparameters['versions']['tensorflow'] and len(hyperparameters['data_checksum']) == 64
    model = keras.models.load_model(os.path.join(out, 'killed', 'model.keras'))
    assert model.output_shape == (None, 3)


@pytest.mark.parametrize('flags, message', [
    (['--n_way=50'], r'--n_way 50 exceeds the \d+ classes of the meta-\w+ split'),
    (['--k_shot=10', '--num_query=15'], r'--k_shot \+ --num_query must be at most 20'),
    (['--inner_lr=-0.1'], '--inner_lr'),
    (['--num_inner_steps=0'], '--num_inner_steps'),
    (['--data_dir=/nonexistent/omniglot'], '/nonexistent/omniglot: folder does not exist'),
])
def test_bad_command_lines_get_one_line_errors(synthetic_dir, tmp_path, flags, message):
    result = _run(_maml_command(synthetic_dir, str(tmp_path), '--num_iterations=1', *flags))
    assert result.returncode != 0
    assert 'Traceback' not in result.stderr
    assert __import__('re').search(message, result.stderr), result.stderr[-1000:]


def test_existing_run_is_not_overwritten_from_the_command_line(synthetic_dir, tmp_path):
    os.makedirs(tmp_path / 'taken')
    (tmp_path / 'taken' / 'metrics.csv').write_text('precious')
    result = _run(_maml_command(synthetic_dir, str(tmp_path), '--run_name=taken', '--num_iterations=1'))
    assert result.returncode == 1 and 'Traceback' not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith('error: ')
    assert (tmp_path / 'taken' / 'metrics.csv').read_text() == 'precious'


def test_checkpoints_restore_by_name_and_old_positional_ones_once_by_position(tmp_path):
    train, _ = _task_sources()
    trained = _learner(seed=0)
    trained.meta_train_step(train.sample(1, 2))
    state = trained.state_variables()
    folder = _run_folder(str(tmp_path), 'run')

    # Saved by name, restored into the same variables listed in another order: nothing swaps.
    folder.save_checkpoint(state, 1)
    fresh = _learner(seed=1)
    reordered = dict(reversed(list(fresh.state_variables().items())))
    assert folder.restore_checkpoint(reordered) == 1
    for name, variable in state.items():
        np.testing.assert_array_equal(fresh.state_variables()[name].numpy(), variable.numpy())

    # A checkpoint from before names (v0000, v0001, ... in the learner's order) maps once by position.
    np.savez(folder.file(results.CHECKPOINT_FILE), iteration=1,
             **{f'v{i:04d}': v.numpy() for i, v in enumerate(state.values())})
    old = _learner(seed=2)
    assert folder.restore_checkpoint(old.state_variables()) == 1
    for name, variable in state.items():
        np.testing.assert_array_equal(old.state_variables()[name].numpy(), variable.numpy())
    folder.save_checkpoint(old.state_variables(), 1)
    with np.load(folder.file(results.CHECKPOINT_FILE)) as checkpoint:
        assert set(checkpoint.files) == {'iteration', *state}

    # A checkpoint of another model is refused, by name or by position.
    wider = network.ConvNet(n_way=3, num_filters=8)
    other = maml.MAML(wider, wider.keras_model(), 0.4, 1, True, keras.optimizers.Adam(1e-2))
    with pytest.raises(results.RunError, match='does not match this model'):
        folder.restore_checkpoint(other.state_variables())
    np.savez(folder.file(results.CHECKPOINT_FILE), iteration=1,
             **{f'v{i:04d}': v.numpy() for i, v in enumerate(list(state.values())[:-1])})
    with pytest.raises(results.RunError, match='does not match this model'):
        folder.restore_checkpoint(_learner(seed=3).state_variables())


def test_tensorboard_has_every_curve_once_and_the_flags(tmp_path):
    """Training metrics, seconds per iteration, the meta learning rate and validation accuracy with its
    interval, each tag written once per step, the run's flags as hparams, and the meta-test's figures."""
    import tensorflow as tf
    train, val = _task_sources()
    folder = _run_folder(str(tmp_path), 'run')
    training.train(_learner(seed=0), train, val, folder, SCHEDULE, progress=False)
    training.write_test_summary(folder, {'iterations': 7, 'test_post_accuracy': 0.75, 'test_post_ci95': 0.02,
                                         'test_tasks': 600})
    seen, plugins = {}, set()
    for path in os.listdir(folder.file('tensorboard')):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(folder.file('tensorboard'), path)):
            for value in event.summary.value:
                plugins.add(value.metadata.plugin_data.plugin_name)
                seen.setdefault(value.tag, []).append(event.step)
    for tag, steps in seen.items():
        assert len(steps) == len(set(steps)), f'{tag} written twice at one step'
    assert seen['seconds_per_iteration'] == seen['train/query_post_loss'] == list(range(1, 8))
    assert seen['validation/post_accuracy'] == seen['validation/post_ci95'] == seen['meta_learning_rate'] == \
        [0, 2, 4, 6, 7]
    assert seen['test/post_accuracy'] == seen['test/post_ci95'] == [7] and 'test/tasks' not in seen
    assert 'hparams' in plugins


def test_a_python_caller_is_told_its_argument_where_a_command_is_told_its_flag(tmp_path):
    """errors.named: the library's messages name `overwrite`, which a command spells --overwrite
    (test_errors: 'maml: --resume with --overwrite')."""
    with pytest.raises(errors.RunError, match='^resume and overwrite contradict each other'):
        results.RunFolder(str(tmp_path), 'run', resume=True, overwrite=True)
    with pytest.raises(errors.DataError, match='^num_train_classes \\+ num_val_classes must leave test classes'):
        data.split_classes(list(range(5)), 4, 1)
