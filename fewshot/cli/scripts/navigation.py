"""Meta-reinforcement learning on 2D navigation, the MAML paper's RL experiment (Finn, Abbeel & Levine,
2017, Section 5.3; the environment and its details in fewshot/navigation.py).

    python navigation.py                                  # MAML, the pretrained and the random policy
    python navigation.py --learners maml --num_iterations 100
    python navigation.py --resume                         # continue the runs of a stopped study

A task is a goal; adapting to it is vanilla policy gradient: N trajectories of the current policy,
then θ' = θ + α ∇_θ (1/steps) Σ log π_θ(a_t | s_t) Â_t, with rewards-to-go minus rllab's linear
feature baseline, centred (the paper's inner step: 20 trajectories, α = 0.1; its code used 0.5).

MAML maximises the expected return after adaptation, J(θ) = E_{τ ~ π_θ}[ R(θ'(θ, τ)) ], where
R(φ) = E_{τ' ~ π_φ}[ return ]. Its gradient has two parts (E-MAML, Stadie et al. 2018; the analysis
of Rothfuss et al. 2019, ProMP, "formulation I"):
    ∇J = E[ (∂θ'/∂θ)ᵀ ∇_φ R(θ') ]  +  E[ R(θ') ∇_θ Σ_i log π_θ(τ_i) ],
the first through the update (the step differentiated at fixed samples: its ∇² log π term), the
second because the samples adapted on depend on θ. --meta_gradient chooses the estimator:
  unbiased: both terms from one surrogate whose gradient they are (DiCE's principle, Foerster et
    al. 2018): the post-update policy-gradient surrogate at θ'(θ) plus Σ_i (R̂ − b_i) log π_θ(τ_i),
    b_i a baseline independent of τ_i (`navigation.score_weights`). tests/test_navigation.py checks
    it against finite differences of J. Its second term is noisy: it learns slowly here.
  lvc (default): ProMP's low-variance curvature: no second term; instead each inner step's
    ∇log π ∇log πᵀ Â enters the update's Hessian, which estimates the sampling's effect to first
    order in α without its variance. Biased (it drops the terms across time steps), but it learned
    fastest in this project's measurements (README), as in ProMP's.
  no_sampling_term: the first term alone, as the MAML paper's code (biased; for comparison).
The paper's outer optimiser was TRPO; here it is Adam.

Baselines as the paper's Figure 4: 'pretrained' (one policy trained on the return of all goals
jointly, i.e. no inner step) and 'random' (the initial weights), both fine-tuned at test with the
step size from --baseline_lrs that does best on the validation goals. Output: per learner a run
folder results/<study>/<learner>, and in the study folder navigation_returns.png (return after
0..--num_curve_steps steps ± 95% CI over the test goals), navigation_trajectories.png and
navigation_results.md / .csv. Every learner is tested on the same goals with the same random draws.
"""

import os
import sys

import fewshot  # noqa: F401  First: it sets up TensorFlow's CPU backend, read as TensorFlow loads.
import keras
import numpy as np
from absl import flags, logging

from fewshot import cli, data, errors, navigation, plotting, results, training
from fewshot.cli import experiment, gradient, studies  # noqa: F401  gradient: --inner_lr, --num_inner_steps
from fewshot.learners.policy_maml import ESTIMATORS, PolicyMAML
from fewshot.navigation import GoalSampler

LEARNERS = {'maml': 'MAML', 'pretrained': 'pretrained, fine-tuned', 'random': 'random initialisation, fine-tuned'}
flags.DEFINE_integer('num_trajectories', 20, 'Trajectories per task for each policy-gradient step and for the '
                     'post-update return in training (the paper: 20).', lower_bound=2)
flags.DEFINE_integer('num_eval_trajectories', 40, 'Trajectories per goal and step at validation and test (the '
                     "paper's code: 40).", lower_bound=2)
flags.DEFINE_integer('horizon', 100, 'Steps per episode (the paper: 100).', lower_bound=1)
flags.DEFINE_float('discount', 0.99, 'Discount of the rewards-to-go the policy gradients weigh actions by '
                   '(rllab\'s 0.99); returns are reported undiscounted.', lower_bound=0, upper_bound=1)
flags.DEFINE_enum('meta_gradient', 'lvc', list(ESTIMATORS), 'Estimator of the meta-gradient: '
                  + '; '.join(f'{name}: {what}' for name, what in ESTIMATORS.items()) + '.')
for _name in studies.STUDY_FLAGS + ('inner_lr', 'num_inner_steps', 'meta_lr', 'meta_batch_size', 'num_iterations',
                                    'time_budget_minutes', 'val_interval', 'num_val_tasks', 'num_test_tasks',
                                    'eval_seed', 'seed', 'results_dir', 'run_name', 'resume', 'overwrite', 'progress'):
    flags.declare_key_flag(_name)  # The shared flags this command reads, meaning the same.
FLAGS = flags.FLAGS
FIGURE_TRAJECTORIES = 3  # Per goal and step in navigation_trajectories.png.
# The paper's policy, inner step, meta-batch, test goals and steps; Adam's rate and the iterations
# measured here (README), since the paper's outer step was TRPO's (100 iterations in its code).
SETTING = {'hidden': ['100', '100'], 'inner_lr': 0.1, 'num_inner_steps': 1, 'meta_batch_size': 20, 'meta_lr': 0.003,
           'num_iterations': 500, 'val_interval': 50, 'num_val_tasks': 20, 'num_test_tasks': 40, 'num_curve_steps': 3,
           'num_figure_tasks': 4, 'baseline_lrs': ['0.01', '0.03', '0.1', '0.3', '1']}


def inner_steps(name):
    """The inner steps of the learner `name` in training: the baselines adapt only at test."""
    return FLAGS.num_inner_steps if name == 'maml' else 0


def build(name):
    """The learner `name`: its policy, α and inner steps from the flags ('random' is never trained)."""
    policy = navigation.GaussianPolicy(hidden=tuple(int(width) for width in FLAGS.hidden))
    return PolicyMAML(policy, inner_lr=FLAGS.inner_lr, num_inner_steps=inner_steps(name), discount=FLAGS.discount,
                      meta_optimizer=keras.optimizers.Adam(FLAGS.meta_lr), estimator=FLAGS.meta_gradient)


def return_curve(learner, batches):
    """(mean [S+1], 95% CI [S+1]) over the goals of `batches` of the return after 0..S steps."""
    per_task = training.evaluate(learner, batches, FLAGS.num_curve_steps)
    pairs = [results.confidence_interval(per_task[f'return_after_{step}']) for step in range(FLAGS.num_curve_steps + 1)]
    return [mean for mean, _ in pairs], [ci for _, ci in pairs]


def tune_step_size(learner, val_batches):
    """Sets the learner's evaluation step size to the one of --baseline_lrs whose validation return,
    averaged over 1..--num_curve_steps steps, is highest; returns it."""
    best = None
    for rate in sorted(float(r) for r in FLAGS.baseline_lrs):
        learner.eval_inner_lr.assign(rate)
        mean_return = float(np.mean(return_curve(learner, val_batches)[0][1:]))
        logging.info('Fine-tuning step size %g: validation return %.2f over 1..%d steps', rate, mean_return,
                     FLAGS.num_curve_steps)
        if np.isfinite(mean_return) and (best is None or mean_return > best[0]):
            best = (mean_return, rate)
    if best is None:
        raise errors.TrainingError('--baseline_lrs: fine-tuning diverged at every step size; give smaller ones')
    learner.eval_inner_lr.assign(best[1])
    return best[1]


def run_learner(name, study_dir, tasks, figure_tasks):
    """Trains (or resumes) the learner `name` in study_dir/name on `tasks` (`experiment.Tasks`, its
    stream's rollouts as many phases as it has inner steps) and tests it (`experiment.run`); its summary."""
    algorithm = LEARNERS[name]

    def test(learner, tasks, folder, num_eval_inner_steps):
        """The return curve over 0..--num_curve_steps steps, the baselines' step size tuned first, and
        the figure goals' trajectories."""
        del num_eval_inner_steps  # The curve goes further.
        step_size = FLAGS.inner_lr if name == 'maml' else tune_step_size(learner, tasks.val)
        means, cis = return_curve(learner, tasks.test)
        paths = learner.trajectories(figure_tasks, FLAGS.num_curve_steps)
        # Adapted as at test, on --num_eval_trajectories; FIGURE_TRAJECTORIES of them are drawn.
        results.atomic_write(folder.file('trajectories.npz'), lambda f: np.savez(
            f, paths=paths[:, :, :FIGURE_TRAJECTORIES], goals=figure_tasks.goals))
        return ({'algorithm': algorithm, 'eval_inner_lr': step_size, 'test_return_after_steps': means,
                 'test_ci95_after_steps': cis},
                f'test return after 0 steps {means[0]:.2f} ± {cis[0]:.2f}, after 1 {means[1]:.2f} ± {cis[1]:.2f}, '
                f'after {FLAGS.num_curve_steps} {means[-1]:.2f} ± {cis[-1]:.2f}')

    def schedule(splits):
        del splits
        return training.Schedule(0 if name == 'random' else FLAGS.num_iterations, FLAGS.meta_batch_size,
                                 FLAGS.val_interval, num_eval_inner_steps=FLAGS.num_inner_steps)

    stream = GoalSampler(inner_steps(name), FLAGS.num_trajectories, FLAGS.horizon, FLAGS.seed)
    outcome = experiment.run(experiment.Run(
        algorithm, name, lambda splits, precision: build(name), [sys.modules[__name__]], FLAGS.num_inner_steps,
        schedule_for=schedule, tasks=lambda: tasks._replace(stream=stream), test=test, location=(study_dir, name),
        unrecorded_flags=('learners',), resume=studies.resumes(study_dir, name)))
    outcome.learner.save(outcome.folder.path)
    return outcome.summary


def write_comparison(study_dir, names):
    """The study's figures and table, from the learners' run folders alone."""
    summaries = studies.summaries(study_dir, names)
    label = {name: summary['algorithm'] for name, summary in summaries.items()}
    plotting.plot_step_curves({label[n]: (s['test_return_after_steps'], s['test_ci95_after_steps'])
                               for n, s in summaries.items()},
                              os.path.join(study_dir, 'navigation_returns.png'),
                              '2D navigation: test return after each policy-gradient step',
                              'average return', 'policy-gradient steps at test time', bottom=None, value_format='.1f')
    paths = {}
    for name in names:
        with np.load(os.path.join(study_dir, name, 'trajectories.npz')) as saved:
            paths[label[name]] = (saved['paths'], saved['goals'])
    plotting.plot_trajectories(paths, os.path.join(study_dir, 'navigation_trajectories.png'),
                               '2D navigation: trajectories before and after adaptation')
    steps = len(next(iter(summaries.values()))['test_return_after_steps'])
    rows = [{'learner': label[n], 'iterations': s['iterations'], 'training_seconds': round(s['training_seconds'], 1),
             'eval_inner_lr': s['eval_inner_lr'],
             **{f'return_{step}_steps': s['test_return_after_steps'][step] for step in range(steps)},
             **{f'ci95_{step}_steps': s['test_ci95_after_steps'][step] for step in range(steps)}}
            for n, s in summaries.items()]
    results.write_csv(os.path.join(study_dir, 'navigation_results.csv'), rows)
    table = [[label[n], *(f'{mean:.2f} ± {ci:.2f}' for mean, ci in zip(s['test_return_after_steps'],
                                                                         s['test_ci95_after_steps'])),
              f'{s["iterations"]:,}', f'{s["training_seconds"] / 60:.1f} min', f'{s["eval_inner_lr"]:g}']
             for n, s in summaries.items()]
    tasks = next(iter(summaries.values()))['test_tasks']
    studies.write_table(os.path.join(study_dir, 'navigation_results.md'),
                        f'2D navigation: mean undiscounted return on {tasks} test goals ({FLAGS.num_eval_trajectories} '
                        "trajectories each per step) ± 95% CI, with the machine and flags in each learner's "
                        'hyperparameters.json.',
                        ['learner', *(f'return after {step} steps' for step in range(steps)), 'iterations',
                         'training time', 'step size'], table)


def main(argv):
    del argv
    study_dir = studies.study_folder(FLAGS.run_name or f'navigation_seed{FLAGS.seed}', LEARNERS)
    # Validation and test goals come from --eval_seed, apart from the training stream (--seed).
    evaluation = lambda seed, count, flag: experiment.fixed_batches(  # noqa: E731
        GoalSampler(FLAGS.num_curve_steps, FLAGS.num_eval_trajectories, FLAGS.horizon, seed), count, flag)
    val_batches = evaluation(FLAGS.eval_seed, FLAGS.num_val_tasks, '--num_val_tasks')
    test_batches = evaluation(FLAGS.eval_seed + 1, FLAGS.num_test_tasks, '--num_test_tasks')
    figure_tasks = GoalSampler(FLAGS.num_curve_steps, FLAGS.num_eval_trajectories, FLAGS.horizon,
                               FLAGS.eval_seed + 2).sample(0, FLAGS.num_figure_tasks)
    tasks = experiment.Tasks(val_batches, test_batches, None, data.tasks_checksum(val_batches + test_batches), {})
    for name in FLAGS.learners:
        run_learner(name, study_dir, tasks, figure_tasks)
    write_comparison(study_dir, FLAGS.learners)
    print(f'Comparison of {", ".join(FLAGS.learners)}: {study_dir}/navigation_results.md, navigation_returns.png, '
          'navigation_trajectories.png')


def run():
    """The command, as `python navigation.py` and `fewshot navigation` run it."""
    studies.set_up(LEARNERS, SETTING)
    cli.run(main)
