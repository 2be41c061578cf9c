"""The output folders the commands write, told apart by the file each kind keeps (a run folder, a
stability or compare.py comparison, a sine.py or navigation.py study, the MNIST lab), and every figure
of a run or comparison folder redrawn from its logs alone: no retraining, no TensorFlow (figures.py)."""

import os

from fewshot import comparison, plotting, results, stability
from fewshot.errors import named

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
        raise results.RunError(f'{named("results_dir")} {results_dir}: folder does not exist')
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
    learned_rates = os.path.join(folder, results.LEARNED_RATES_FILE)
    if os.path.exists(learned_rates):
        logs['learned_rates'] = results.read_arrays(learned_rates)
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
    if 'learned_rates' in logs:
        written.append(os.path.join(folder, f'meta_sgd_learning_rates{suffix}'))
        plotting.plot_distributions(logs['learned_rates'], written[-1],
                                    'Meta-SGD: learned inner learning rates per weight tensor', 'inner learning rate')
    if 'comparison' in logs:
        written.append(os.path.join(folder, f'comparison{suffix}'))
        plotting.plot_comparison(logs['comparison'], written[-1])
    return written


def redraw(folder, suffix='.png'):
    """Redraws every figure a run or stability folder has logs for; returns the paths written."""
    return draw(folder, read_logs(folder), suffix)
