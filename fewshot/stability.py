"""The MAML vs MAML++ stability comparison's analysis (stability.py runs it): each run's validation
curve and meta-test figures read from its folder, the stability figures of a method over seeds, the
table, and the per-seed and overlay plots, redrawn by figures.py from a comparison's runs.csv."""

import os

import numpy as np

from fewshot import comparison, plotting, results

RUNS_FILE = 'runs.csv'  # One row per run of a comparison: what figures.py redraws from.


def load_run(folder):
    """The validation curve, final figures and batch-norm mode of a finished run folder."""
    rows = results.read_metrics(os.path.join(folder, results.METRICS_FILE), required=True)
    summary = results.read_summary(folder)
    if summary is None:
        raise results.RunError(f'{folder}: no {results.SUMMARY_FILE}, the run has not finished')
    batch_norm = results.read_hyperparameters(folder).get('batch_norm', '')
    return {'iterations': np.array([row['iteration'] for row in rows]),
            'val': np.array([row['val_post_accuracy'] for row in rows]),
            'test': summary['test_post_accuracy'], 'test_ci95': summary['test_post_ci95'],
            'seconds': summary['training_seconds'], 'batch_norm': batch_norm}


# The numeric columns of stability.csv, one per figure of `stability_figures` (report.py reads them).
TABLE_NUMBERS = ('seeds', 'final_val_mean', 'final_val_std', 'mean_abs_change', 'mean_abs_change_second_half',
                 'largest_drop', 'test_mean', 'test_ci95_mean', 'test_std', 'training_minutes_mean')


def stability_figures(runs):
    """The stability figures of one method at one setting; runs: {seed: load_run(...)}."""
    finals = np.array([run['val'][-1] for run in runs.values()])
    changes = [np.abs(np.diff(run['val'])) for run in runs.values()]
    second_half = [np.abs(np.diff(run['val'][run['iterations'] >= run['iterations'][-1] / 2]))
                   for run in runs.values()]
    drops = [max(0.0, float(np.max(-np.diff(run['val'])))) for run in runs.values()]
    tests = np.array([run['test'] for run in runs.values()])
    return {
        'seeds': len(runs),
        'final_val_mean': float(finals.mean()),
        'final_val_std': results.std_over_seeds(finals),
        'mean_abs_change': float(np.mean([c.mean() for c in changes])),
        'mean_abs_change_second_half': float(np.mean([c.mean() for c in second_half])),
        'largest_drop': max(drops),
        'test_mean': float(tests.mean()),
        'test_ci95_mean': float(np.mean([run['test_ci95'] for run in runs.values()])),
        'test_std': results.std_over_seeds(tests),
        'training_minutes_mean': float(np.mean([run['seconds'] for run in runs.values()]) / 60),
        'batch_norm': '; '.join(sorted({run['batch_norm'] for run in runs.values()})),
    }


def markdown_table(rows):
    """The stability table in Markdown, one row per method and setting."""
    lines = ['| setting | method | seeds | final val acc (mean ± std) | mean abs change (all / 2nd half) '
             '| largest drop | meta-test acc (mean of seeds, ± mean 95% CI; std over seeds) '
             '| training min/run | evaluation batch norm |',
             '|---|---|---|---|---|---|---|---|---|']
    for row in rows:
        lines.append(
            f'| {row["setting"]} | {row["method"]} | {row["seeds"]} '
            f'| {row["final_val_mean"]:.2%} ± {comparison.number(row["final_val_std"], ".2%")} '
            f'| {row["mean_abs_change"]:.2%} / {row["mean_abs_change_second_half"]:.2%} '
            f'| {row["largest_drop"]:.2%} '
            f'| {row["test_mean"]:.2%} ± {row["test_ci95_mean"]:.2%}; '
            f'std {comparison.number(row["test_std"], ".2%")} '
            f'| {row["training_minutes_mean"]:.1f} | {row["batch_norm"]} |')
    return '\n'.join(lines) + '\n'


def load_runs(folders):
    """{(method, setting, seed): folder} -> {(method, setting, seed): load_run(folder)}."""
    return {key: load_run(folder) for key, folder in folders.items()}


def draw(runs, output_dir, suffix='.png'):
    """The per-seed figure of each method and the mean ± std overlay, per setting; returns the paths."""
    written = []
    methods = list(dict.fromkeys(method for method, _, _ in runs))  # Older comparisons called FO-MAML 'MAML'.
    for setting in dict.fromkeys(setting for _, setting, _ in runs):
        curves = {method: {seed: (run['iterations'], run['val'])
                           for (m, s, seed), run in runs.items() if (m, s) == (method, setting)}
                  for method in methods}
        seeds = len(next(iter(curves.values())))
        for method, per_seed in curves.items():
            written.append(os.path.join(output_dir, f'val_{method.lower()}_{setting}{suffix}'))
            plotting.plot_seed_curves(per_seed, written[-1],
                                      f'{method}, {setting}: validation accuracy, {len(per_seed)} seeds')
        written.append(os.path.join(output_dir, f'val_overlay_{setting}{suffix}'))
        plotting.plot_mean_std(curves, written[-1], f'{" vs ".join(methods)}, {setting}: mean ± std over {seeds} seeds')
    return written


def load_comparison(output_dir):
    """The runs of a comparison, from its runs.csv and the runs' own files (see `load_run`)."""
    rows = results.read_csv(os.path.join(output_dir, RUNS_FILE), columns=('method', 'setting', 'seed', 'folder'))
    return load_runs({(row['method'], row['setting'], row['seed']): row['folder'] for row in rows})
