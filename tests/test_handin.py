"""The hand-in: figures redrawn from logs, the report's numbers, the submission zip."""

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import report
import launch
from fewshot import errors, folders, plotting, results
import stability
import submit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = {'n_way': 5, 'k_shot': 5, 'inner_lr': 0.4, 'num_inner_steps': 5, 'meta_lr': 0.001, 'seed': 0,
         'data_dir': '/somewhere', 'msl': True, 'da': True, 'bnrs': True, 'bnwb': True, 'lslr': True,
         'cosine_annealing': True}


def make_run(folder, algorithm, val, test, k_shot=5, seed=0, batch_norm='transductive'):
    """A finished run folder as the scripts write it, with known numbers."""
    os.makedirs(folder)
    rows = [{'iteration': 50 * i, 'seconds': 30.0 * i, 'val_pre_accuracy': 0.2, 'val_pre_ci95': 0.01,
             'val_post_accuracy': accuracy, 'val_post_ci95': 0.004, 'train_query_post_accuracy': accuracy}
            for i, accuracy in enumerate(val)]
    results.write_csv(os.path.join(folder, results.METRICS_FILE), rows)
    results.write_json(os.path.join(folder, results.HYPERPARAMETERS_FILE), {
        'algorithm': algorithm, 'seed': seed, 'batch_norm': batch_norm,
        'flags': {**FLAGS, 'k_shot': k_shot, 'seed': seed},
        'versions': {'tensorflow': '2.21.0', 'keras': '3.15.1'}})
    results.write_json(os.path.join(folder, results.SUMMARY_FILE), {
        'iterations': rows[-1]['iteration'], 'training_seconds': rows[-1]['seconds'],
        'val_post_accuracy': val[-1], 'val_post_ci95': 0.004, 'test_post_accuracy': test,
        'test_post_ci95': 0.0017, 'test_tasks': 600})
    for name in (results.MODEL_FILE, results.CHECKPOINT_FILE):
        with open(os.path.join(folder, name), 'wb') as f:
            f.write(os.urandom(64))
    os.makedirs(os.path.join(folder, 'tensorboard'))
    with open(os.path.join(folder, 'tensorboard', 'events.out'), 'wb') as f:
        f.write(b'event')
    return folder


@pytest.fixture
def results_dir(tmp_path):
    """results/ with FO-MAML, MAML++ and transfer runs, a comparison and a stability folder."""
    out = tmp_path / 'results'
    make_run(str(out / 'maml_fo_5way5shot_5steps_seed0'), 'FO-MAML', [0.3, 0.9, 0.9812], 0.9803)
    make_run(str(out / 'maml++_5way5shot_5steps_seed0'), 'MAML++', [0.3, 0.95, 0.9911], 0.9876,
             batch_norm='per-step running statistics (non-transductive)')
    transfer = make_run(str(out / 'transfer_5way5shot_seed0'), 'transfer', [0.6, 0.985], 0.9831)
    results.write_csv(os.path.join(transfer, 'comparison.csv'), [
        {'setting': '5-way 5-shot', 'method': 'FO-MAML', 'test_accuracy': 0.9803, 'ci95': 0.0017,
         'tasks': 600, 'run': 'results/maml_fo_5way5shot_5steps_seed0'},
        {'setting': '5-way 5-shot', 'method': 'transfer', 'test_accuracy': 0.9831, 'ci95': 0.0015,
         'tasks': 600, 'run': 'results/transfer_5way5shot_seed0'},
        {'setting': '5-way 1-shot', 'method': 'FO-MAML', 'test_accuracy': 0.9358, 'ci95': 0.0047,
         'tasks': 600, 'run': 'results/maml_fo_5way1shot_5steps_seed0'},
        {'setting': '5-way 1-shot', 'method': 'transfer', 'test_accuracy': 0.9218, 'ci95': 0.0056,
         'tasks': 600, 'run': 'results/transfer_5way5shot_seed0'}])
    results.write_csv(os.path.join(transfer, results.COMPARISON_TASKS_FILE), [
        {'setting': '5-way 5-shot', 'method': method, 'task': task, 'accuracy': 0.9 + 0.01 * task}
        for method in ('FO-MAML', 'transfer') for task in range(5)])
    for method, seeds in {'FO-MAML': [0.90, 0.93, 0.96], 'MAML++': [0.97, 0.975, 0.98]}.items():
        for seed, final in enumerate(seeds):
            make_run(stability.run_folder(str(out), method, '5way5shot', seed), method, [0.3, final - 0.1, final],
                     final - 0.005, seed=seed)
    stability.compare(str(out), str(out / 'stability'), ['5way5shot'], [0, 1, 2])
    for folder in folders.find_folders(str(out)):
        folders.redraw(folder)
    return out


# Figures from logs -------------------------------------------------------------

def test_redrawing_from_the_same_logs_gives_the_same_figures(results_dir):
    run = results_dir / 'maml++_5way5shot_5steps_seed0'
    results.write_csv(str(run / results.INNER_LR_FILE),
                      [{'parameter': 'conv1/kernel', 'step': s, 'inner_lr': 0.4 - 0.01 * s} for s in range(5)])
    first = {path: open(path, 'rb').read() for path in folders.redraw(str(run))}
    assert sorted(os.path.basename(p) for p in first) == ['inner_learning_rates.png', 'val_accuracy.png']
    again = {path: open(path, 'rb').read() for path in folders.redraw(str(run))}
    assert first == again
    stability_figures = folders.redraw(str(results_dir / 'stability'))
    assert sorted(os.path.basename(p) for p in stability_figures) == [
        'val_fo-maml_5way5shot.png', 'val_maml++_5way5shot.png', 'val_overlay_5way5shot.png']
    assert [os.path.basename(p) for p in folders.redraw(str(results_dir / 'transfer_5way5shot_seed0'), '.svg')] \
        == ['val_accuracy.svg', 'comparison.svg']


def test_a_meta_sgd_run_s_learned_rates_are_drawn_from_the_file_it_keeps(results_dir):
    """The learner writes its rates (save); the figures are drawn from them like every other figure."""
    run = results_dir / 'maml++_5way5shot_5steps_seed0'
    np.savez(str(run / results.LEARNED_RATES_FILE), **{'conv1/kernel': np.full((3, 3, 1, 2), 0.4)})
    assert sorted(os.path.basename(p) for p in folders.redraw(str(run))) == ['meta_sgd_learning_rates.png',
                                                                             'val_accuracy.png']
    open(run / results.LEARNED_RATES_FILE, 'wb').write(b'not an npz')
    with pytest.raises(errors.RunError, match='meta_sgd_learning_rates.npz cannot be read'):
        folders.redraw(str(run))


def test_a_truncated_metrics_file_is_drawn_up_to_its_last_complete_row(results_dir, caplog):
    run = results_dir / 'maml_fo_5way5shot_5steps_seed0'
    intact = open(folders.redraw(str(run))[0], 'rb').read()
    with open(run / results.METRICS_FILE, 'a') as f:
        f.write('150,90.0,0.2,0.01,0.9')  # A row cut off by a kill.
    redrawn = folders.redraw(str(run))[0]
    assert open(redrawn, 'rb').read() == intact
    assert 'line 5 is incomplete or malformed; using the 3 rows before it' in caplog.text


def test_figures_command_errors_are_one_line(tmp_path):
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'no_metrics').mkdir()
    results.write_json(str(tmp_path / 'no_metrics' / results.HYPERPARAMETERS_FILE),
                       {'flags': {'n_way': 5, 'k_shot': 5}})
    for args, message in (([f'--results_dir={tmp_path / "empty"}'], 'no run folders under'),
                          ([str(tmp_path / 'no_metrics')], 'metrics.csv does not exist'),
                          ([str(tmp_path / 'nowhere')], 'folder does not exist')):
        result = launch.run([sys.executable, os.path.join(REPO, 'figures.py'), *args],
                            capture_output=True, text=True, cwd=REPO)
        assert result.returncode == 1 and 'Traceback' not in result.stderr
        assert result.stderr.strip().startswith('error:') and message in result.stderr, result.stderr


# The report --------------------------------------------------------------------

def test_the_reports_numbers_are_the_run_folders_numbers(results_dir):
    runs, stability_dir = report.find_runs(str(results_dir))
    output = results_dir.parent / 'report.md'
    markdown_path, pdf_path = report.write_report(runs, stability_dir, str(output))
    text = open(markdown_path).read()
    for name in ('maml_fo_5way5shot_5steps_seed0', 'maml++_5way5shot_5steps_seed0', 'transfer_5way5shot_seed0'):
        summary = json.load(open(results_dir / name / results.SUMMARY_FILE))
        assert f'{100 * summary["test_post_accuracy"]:.2f}% ± {100 * summary["test_post_ci95"]:.2f}%' in text
        assert f'{100 * summary["val_post_accuracy"]:.2f}%' in text
        assert f'{summary["training_seconds"] / 60:.1f} min' in text
    stability_rows = results.read_csv(str(results_dir / 'stability' / 'stability.csv'))
    for row in stability_rows:
        assert f'{100 * row["final_val_mean"]:.2f}% ± {100 * row["final_val_std"]:.2f}%' in text
        assert f'{100 * row["largest_drop"]:.2f}%' in text
    test_mean = {row['method']: row['test_mean'] for row in stability_rows}
    assert (f'On meta-test MAML++ was more accurate: {100 * test_mean["MAML++"]:.2f}% vs '
            f'{100 * test_mean["FO-MAML"]:.2f}% (mean over seeds)') in text
    assert '98.31% ± 0.15%' in text and '93.58% ± 0.47%' in text  # From comparison.csv.
    assert 'per-step running statistics (non-transductive)' in text  # The batch-norm mode.
    assert 'No expected run is missing.' in text
    # Every figure the report names exists, relative to the report.
    for line in text.splitlines():
        if line.startswith('!['):
            assert (output.parent / line[line.index('](') + 2:-1]).exists(), line
    with open(pdf_path, 'rb') as f:
        assert f.read(5) == b'%PDF-'


def test_the_report_names_the_student_counts_the_tasks_and_marks_its_drafts(results_dir):
    runs, stability_dir = report.find_runs(str(results_dir))
    unnamed = report.to_markdown(report.build_report(runs, stability_dir, str(results_dir.parent)))
    assert 'Name: (not given: python report.py --name ...)' in unnamed
    text = report.to_markdown(report.build_report(runs, stability_dir, str(results_dir.parent),
                                                  name='Kim Minji', student_number='2020-12345'))
    assert 'Name: Kim Minji. Student number: 2020-12345.' in text
    # The test-task count is each run's own, not a fixed "(600 tasks)".
    assert '(600 tasks)' not in text and '| test tasks |' in text.replace('acc. | test tasks', '| test tasks')
    transfer = runs[[run['name'] for run in runs].index('transfer_5way5shot_seed0')]
    assert f'| {transfer["summary"]["test_tasks"]} |' in text
    # Differences are in points; every generated analysis paragraph says it is a draft.
    assert 'transfer learning is ahead by 0.28 points' in text and 'ahead by 0.28%' not in text
    analyses = [line for line in text.splitlines() if 'ahead by' in line or 'more stable by' in line
                or 'not more stable by' in line]
    assert analyses and all(line.startswith(report.DRAFT) for line in analyses)


def test_a_meta_test_difference_within_a_runs_confidence_interval_is_not_called_a_gain():
    maml = {'test_mean': 0.9796, 'test_ci95_mean': 0.0018, 'batch_norm': 'transductive'}
    close = report.accuracy_sentence(maml, {'test_mean': 0.9804, 'test_ci95_mean': 0.0017,
                                            'batch_norm': 'transductive'})
    assert close.startswith('On meta-test the two were about as accurate: 98.04% vs 97.96%')
    assert close.endswith('+0.08 points, within the 95% confidence half-width of a single run (0.18 points).')
    worse = report.accuracy_sentence(maml, {'test_mean': 0.9750, 'test_ci95_mean': 0.0017,
                                            'batch_norm': 'support-set moments'})
    assert worse.startswith('On meta-test MAML++ was less accurate') and '-0.46 points' in worse
    assert worse.endswith('batch norm used transductive for MAML and support-set moments for MAML++, '
                          'so their accuracies differ by that too.')


def test_missing_runs_are_named_not_skipped(tmp_path):
    # The FO-MAML run there is has seed 3: the transfer run's command compares with it, not with seed 0's.
    make_run(str(tmp_path / 'results' / 'maml_fo_5way5shot_5steps_seed3'), 'FO-MAML', [0.3, 0.98], 0.97)
    runs, stability_dir = report.find_runs(str(tmp_path / 'results'))
    text = report.to_markdown(report.build_report(runs, stability_dir, str(tmp_path)))
    assert ('Missing: MAML++ 5-way 5-shot (python maml_plusplus.py); transfer 5-way 5-shot (python maml_transfer.py '
            f'--compare_with {tmp_path / "results" / "maml_fo_5way5shot_5steps_seed3"})') in text
    assert 'Missing: the MAML vs MAML++ stability comparison (python stability.py).' in text
    alone = report.to_markdown(report.build_report([], stability_dir, str(tmp_path)))
    assert ('transfer 5-way 5-shot (python maml.py --num_inner_steps 5, then python maml_transfer.py --compare_with '
            '<its run folder>)') in alone


def test_report_without_runs_or_metrics_is_a_clear_error(tmp_path):
    (tmp_path / 'results').mkdir()
    with pytest.raises(results.RunError, match='no run folders found'):
        report.find_runs(str(tmp_path / 'results'))
    broken = tmp_path / 'results' / 'broken'
    broken.mkdir()
    results.write_json(str(broken / results.HYPERPARAMETERS_FILE), {'flags': FLAGS})
    with pytest.raises(results.RunError, match='metrics.csv does not exist'):
        report.find_runs(str(tmp_path / 'results'))


def test_the_mnist_lab_folder_is_left_out_of_figures_and_report(results_dir):
    lab = results_dir / 'initialization_lab'
    lab.mkdir()
    results.write_json(str(lab / results.HYPERPARAMETERS_FILE), {'flags': {}})
    results.write_json(str(lab / folders.LAB_FILE), {'per_seed': []})
    runs, _ = report.find_runs(str(results_dir))
    assert 'initialization_lab' not in {run['name'] for run in runs}
    result = launch.run([sys.executable, os.path.join(REPO, 'figures.py'), f'--results_dir={results_dir}'],
                        capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert 'initialization_lab: the MNIST lab; redraw it with python initialization_lab.py --redraw' in result.stdout


# The zip -----------------------------------------------------------------------

def test_zip_name_follows_the_rule_and_refuses_bad_parts():
    assert submit.zip_name('송재현', '2020-12345') == '송재현_2020-12345_Assignment2.zip'
    for name, number in (('', '1'), ('a/b', '1'), ('Kim', ' 1'), ('Kim', 'a:b')):
        with pytest.raises(ValueError, match='--name|--student_number'):
            submit.zip_name(name, number)


def test_zip_holds_code_report_and_results_only_and_round_trips_non_ascii_names(results_dir, tmp_path):
    runs, stability_dir = report.find_runs(str(results_dir))
    report_path, _ = report.write_report(runs, stability_dir, str(results_dir.parent / 'report.md'))
    entries = submit.contents(REPO, str(results_dir), report_path)
    folder = '송재현_2020-12345_Assignment2'
    path = str(tmp_path / f'{folder}.zip')
    listing = submit.write_zip(path, folder, entries)

    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        assert all(info.flag_bits & 0x800 for info in archive.infolist())  # UTF-8 names.
    assert names == [name for name, _ in listing] and all(n.startswith(folder + '/') for n in names)
    inside = {name[len(folder) + 1:] for name in names}
    assert {'maml.py', 'maml_plusplus.py', 'maml_transfer.py', 'stability.py', 'figures.py', 'report.py',
            'submit.py', 'fewshot/__init__.py', 'fewshot/cli/experiment.py', 'requirements.txt', 'README.md',
            'report.md', 'report.pdf'} <= inside
    # The hand-in, not the project: no tests, reference runs, docs, CI or unrelated commands.
    assert not any(name.startswith(('tests/', 'reference/', 'docs/', '.ci/', 'protocols/')) for name in inside)
    assert not inside & {'benchmark.py', 'reference.py', 'navigation.py', 'pytest.ini'}
    # No file carries an absolute path of this machine (hyperparameters.json held --data_dir=/somewhere).
    with zipfile.ZipFile(path) as archive:
        for name in names:
            content = archive.read(name)
            assert str(tmp_path).encode() not in content and REPO.encode() not in content, name
            assert b'/somewhere' not in content or b'\xe2\x80\xa6/somewhere' in content, name
    assert {'results/maml_fo_5way5shot_5steps_seed0/model.keras',
            'results/maml_fo_5way5shot_5steps_seed0/val_accuracy.png',
            'results/maml_fo_5way5shot_5steps_seed0/hyperparameters.json',
            'results/maml_fo_5way5shot_5steps_seed0/metrics.csv',
            'results/stability/val_overlay_5way5shot.png', 'results/stability/stability.md'} <= inside
    for name in inside:
        assert not name.endswith(results.CHECKPOINT_FILE) and '/tensorboard/' not in name
        assert not name.startswith(('data/', '.venv/')) and '__pycache__' not in name
    with pytest.raises(results.RunError, match='already exists; pass --force'):
        submit.write_zip(path, folder, entries)
    submit.write_zip(path, folder, entries, force=True)


def test_submit_command_prints_the_listing_and_refuses_to_overwrite(results_dir, tmp_path):
    runs, stability_dir = report.find_runs(str(results_dir))
    report_path, _ = report.write_report(runs, stability_dir, str(tmp_path / 'report.md'))
    command = [sys.executable, os.path.join(REPO, 'submit.py'), '--name=Kim', '--student_number=2020-12345',
               f'--results_dir={results_dir}', f'--report={report_path}', f'--zip_dir={tmp_path / "out"}']
    first = launch.run(command, capture_output=True, text=True, cwd=REPO)
    assert first.returncode == 0, first.stderr
    assert 'Kim_2020-12345_Assignment2/report.pdf' in first.stdout and 'every entry re-read' in first.stdout
    assert 'left out, not tracked by git' not in first.stdout or 'tests/' not in first.stdout
    again = launch.run(command, capture_output=True, text=True, cwd=REPO)
    assert again.returncode == 1 and 'already exists; pass --force' in again.stderr
    missing = launch.run(command[:-2] + [f'--report={tmp_path / "none.md"}', '--force'],
                         capture_output=True, text=True, cwd=REPO)
    assert missing.returncode == 1 and 'run python report.py first' in missing.stderr


def test_submit_works_outside_a_git_checkout_and_names_untracked_files_it_leaves_out(results_dir, tmp_path):
    """A student's copy without .git still zips; in a checkout, an untracked file of theirs is named."""
    runs, stability_dir = report.find_runs(str(results_dir))
    report_path, _ = report.write_report(runs, stability_dir, str(tmp_path / 'report.md'))
    copy = tmp_path / 'copy'
    files = submit.code_files(REPO)
    for name in files:
        os.makedirs(copy / os.path.dirname(name), exist_ok=True)
        with open(os.path.join(REPO, name), 'rb') as source, open(copy / name, 'wb') as target:
            target.write(source.read())
    command = [sys.executable, str(copy / 'submit.py'), '--name=Kim', '--student_number=1',
               f'--results_dir={results_dir}', f'--report={report_path}', f'--zip_dir={tmp_path / "out"}']
    outside = launch.run(command, capture_output=True, text=True, cwd=copy)
    assert outside.returncode == 0, outside.stderr[-2000:]
    assert 'is not a git checkout' in outside.stdout
    with zipfile.ZipFile(tmp_path / 'out' / 'Kim_1_Assignment2.zip') as archive:
        assert {f'Kim_1_Assignment2/{name}' for name in files} <= set(archive.namelist())

    subprocess.run(['git', 'init', '-q'], cwd=copy, check=True)
    subprocess.run(['git', 'add', *files], cwd=copy, check=True)
    (copy / 'my_notes.py').write_text('# not part of the hand-in\n')
    inside = launch.run(command + ['--force'], capture_output=True, text=True, cwd=copy)
    assert inside.returncode == 0, inside.stderr[-2000:]
    assert 'left out, not tracked by git and not part of the hand-in: my_notes.py' in inside.stdout


def test_a_runs_figure_names_its_dataset_and_draws_the_assignment_bar_only_on_omniglot(tmp_path, monkeypatch):
    drawn, draw = [], plotting.plot_accuracy
    monkeypatch.setattr(plotting, 'plot_accuracy', lambda rows, path, title, **options: (
        drawn.append((title, options['assignment_bar'])), draw(rows, path, title, **options)))
    omniglot = make_run(str(tmp_path / 'omniglot'), 'FO-MAML', [0.3, 0.98], 0.97)
    mine = make_run(str(tmp_path / 'mine'), 'FO-MAML', [0.3, 0.6], 0.55)
    recorded = results.read_hyperparameters(mine)
    recorded['flags']['dataset'] = 'folder:/data/my_flowers/'
    results.write_json(os.path.join(mine, results.HYPERPARAMETERS_FILE), recorded)
    paths = [plotting.plot_run(folder) for folder in (omniglot, mine)]
    assert drawn == [('FO-MAML, 5-way 5-shot Omniglot', True), ('FO-MAML, 5-way 5-shot my_flowers', False)]
    assert all(os.path.getsize(path) > 0 for path in paths)
