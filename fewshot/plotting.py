"""Figures drawn from a run's logs alone (metrics.csv, hyperparameters.json and the other CSV
files a run writes), so they can be redrawn without retraining: see figures.py.

Every figure takes the path to write; its suffix (.png, .pdf, .svg) chooses the format.
"""

import math
import os

import matplotlib
import numpy as np

matplotlib.use('Agg')  # Files only; no display is needed or assumed.
import matplotlib.pyplot as plt  # noqa: E402  (must follow the backend choice)

from fewshot import datasets, results  # noqa: E402

ASSIGNMENT_BAR = 0.80
# A run describes how its accuracy figure differs from a meta-learner's in hyperparameters.json
# ('accuracy_figure': arguments of `plot_accuracy`); transfer runs written before they did so
# are recognised by their algorithm.
ACCURACY_FIGURE_BEFORE_SELF_DESCRIPTION = {
    'transfer': {'train_column': 'train_accuracy', 'xlabel': 'pretraining step',
                 'train_label': 'pretraining minibatch accuracy'},
}


def plot_accuracy(rows, path, title, train_column='train_query_post_accuracy',
                  train_label='training tasks, after adaptation', xlabel='meta-iteration', assignment_bar=True):
    """Validation (with 95% CI band) and training accuracy over training.

    rows: metrics rows as written by training.train; path: the PNG (or PDF/SVG) to write;
    train_column: the training accuracy to draw (absent or empty: none);
    assignment_bar: draw the assignment's 80% line (it is Omniglot's).
    """
    iterations = [row['iteration'] for row in rows]
    figure, axes = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    for key, label, color in (('val_post', 'validation, after adaptation', 'tab:blue'),
                              ('val_pre', 'validation, before adaptation', 'tab:gray')):
        mean = [row[f'{key}_accuracy'] for row in rows]
        ci = [row[f'{key}_ci95'] for row in rows]
        axes.plot(iterations, mean, marker='o', markersize=3, color=color, label=label)
        axes.fill_between(iterations, [m - c for m, c in zip(mean, ci)],
                          [m + c for m, c in zip(mean, ci)], color=color, alpha=0.2, linewidth=0)
    trained = [row for row in rows if not math.isnan(row.get(train_column, math.nan))]
    if trained:
        axes.plot([row['iteration'] for row in trained], [row[train_column] for row in trained],
                  color='tab:orange', linestyle='--', label=train_label)
    _accuracy_axes(axes, title, xlabel, 'query accuracy', bar=assignment_bar)
    _save(figure, path)


def read_run(run_dir):
    """What `plot_run` draws: (hyperparameters, metrics rows); RunError if the folder lacks either
    file, one is damaged, or metrics.csv has no complete row."""
    return (results.read_hyperparameters(run_dir),
            results.read_metrics(os.path.join(run_dir, results.METRICS_FILE), required=True))


def plot_run(run_dir, suffix='.png', logs=None):
    """Draws val_accuracy<suffix> of a run folder from `logs` (default: `read_run(run_dir)`).

    Returns the path written.
    """
    hyperparameters, rows = logs or read_run(run_dir)
    algorithm, flags = hyperparameters.get('algorithm', 'run'), hyperparameters['flags']
    dataset = flags.get('dataset', 'omniglot')  # Runs before --dataset were Omniglot's.
    title = f'{algorithm}, {flags["n_way"]}-way {flags["k_shot"]}-shot {datasets.display_name(dataset)}'
    path = os.path.join(run_dir, f'val_accuracy{suffix}')
    options = hyperparameters.get('accuracy_figure', ACCURACY_FIGURE_BEFORE_SELF_DESCRIPTION.get(algorithm, {}))
    plot_accuracy(rows, path, title, assignment_bar=dataset == 'omniglot', **options)
    return path


def plot_comparison(per_task, path):
    """Overlaid histograms of per-task meta-test accuracy, one panel per setting.

    per_task: {setting: {method: [per-task accuracy]}}, the same tasks for every method.
    """
    figure, panels = plt.subplots(1, len(per_task), figsize=(5.5 * len(per_task), 4), dpi=120,
                                  squeeze=False)
    for axes, (setting, scores) in zip(panels[0], per_task.items()):
        lowest = min(min(accuracies) for accuracies in scores.values())
        bins = [i / 40 for i in range(int(lowest * 40), 41)]
        for (method, accuracies), color in zip(scores.items(), ('tab:blue', 'tab:orange', 'tab:green')):
            mean, ci = results.confidence_interval(accuracies)
            axes.hist(accuracies, bins=bins, alpha=0.5, color=color,
                      label=f'{method}: {mean:.1%} ± {ci:.1%}')
            axes.axvline(mean, color=color, linestyle='--')
        axes.set(title=f'{setting}, {len(accuracies)} meta-test tasks', xlabel='query accuracy of a task',
                 ylabel='tasks')
        axes.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        axes.legend(loc='upper left', fontsize=8)
    _save(figure, path)


def plot_seed_curves(curves, path, title):
    """One method's post-adaptation validation accuracy over training, one line per seed.

    curves: {seed: (iterations [E], accuracies [E])}.
    """
    figure, axes = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    colors = plt.get_cmap('tab10')
    for index, (seed, (iterations, accuracy)) in enumerate(curves.items()):
        axes.plot(iterations, accuracy, marker='o', markersize=2.5, linewidth=1.2, color=colors(index % 10),
                  label=f'seed {seed} (final {accuracy[-1]:.1%})')
    _accuracy_axes(axes, title, 'meta-iteration', 'validation query accuracy after adaptation',
                   bottom=_zoomed_bottom([accuracy[1:] for _, accuracy in curves.values()]))
    _save(figure, path)


def plot_mean_std(curves_by_method, path, title):
    """Validation accuracy of several methods: mean over seeds with a ± std band (`results.std_over_seeds`).

    curves_by_method: {method: {seed: (iterations, accuracies)}}; only iterations every
    seed of a method reached are averaged.
    """
    figure, axes = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    lowest = []
    for (method, curves), color in zip(curves_by_method.items(), ('tab:blue', 'tab:orange', 'tab:green')):
        common = sorted(set.intersection(*(set(iterations.tolist()) for iterations, _ in curves.values())))
        stacked = np.array([[dict(zip(iterations.tolist(), accuracy))[i] for i in common]
                            for iterations, accuracy in curves.values()])
        mean, std = stacked.mean(axis=0), results.std_over_seeds(stacked)
        if len(curves) < 2:  # One seed has no spread to draw.
            label, std = f'{method} (final {mean[-1]:.1%}, 1 seed)', np.zeros_like(mean)
        else:
            label = f'{method} (final {mean[-1]:.1%} ± {std[-1]:.1%}, {len(curves)} seeds)'
            axes.fill_between(common, mean - std, mean + std, color=color, alpha=0.25, linewidth=0)
        axes.plot(common, mean, color=color, marker='o', markersize=2.5, label=label)
        lowest.append(mean[1:] - std[1:])
    _accuracy_axes(axes, title, 'meta-iteration', 'validation query accuracy after adaptation',
                   bottom=_zoomed_bottom(lowest))
    _save(figure, path)


def plot_curves(curves, path, title, xlabel):
    """Validation accuracy of several learners, one line each: curves {label: (x [E], accuracies [E])}."""
    figure, axes = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    colors = plt.get_cmap('tab10')
    for index, (label, (x, accuracy)) in enumerate(curves.items()):
        axes.plot(x, accuracy, marker='o', markersize=2.5, linewidth=1.2, color=colors(index % 10),
                  label=f'{label} (final {accuracy[-1]:.1%})')
    _accuracy_axes(axes, title, xlabel, 'validation query accuracy after adaptation',
                   bottom=_zoomed_bottom([accuracy[1:] for _, accuracy in curves.values()]))
    _save(figure, path)


def plot_grouped_bars(values, path, title, ylabel):
    """One group of bars per outer key, one bar per inner key: values {group: {label: number}}."""
    groups = list(values)
    labels = list(dict.fromkeys(label for group in values.values() for label in group))
    width = 0.8 / len(labels)
    figure, axes = plt.subplots(figsize=(max(7.0, 1.6 + 0.45 * len(groups) * len(labels)), 4.5), dpi=120)
    colors = plt.get_cmap('tab10')
    for index, label in enumerate(labels):
        heights = [values[group].get(label, math.nan) for group in groups]
        bars = axes.bar([g + (index - (len(labels) - 1) / 2) * width for g in range(len(groups))], heights,
                        width, color=colors(index % 10), label=label)
        axes.bar_label(bars, fmt='%.2f', fontsize=7)
    axes.set_xticks(range(len(groups)), groups)
    axes.set(ylabel=ylabel, title=title, ylim=(0, 1.08))
    axes.grid(alpha=0.3, axis='y')
    axes.legend(loc='upper center', bbox_to_anchor=(0.5, -0.1), ncol=min(len(labels), 5), fontsize=8)
    _save(figure, path)


def plot_step_curves(curves, path, title, ylabel, xlabel, bottom=0.0, top=None, value_format='.3f'):
    """A score after each number of gradient steps, one line with its 95% CI band per learner (the
    MAML paper's Figures 3 and 4): curves {label: (means [S+1], ci95 [S+1])} over steps 0..S.
    bottom, top: the y axis' limits (None: fitted to the curves); a `top` keeps one diverging curve
    from flattening the others (the legend says 'diverged' where a value is not finite)."""
    shown = lambda value: f'{value:{value_format}}' if np.isfinite(value) else 'diverged'  # noqa: E731
    figure, axes = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    colors = plt.get_cmap('tab10')
    for index, (label, (means, cis)) in enumerate(curves.items()):
        means, cis, steps = np.asarray(means), np.asarray(cis), np.arange(len(means))
        color = colors(index % 10)
        axes.plot(steps, means, marker='o', markersize=3, linewidth=1.4, color=color,
                  label=f'{label} (after 1 step {shown(means[1])}, after {steps[-1]} {shown(means[-1])})')
        axes.fill_between(steps, means - cis, means + cis, color=color, alpha=0.2, linewidth=0)
    axes.set(xlabel=xlabel, ylabel=ylabel, title=title)
    axes.set_ylim(bottom=bottom, top=top)
    axes.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    axes.legend(loc='best', fontsize=8)
    _save(figure, path)


def plot_trajectories(paths, path, title):
    """Trajectories before and after adaptation (the MAML paper's Figure 4, right): one row per
    learner, one column per goal. paths {learner: (positions [S+1, T, N, H+1, 2], goals [T, 2])},
    positions of the trajectories sampled before each policy-gradient step s and after the last."""
    rows, columns = len(paths), max(goals.shape[0] for _, goals in paths.values())
    figure, grid = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.2 * rows), dpi=120, squeeze=False)
    colors = plt.get_cmap('viridis')
    for row, (learner, (positions, goals)) in enumerate(paths.items()):
        last = positions.shape[0] - 1
        for task in range(goals.shape[0]):
            axes = grid[row, task]
            for step in (0, last):
                for n, trajectory in enumerate(positions[step, task]):
                    axes.plot(trajectory[:, 0], trajectory[:, 1], color=colors(0.85 * step / max(last, 1)),
                              linewidth=1.0, alpha=0.8,
                              label=(f'after {step} steps' if step else 'before adaptation') if n == 0 else None)
            axes.plot(*goals[task], marker='*', markersize=12, color='crimson', linestyle='none', label='goal')
            axes.plot(0, 0, marker='o', markersize=4, color='black', linestyle='none')
            axes.set(xlim=(-0.6, 0.6), ylim=(-0.6, 0.6), aspect='equal')
            axes.tick_params(labelsize=7)
            axes.grid(alpha=0.3)
            if task == 0:
                axes.set_ylabel(learner, fontsize=8)
        grid[row, 0].legend(loc='lower left', fontsize=6)
    figure.suptitle(title)
    _save(figure, path)


def plot_function_fits(fits, path, title):
    """Regression fits before and after adaptation (the MAML paper's Figure 2): one row per learner,
    one column per task. fits {learner: [task dicts with 'x' [P] (a grid), 'truth' [P], 'support_x',
    'support_y' [K] and 'predictions' {steps: [P]}]}."""
    rows, columns = len(fits), max(len(tasks) for tasks in fits.values())
    figure, grid = plt.subplots(rows, columns, figsize=(3.6 * columns, 2.6 * rows), dpi=120, squeeze=False,
                                sharex=True)
    colors = plt.get_cmap('viridis')
    for row, (learner, tasks) in enumerate(fits.items()):
        for column, task in enumerate(tasks):
            axes = grid[row][column]
            axes.plot(task['x'], task['truth'], color='tab:red', linewidth=1.6, label='ground truth')
            steps = sorted(task['predictions'])
            for index, step in enumerate(steps):
                axes.plot(task['x'], task['predictions'][step], linewidth=1.1,
                          linestyle=':' if step == 0 else '-', color=colors(index / max(len(steps) - 1, 1)),
                          label='before adaptation' if step == 0 else f'after {step} step{"s" if step > 1 else ""}')
            axes.scatter(task['support_x'], task['support_y'], marker='^', s=22, color='black', zorder=3,
                         label=f'the K = {len(task["support_x"])} points')
            axes.grid(alpha=0.3)
            if column == 0:
                axes.set_ylabel(learner)
    grid[0][0].legend(loc='lower left', fontsize=6)
    figure.suptitle(title)
    _save(figure, path)


def _zoomed_bottom(series):
    """A lower y-limit (a multiple of 5%) just below every value after the first evaluation, so
    that differences between methods near the top are visible; the initial point may fall below."""
    values = np.concatenate([np.asarray(s, dtype=float) for s in series])
    values = values[np.isfinite(values)]  # A band of one seed is NaN wide: no value to zoom on.
    return max(0.0, math.floor((values.min() - 0.02) * 20) / 20) if values.size else 0.0


def _accuracy_axes(axes, title, xlabel, ylabel, bottom=0.0, bar=True):
    """The look shared by accuracy figures: percent axis up to 100%, the assignment bar (with `bar`) where
    it falls within the axis, grid."""
    if bar and bottom < ASSIGNMENT_BAR:
        axes.axhline(ASSIGNMENT_BAR, color='tab:red', linestyle=':', linewidth=1,
                     label=f'assignment bar ({ASSIGNMENT_BAR:.0%})')
    axes.set(xlabel=xlabel, ylabel=ylabel, title=title, ylim=(bottom, 1.0))
    axes.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    axes.grid(alpha=0.3)
    axes.legend(loc='lower right', fontsize=8)


def plot_inner_learning_rates(rows, path):
    """The inner learning rate of every weight tensor at every inner step (MAML++'s LSLR).

    rows: dicts with 'parameter', 'step' and 'inner_lr', as in inner_learning_rates.csv.
    """
    figure, axes = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    parameters = list(dict.fromkeys(row['parameter'] for row in rows))
    colors = plt.get_cmap('viridis')
    for index, parameter in enumerate(parameters):
        own = sorted((row['step'], row['inner_lr']) for row in rows if row['parameter'] == parameter)
        axes.plot([step for step, _ in own], [rate for _, rate in own], marker='o', markersize=3,
                  color=colors(index / max(len(parameters) - 1, 1)), label=parameter)
    axes.set(xlabel='inner step', ylabel='inner learning rate',
             title='Learned inner learning rates (per weight tensor and step)')
    axes.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    axes.legend(loc='center left', bbox_to_anchor=(1.0, 0.5), fontsize=7)
    _save(figure, path)


def plot_distributions(values, path, title, xlabel):
    """One box per named array (its median, quartiles and 5-95% whiskers), e.g. Meta-SGD's learned
    learning rates per weight tensor. values: {name: array of any shape}."""
    names = list(values)
    figure, axes = plt.subplots(figsize=(7.5, 0.9 + 0.32 * len(names)), dpi=120)
    axes.boxplot([np.ravel(values[name]) for name in names], orientation='horizontal', whis=(5, 95),
                 showfliers=False)
    axes.set_yticks(range(1, len(names) + 1), names, fontsize=7)
    axes.invert_yaxis()
    axes.set(xlabel=xlabel, title=title)
    axes.grid(alpha=0.3, axis='x')
    _save(figure, path)


def _save(figure, path):
    """Writes `figure` atomically; the format follows the suffix (.png, .pdf, .svg)."""
    figure.tight_layout()
    try:
        results.atomic_write(path, lambda f: figure.savefig(f, format=os.path.splitext(path)[1][1:]))
    finally:
        plt.close(figure)
