"""compare.py end to end on synthetic data: it trains each learner once, reuses finished runs,
tabulates and draws; equal wall-clock budgets stop training early; the report gains its section."""

import math
import os
import shutil
import sys

import pytest

import launch
from fewshot import comparison, results
from test_training import REPO
import report

# The tiny setting of the family's contract test, without the flags compare.py sets itself.
PASSED = ['--num_filters=4', '--num_query=2', '--meta_batch_size=2', '--num_val_classes=4',
          '--num_train_classes=10', '--num_val_tasks=4', '--num_test_tasks=4', '--progress=false',
          '--val_interval=2']


def _compare(synthetic_dir, tmp_path, *flags, passed=(), status=0):
    result = launch.run([sys.executable, os.path.join(REPO, 'compare.py'), '--settings=3way1shot',
                         '--num_iterations=2', f'--results_dir={tmp_path}/results', *flags, '--',
                         f'--data_dir={synthetic_dir}', f'--cache_dir={tmp_path}/cache', *PASSED, *passed],
                        capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == status, result.stderr[-2000:]
    return result.stdout if status == 0 else result.stderr


def _runs(tmp_path, *names):
    return [os.path.join(tmp_path, 'results', 'compare', 'runs', name) for name in names]


def test_compare_trains_each_learner_once_then_only_tabulates(synthetic_dir, tmp_path):
    """Learners of both shapes: MAML's and ANIL's inner loop, and the Prototypical Network's none;
    and MAML++, whose runs are named maml++_..."""
    learners = '--algorithms=maml,anil,protonet,maml_plusplus'
    first = _compare(synthetic_dir, tmp_path, learners)
    assert first.count('compare.py: training') == 4
    folders = _runs(tmp_path, 'maml_fo_3way1shot_5steps_seed0', 'anil_fo_3way1shot_5steps_seed0',
                    'protonet_3way1shot_seed0', 'maml++_3way1shot_5steps_seed0')
    stamps = [os.path.getmtime(os.path.join(folder, results.SUMMARY_FILE)) for folder in folders]

    second = _compare(synthetic_dir, tmp_path, learners)
    assert 'compare.py: training' not in second and second.count('compare.py: reusing') == 4
    assert stamps == [os.path.getmtime(os.path.join(folder, results.SUMMARY_FILE)) for folder in folders]

    output = os.path.join(tmp_path, 'results', 'compare')
    rows = comparison.read_table(output)
    assert [(row['algorithm'], row['iterations']) for row in rows] == [('FO-MAML', 2), ('FO-ANIL', 2),
                                                                       ('ProtoNet', 2), ('MAML++', 2)]
    assert rows[1]['feature_similarity'] == pytest.approx(1.0, abs=1e-6)  # ANIL's inner loop leaves the body.
    assert math.isnan(rows[2]['inner_steps']) and math.isnan(rows[2]['feature_similarity'])  # Nothing adapts.
    for row, folder in zip(rows, folders):
        assert row['test_accuracy'] == results.read_summary(folder)['test_post_accuracy']
    for name in ('val_3way1shot.png', 'val_time_3way1shot.png', 'feature_change.png', 'compare.md'):
        assert os.path.getsize(os.path.join(output, name)) > 0
    assert '| ProtoNet | — |' in open(os.path.join(output, 'compare.md')).read()

    runs, stability_dir = report.find_runs(os.path.join(tmp_path, 'results'))
    text = report.to_markdown(report.build_report(runs, stability_dir, str(tmp_path), output))
    assert '4. The learners side by side' in text and 'FO-ANIL' in text

    # figures.py redraws the comparison's figures and its runs' (kept in compare/runs/), and names a study
    # whose own figures it cannot draw.
    study = os.path.join(tmp_path, 'results', 'sine_k10_seed0')
    os.makedirs(study)
    open(os.path.join(study, 'sine_results.md'), 'w').write('a table\n')
    redrawn = launch.run([sys.executable, os.path.join(REPO, 'figures.py'),
                          f'--results_dir={tmp_path}/results'], capture_output=True, text=True, cwd=REPO)
    assert redrawn.returncode == 0, redrawn.stderr[-2000:]
    printed = set(redrawn.stdout.split())
    assert {os.path.join(output, 'val_3way1shot.png'), os.path.join(output, 'feature_change.png')} <= printed
    assert {os.path.join(folder, 'val_accuracy.png') for folder in folders} <= printed
    assert f'{study}: a sine.py study' in redrawn.stdout


def test_an_equal_time_budget_stops_every_run_before_its_iterations(synthetic_dir, tmp_path):
    _compare(synthetic_dir, tmp_path, '--algorithms=maml', '--budget_minutes=1e-5', '--num_iterations=50')
    summary = results.read_summary(_runs(tmp_path, 'maml_fo_3way1shot_5steps_seed0_budget1e-05min')[0])
    assert summary['iterations'] < 50


def test_a_run_trained_with_other_flags_is_not_reused(synthetic_dir, tmp_path):
    """A finished run is reused only if its command confirms every flag that changes what is computed,
    not only the iterations (an older compare.py reused a 4-filter run when asked for 8 filters); and
    compare.py never trains into the folder a user's own `python maml.py` run would take."""
    _compare(synthetic_dir, tmp_path, '--algorithms=maml')
    error = _compare(synthetic_dir, tmp_path, '--algorithms=maml', passed=['--num_filters=8'], status=1)
    last = error.strip().splitlines()[-1]
    assert last.startswith('error: ') and 'cannot be reused' in last and 'num_filters' in last, error[-2000:]
    assert 'Traceback' not in error
    assert not os.path.exists(os.path.join(tmp_path, 'results', 'maml_fo_3way1shot_5steps_seed0'))


def test_tabulating_names_the_runs_that_are_missing(tmp_path):
    result = launch.run([sys.executable, os.path.join(REPO, 'compare.py'), '--train=false', '--algorithms=boil',
                         '--settings=5way1shot', f'--results_dir={tmp_path}'],
                        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith('error: unfinished or missing runs: ')
    assert 'boil_fo_5way1shot_5steps_seed0' in result.stderr


@pytest.mark.parametrize('name,message', [('reptil', "'reptil' is not a learner command"),
                                          ('mine/reptile.py', "'mine/reptile.py' is not a file"),
                                          ('tests/conftest.py', "'tests/conftest.py' is not a learner command")])
def test_an_unknown_learner_is_named(name, message, tmp_path):
    result = launch.run([sys.executable, os.path.join(REPO, 'compare.py'), f'--algorithms=maml,{name}',
                         f'--results_dir={tmp_path}'], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(f'error: --algorithms: {message}'), result.stderr[-500:]


def _outside_learner(tmp_path):
    """tests/cosine_learner.py copied into a folder of its own, outside the repository."""
    folder = tmp_path / 'mine'
    folder.mkdir()
    shutil.copy(os.path.join(REPO, 'tests', 'cosine_learner.py'), folder)
    return str(folder / 'cosine_learner.py')


def test_a_learner_of_ones_own_trains_under_compare_beside_the_repositorys(synthetic_dir, tmp_path):
    """A learner script outside the repository, given by its path, is trained, reused and tabulated
    like maml.py's, run with the package compare.py runs; nothing shared names it."""
    learners = '--algorithms=protonet,' + _outside_learner(tmp_path)
    first = _compare(synthetic_dir, tmp_path, learners)
    assert first.count('compare.py: training') == 2
    folder = _runs(tmp_path, 'cosine_learner_3way1shot_seed0')[0]
    assert results.read_hyperparameters(folder)['flags']['cosine_scale'] == 10  # Its own flag, recorded.
    second = _compare(synthetic_dir, tmp_path, learners)
    assert second.count('compare.py: reusing') == 2
    error = _compare(synthetic_dir, tmp_path, learners, passed=['--meta_lr=0.01'], status=1)
    assert 'cannot be reused' in error and 'meta_lr' in error
    rows = comparison.read_table(os.path.join(tmp_path, 'results', 'compare'))
    assert [row['algorithm'] for row in rows] == ['ProtoNet', 'CosineProto']
    assert rows[1]['test_accuracy'] == results.read_summary(folder)['test_post_accuracy']
    # Neither adapts its features: no feature-change figure (an older compare.py divided by zero drawing one).
    assert not os.path.exists(os.path.join(tmp_path, 'results', 'compare', 'feature_change.png'))


def test_a_learner_of_ones_own_learns_on_real_tasks_from_its_own_folder(real_omniglot, tmp_path):
    """The same script run as a command from its own folder: it meta-trains through experiment.run,
    and its validation accuracy on real 5-way 1-shot tasks rises above its initial weights'."""
    del real_omniglot  # Builds the cache the run reads.
    script = _outside_learner(tmp_path)
    command = [sys.executable, script, f'--data_dir={os.environ["OMNIGLOT_DIR"]}',
               f'--cache_dir={os.environ.get("OMNIGLOT_TEST_CACHE") or os.path.join(REPO, "data")}',
               f'--results_dir={tmp_path}/results', '--n_way=5', '--k_shot=1', '--num_query=5', '--num_filters=16',
               '--meta_batch_size=8', '--num_iterations=60', '--val_interval=60', '--num_val_tasks=100',
               '--num_test_tasks=20', '--progress=false']
    result = launch.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=600,
                        env={**os.environ, 'PYTHONPATH': REPO})
    assert result.returncode == 0, result.stderr[-2000:]
    folder = os.path.join(tmp_path, 'results', 'cosine_learner_5way1shot_seed0')
    accuracy = {row['iteration']: row['val_post_accuracy']
                for row in results.read_metrics(os.path.join(folder, results.METRICS_FILE))}
    assert list(accuracy) == [0, 60]
    assert accuracy[60] > accuracy[0] + 0.05, accuracy
