"""2D navigation, the MAML paper's reinforcement-learning task (Finn, Abbeel & Levine, 2017, Section 5.3),
and the policy-gradient pieces meta-learning on it needs, as pure functions over explicit weights.

The environment is the authors' code's (maml_rl, `PointEnvRandGoal` under rllab's `normalize`): a point
starts at the origin; a task is a goal drawn uniformly from [−0.5, 0.5]²; the observation is the
position; the policy's action a moves the point by clip(0.1 a, −0.1, 0.1) per coordinate (rllab maps
the policy's [−1, 1] to the action box [−0.1, 0.1], then clips); the reward is minus the Euclidean
distance to the goal after the move (the paper's text says squared distance, its code does not); an
episode ends at the horizon of 100 steps or once the point is within 0.01 of the goal in both
coordinates. Everything is vectorised over tasks T and trajectories N: positions [T, N, 2].

The policy is a Gaussian: mean from `regression.MLP` (2-100-100-2, ReLU), a learned log standard
deviation per action dimension, independent of the state (rllab's `GaussianMLPPolicy`, std 1 at
start). Its weights are a dict name -> [T, *shape] like every network here; 'log_std' is [T, 2].
"""

import dataclasses
import math
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from fewshot import data, regression

GOAL_RANGE = 0.5  # Goals ~ U[−0.5, 0.5]².
MAX_SPEED = 0.1  # The action box: a step moves each coordinate by at most this.
GOAL_TOLERANCE = 0.01  # The episode ends within this of the goal, in both coordinates.
BASELINE_REGULARIZATION = 1e-5  # rllab's LinearFeatureBaseline ridge coefficient.


class Trajectories(NamedTuple):
    """N trajectories of each of T tasks over H steps; step t is taken only where mask is 1.

    observations: [T, N, H, 2], the positions the actions were chosen at.
    actions: [T, N, H, 2], the policy's actions (before scaling and clipping).
    rewards: [T, N, H], 0 after the episode ended.
    mask: [T, N, H], 1 for the steps of the episode, 0 after it ended.
    """
    observations: tf.Tensor
    actions: tf.Tensor
    rewards: tf.Tensor
    mask: tf.Tensor

    def returns(self):
        """The undiscounted return of each trajectory, [T, N]."""
        return tf.reduce_sum(self.rewards, axis=-1)


def sample_goals(rng, num_tasks):
    """[T, 2] goals drawn uniformly from [−0.5, 0.5]² by the NumPy generator `rng`."""
    return rng.uniform(-GOAL_RANGE, GOAL_RANGE, size=(num_tasks, 2)).astype(np.float32)


def move(positions, actions):
    """Positions after the policy's `actions` [..., 2]: each coordinate moves by clip(0.1 a, ±0.1)."""
    return positions + tf.clip_by_value(MAX_SPEED * actions, -MAX_SPEED, MAX_SPEED)


def reward(positions, goals):
    """Minus the distance to the goal: positions [T, N, 2], goals [T, 2] -> [T, N]."""
    return -tf.norm(positions - goals[:, None, :], axis=-1)


def reached(positions, goals):
    """1.0 where the point is within GOAL_TOLERANCE of the goal in both coordinates, [T, N]."""
    close = tf.reduce_all(tf.abs(positions - goals[:, None, :]) < GOAL_TOLERANCE, axis=-1)
    return tf.cast(close, positions.dtype)


@dataclasses.dataclass(frozen=True)
class GaussianPolicy:
    """π(a | s) = N(mean(s), diag(exp(log_std))²), mean an MLP over explicit weights."""
    hidden: tuple = (100, 100)

    @property
    def mlp(self):
        """The mean's network; its Keras model (Glorot-uniform kernels, zero biases, as rllab's) holds
        the weights but log_std."""
        return regression.MLP(hidden=self.hidden, inputs=2, outputs=2)

    def mean(self, params, observations):
        """Action means [T, B, 2] of observations [T, B, 2]."""
        return self.mlp.forward(params, observations)

    def log_prob(self, params, observations, actions):
        """log π(a | s) [T, B] of actions [T, B, 2] at observations [T, B, 2]."""
        log_std = params['log_std'][:, None, :]
        z = (actions - self.mean(params, observations)) * tf.exp(-log_std)
        return tf.reduce_sum(-0.5 * tf.square(z) - log_std, axis=-1) - math.log(2 * math.pi)

    def act(self, params, observations, noise):
        """Actions mean + std · noise: observations, noise [T, B, 2]."""
        return self.mean(params, observations) + tf.exp(params['log_std'])[:, None, :] * noise


def rollout(policy, params, goals, noise):
    """Trajectories of the policy with weights `params` toward `goals` [T, 2], from the origin.

    noise: [T, N, H, 2] standard normal draws, one per action: the randomness is an input, so
    that the same draws can replay a rollout under other weights (the tests' finite differences).
    """
    num_tasks, num_trajectories, horizon = noise.shape[0], noise.shape[1], noise.shape[2]
    dtype = noise.dtype
    position = tf.zeros([num_tasks, num_trajectories, 2], dtype)
    alive = tf.ones([num_tasks, num_trajectories], dtype)
    observations, actions, rewards, mask = [], [], [], []
    for t in range(horizon):
        action = policy.act(params, position, noise[:, :, t])
        observations.append(position)
        actions.append(action)
        mask.append(alive)
        position = move(position, action)
        rewards.append(alive * reward(position, goals))
        alive = alive * (1 - reached(position, goals))
    stack = lambda steps: tf.stack(steps, axis=2)  # noqa: E731
    return Trajectories(stack(observations), stack(actions), stack(rewards), stack(mask))


def rewards_to_go(rewards, discount):
    """G_t = Σ_{t' ≥ t} γ^(t' − t) r_t', rewards [T, N, H] -> [T, N, H]."""
    horizon = rewards.shape[-1]
    steps = np.arange(horizon)
    gaps = steps[:, None] - steps[None, :]  # [t', t]: how far t' is after t.
    weights = np.where(gaps >= 0, discount ** np.maximum(gaps, 0), 0.0)
    return tf.einsum('tnk,kh->tnh', rewards, tf.constant(weights, rewards.dtype))


def baseline_features(trajectories):
    """rllab's LinearFeatureBaseline features [T, N, H, 10]: s, s², τ, τ², τ³, 1 with τ = t / 100."""
    observations = tf.clip_by_value(trajectories.observations, -10.0, 10.0)
    horizon = observations.shape[2]
    tau = tf.cast(tf.range(horizon), observations.dtype) / 100.0
    tau = tf.broadcast_to(tau[None, None, :, None], observations.shape[:3] + [1])
    return tf.concat([observations, tf.square(observations), tau, tau ** 2, tau ** 3, tf.ones_like(tau)], -1)


def linear_baseline(trajectories, targets):
    """Each task's least-squares fit of `targets` [T, N, H] on `baseline_features`, over the steps
    of its episodes (ridge 1e-5, solved in float64), evaluated at those steps: [T, N, H]."""
    features = tf.cast(baseline_features(trajectories), tf.float64)
    weights = tf.cast(trajectories.mask, tf.float64)[..., None]
    flat = tf.reshape(features * weights, [features.shape[0], -1, features.shape[-1]])
    ridge = BASELINE_REGULARIZATION * tf.eye(features.shape[-1], dtype=tf.float64)
    gram = tf.einsum('tbf,tbg->tfg', flat, flat) + ridge
    moment = tf.einsum('tbf,tb->tf', flat, tf.reshape(tf.cast(targets, tf.float64), [features.shape[0], -1]))
    coefficients = tf.linalg.solve(gram, moment[..., None])[..., 0]
    fitted = tf.einsum('tnhf,tf->tnh', features, coefficients)
    return tf.cast(fitted, targets.dtype) * trajectories.mask


def advantages(trajectories, discount, normalize):
    """Rewards-to-go minus the linear baseline, [T, N, H], 0 after the episodes' ends; with
    `normalize`, scaled to mean 0 and standard deviation 1 over each task's steps (rllab's centred
    advantages). Functions of the samples only: constants to every gradient."""
    to_go = rewards_to_go(trajectories.rewards, discount)
    advantage = (to_go - linear_baseline(trajectories, to_go)) * trajectories.mask
    if normalize:
        count = tf.reduce_sum(trajectories.mask, axis=[1, 2], keepdims=True)
        mean = tf.reduce_sum(advantage, axis=[1, 2], keepdims=True) / count
        centred = (advantage - mean) * trajectories.mask
        std = tf.sqrt(tf.reduce_sum(tf.square(centred), axis=[1, 2], keepdims=True) / count)
        advantage = centred / (std + 1e-8)
    return tf.stop_gradient(advantage)


def log_probs(policy, params, trajectories):
    """log π(a_t | s_t) of every step, [T, N, H], 0 after the episodes' ends."""
    num_tasks, num_trajectories, horizon = trajectories.mask.shape
    flat = lambda x: tf.reshape(x, [num_tasks, num_trajectories * horizon, 2])  # noqa: E731
    logp = policy.log_prob(params, flat(trajectories.observations), flat(trajectories.actions))
    return tf.reshape(logp, [num_tasks, num_trajectories, horizon]) * trajectories.mask


def inner_surrogate(policy, params, trajectories, discount, low_variance_curvature=False):
    """The inner loop's vanilla policy-gradient objective per task [T]: the mean over the steps of
    log π(a_t | s_t) Â_t with centred advantages (rllab's VPG), whose gradient is the update.

    low_variance_curvature: weigh Â_t by π(a_t | s_t) / ⊥π(a_t | s_t) (⊥: a constant) instead of
    log π: the same gradient, and a Hessian with the ∇log π ∇log πᵀ Â term of each step (ProMP's
    LVC estimator, Rothfuss et al. 2019)."""
    weights = advantages(trajectories, discount, normalize=True)
    log_prob = log_probs(policy, params, trajectories)
    if low_variance_curvature:
        log_prob = tf.exp(log_prob - tf.stop_gradient(log_prob)) * trajectories.mask
    total = tf.reduce_sum(log_prob * weights, axis=[1, 2])
    return total / tf.reduce_sum(trajectories.mask, axis=[1, 2])


def return_surrogate(policy, params, trajectories, discount):
    """Per task [T], a surrogate whose gradient estimates that of the expected return:
    (1/N) Σ_i Σ_t log π(a_it | s_it) (G_it − b_it), G the rewards-to-go, b the linear baseline."""
    weights = advantages(trajectories, discount, normalize=False)
    return tf.reduce_mean(tf.reduce_sum(log_probs(policy, params, trajectories) * weights, axis=2), axis=1)


def policy_gradient_step(policy, params, trajectories, inner_lr, discount, create_graph,
                         low_variance_curvature=False):
    """θ + α ∇_θ inner_surrogate, every task from its own weights and trajectories.

    With `create_graph`, the step stays differentiable in θ at fixed samples (the meta-gradient's
    ∇² log π term, and with `low_variance_curvature` LVC's); otherwise its gradient is a constant."""
    with tf.GradientTape() as tape:
        tape.watch(params)
        objective = tf.reduce_sum(inner_surrogate(policy, params, trajectories, discount, low_variance_curvature))
    gradients = tape.gradient(objective, params)
    if not create_graph:
        gradients = {name: tf.stop_gradient(g) for name, g in gradients.items()}
    rate = tf.cast(inner_lr, objective.dtype)
    return {name: params[name] + rate * gradients[name] for name in params}


def score_weights(post_returns, phase_returns):
    """What multiplies each inner trajectory's score ∇ log π_θ(τ_i) in the meta-gradient, [T, N]:
    its task's post-update return F [T] minus a baseline independent of τ_i's own draw, so that the
    estimate stays unbiased: the mean return of the task's other N − 1 trajectories of the same
    phase [T, N] (returns depend on the goal: this removes most of F's spread over tasks) plus the
    mean improvement F − R̄ of the meta-batch's other tasks."""
    num_tasks, num_trajectories = phase_returns.shape
    total = tf.reduce_sum(phase_returns, axis=1, keepdims=True)
    others_in_task = (total - phase_returns) / (num_trajectories - 1)
    improvement = post_returns - tf.reduce_mean(phase_returns, axis=1)
    others_improvement = ((tf.reduce_sum(improvement) - improvement) / (num_tasks - 1) if num_tasks > 1
                          else tf.zeros_like(improvement))
    return post_returns[:, None] - others_in_task - others_improvement[:, None]


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
        goals = sample_goals(rng, num_tasks)
        noise = rng.standard_normal((num_tasks, self.num_steps + 1, self.num_trajectories, self.horizon, 2))
        return Tasks(goals, noise.astype(np.float32))
