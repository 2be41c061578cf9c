"""Sine-wave regression, the MAML paper's first experiment (Finn, Abbeel & Levine, 2017, Section 5.1).

    python sine.py                                         # every learner and the baseline, K = 10
    python sine.py --k_shot 5 --learners maml,pretrained   # some of them, another K
    python sine.py --resume                                # continue the runs of a stopped study

A task is y = A sin(x − φ) with A ~ U[0.1, 5], φ ~ U[0, π], x ~ U[−5, 5]: K support points to
adapt on and query points to be scored on, by mean squared error. The network is the paper's
1-40-40-1 ReLU perceptron, and the learners are the family's own classes (fewshot/learners/: maml,
meta_sgd, anil, reptile), unchanged: only the network and the tasks differ from Omniglot. The paper's
setting is the default: one inner step of 0.01, meta-batch 25, Adam 0.001, 70,000 meta-iterations.
Reptile has no such paper setting here; its flags follow the sine demo of its authors (SGD steps of
0.02 on minibatches of K points) but with the meta-batch of the others, over which ε = 1 (annealed
to 0) steps to the tasks' mean, as the batched Reptile of its paper (the demo: one task per
meta-step and ε = 0.1; measured here at 1,000 iterations, K = 10: ε = 1 reached a test error of 0.45
after 5 steps, ε = 0.1 2.0).

The baseline ('pretrained') is the paper's: one network trained on the query points of all tasks
jointly (MAML with no inner step), then fine-tuned on each task's K points with a step size tuned
on the validation tasks (the grid --baseline_lrs; the lowest validation error averaged over 1 to
--num_curve_steps steps).

Each learner is one run folder, results/<study>/<learner> (metrics.csv, checkpoints, TensorBoard,
model.keras, summary.json with the test error after 0 to --num_curve_steps steps); the study folder
(default sine_k<K>_seed<seed>) holds the comparison: sine_error_curves.png (the paper's Figure 3),
sine_fits.png (its Figure 2) and sine_results.md / .csv. Every learner is tested on the same tasks.
"""

import json
import os
import sys

import fewshot  # noqa: F401  First: it sets up TensorFlow's CPU backend, read as TensorFlow loads.
import keras
import numpy as np
from absl import flags, logging

from fewshot import cli, data, errors, plotting, regression, results
from fewshot.cli import experiment, gradient, studies  # noqa: F401  gradient: --inner_lr, --num_inner_steps
from fewshot.learners import ANIL, MAML, MetaSGD, Reptile

# learner -> (class, first order, the name results give it); 'pretrained' is the baseline.
LEARNERS = {'maml': (MAML, False, 'MAML'), 'fomaml': (MAML, True, 'FO-MAML'), 'meta_sgd': (MetaSGD, False, 'Meta-SGD'),
            'anil': (ANIL, False, 'ANIL'), 'reptile': (Reptile, True, 'Reptile'),
            'pretrained': (MAML, True, 'pretrained, fine-tuned')}
FIXED_ON_RESUME = {'reptile': ('num_iterations',)}  # Its ε anneals over them.
FIT_STEPS = (0, 1, 10)  # The paper's Figure 2: before adaptation, after 1 and after 10 steps.
FITS_FILE = 'function_fits.json'

flags.DEFINE_integer('num_eval_points', 100, 'Query points of each validation and test task (training tasks '
                     'have --num_query, as the paper\'s code: K).', lower_bound=1)
flags.DEFINE_float('reptile_inner_lr', 0.02, "Reptile's inner SGD step size (its sine demo's).", lower_bound=1e-12)
flags.DEFINE_integer('reptile_inner_steps', 5, "Reptile's inner steps in training, on minibatches of K of a task's "
                     'K + Q points, cyclically.', lower_bound=1)
flags.DEFINE_float('reptile_meta_step_size', 1.0, "Reptile's outer step size ε, annealed linearly to 0 over "
                   '--num_iterations.', lower_bound=0)
for _name in studies.STUDY_FLAGS + ('inner_lr', 'num_inner_steps', 'meta_lr', 'k_shot', 'num_query', 'meta_batch_size',
                                    'num_iterations', 'time_budget_minutes', 'val_interval', 'num_val_tasks',
                                    'num_test_tasks', 'eval_seed', 'seed', 'results_dir', 'run_name', 'resume',
                                    'overwrite', 'progress'):
    flags.declare_key_flag(_name)  # The shared flags this command reads, meaning the same.
FLAGS = flags.FLAGS
# The paper's setting, with this command's defaults of the shared study flags.
SETTING = {'k_shot': 10, 'num_query': 10, 'inner_lr': 0.01, 'num_inner_steps': 1, 'meta_batch_size': 25,
           'num_iterations': 70000, 'val_interval': 1000, 'num_val_tasks': 100, 'hidden': ['40', '40'],
           'num_curve_steps': 10, 'num_figure_tasks': 3,
           'baseline_lrs': ['0.001', '0.003', '0.01', '0.03', '0.1', '0.3']}


def inner_steps(name):
    """The inner steps of the learner `name`, in training and evaluation: none for the baseline."""
    return {'pretrained': 0, 'reptile': FLAGS.reptile_inner_steps}.get(name, FLAGS.num_inner_steps)


def build(name, inner_lr):
    """The learner `name` of the flags' network, with inner step size `inner_lr` (Reptile: its own flags)."""
    learner_class, first_order, _ = LEARNERS[name]
    net = regression.MLP(hidden=tuple(int(width) for width in FLAGS.hidden))
    if name == 'reptile':
        step_size = keras.optimizers.schedules.PolynomialDecay(FLAGS.reptile_meta_step_size,
                                                               max(FLAGS.num_iterations, 1), 0.0)
        return Reptile(net, inner_lr=FLAGS.reptile_inner_lr, num_inner_steps=inner_steps(name),
                       meta_optimizer=keras.optimizers.SGD(step_size), inner_optimizer='sgd',
                       inner_batch_size=FLAGS.k_shot)
    return learner_class(net, inner_lr=inner_lr, num_inner_steps=inner_steps(name), first_order=first_order,
                         meta_optimizer=keras.optimizers.Adam(FLAGS.meta_lr))


def error_curve(learner, batches, num_steps):
    """(mean [S+1], 95% CI [S+1]) over the tasks of `batches` of the query error after 0..S steps."""
    errors_by_step = [[] for _ in range(num_steps + 1)]
    for batch in batches:
        for step, outputs in enumerate(learner.query_outputs(batch, num_steps)):
            errors_by_step[step].append(learner.net.task_losses(outputs, batch.query_labels).numpy())
    pairs = [results.confidence_interval(np.concatenate(step)) for step in errors_by_step]
    return [mean for mean, _ in pairs], [ci for _, ci in pairs]


def tuned_baseline(learner, val_batches):
    """The pretrained network fine-tuned with the step size of --baseline_lrs that gives the lowest
    validation error averaged over 1..--num_curve_steps steps: (that learner, the step size)."""
    chosen = None
    for rate in sorted(float(r) for r in FLAGS.baseline_lrs):
        tuned = MAML(learner.net, learner.model, inner_lr=rate, num_inner_steps=0, first_order=True,
                     meta_optimizer=keras.optimizers.Adam())
        with np.errstate(invalid='ignore', over='ignore'):  # A step size too large diverges: infinite error.
            error = float(np.mean(error_curve(tuned, val_batches, FLAGS.num_curve_steps)[0][1:]))
        logging.info('Baseline step size %g: validation error %.4f over 1..%d steps', rate, error,
                     FLAGS.num_curve_steps)
        if np.isfinite(error) and (chosen is None or error < chosen[0]):
            chosen = (error, tuned, rate)
    if chosen is None:
        raise errors.TrainingError('--baseline_lrs: fine-tuning diverged at every step size; give smaller ones')
    return chosen[1], chosen[2]


def function_fits(learner, figure_tasks):
    """What sine_fits.png draws for each figure task: its wave on a grid, its K points and the
    predictions after FIT_STEPS steps."""
    x_support, y_support, amplitude, phase = figure_tasks
    grid = np.linspace(*regression.INPUT_RANGE, 200, dtype=np.float32)
    truth = amplitude[:, None] * np.sin(grid[None] - phase[:, None])
    num_tasks = len(amplitude)
    episodes = data.Episodes(x_support, y_support, np.tile(grid[None, :, None], [num_tasks, 1, 1]),
                                        truth[..., None].astype(np.float32))
    outputs = learner.query_outputs(data.Episodes(*(np.asarray(x) for x in episodes)), max(FIT_STEPS))
    return [{'x': grid.tolist(), 'truth': truth[t].tolist(), 'support_x': x_support[t, :, 0].tolist(),
             'support_y': y_support[t, :, 0].tolist(),
             'predictions': {step: outputs[step].numpy()[t, :, 0].tolist() for step in FIT_STEPS}}
            for t in range(num_tasks)]


def run_learner(name, study_dir, tasks, figure_tasks):
    """Meta-trains (or resumes) the learner `name` in study_dir/name on `tasks` (`experiment.Tasks`)
    and tests it (`experiment.run`); its summary."""
    algorithm = LEARNERS[name][2]

    def test(learner, tasks, folder, num_eval_inner_steps):
        """The error curve over 0..--num_curve_steps steps and the figure tasks' fits; the baseline's
        step size tuned first."""
        del num_eval_inner_steps  # The curve goes further.
        inner_lr = learner.inner_lr
        if name == 'pretrained':
            learner, inner_lr = tuned_baseline(learner, tasks.val)
        means, cis = error_curve(learner, tasks.test, FLAGS.num_curve_steps)
        results.write_json(folder.file(FITS_FILE), function_fits(learner, figure_tasks))
        return ({'algorithm': algorithm, 'k_shot': FLAGS.k_shot, 'inner_lr': inner_lr,
                 'test_mse_after_steps': means, 'test_ci95_after_steps': cis},
                f'test error after 1 step {means[1]:.3f} ± {cis[1]:.3f}, after {FLAGS.num_curve_steps} '
                f'{means[-1]:.3f} ± {cis[-1]:.3f}')

    return experiment.run(experiment.Run(
        algorithm, name, lambda splits, precision: build(name, FLAGS.inner_lr), [sys.modules[__name__]],
        inner_steps(name), fixed_on_resume=FIXED_ON_RESUME.get(name, ()), tasks=lambda: tasks, test=test,
        location=(study_dir, name), unrecorded_flags=('learners',),
        resume=studies.resumes(study_dir, name))).summary


def write_comparison(study_dir, names):
    """The study's figures and table, from the learners' run folders alone."""
    summaries = studies.summaries(study_dir, names)
    label = {name: summary['algorithm'] for name, summary in summaries.items()}
    k = next(iter(summaries.values()))['k_shot']
    plotting.plot_step_curves({label[n]: (s['test_mse_after_steps'], s['test_ci95_after_steps'])
                               for n, s in summaries.items()},
                              os.path.join(study_dir, 'sine_error_curves.png'),
                              f'Sine waves, K = {k}: test error after each gradient step',
                              'mean squared error on the query points', 'gradient steps on the K support points',
                              top=1.2 * max(s['test_mse_after_steps'][0] for s in summaries.values()))
    fits = {}
    for name in names:
        with open(os.path.join(study_dir, name, FITS_FILE), encoding='utf-8') as f:
            fits[label[name]] = [{**task, 'predictions': {int(s): p for s, p in task['predictions'].items()}}
                                 for task in json.load(f)]
    plotting.plot_function_fits(fits, os.path.join(study_dir, 'sine_fits.png'),
                                f'Sine waves, K = {k}: before and after adaptation')
    rows = [{'learner': label[n], 'iterations': s['iterations'], 'training_seconds': round(s['training_seconds'], 1),
             'inner_lr': s['inner_lr'], **{f'mse_{step}_steps': s['test_mse_after_steps'][step] for step in (0, 1, -1)},
             'ci95_1_step': s['test_ci95_after_steps'][1], 'ci95_last_step': s['test_ci95_after_steps'][-1]}
            for n, s in summaries.items()]
    results.write_csv(os.path.join(study_dir, 'sine_results.csv'), rows)
    last = len(next(iter(summaries.values()))['test_mse_after_steps']) - 1
    table = []
    for n, s in summaries.items():
        mse, ci = s['test_mse_after_steps'], s['test_ci95_after_steps']
        # A learned step (Meta-SGD's) repeated past the steps it was trained for can overflow.
        cells = [f'{mse[step]:.3f} ± {ci[step]:.3f}' if np.isfinite(mse[step]) else 'diverged' for step in (0, 1, -1)]
        table.append([label[n], *cells, f'{s["iterations"]:,}', f'{s["training_seconds"] / 60:.1f} min',
                      f'{s["inner_lr"]:g}'])
    tasks = next(iter(summaries.values()))['test_tasks']
    studies.write_table(os.path.join(study_dir, 'sine_results.md'),
                        f'Sine waves, K = {k}: mean squared error on {tasks} test tasks ({FLAGS.num_eval_points} query '
                        "points each) ± 95% CI, with the machine and flags in each learner's hyperparameters.json.",
                        ['learner', 'test MSE, 0 steps', '1 step', f'{last} steps', 'iterations', 'training time',
                         'step size'], table)


def main(argv):
    del argv
    study_dir = studies.study_folder(FLAGS.run_name or f'sine_k{FLAGS.k_shot}_seed{FLAGS.seed}', LEARNERS)
    # Validation and test tasks come from --eval_seed, apart from the training stream (--seed).
    val_batches = experiment.fixed_batches(regression.SineSampler(FLAGS.k_shot, FLAGS.num_eval_points, FLAGS.eval_seed),
                                           FLAGS.num_val_tasks, '--num_val_tasks')
    test_batches = experiment.fixed_batches(
        regression.SineSampler(FLAGS.k_shot, FLAGS.num_eval_points, FLAGS.eval_seed + 1), FLAGS.num_test_tasks,
        '--num_test_tasks')
    stream = regression.SineSampler(FLAGS.k_shot, FLAGS.num_query, FLAGS.seed)
    tasks = experiment.Tasks(val_batches, test_batches, stream, data.tasks_checksum(val_batches + test_batches), {})
    figure_tasks = regression.sine_tasks(np.random.default_rng([FLAGS.eval_seed, 2]), FLAGS.num_figure_tasks,
                                         FLAGS.k_shot)
    for name in FLAGS.learners:
        run_learner(name, study_dir, tasks, figure_tasks)
    write_comparison(study_dir, FLAGS.learners)
    print(f'Comparison of {", ".join(FLAGS.learners)}: {study_dir}/sine_results.md, sine_error_curves.png, '
          'sine_fits.png')


def run():
    """The command, as `python sine.py` and `fewshot sine` run it."""
    studies.set_up(LEARNERS, SETTING)
    cli.run(main)
