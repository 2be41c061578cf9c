"""Redraws every figure of run folders from their logs alone: no retraining, no TensorFlow.

    python figures.py                                         # every run folder under results/
    python figures.py results/maml++_5way5shot_5steps_seed0   # one run folder
    python figures.py --format pdf                            # vector figures (pdf or svg) beside the PNGs

What is drawn, from which file of a folder:
    val_accuracy            metrics.csv and hyperparameters.json (every run; for a transfer run,
                            its pretraining curve)
    inner_learning_rates    inner_learning_rates.csv (MAML++)
    comparison              comparison_tasks.csv (a transfer run compared with FO-MAML)
    val_fo-maml_*, val_maml++_*, val_overlay_*   runs.csv of a stability.py output folder and the
                            metrics.csv of the runs it lists (FO-MAML vs MAML++)
    val_<group>, val_time_<group>, feature_change   compare.csv of a compare.py output folder and
                            the run folders it lists
A metrics.csv cut short by a killed run is drawn up to its last complete row, with a warning.
Without folders it redraws every run folder under --results_dir, those the tools keep in
<tool>/runs/ and the learners' folders of a sine.py or navigation.py study included. What it does
not redraw it names, with the command that does: the MNIST lab's figure (initialization_lab.py
--redraw) and a study's own figures, which need its learners' models (sine.py or navigation.py
--resume).
"""

import os

from absl import flags

from fewshot import cli, comparison, plotting, results
from fewshot.cli import config  # noqa: F401  config defines --results_dir
import stability

flags.declare_key_flag('results_dir')  # config's: where to look when no folder is given.
flags.DEFINE_enum('format', 'png', ['png', 'pdf', 'svg'], 'File format of the figures.')
FLAGS = flags.FLAGS


LAB_FILE = 'per_seed.json'  # What initialization_lab.py redraws its figure from.
STUDIES = {'sine_results.md': 'sine.py', 'navigation_results.md': 'navigation.py'}  # A study's table -> its command.


def is_stability_folder(folder):
    return os.path.exists(os.path.join(folder, stability.RUNS_FILE))


def is_lab_folder(folder):
    return os.path.exists(os.path.join(folder, LAB_FILE))


def is_compare_folder(folder):
    return os.path.exists(os.path.join(folder, comparison.TABLE_FILE))


def study_command(folder):
    """The command of the sine.py or navigation.py study in `folder`, else None."""
    return next((command for table, command in STUDIES.items() if os.path.exists(os.path.join(folder, table))), None)


def is_run_folder(folder):
    """A run folder, or a link to one (figures are drawn wherever a link points)."""
    return results.is_run_folder(os.path.realpath(folder))


def subfolders(folder):
    return [os.path.join(folder, name) for name in sorted(os.listdir(folder))
            if os.path.isdir(os.path.join(folder, name))]


def find_folders(results_dir):
    """Every folder under results_dir whose figures this command draws or names: run folders, the run
    folders the tools keep in <tool>/runs/, stability and comparison folders, studies and their
    learners' run folders, the MNIST lab."""
    if not os.path.isdir(results_dir):
        raise results.RunError(f'--results_dir {results_dir}: folder does not exist')
    found = []
    for folder in subfolders(results_dir):
        kept_runs = os.path.join(folder, 'runs')
        if os.path.isdir(kept_runs):
            found += [run for run in subfolders(kept_runs) if is_run_folder(run)]
        if study_command(folder):
            found += [folder] + [learner for learner in subfolders(folder) if is_run_folder(learner)]
        elif is_stability_folder(folder) or is_compare_folder(folder) or is_run_folder(folder):
            found.append(folder)
    return found


def comparison_scores(path):
    """{setting: {method: [per-task accuracy]}} from a comparison_tasks.csv."""
    scores = {}
    for row in results.read_csv(path, columns=('setting', 'method', 'accuracy')):
        scores.setdefault(row['setting'], {}).setdefault(row['method'], []).append(row['accuracy'])
    return scores


def read_logs(folder):
    """Everything the figures of a run or stability folder are drawn from, read (and so checked)
    before anything is drawn; RunError naming a missing or damaged file."""
    if is_stability_folder(folder):
        return {'stability': stability.load_comparison(folder)}
    if is_compare_folder(folder):
        return {'compare': [comparison.load_run(row['folder']) for row in comparison.read_table(folder)]}
    logs = {'run': plotting.read_run(folder)}
    inner_lr, transfer_tasks = (os.path.join(folder, name) for name in (results.INNER_LR_FILE,
                                                                        results.COMPARISON_TASKS_FILE))
    if os.path.exists(inner_lr):
        logs['inner_learning_rates'] = results.read_csv(inner_lr, columns=('parameter',),
                                                        numbers=('step', 'inner_lr'))
    if os.path.exists(transfer_tasks):
        logs['comparison'] = comparison_scores(transfer_tasks)
    return logs


def draw(folder, logs, suffix='.png'):
    """Draws the figures of a folder from its `read_logs`; returns the paths written."""
    if 'stability' in logs:
        return stability.draw(logs['stability'], folder, suffix)
    if 'compare' in logs:
        return comparison.draw(logs['compare'], folder, suffix)
    written = [plotting.plot_run(folder, suffix, logs['run'])]
    if 'inner_learning_rates' in logs:
        written.append(os.path.join(folder, f'inner_learning_rates{suffix}'))
        plotting.plot_inner_learning_rates(logs['inner_learning_rates'], written[-1])
    if 'comparison' in logs:
        written.append(os.path.join(folder, f'comparison{suffix}'))
        plotting.plot_comparison(logs['comparison'], written[-1])
    return written


def redraw(folder, suffix='.png'):
    """Redraws every figure a run or stability folder has logs for; returns the paths written."""
    return draw(folder, read_logs(folder), suffix)


def main(argv):
    folders = argv[1:]
    if not folders:
        folders = find_folders(FLAGS.results_dir)
        if not folders:
            raise results.RunError(f'no run folders under {FLAGS.results_dir} (a run folder has '
                                   f'{results.HYPERPARAMETERS_FILE}); train something first')
    for folder in folders:
        if not os.path.isdir(folder):
            raise results.RunError(f'{folder}: folder does not exist')
    drawable = []
    for folder in folders:
        if is_lab_folder(folder):
            print(f'{folder}: the MNIST lab; redraw it with python initialization_lab.py --redraw')
        elif study_command(folder):
            print(f'{folder}: a {study_command(folder)} study; its own figures need its learners\' models: '
                  f'python {study_command(folder)} --run_name {os.path.basename(os.path.normpath(folder))} '
                  '--resume (with its flags) redraws them; its learners\' run figures are redrawn here')
        elif is_stability_folder(folder) or is_compare_folder(folder) or is_run_folder(folder):
            drawable.append(folder)
        else:
            print(f'{folder}: skipped: not a run, stability, comparison or study folder')
    # Every folder's logs are read first: a damaged one stops the command before anything is drawn.
    logs = {folder: read_logs(folder) for folder in drawable}
    for folder, folder_logs in logs.items():
        for path in draw(folder, folder_logs, f'.{FLAGS.format}'):
            print(path)


if __name__ == '__main__':
    cli.run(main, takes_arguments=True)
