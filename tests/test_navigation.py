"""2D navigation: the environment on hand-computed cases, the policy-gradient estimator against the exact
gradient of a one-step problem, the meta-gradient against finite differences of the expected
post-update return, and MAML learning to adapt faster than the pretrained policy."""

import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import launch
from fewshot import navigation as nav
from fewshot import data, network, results, training
from fewshot.learners.policy_maml import PolicyMAML

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _constant_policy(mean, log_std, num_tasks=1, hidden=(3,)):
    """Weights [T, ...] of a policy whose mean is `mean` everywhere (zero kernels, head bias = mean)."""
    policy = nav.GaussianPolicy(hidden=hidden)
    params = {name: tf.zeros([num_tasks] + list(v.shape), tf.float64)
              for name, v in network.parameters(policy.mlp.keras_model()).items()}
    params['head/bias'] = tf.constant([mean] * num_tasks, tf.float64)
    params['log_std'] = tf.constant([log_std] * num_tasks, tf.float64)
    return policy, params


def test_a_step_moves_by_a_tenth_of_the_action_clipped_to_the_box_and_is_rewarded_by_minus_the_distance():
    position = tf.constant([[[0.2, -0.1]]], tf.float64)
    moved = nav.move(position, tf.constant([[[0.5, -3.0]]], tf.float64))
    np.testing.assert_allclose(moved, [[[0.25, -0.2]]])  # 0.05, and −0.3 clipped to −0.1.
    goals = tf.constant([[-0.05, 0.2]], tf.float64)
    np.testing.assert_allclose(nav.reward(moved, goals), [[-0.5]])  # A 0.3-0.4-0.5 triangle.
    assert nav.reached(tf.constant([[[-0.045, 0.209]]], tf.float64), goals).numpy().tolist() == [[1.0]]
    assert nav.reached(tf.constant([[[-0.045, 0.211]]], tf.float64), goals).numpy().tolist() == [[0.0]]


def test_an_episode_ends_once_the_goal_is_reached_and_earns_nothing_after():
    policy, params = _constant_policy([1.0, 0.5], [-30.0, -30.0])  # Deterministic: moves (0.1, 0.05) a step.
    goals = tf.constant([[0.3, 0.15]], tf.float64)
    trajectories = nav.rollout(policy, params, goals, tf.zeros([1, 1, 6, 2], tf.float64))
    np.testing.assert_allclose(trajectories.mask[0, 0], [1, 1, 1, 0, 0, 0])
    np.testing.assert_allclose(trajectories.observations[0, 0, :3], [[0, 0], [0.1, 0.05], [0.2, 0.1]], atol=1e-12)
    step = np.hypot(0.1, 0.05)
    np.testing.assert_allclose(trajectories.rewards[0, 0], [-2 * step, -step, 0, 0, 0, 0], atol=1e-12)
    np.testing.assert_allclose(trajectories.returns(), [[-3 * step]])


def test_rewards_to_go_and_the_linear_baseline():
    rng = np.random.default_rng(0)
    rewards = tf.constant(rng.normal(size=(2, 3, 5)))
    expected = np.zeros((2, 3, 5))
    for t in reversed(range(5)):
        expected[..., t] = rewards[..., t] + (0.9 * expected[..., t + 1] if t < 4 else 0)
    np.testing.assert_allclose(nav.rewards_to_go(rewards, 0.9), expected)
    observations = tf.constant(rng.uniform(-0.5, 0.5, size=(2, 3, 5, 2)))
    mask = tf.ones([2, 3, 5], tf.float64)
    trajectories = nav.Trajectories(observations, tf.zeros_like(observations), rewards, mask)
    tau = np.arange(5) / 100.0
    linear = 2.0 * observations[..., 0] - 3.0 * observations[..., 1] ** 2 + 5.0 * tau + 1.0
    np.testing.assert_allclose(nav.linear_baseline(trajectories, linear), linear, atol=1e-3)  # Up to the ridge.


def test_the_gaussian_policys_log_probability():
    policy = nav.GaussianPolicy(hidden=(5,))
    keras.utils.set_random_seed(0)
    model = policy.mlp.keras_model()
    params = {**network.tile(network.parameters(model), 1), 'log_std': tf.constant([[0.3, -0.4]])}
    observations = tf.random.uniform([1, 4, 2], -0.5, 0.5)
    actions = tf.random.normal([1, 4, 2])
    mean = model(observations[0]).numpy()
    std = np.exp([0.3, -0.4])
    expected = np.sum(-0.5 * ((actions[0] - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi), axis=-1)
    np.testing.assert_allclose(policy.log_prob(params, observations, actions)[0], expected, rtol=1e-5)


def _exact_one_step_return(policy, params, goal, nodes=60):
    """E[r] of one step from the origin, by Gauss-Hermite quadrature over the Gaussian action: a
    differentiable function of the weights whose gradient is the exact policy gradient."""
    x, w = np.polynomial.hermite.hermgauss(nodes)
    z = np.sqrt(2.0) * np.stack(np.meshgrid(x, x, indexing='ij'), -1).reshape(-1, 2)
    weights = (w[:, None] * w[None, :]).reshape(-1) / np.pi
    mean = policy.mean(params, tf.zeros([1, 1, 2], tf.float64))[0, 0]
    actions = mean + tf.exp(params['log_std'][0]) * z
    return tf.reduce_sum(weights * nav.reward(nav.move(tf.zeros_like(actions), actions)[None], goal)[0])


def test_the_policy_gradient_estimate_is_unbiased_on_a_one_step_problem():
    policy = nav.GaussianPolicy(hidden=(4,))
    keras.utils.set_random_seed(1)
    base = {name: tf.cast(v, tf.float64) for name, v in network.parameters(policy.mlp.keras_model()).items()}
    base['head/bias'] = tf.constant([0.2, -0.1], tf.float64)
    base['hidden1/bias'] = tf.constant([0.1, 0.2, -0.1, 0.3], tf.float64)  # Live units at the origin.
    base['log_std'] = tf.constant(np.log([0.3, 0.25]))
    goal = tf.constant([[0.2, -0.15]], tf.float64)
    single = network.tile(base, 1)
    with tf.GradientTape() as tape:
        tape.watch(single)
        exact_return = _exact_one_step_return(policy, single, goal)
    exact = tape.gradient(exact_return, single)

    groups, per_group = 40, 1000  # Each "task" is a group of draws: per-group gradients give the error bar.
    params = network.tile(base, groups)
    noise = tf.constant(np.random.default_rng(0).standard_normal((groups, per_group, 1, 2)))
    trajectories = nav.rollout(policy, params, tf.tile(goal, [groups, 1]), noise)
    with tf.GradientTape() as tape:
        tape.watch(params)
        surrogate = tf.reduce_sum(nav.return_surrogate(policy, params, trajectories, discount=1.0))
    estimates = tape.gradient(surrogate, params)
    np.testing.assert_allclose(np.mean(trajectories.returns()), exact_return, atol=3e-3)
    for name in ('hidden1/bias', 'head/kernel', 'head/bias', 'log_std'):
        mean = np.mean(estimates[name], axis=0)
        error = np.std(estimates[name], axis=0, ddof=1) / np.sqrt(groups)
        assert np.all(np.abs(mean - exact[name][0]) < 4 * error + 1e-4), (name, mean, exact[name][0].numpy(), error)
        if name == 'head/bias':
            assert np.all(np.abs(exact[name]) > 10 * error)  # A gradient the test can see.


@pytest.fixture
def float64_keras():
    keras.config.set_floatx('float64')
    keras.config.set_dtype_policy('float64')  # Once a model is built, the policy no longer follows floatx.
    yield
    keras.config.set_floatx('float32')
    keras.config.set_dtype_policy('float32')


def _meta_gradient_problem():
    """A small navigation problem whose expected post-update return is smooth in θ: 3 steps, goals
    out of reach (no episode ends early), 16 trajectories per step, in float64."""
    keras.utils.set_random_seed(3)
    policy = nav.GaussianPolicy(hidden=(6,))
    learner = PolicyMAML(policy, inner_lr=0.5, num_inner_steps=1, discount=1.0,
                                    meta_optimizer=keras.optimizers.SGD(0.0))
    learner.log_std.assign(np.log([0.5, 0.5]))
    # Biases off zero: at the origin every draw shares the hidden units' inputs, and a ReLU exactly
    # at its kink makes the update, a function of ReLU's derivative, jump under any perturbation.
    learner.params['hidden1/bias'].assign(np.random.default_rng(5).normal(0, 0.3, 6))
    learner.params['head/bias'].assign([0.2, -0.3])
    rng = np.random.default_rng(7)
    num_tasks = 3000
    goals = np.stack([rng.choice([-0.45, 0.45], num_tasks), rng.uniform(-0.5, 0.5, num_tasks)], -1)
    tasks = nav.Tasks(tf.constant(goals), tf.constant(rng.standard_normal((num_tasks, 2, 16, 3, 2))))
    return learner, tasks


def _post_update_returns(learner, params, tasks):
    """Each task's mean return after the policy-gradient step from `params`, under the tasks' fixed draws."""
    sampled, _, _ = learner.adapt_tasks(network.tile(params, tasks.goals.shape[0]), tasks, 1, learner.inner_lr,
                                  create_graph=False)
    return tf.reduce_mean(sampled[-1].returns(), axis=1).numpy()


def _mean_and_error(values):
    values = np.asarray(values)
    return values.mean(), values.std(ddof=1) / np.sqrt(len(values))


def test_the_meta_gradient_matches_finite_differences_of_the_expected_post_update_return(float64_keras):
    """With the rollouts' draws fixed, the post-update return is a function of θ alone, and the mean
    over tasks of its central differences estimates the slope of the expected post-update return J
    along a direction (a ReLU's kinks make it jump where a draw crosses one: a step h of 0.01 lets
    the mean see those jumps as the expectation does). The estimator, averaged over meta-batches,
    must agree within the two Monte-Carlo errors; without the inner samples' score term (the MAML
    paper's code) it must not, for some direction: the test can see that term."""
    learner, tasks = _meta_gradient_problem()
    theta = {name: tf.convert_to_tensor(v) for name, v in learner.params.items()}
    groups = 30  # Meta-batches of 100 tasks: their directions' spread is the estimate's error bar.
    chunks = [nav.Tasks(*(x[i::groups] for x in tasks)) for i in range(groups)]
    directions = {}
    for estimator in ('unbiased', 'no_sampling_term'):
        learner.estimator = estimator
        directions[estimator] = [learner.meta_direction(chunk)[0] for chunk in chunks]
    rng, h, biased = np.random.default_rng(11), 1e-2, []
    for _ in range(3):
        direction = {name: tf.constant(rng.standard_normal(v.shape)) for name, v in theta.items()}
        shifted = lambda sign: {n: theta[n] + sign * h * direction[n] for n in theta}  # noqa: E731
        finite = (_post_update_returns(learner, shifted(1), tasks)
                  - _post_update_returns(learner, shifted(-1), tasks)) / (2 * h)
        fd, fd_error = _mean_and_error(finite)
        slope = {term: _mean_and_error([-sum(float(tf.reduce_sum(g[n] * direction[n])) for n in theta)
                                        for g in directions[term]]) for term in directions}
        (estimate, error), (dropped, dropped_error) = slope['unbiased'], slope['no_sampling_term']
        assert abs(estimate - fd) < 4 * np.hypot(fd_error, error), (estimate, error, fd, fd_error)
        biased.append(abs(dropped - fd) > 4 * np.hypot(fd_error, dropped_error))
    assert any(biased)


def test_low_variance_curvature_adds_each_steps_score_outer_product_to_the_updates_hessian_and_nothing_else():
    """LVC (the default estimator) weighs each step by π/⊥π instead of log π: the same gradient, and a
    Hessian larger by Σ_t ∇log π_t ∇log π_tᵀ Â_t / steps, checked along a direction."""
    policy = nav.GaussianPolicy(hidden=(3,))
    keras.utils.set_random_seed(2)
    params = {name: tf.cast(v, tf.float64)[None] for name, v in network.parameters(policy.mlp.keras_model()).items()}
    params['log_std'] = tf.constant([[-0.2, 0.1]], tf.float64)
    rng = np.random.default_rng(4)
    trajectories = nav.rollout(policy, params, tf.constant([[0.3, -0.2]], tf.float64),
                               tf.constant(rng.standard_normal((1, 2, 4, 2))))
    direction = {name: tf.constant(rng.standard_normal(v.shape)) for name, v in params.items()}

    def gradient_and_curvature(low_variance_curvature):
        with tf.GradientTape() as outer:
            outer.watch(params)
            with tf.GradientTape() as inner:
                inner.watch(params)
                value = tf.reduce_sum(nav.inner_surrogate(policy, params, trajectories, 1.0, low_variance_curvature))
            gradient = inner.gradient(value, params)
            along = sum(tf.reduce_sum(gradient[n] * direction[n]) for n in params)
        return gradient, outer.gradient(along, params)

    plain, lvc = gradient_and_curvature(False), gradient_and_curvature(True)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(params)
        log_prob = nav.log_probs(policy, params, trajectories)[0]  # [N, H]
    scores = {n: tape.jacobian(log_prob, params[n]) for n in params}  # [N, H, 1, *shape]
    along = sum(tf.reduce_sum(scores[n] * direction[n][None, None], axis=list(range(2, scores[n].shape.rank)))
                for n in params)  # ∇log π_t · v, [N, H]
    weights = nav.advantages(trajectories, 1.0, normalize=True)[0] / tf.reduce_sum(trajectories.mask)
    for n in params:
        np.testing.assert_allclose(lvc[0][n], plain[0][n], atol=1e-12)
        extra = tf.einsum('nh,nh...->...', along * weights, scores[n])
        np.testing.assert_allclose(lvc[1][n] - plain[1][n], extra, atol=1e-10)
    assert max(float(tf.reduce_max(tf.abs(lvc[1][n] - plain[1][n]))) for n in params) > 1e-3


def test_maml_adapts_better_than_the_pretrained_policy_after_a_short_meta_training():
    """30 meta-iterations of a small problem (10 steps, 10 trajectories, a 32-32 policy), the same
    seed for both: after one policy-gradient step MAML's policy returns more on 40 test goals."""
    horizon, scores = 10, {}
    for name, steps in (('maml', 1), ('pretrained', 0)):
        keras.utils.set_random_seed(0)
        learner = PolicyMAML(nav.GaussianPolicy(hidden=(32, 32)), inner_lr=0.1, num_inner_steps=steps,
                                        discount=0.99, meta_optimizer=keras.optimizers.Adam(0.01))
        stream = nav.GoalSampler(steps, 10, horizon, seed=0)
        for iteration in range(30):
            learner.meta_train_step(stream.sample(iteration, 10))
        scores[name] = learner.evaluate(nav.GoalSampler(1, 20, horizon, seed=5).sample(0, 40), 1)
    gain = scores['maml']['query_post_return'] - scores['pretrained']['query_post_return']
    assert np.mean(gain) > 3 * np.std(gain, ddof=1) / np.sqrt(len(gain)), gain
    assert np.mean(scores['maml']['query_post_return']) > np.mean(scores['maml']['query_pre_return']) + 1.0


def _navigate(folder, *flags):
    tiny = ['--hidden=8,8', '--horizon=8', '--num_trajectories=3', '--num_eval_trajectories=3', '--num_val_tasks=4',
            '--num_test_tasks=6', '--meta_batch_size=3', '--num_curve_steps=2', '--num_figure_tasks=2',
            '--baseline_lrs=0.1,0.3', '--progress=false', f'--results_dir={folder}']
    result = launch.run([sys.executable, os.path.join(REPO, 'navigation.py'), *tiny, *flags],
                        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return os.path.join(folder, 'navigation_seed0')


def test_navigation_trains_tests_and_compares_every_learner(tmp_path):
    study = _navigate(tmp_path / 'straight', '--num_iterations=4', '--val_interval=2')
    for figure in ('navigation_returns.png', 'navigation_trajectories.png'):
        assert os.path.getsize(os.path.join(study, figure)) > 10_000
    with open(os.path.join(study, 'navigation_results.md'), encoding='utf-8') as f:
        table = f.read()
    for name, iterations in (('maml', 4), ('pretrained', 4), ('random', 0)):
        summary = results.read_json(os.path.join(study, name, results.SUMMARY_FILE))
        assert summary['iterations'] == iterations and summary['test_tasks'] == 6
        assert len(summary['test_return_after_steps']) == len(summary['test_ci95_after_steps']) == 3
        assert f'| {summary["algorithm"]} | {summary["test_return_after_steps"][0]:.2f}' in table
        assert summary['eval_inner_lr'] == 0.1 if name == 'maml' else summary['eval_inner_lr'] in (0.1, 0.3)
        with np.load(os.path.join(study, name, 'trajectories.npz')) as saved:
            assert saved['paths'].shape == (3, 2, 3, 9, 2) and saved['goals'].shape == (2, 2)


def test_evaluation_goals_do_not_depend_on_the_batch_size():
    sampler = nav.GoalSampler(1, 3, 6, seed=9)
    checksums = {size: data.tasks_checksum(sampler.fixed_batches(10, size)) for size in (1, 3, 10, 40)}
    assert len(set(checksums.values())) == 1


def test_a_resumed_run_equals_one_straight_through(tmp_path):
    """The goals and draws of meta-batch i depend only on (seed, i), and a checkpoint holds θ, log_std
    and Adam's state: stopping after 2 iterations and resuming gives the straight run's numbers."""
    val = nav.GoalSampler(1, 3, 6, seed=9).fixed_batches(4, 4)
    schedule = lambda iterations: training.Schedule(iterations, 3, 2, 1)  # noqa: E731

    def train(folder, iterations, resume):
        keras.utils.set_random_seed(0)
        learner = PolicyMAML(nav.GaussianPolicy(hidden=(8,)), 0.1, 1, 0.99, keras.optimizers.Adam(0.01))
        run = results.RunFolder(str(tmp_path), folder, resume=resume)
        if not resume:
            run.write_hyperparameters({'seed': 0}, {})
        return training.train(learner, nav.GoalSampler(1, 3, 6, seed=0), val, run, schedule(iterations),
                              progress=False)

    straight = train('straight', 4, False)
    train('stopped', 2, False)
    resumed = train('stopped', 4, True)
    assert [row['iteration'] for row in resumed] == [0, 2, 4]
    for a, b in zip(straight, resumed):
        assert {k: v for k, v in a.items() if k != 'seconds'} == pytest.approx(
            {k: v for k, v in b.items() if k != 'seconds'}, rel=1e-6, nan_ok=True)
