"""MAML of a Gaussian policy on 2D navigation, the MAML paper's reinforcement-learning experiment
(Finn, Abbeel & Levine, 2017, Section 5.3): the inner step is vanilla policy gradient, and the
meta-gradient one of ESTIMATORS (navigation.py's docstring gives its two terms and the estimators)."""

import os

import keras
import numpy as np
import tensorflow as tf

from fewshot import navigation, network, results
from fewshot.learner import Learner

# Estimators of MAML's meta-gradient (the module docstring has the two terms).
ESTIMATORS = {
    'lvc': "ProMP's low-variance curvature: the update's Hessian estimated with each step's ∇log π ∇log πᵀ Â "
           'term, no sampling term; biased (it drops terms across steps) but of low variance',
    'unbiased': 'both terms, the sampling one with per-trajectory baselines: the exact gradient of the expected '
                'post-update return, in expectation, and of higher variance',
    'no_sampling_term': "the MAML paper's code: the update's ∇² log π term only (biased; for comparison)",
}


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

    def adapt_tasks(self, params, tasks, num_steps, inner_lr, create_graph):
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
            sampled, adapted, sampling_log_probs = self.adapt_tasks(start, tasks, self.num_inner_steps, self.inner_lr,
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
        sampled, _, _ = self.adapt_tasks(network.tile(self.params, tasks.goals.shape[0]), tasks, num_steps,
                                         self.eval_inner_lr, create_graph=False)
        returns = [tf.reduce_mean(trajectories.returns(), axis=1) for trajectories in sampled]
        return {'query_pre_return': returns[0], 'query_post_return': returns[-1],
                **{f'return_after_{step}': r for step, r in enumerate(returns)}}

    def trajectories(self, tasks, num_steps):
        """The positions [S + 1, T, N, H + 1, 2] of every phase's trajectories, from the origin."""
        sampled, _, _ = self.adapt_tasks(network.tile(self.params, tasks.goals.shape[0]),
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
