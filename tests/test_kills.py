"""What a machine that dies at a bad moment leaves, and the tools that read runs they did not train:
a study killed before its last learner resumes to the same results; a run killed while it wrote a
file keeps neither its name blocked nor the temporary file; a tool shown a run other than the one
it asked for says so (issue 41)."""

import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

import launch
from fewshot import results
from conftest import wait_for_checkpoint
from test_errors import TINY, world  # noqa: F401  (world: the module fixture of synthetic data and a finished run)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SINE = ['--hidden=8,8', '--num_val_tasks=4', '--num_test_tasks=6', '--num_eval_points=10', '--meta_batch_size=2',
        '--num_curve_steps=2', '--num_figure_tasks=1', '--progress=false', '--learners=maml,reptile',
        '--num_iterations=40', '--val_interval=10', '--reptile_inner_steps=2']


def _command(script, *arguments):
    return [sys.executable, os.path.join(REPO, script), *arguments]


def _run(script, *arguments):
    result = launch.run(_command(script, *arguments), capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _without(rows, *columns):
    """The rows without `columns`, NaN as None (NaN equals nothing, not even itself)."""
    return [{key: None if isinstance(value, float) and np.isnan(value) else value for key, value in row.items()
             if key not in columns} for row in rows]


def _dead_pid():
    """The process id of a process that has ended (what a killed writer's temporary name holds)."""
    child = subprocess.Popen(['true'])
    child.wait()
    return child.pid


def test_a_study_killed_during_its_first_learner_resumes_to_the_same_results(tmp_path):
    """Fault 1: `sine.py --learners=maml,reptile` killed while maml trained could be neither resumed
    (reptile's folder did not exist) nor started again (maml's did)."""
    _run('sine.py', f'--results_dir={tmp_path}/straight', *SINE)
    stopped = str(tmp_path / 'stopped')
    process = subprocess.Popen(_command('sine.py', f'--results_dir={stopped}', *SINE), cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = os.path.join(stopped, 'sine_k10_seed0', 'maml', results.CHECKPOINT_FILE)
    wait_for_checkpoint(process, checkpoint, 20)
    assert process.poll() is None, 'the study ended before it could be killed during its first learner'
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not os.path.exists(os.path.join(stopped, 'sine_k10_seed0', 'reptile'))
    _run('sine.py', f'--results_dir={stopped}', *SINE, '--resume')
    for learner in ('maml', 'reptile'):
        straight, resumed = (os.path.join(tmp_path, which, 'sine_k10_seed0', learner)
                             for which in ('straight', 'stopped'))
        assert _without(results.read_metrics(os.path.join(resumed, results.METRICS_FILE)), 'seconds') == \
            _without(results.read_metrics(os.path.join(straight, results.METRICS_FILE)), 'seconds')
        varying = ('training_seconds', 'peak_memory_gb', 'peak_memory_since')
        assert _without([results.read_json(os.path.join(resumed, results.SUMMARY_FILE))], *varying) == \
            _without([results.read_json(os.path.join(straight, results.SUMMARY_FILE))], *varying)
    tables = [results.read_csv(os.path.join(tmp_path, which, 'sine_k10_seed0', 'sine_results.csv'))
              for which in ('straight', 'stopped')]
    assert _without(tables[0], 'training_seconds') == _without(tables[1], 'training_seconds')
    assert [row['learner'] for row in tables[1]] == ['MAML', 'Reptile']


@pytest.mark.parametrize('how', ['start', '--resume', '--overwrite'])
def test_a_run_killed_at_its_first_write_keeps_neither_its_name_blocked_nor_the_file(
        world, tmp_path, how):  # noqa: F811
    """Fault 2: a folder holding only the half-written hyperparameters.tmp<pid>.json of a killed run
    was 'not a run folder' to every later command of that name."""
    folder = tmp_path / 'results' / 'run'
    folder.mkdir(parents=True)
    (folder / f'hyperparameters.tmp{_dead_pid()}.json').write_bytes(b'')
    arguments = [f'--data_dir={world["omniglot"]}', f'--cache_dir={world["cache"]}',
                 f'--results_dir={tmp_path}/results', '--run_name=run', '--num_iterations=2', '--val_interval=2', *TINY]
    _run('maml.py', *arguments, *([how] if how != 'start' else []))
    assert not results.leftovers(str(folder)) and not [n for n in os.listdir(folder) if '.tmp' in n]
    assert results.read_summary(str(folder))['iterations'] == 2


def test_a_run_killed_while_writing_leaves_no_temporary_file_once_resumed(world, tmp_path):  # noqa: F811
    """Fault 3: the temporary files of writes a kill interrupted (checkpoint, metrics, figure) stayed
    in the run folder for ever; resuming removes them, and the run goes on from its checkpoint."""
    folder = os.path.join(tmp_path, 'results', 'run')
    shutil.copytree(world['run'], folder)
    os.remove(os.path.join(folder, results.SUMMARY_FILE))  # Killed before its meta-test.
    pid = _dead_pid()
    for name in ('checkpoint', 'metrics', 'val_accuracy', 'model'):
        extension = {'checkpoint': '.npz', 'metrics': '.csv', 'val_accuracy': '.png', 'model': '.keras'}[name]
        with open(os.path.join(folder, f'{name}.tmp{pid}{extension}'), 'wb') as f:
            f.write(b'half written')
    _run('maml.py', f'--data_dir={world["omniglot"]}', f'--cache_dir={world["cache"]}',
         f'--results_dir={tmp_path}/results', '--run_name=run', '--num_iterations=6', '--val_interval=2', '--resume',
         *TINY)
    assert [name for name in os.listdir(folder) if '.tmp' in name] == []
    rows = results.read_metrics(os.path.join(folder, results.METRICS_FILE))
    assert [row['iteration'] for row in rows] == [0, 2, 4, 6]


def test_a_live_writers_temporary_file_is_not_a_leftover(tmp_path):
    """Only the files of processes that have ended are removed: another process may be writing now."""
    live = tmp_path / f'metrics.tmp{os.getpid()}.csv'
    dead = tmp_path / f'metrics.tmp{_dead_pid()}.csv'
    mine = tmp_path / 'metrics.tmp.csv'  # Not a name `replacing` makes: the user's.
    for path in (live, dead, mine):
        path.write_text('x')
    assert results.leftovers(str(tmp_path)) == [str(dead)]
    assert results.remove_leftovers(str(tmp_path)) == 1
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, mine.name])


def test_a_failed_write_names_its_file_and_leaves_nothing(tmp_path):
    """'No space left on device' named no file: the write's OSError carries none."""
    path = str(tmp_path / 'summary.json')

    def full_disk(f):
        raise OSError(28, 'No space left on device')
    with pytest.raises(OSError) as raised:
        results.atomic_write(path, full_disk)
    assert raised.value.filename == path and raised.value.strerror == 'No space left on device'
    assert os.listdir(tmp_path) == []


def _foreign_run(world, tmp_path, folder_name):  # noqa: F811
    """The world's finished FO-MAML 3-way 1-shot run, put where a tool looks for another run."""
    folder = os.path.join(tmp_path, 'results', 'compare', 'runs', folder_name)
    shutil.copytree(world['run'], folder)
    return folder


def test_compare_refuses_a_run_other_than_the_one_asked_for(world, tmp_path):  # noqa: F811
    """Fault 4: with a foreign run in the folder of ProtoNet 5-way 1-shot, `compare.py --train=false`
    exited 0 with a table whose only row was the foreign run."""
    folder = _foreign_run(world, tmp_path, 'protonet_5way1shot_seed0')
    result = launch.run(_command('compare.py', f'--results_dir={tmp_path}/results', '--train=false',
                                 '--algorithms=protonet', '--settings=5way1shot'),
                        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 1, result.stdout[-2000:]
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(f'error: {folder} is not the run asked for (a run of FO-MAML, not of ProtoNet; '
                            'n_way 3, not 5)'), error
    assert not os.path.exists(os.path.join(tmp_path, 'results', 'compare', 'compare.md'))


def test_compare_shows_the_run_asked_for(world, tmp_path):  # noqa: F811
    """The same check passes the run that is what its folder is named after."""
    folder = _foreign_run(world, tmp_path, 'maml_fo_3way1shot_1steps_seed0')
    path = os.path.join(folder, results.HYPERPARAMETERS_FILE)
    recorded = results.read_json(path)
    recorded['flags']['num_inner_steps'] = 5  # As maml.py's default names the folder; the run is otherwise itself.
    results.write_json(path, recorded)
    os.rename(folder, folder.replace('_1steps_', '_5steps_'))
    result = launch.run(_command('compare.py', f'--results_dir={tmp_path}/results', '--train=false',
                                 '--algorithms=maml', '--settings=3way1shot', '--num_iterations=4'),
                        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert '| 3way1shot | conv4 | FO-MAML |' in result.stdout


def test_stability_over_one_seed_draws_and_tabulates(world, tmp_path):  # noqa: F811
    """One seed has no spread: the figure drew a NaN band and failed ('cannot convert float NaN to integer')."""
    runs = os.path.join(tmp_path, 'results', 'stability', 'runs')
    shutil.copytree(world['run'], os.path.join(runs, 'maml_fo_3way1shot_5steps_seed0'))
    plus = os.path.join(runs, 'maml++_3way1shot_5steps_eval-transductive_seed0')
    shutil.copytree(world['run'], plus)
    path = os.path.join(plus, results.HYPERPARAMETERS_FILE)
    results.write_json(path, {**results.read_json(path), 'algorithm': 'MAML++'})
    result = launch.run(_command('stability.py', f'--results_dir={tmp_path}/results', '--train=false',
                                 '--seeds=0', '--settings=3way1shot'),
                        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    output = os.path.join(tmp_path, 'results', 'stability')
    assert os.path.getsize(os.path.join(output, 'val_overlay_3way1shot.png')) > 10_000
    table = results.read_csv(os.path.join(output, 'stability.csv'))
    assert [row['seeds'] for row in table] == [1, 1] and all(np.isnan(row['final_val_std']) for row in table)
    assert '± —' in result.stdout
