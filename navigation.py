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
from typing import NamedTuple

import fewshot  # noqa: F401  First: it sets up TensorFlow's CPU backend, read as TensorFlow loads.
import keras
import numpy as np
import tensorflow as tf
from absl import flags, logging

from fewshot import cli, data, errors, navigation, network, plotting, results, training
from fewshot.cli import experiment, studies
from fewshot.learner import Learner
import maml  # noqa: F401 (defines --inner_lr and --num_inner_steps, which this command shares)

LEARNERS = {'maml': 'MAML', 'pretrained': 'pretrained, fine-tuned', 'random': 'random initialisation, fine-tuned'}
# Estimators of MAML's meta-gradient (the module docstring has the two terms).
ESTIMATORS = {
    'lvc': "ProMP's low-variance curvature: the update's Hessian estimated with each step's ∇log π ∇log πᵀ Â "
           'term, no sampling term; biased (it drops terms across steps) but of low variance',
    'unbiased': 'both terms, the sampling one with per-trajectory baselines: the exact gradient of the expected '
                'post-update return, in expectation, and of higher variance',
    'no_sampling_term': "the MAML paper's code: the update's ∇² log π term only (biased; for comparison)",
}

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


class Tasks(NamedTuple):
    """A meta-batch of navigation tasks with the randomness of their rollouts.

    goals: [T, 2].
    noise: [T, S + 1, N, H, 2] standard normal draws: phase s < S samples the trajectories of
      policy-gradient step s, phase S those the adapted policy is scored on.
    """
    goals: np.ndarray
    noise: np.ndarray


class GoalSampler(data.TaskStream):
    """The navigation task stream: goals and the rollouts' draws (see `data.TaskStream`)."""

    def __init__(self, num_steps, num_trajectories, horizon, seed):
        self.num_steps, self.num_trajectories, self.horizon, self.seed = num_steps, num_trajectories, horizon, seed

    def sample(self, index, num_tasks):
        rng = np.random.default_rng([self.seed, index])
        goals = navigation.sample_goals(rng, num_tasks)
        noise = rng.standard_normal((num_tasks, self.num_steps + 1, self.num_trajectories, self.horizon, 2))
        return Tasks(goals, noise.astype(np.float32))


class PolicyMAML(Learner):
    """MAML of a Gaussian policy: θ = the mean MLP's weights and log_std; `num_inner_steps` = 0 is
    the pretrained baseline (the expected return over all goals, no adaptation in training)."""

    train_metrics = ('loss', 'pre_return', 'post_return')  # loss: minus the post-update return.
    batch_norm = 'none (the policy has no batch norm)'
    score_name = 'return'

    def __init__(self, policy, inner_lr, num_inner_steps, discount, meta_optimizer, estimator='lvc'):
        """
        Args:
          policy: a `navigation.GaussianPolicy`.
          inner_lr: α of the policy-gradient step, in training and (unless `eval_inner_lr` is
            assigned another) in evaluation.
          num_inner_steps: policy-gradient steps in training (0: no adaptation).
          discount: γ of the rewards-to-go.
          meta_optimizer: a Keras optimizer for θ.
          estimator: of the meta-gradient, a name of ESTIMATORS.
        """
        model = policy.mlp.keras_model()
        self.log_std = tf.Variable(tf.zeros(2, keras.config.floatx()), name='log_std')
        self.policy, self.inner_lr, self.num_inner_steps, self.discount = policy, inner_lr, num_inner_steps, discount
        self.estimator = estimator
        self.eval_inner_lr = tf.Variable(inner_lr, trainable=False, name='eval_inner_lr')
        super().__init__(policy.mlp, model, meta_optimizer, {**network.parameters(model), 'log_std': self.log_std})

    def adapt(self, params, tasks, num_steps, inner_lr, create_graph):
        """(trajectories of phases 0..S, the adapted weights θ'_S, for each phase s < S the log-probability
        [T, N] of each of its trajectories under the weights that drew them): S policy-gradient steps
        from `params` [T, ...] on each task's own draws.

        Rollouts never carry gradients (the samples are constants); the log-probabilities of the
        inner samples carry the score of their sampling, as functions of θ."""
        sampled, sampling_log_probs = [], []
        for step in range(num_steps + 1):
            frozen = {name: tf.stop_gradient(value) for name, value in params.items()}
            trajectories = navigation.rollout(self.policy, frozen, tasks.goals, tasks.noise[:, step])
            sampled.append(trajectories)
            if step < num_steps:
                sampling_log_probs.append(tf.reduce_sum(navigation.log_probs(self.policy, params, trajectories), 2))
                params = navigation.policy_gradient_step(self.policy, params, trajectories, inner_lr, self.discount,
                                                         create_graph, self.estimator == 'lvc')
        return sampled, params, sampling_log_probs

    def meta_direction(self, tasks):
        """The estimate of the module docstring's ∇J, as the direction of descent −∇J."""
        num_tasks = tasks.goals.shape[0]
        with tf.GradientTape() as tape:
            start = network.tile(self.params, num_tasks)
            sampled, adapted, sampling_log_probs = self.adapt(start, tasks, self.num_inner_steps, self.inner_lr,
                                                              create_graph=True)
            post_return = tf.reduce_mean(sampled[-1].returns(), axis=1)
            objective = navigation.return_surrogate(self.policy, adapted, sampled[-1], self.discount)
            for trajectories, log_prob in zip(sampled, sampling_log_probs if self.estimator == 'unbiased' else []):
                weights = navigation.score_weights(post_return, trajectories.returns())
                objective += tf.reduce_sum(tf.stop_gradient(weights) * log_prob, axis=1)
            loss = -tf.reduce_mean(objective)
        gradients = tape.gradient(loss, self.params)
        metrics = {'loss': -post_return, 'pre_return': tf.reduce_mean(sampled[0].returns(), axis=1),
                   'post_return': post_return}
        return gradients, metrics, {}

    def test_step(self, tasks, num_steps):
        """Mean return of each task [T] after 0..num_steps steps (return_after_<s>), adapting with
        `eval_inner_lr`; query_pre_return / query_post_return are the first and the last."""
        sampled, _, _ = self.adapt(network.tile(self.params, tasks.goals.shape[0]), tasks, num_steps,
                                   self.eval_inner_lr, create_graph=False)
        returns = [tf.reduce_mean(trajectories.returns(), axis=1) for trajectories in sampled]
        return {'query_pre_return': returns[0], 'query_post_return': returns[-1],
                **{f'return_after_{step}': r for step, r in enumerate(returns)}}

    def trajectories(self, tasks, num_steps):
        """The positions [S + 1, T, N, H + 1, 2] of every phase's trajectories, from the origin."""
        sampled, _, _ = self.adapt(network.tile(self.params, tasks.goals.shape[0]),
                                   type(tasks)(*(tf.convert_to_tensor(x) for x in tasks)), num_steps,
                                   self.eval_inner_lr, create_graph=False)
        paths = []
        for t in sampled:
            last = navigation.move(t.observations[:, :, -1], t.actions[:, :, -1])
            paths.append(tf.concat([t.observations, last[:, :, None]], axis=2).numpy())
        return np.stack(paths)

    def state_variables(self):
        return {**super().state_variables(), 'log_std': self.log_std}

    def save(self, folder):
        results.write_json(os.path.join(folder, 'log_std.json'), self.log_std.numpy().tolist())


def inner_steps(name):
    """The inner steps of the learner `name` in training: the baselines adapt only at test."""
    return FLAGS.num_inner_steps if name == 'maml' else 0


def build(name):
    """The learner `name`: its policy, α and inner steps from the flags ('random' is never trained)."""
    policy = navigation.GaussianPolicy(hidden=tuple(int(width) for width in FLAGS.hidden))
    return PolicyMAML(policy, FLAGS.inner_lr, inner_steps(name), FLAGS.discount,
                      keras.optimizers.Adam(FLAGS.meta_lr), FLAGS.meta_gradient)


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
    outcome = experiment.run(
        algorithm, name, lambda splits, precision: build(name), [sys.modules[__name__]], FLAGS.num_inner_steps,
        schedule_for=schedule, tasks=lambda: tasks._replace(stream=stream), test=test, location=(study_dir, name),
        unrecorded_flags=('learners',), resume=studies.resumes(study_dir, name))
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


if __name__ == '__main__':
    studies.set_up(LEARNERS, SETTING)
    cli.run(main)
