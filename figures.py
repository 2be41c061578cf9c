"""Redraws every figure of run folders from their logs alone: no retraining, no TensorFlow.

    python figures.py                                         # every run folder under results/
    python figures.py results/maml++_5way5shot_5steps_seed0   # one run folder
    python figures.py --format pdf                            # vector figures (pdf or svg) beside the PNGs

What is drawn, from which file of a folder:
    val_accuracy            metrics.csv and hyperparameters.json (every run; for a transfer run,
                            its pretraining curve)
    inner_learning_rates    inner_learning_rates.csv (MAML++)
    comparison              comparison_tasks.csv (a transfer run compared with FO-MAML)
    val_maml_*, val_maml++_*, val_overlay_*   runs.csv of a stability.py output folder and the
                            metrics.csv of the runs it lists (MAML vs MAML++)
A metrics.csv cut short by a killed run is drawn up to its last complete row, with a warning.
The MNIST lab's folder is left to its own `python initialization_lab.py --redraw`.
"""

import os

from absl import flags

from fewshot import config, errors, plotting, results  # config defines --results_dir
import stability

flags.declare_key_flag('results_dir')  # config's: where to look when no folder is given.
flags.DEFINE_enum('format', 'png', ['png', 'pdf', 'svg'], 'File format of the figures.')
FLAGS = flags.FLAGS


LAB_FILE = 'per_seed.json'  # What initialization_lab.py redraws its figure from.


def is_stability_folder(folder):
    return os.path.exists(os.path.join(folder, stability.RUNS_FILE))


def is_lab_folder(folder):
    return os.path.exists(os.path.join(folder, LAB_FILE))


def find_folders(results_dir):
    """The run folders (with hyperparameters.json) and stability folders directly under results_dir."""
    if not os.path.isdir(results_dir):
        raise results.RunError(f'--results_dir {results_dir}: folder does not exist')
    found = [os.path.join(results_dir, name) for name in sorted(os.listdir(results_dir))]
    return [folder for folder in found if is_stability_folder(folder)
            or os.path.exists(os.path.join(folder, results.HYPERPARAMETERS_FILE))]


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
    logs = {'run': plotting.read_run(folder)}
    inner_lr, comparison = (os.path.join(folder, name) for name in (results.INNER_LR_FILE,
                                                                    results.COMPARISON_TASKS_FILE))
    if os.path.exists(inner_lr):
        logs['inner_learning_rates'] = results.read_csv(inner_lr, columns=('parameter',),
                                                        numbers=('step', 'inner_lr'))
    if os.path.exists(comparison):
        logs['comparison'] = comparison_scores(comparison)
    return logs


def draw(folder, logs, suffix='.png'):
    """Draws the figures of a folder from its `read_logs`; returns the paths written."""
    if 'stability' in logs:
        return stability.draw(logs['stability'], folder, suffix)
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
    for folder in [folder for folder in folders if is_lab_folder(folder)]:
        print(f'{folder}: the MNIST lab; redraw it with python initialization_lab.py --redraw')
    # Every folder's logs are read first: a damaged one stops the command before anything is drawn.
    logs = {folder: read_logs(folder) for folder in folders if not is_lab_folder(folder)}
    for folder, folder_logs in logs.items():
        for path in draw(folder, folder_logs, f'.{FLAGS.format}'):
            print(path)


if __name__ == '__main__':
    errors.run(main, takes_arguments=True)
