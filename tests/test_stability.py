"""The FO-MAML vs MAML++ stability comparison: its figures from known curves, and the whole command."""

import os
import sys

import numpy as np
import pytest

import launch
from fewshot import results
from fewshot.cli import runs
import stability

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fake_run(folder, accuracies, test, batch_norm='transductive', algorithm='FO-MAML'):
    os.makedirs(folder)
    rows = [{'iteration': 50 * i, 'seconds': 60.0 * i, 'val_pre_accuracy': 0.2, 'val_pre_ci95': 0.01,
             'val_post_accuracy': a, 'val_post_ci95': 0.01} for i, a in enumerate(accuracies)]
    results.write_csv(os.path.join(folder, results.METRICS_FILE), rows)
    results.write_json(os.path.join(folder, results.SUMMARY_FILE),
                       {'iterations': 50 * (len(accuracies) - 1), 'test_post_accuracy': test,
                        'test_post_ci95': 0.002, 'training_seconds': 60.0 * (len(accuracies) - 1),
                        'val_post_accuracy': accuracies[-1], 'val_post_ci95': 0.01, 'test_tasks': 600})
    results.write_json(os.path.join(folder, results.HYPERPARAMETERS_FILE),
                       {'algorithm': algorithm, 'batch_norm': batch_norm, 'flags': {'n_way': 5, 'k_shot': 5}})


CURVES = {  # method -> seed -> validation accuracy at iterations 0, 50, 100, 150, 200
    'FO-MAML': {0: [0.2, 0.6, 0.9, 0.7, 0.8], 1: [0.2, 0.7, 0.8, 0.85, 0.9]},
    'MAML++': {0: [0.2, 0.8, 0.9, 0.95, 0.96], 1: [0.2, 0.85, 0.9, 0.94, 0.96]},
}


def test_stability_figures_and_files_from_known_curves(tmp_path):
    for method, seeds in CURVES.items():
        for seed, curve in seeds.items():
            _fake_run(stability.run_folder(str(tmp_path), method, '5way5shot', seed), curve,
                      test=curve[-1] - 0.01, algorithm=method)
    out = str(tmp_path / 'stability')
    table = stability.compare(str(tmp_path), out, ['5way5shot'], [0, 1])
    maml, plus = table
    assert (maml['method'], plus['method']) == ('FO-MAML', 'MAML++')
    assert maml['final_val_std'] == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert plus['final_val_std'] == pytest.approx(0.0)
    # Seed 0 changes by .4 .3 .2 .1, seed 1 by .5 .1 .05 .05: means .25 and .175.
    assert maml['mean_abs_change'] == pytest.approx((0.25 + 0.175) / 2)
    # The second half (iterations >= 100): seed 0 .2 .1, seed 1 .05 .05.
    assert maml['mean_abs_change_second_half'] == pytest.approx((0.15 + 0.05) / 2)
    assert maml['largest_drop'] == pytest.approx(0.2) and plus['largest_drop'] == 0.0
    assert maml['test_mean'] == pytest.approx(0.84)
    for name in ('val_fo-maml_5way5shot.png', 'val_maml++_5way5shot.png', 'val_overlay_5way5shot.png',
                 'stability.csv', 'stability.md', 'runs.csv'):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    markdown = open(os.path.join(out, 'stability.md')).read()
    assert '| 5way5shot | MAML++ | 2 | 96.00% ± 0.00%' in markdown


def test_missing_runs_are_named(tmp_path):
    _fake_run(stability.run_folder(str(tmp_path), 'FO-MAML', '5way5shot', 0), [0.2, 0.9], test=0.9)
    with pytest.raises(results.RunError, match=r'unfinished or missing runs: .*stability/runs/'
                                               r'maml\+\+_5way5shot_5steps_eval-transductive_seed0'):
        stability.compare(str(tmp_path), str(tmp_path / 'out'), ['5way5shot'], [0])


def test_a_run_finished_with_other_iterations_is_not_reused(tmp_path):
    folder = stability.run_folder(str(tmp_path), 'FO-MAML', '5way5shot', 0)
    _fake_run(folder, [0.2, 0.9], test=0.9)
    assert runs.finished(folder, 50)
    with pytest.raises(results.RunError, match='finished 50 iterations, not 1000'):
        runs.finished(folder, 1000)


def test_bad_settings_get_a_one_line_error(tmp_path):
    result = launch.run([sys.executable, os.path.join(REPO, 'stability.py'), '--settings=5w5s',
                         f'--results_dir={tmp_path}'], capture_output=True, text=True, cwd=REPO)
    assert result.returncode != 0 and 'Traceback' not in result.stderr
    assert "--settings: '5w5s' is not of the form <N>way<K>shot" in result.stderr


def test_flags_that_name_the_run_folders_cannot_be_passed_through(tmp_path):
    stability.check_script_flags(['--meta_batch_size=16', '--progress=false'])
    for flag in ('--num_inner_steps=3', '--nomsl', '--seed', '--run_name=mine'):
        with pytest.raises(ValueError, match=f'--{flag.lstrip("-").split("=")[0].removeprefix("no")} cannot follow --'):
            stability.check_script_flags(['--progress=false', flag])
    result = launch.run([sys.executable, os.path.join(REPO, 'stability.py'), f'--results_dir={tmp_path}',
                         '--', '--num_inner_steps=3'], capture_output=True, text=True, cwd=REPO)
    assert result.returncode != 0 and 'Traceback' not in result.stderr
    assert 'error: --num_inner_steps cannot follow --' in result.stderr
    assert not os.listdir(tmp_path)  # Nothing trained.


def test_the_command_trains_both_methods_for_every_seed_then_compares(synthetic_dir, tmp_path):
    tiny = ['--num_filters=4', '--num_query=2', '--meta_batch_size=2', '--num_val_classes=4',
            '--num_train_classes=10', '--num_val_tasks=4', '--num_test_tasks=4', '--val_interval=2',
            '--progress=false', f'--data_dir={synthetic_dir}', f'--cache_dir={tmp_path}/cache']
    command = [sys.executable, os.path.join(REPO, 'stability.py'), '--settings=3way1shot',
               '--seeds=0,1', '--num_iterations=4', f'--results_dir={tmp_path}',
               f'--output_dir={tmp_path}/stability', '--', *tiny]
    result = launch.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / 'stability' / 'runs.csv') as f:
        assert sum(1 for _ in f) == 1 + 2 * 2  # Header, two methods x two seeds.
    for method in ('FO-MAML', 'MAML++'):
        for seed in (0, 1):
            folder = stability.run_folder(str(tmp_path), method, '3way1shot', seed)
            assert results.read_summary(folder)['iterations'] == 4
            # Both evaluated alike by default: FO-MAML's transductive batch norm.
            assert results.read_hyperparameters(folder)['batch_norm'].startswith('transductive')
    assert not os.path.exists(tmp_path / 'maml_fo_3way1shot_5steps_seed0')  # Never a user's own run folder.
    # Run again: every run is finished with the same flags, so it is reused and the tables are rewritten.
    again = launch.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert again.returncode == 0 and 'stability.py: training' not in again.stdout, again.stderr[-2000:]
    assert again.stdout.count('stability.py: reusing') == 4
