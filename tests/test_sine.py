"""sine.py end to end: every learner and the baseline trained, tested on the same tasks and
compared in figures and a table; a study stopped and resumed equals one run straight through."""

import json
import os
import sys

import pytest

import launch
from fewshot import results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--hidden=8,8', '--num_val_tasks=8', '--num_test_tasks=10', '--num_eval_points=20',
        '--meta_batch_size=4', '--num_curve_steps=3', '--num_figure_tasks=2', '--progress=false']


def _sine(tmp_path, *flags):
    result = launch.run([sys.executable, os.path.join(REPO, 'sine.py'), f'--results_dir={tmp_path}', *TINY, *flags],
                        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def test_every_learner_is_trained_tested_and_compared(tmp_path):
    _sine(tmp_path, '--num_iterations=6', '--val_interval=3', '--k_shot=5')
    study = os.path.join(tmp_path, 'sine_k5_seed0')
    for figure in ('sine_error_curves.png', 'sine_fits.png'):
        assert os.path.getsize(os.path.join(study, figure)) > 10_000
    with open(os.path.join(study, 'sine_results.md'), encoding='utf-8') as f:
        table = f.read()
    summaries = {}
    for name in ('maml', 'fomaml', 'meta_sgd', 'anil', 'reptile', 'pretrained'):
        summaries[name] = summary = results.read_json(os.path.join(study, name, results.SUMMARY_FILE))
        assert summary['iterations'] == 6 and summary['k_shot'] == 5 and summary['test_tasks'] == 10
        assert len(summary['test_mse_after_steps']) == len(summary['test_ci95_after_steps']) == 4
        assert f'| {summary["algorithm"]} | {summary["test_mse_after_steps"][0]:.3f}' in table
        rows = results.read_metrics(os.path.join(study, name, 'metrics.csv'), required=True)
        assert [row['iteration'] for row in rows] == [0, 3, 6] and 'val_post_mse' in rows[0]
        with open(os.path.join(study, name, 'function_fits.json'), encoding='utf-8') as f:
            fits = json.load(f)
        assert len(fits) == 2 and sorted(fits[0]['predictions']) == ['0', '1', '10']
    assert summaries['pretrained']['inner_lr'] in (0.001, 0.003, 0.01, 0.03, 0.1, 0.3)
    assert {n: s['inner_lr'] for n, s in summaries.items() if n != 'pretrained'} == {
        'maml': 0.01, 'fomaml': 0.01, 'meta_sgd': 0.01, 'anil': 0.01, 'reptile': 0.02}
    # One set of validation tasks and one initialisation (the seed) for all: alike before training.
    first = {name: results.read_metrics(os.path.join(study, name, 'metrics.csv'))[0]['val_pre_mse']
             for name in summaries}
    assert len(set(first.values())) == 1, first


def test_a_resumed_study_equals_one_run_straight_through(tmp_path):
    _sine(tmp_path / 'straight', '--learners=maml', '--num_iterations=8', '--val_interval=4')
    _sine(tmp_path / 'stopped', '--learners=maml', '--num_iterations=4', '--val_interval=4')
    _sine(tmp_path / 'stopped', '--learners=maml', '--num_iterations=8', '--val_interval=4', '--resume')
    straight, resumed = (results.read_metrics(os.path.join(tmp_path, which, 'sine_k10_seed0', 'maml', 'metrics.csv'))
                         for which in ('straight', 'stopped'))
    assert [r['iteration'] for r in resumed] == [0, 4, 8]
    for a, b in zip(straight, resumed):
        assert {k: v for k, v in a.items() if k != 'seconds'} == pytest.approx(
            {k: v for k, v in b.items() if k != 'seconds'}, rel=1e-6, nan_ok=True)
