"""Learners side by side, from their finished run folders alone: the table and figures of
compare.py, read back by report.py.

A comparison folder holds
    compare.csv / compare.md     one row per run: meta-test accuracy ± 95% CI, seconds per
                                 meta-iteration, training time, peak memory, feature change,
                                 evaluation batch norm
    val_<group>.png              validation accuracy against meta-iterations, one line per learner
    val_time_<group>.png         the same against training time
    feature_change.png           how far adaptation moves the support set's features, per learner
where a group is a task setting and a backbone (5way5shot, 5way5shot_resnet, ...).
"""

import os

from fewshot import plotting, results
from fewshot.errors import named

TABLE_FILE = 'compare.csv'
COLUMNS = ('group', 'setting', 'backbone', 'algorithm', 'folder', 'batch_norm')
NUMBERS = ('inner_steps', 'iterations', 'test_accuracy', 'test_ci95', 'test_tasks', 'seconds_per_iteration',
           'training_minutes', 'peak_memory_gb', 'feature_similarity')


def number(value, spec):
    """`value` formatted by `spec`, or '—' where the learner has no such number (NaN: a
    Prototypical Network has no inner steps and no adaptation to move its features)."""
    return '—' if value != value else format(value, spec)


def group_name(setting, backbone):
    """'5way5shot', 'conv4' -> '5way5shot'; with another backbone its name is appended."""
    return setting if backbone == 'conv4' else f'{setting}_{backbone}'


def load_run(folder):
    """One finished run as a table row, with its validation curve ('curve': iterations, minutes,
    accuracies) and its test tasks' checksum; RunError naming the folder if it has not finished."""
    summary = results.read_summary(folder)
    if summary is None:
        raise results.RunError(f'{folder}: no {results.SUMMARY_FILE}, the run has not finished')
    hyperparameters = results.read_hyperparameters(folder)
    flags = hyperparameters['flags']
    rows = results.read_metrics(os.path.join(folder, results.METRICS_FILE), required=True)
    setting, backbone = f'{flags["n_way"]}way{flags["k_shot"]}shot', flags.get('backbone', 'conv4')
    precision = flags.get('precision', 'float32')  # Runs before --precision computed in float32.
    return {
        'group': group_name(setting, backbone), 'setting': setting, 'backbone': backbone,
        'algorithm': hyperparameters.get('algorithm', '?') + ('' if precision == 'float32' else f' ({precision})'),
        'folder': folder,
        'batch_norm': hyperparameters.get('batch_norm', 'not recorded'),
        'inner_steps': flags.get('num_inner_steps', float('nan')), 'iterations': summary['iterations'],
        'test_accuracy': summary['test_post_accuracy'], 'test_ci95': summary['test_post_ci95'],
        'test_tasks': summary['test_tasks'],
        'seconds_per_iteration': summary['training_seconds'] / max(summary['iterations'], 1),
        'training_minutes': summary['training_seconds'] / 60,
        'peak_memory_gb': summary.get('peak_memory_gb', float('nan')),
        'feature_similarity': summary.get('test_support_feature_similarity', float('nan')),
        'test_tasks_checksum': hyperparameters.get('task_checksums', {}).get('test'),
        'curve': ([row['iteration'] for row in rows], [row['seconds'] / 60 for row in rows],
                  [row['val_post_accuracy'] for row in rows]),
    }


def check_same_tasks(runs):
    """RunError unless the runs of each group were meta-tested on the same tasks (by checksum)."""
    for group in dict.fromkeys(run['group'] for run in runs):
        checksums = {run['test_tasks_checksum'] for run in runs if run['group'] == group}
        if len(checksums) > 1:
            folders = ', '.join(run['folder'] for run in runs if run['group'] == group)
            raise results.RunError(f'the {group} runs were meta-tested on different tasks ({folders}): '
                                   f'train them with the same {named("eval_seed")}, {named("num_test_tasks")} and data')


def markdown_table(rows):
    """The comparison table in Markdown, one row per run."""
    lines = ['| setting | backbone | algorithm | inner steps | iterations | meta-test accuracy ± 95% CI '
             '| s / iteration | training | peak memory | support-feature similarity | evaluation batch norm |',
             '|---|---|---|---|---|---|---|---|---|---|---|']
    for row in rows:
        lines.append(f'| {row["setting"]} | {row["backbone"]} | {row["algorithm"]} '
                     f'| {number(row["inner_steps"], ".0f")} '
                     f'| {row["iterations"]:.0f} | {row["test_accuracy"]:.2%} ± {row["test_ci95"]:.2%} '
                     f'| {row["seconds_per_iteration"]:.3f} | {row["training_minutes"]:.1f} min '
                     f'| {row["peak_memory_gb"]:.2f} GB | {number(row["feature_similarity"], ".3f")} '
                     f'| {row["batch_norm"]} |')
    return '\n'.join(lines) + '\n'


def draw(runs, output_dir, suffix='.png'):
    """The figures of the comparison (see the module docstring), as `suffix` files; returns the paths written."""
    written = []
    for group in dict.fromkeys(run['group'] for run in runs):
        members = [run for run in runs if run['group'] == group]
        for axis, name, label in ((0, f'val_{group}{suffix}', 'meta-iteration'),
                                  (1, f'val_time_{group}{suffix}', 'training time (minutes)')):
            curves = {run['algorithm']: (run['curve'][axis], run['curve'][2]) for run in members}
            written.append(os.path.join(output_dir, name))
            plotting.plot_curves(curves, written[-1], f'{group}: validation accuracy after adaptation', label)
    similarity = {run['group']: {} for run in runs}
    for run in runs:
        if run['feature_similarity'] == run['feature_similarity']:  # Learners that adapt features.
            similarity[run['group']][run['algorithm']] = run['feature_similarity']
    path = os.path.join(output_dir, f'feature_change{suffix}')
    if not any(similarity.values()):  # No learner adapts: no figure, nor an earlier comparison's left behind.
        if os.path.exists(path):
            os.remove(path)
        return written
    plotting.plot_grouped_bars(
        similarity, path, 'Feature change during adaptation (meta-test support sets)',
        'mean cosine similarity of penultimate features,\nbefore vs after adaptation')
    return written + [path]


def write(runs, output_dir):
    """Writes the table (csv, md) and the figures of finished `runs` (`load_run`) to `output_dir`."""
    check_same_tasks(runs)
    os.makedirs(output_dir, exist_ok=True)
    rows = [{name: run[name] for name in COLUMNS + NUMBERS} for run in runs]
    results.write_csv(os.path.join(output_dir, TABLE_FILE), rows, COLUMNS + NUMBERS)
    results.atomic_write(os.path.join(output_dir, 'compare.md'), lambda f: f.write(markdown_table(rows).encode()))
    draw(runs, output_dir)
    return rows


def read_table(output_dir):
    """The rows of a comparison's compare.csv; None if the folder holds no comparison."""
    path = os.path.join(output_dir, TABLE_FILE)
    if not os.path.exists(path):
        return None
    return results.read_csv(path, columns=COLUMNS, numbers=NUMBERS)
