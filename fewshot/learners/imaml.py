"""iMAML, implicit MAML (Rajeswaran, Finn, Kakade & Levine, "Meta-Learning with Implicit
Gradients", NeurIPS 2019).

Every task solves a problem regularised toward θ, approximately, with `num_inner_steps` steps of
gradient descent from θ:

    φ_t ≈ argmin_φ  L_support_t(φ) + λ/2 ‖φ − θ‖².

At its solution dφ_t/dθ = (I + H_t/λ)⁻¹ with H_t = ∇² L_support_t(φ_t), whatever path led
there, so the meta-gradient needs no differentiation through the inner steps:

    ∇θ L(θ) = 1/T Σ_t (I + H_t/λ)⁻¹ ∇ L_query_t(φ_t),

each task's linear system solved by `cg_steps` steps of conjugate gradient over Hessian-vector
products at φ_t. Nothing of the inner loop is kept for differentiation, so memory does not grow
with the inner steps; each CG step costs one Hessian-vector product on the support set.

The defaults run it as its authors' Omniglot code does (examples/README.md of
aravindr93/imaml_dev), which reaches the paper's numbers: λ = 2, 16 inner steps of learning rate
0.1 on L_support alone, then one step α on λ/2 ‖φ − θ‖² alone (φ ← θ + (1 − αλ)(φ − θ);
`regularization='pull_back'`), evaluation on L_support alone (its λ = 0), and the damped system
((1 + c) I + H/(λ + d)) x = g with c = 1, d = 10 (`cg_damping`, `lam_damping`); 5 CG steps, Adam
with meta learning rate 1e-3, 32 tasks per meta-batch. `regularization='every_step'`,
`cg_damping=0` and `lam_damping=0` are the paper's equations as written: gradient descent on the
regularised loss at every step, in training and evaluation alike, and (I + H/λ) x = g. At equal
iterations on Omniglot 5-way 1-shot the paper's way stalls near 55% where the code's tracks MAML
(protocols/README.md, 2026-12-05).

imaml.py at the top of the repository is its command.
"""

import tensorflow as tf

from fewshot.learners.maml import MAML


def task_dot(a, b):
    """Σ over every weight of a ∘ b, per task: dicts name -> [T, ...] -> [T]."""
    return tf.add_n([tf.reduce_sum(tf.reshape(a[name] * b[name], [a[name].shape[0], -1]), axis=1) for name in a])


def _scaled(scale, vector):
    """scale [T] times every task's slice of `vector` (dict name -> [T, ...])."""
    return {name: tf.reshape(scale, [-1] + [1] * (len(value.shape) - 1)) * value for name, value in vector.items()}


def conjugate_gradient(apply, b, num_steps):
    """x ≈ A⁻¹ b for every task, after `num_steps` steps of conjugate gradient from x = 0.

    apply: v -> A v for a symmetric A acting on each task's slice alone, positive definite in theory
    (I + H/λ); b, v, x: dicts name -> [T, ...]. A task whose residual reaches 0 stays where it is. A
    task whose A is not positive definite along the next direction (dᵀAd ≤ 0: the support loss's
    curvature below −λ there) stops at its current x, as truncated conjugate gradient does, rather
    than step to where the quadratic has no minimum (a meta-gradient of any size).
    """
    x = tf.nest.map_structure(tf.zeros_like, b)
    residual, direction = b, b
    residual_norm = task_dot(residual, residual)
    positive = tf.ones_like(residual_norm, tf.bool)  # Per task: no non-positive curvature met yet.
    for _ in range(num_steps):
        applied = apply(direction)
        curvature = task_dot(direction, applied)
        positive = positive & (curvature > 0)
        step = tf.where(positive, tf.math.divide_no_nan(residual_norm, curvature), 0)
        x = {name: x[name] + value for name, value in _scaled(step, direction).items()}
        residual = {name: residual[name] - value for name, value in _scaled(step, applied).items()}
        new_norm = task_dot(residual, residual)
        momentum = _scaled(tf.math.divide_no_nan(new_norm, residual_norm), direction)
        direction = {name: residual[name] + momentum[name] for name in residual}
        residual_norm = new_norm
    return x


def implicit_gradient(support_loss, query_loss, adapted, lam, cg_steps, cg_damping=0.0, lam_damping=0.0):
    """Every task's ((1 + c) I + H_t/(λ + d))⁻¹ ∇_φ query_loss, by conjugate gradient (c = cg_damping,
    d = lam_damping; 0 and 0: the implicit gradient (I + H_t/λ)⁻¹ ∇_φ query_loss).

    support_loss, query_loss: functions of task weights (dict name -> [T, ...]) to a scalar that
      is a sum (or mean) of per-task terms, so that each task's derivatives are in its own slice.
    adapted: φ, the task weights [T, ...] by name, where H_t = ∇² support_loss is taken.
    Returns the solutions x_t by name, [T, ...].
    """
    with tf.GradientTape() as tape:
        tape.watch(adapted)
        target = query_loss(adapted)
    query_gradient = tape.gradient(target, adapted)
    with tf.GradientTape(persistent=True) as outer:
        outer.watch(adapted)
        with tf.GradientTape() as inner:
            inner.watch(adapted)
            loss = support_loss(adapted)
        gradient = inner.gradient(loss, adapted)

    def apply(vector):  # ((1 + c) I + H/(λ + d)) v, H v as the derivative of the gradient along v.
        hessian_vector = outer.gradient(gradient, adapted, output_gradients=vector)
        return {name: (1 + cg_damping) * vector[name] + hessian_vector[name] / (lam + lam_damping)
                for name in vector}
    return conjugate_gradient(apply, query_gradient, cg_steps)


REGULARIZATIONS = ('every_step', 'pull_back')


class IMAML(MAML):
    """MAML with a regularised inner problem and the implicit meta-gradient (see the module docstring)."""

    def __init__(self, net, model=None, inner_lr=0.1, num_inner_steps=16, meta_optimizer=None, lam=2.0,
                 cg_steps=5, regularization='pull_back', cg_damping=1.0, lam_damping=10.0):
        """
        Args:
          net, model, inner_lr, num_inner_steps, meta_optimizer: as for `MAML` (the defaults: the
            authors' Omniglot ones).
          lam: λ, the pull of the inner problem toward θ.
          cg_steps: conjugate-gradient steps per meta-gradient.
          regularization: 'pull_back' (the authors' code: descend L_support, then in training one
            step α on λ/2 ‖φ − θ‖²; see the module docstring) or 'every_step' (the paper's: descend
            L_support + λ/2 ‖φ − θ‖², in training and evaluation).
          cg_damping, lam_damping: c and d of the system ((1 + c) I + H/(λ + d)) x = g (1, 10: the
            authors' code; 0, 0: the paper's).
        """
        if regularization not in REGULARIZATIONS:
            raise ValueError(f'regularization: {regularization!r} is not one of {", ".join(REGULARIZATIONS)}')
        super().__init__(net, model, inner_lr, num_inner_steps, True, meta_optimizer)
        self.lam = lam
        self.cg_steps = cg_steps
        self.regularization = regularization
        self.cg_damping, self.lam_damping = cg_damping, lam_damping

    def initial_weights(self, weights, context, support, labels, first_order):
        """θ for every task, as a constant: the meta-gradient does not flow through the inner loop,
        so nothing of it is recorded for differentiation."""
        return tf.nest.map_structure(tf.stop_gradient,
                                     super().initial_weights(weights, context, support, labels, first_order))

    def inner_loss(self, logits, labels, params, start):
        """Σ_t L_support_t(φ_t) + λ/2 ‖φ_t − θ‖² (every step), or Σ_t L_support_t(φ_t) (pull back)."""
        loss = super().inner_loss(logits, labels, params, start)
        if self.regularization != 'every_step':
            return loss
        distance = tf.add_n([tf.reduce_sum(tf.square(params[name] - start[name])) for name in params])
        return loss + self.lam / 2 * distance

    def adapt_tasks(self, params, episodes, num_steps, first_order, training):
        """MAML's adaptation; with the pull back, in training, its last weights φ_S moved to
        θ + (1 − αλ)(φ_S − θ), one step α on λ/2 ‖φ − θ‖²."""
        start, context, query, trajectory = super().adapt_tasks(params, episodes, num_steps, first_order, training)
        if self.regularization == 'pull_back' and training:
            adapted, keep = trajectory.params[-1], 1 - self.inner_lr * self.lam
            pulled = {name: start[name] + keep * (adapted[name] - start[name]) for name in adapted}
            trajectory = trajectory._replace(params=trajectory.params[:-1] + [pulled])
        return start, context, query, trajectory

    def meta_gradients(self, tape, meta_loss, trajectory, episodes):
        """1/T Σ_t (I + H_t/λ)⁻¹ ∇ L_query_t(φ_t) (`implicit_gradient`), φ the inner loop's last weights."""
        del tape, meta_loss

        def support_loss(weights):
            return tf.reduce_sum(self.net.task_losses(self.net.forward(weights, episodes.support_images),
                                                      episodes.support_labels))

        def query_loss(weights):
            return tf.reduce_mean(self.net.task_losses(self.net.forward(weights, episodes.query_images),
                                                       episodes.query_labels))
        solution = implicit_gradient(support_loss, query_loss, trajectory.params[-1], self.lam, self.cg_steps,
                                     self.cg_damping, self.lam_damping)
        return {name: tf.reduce_sum(solution[name], axis=0) for name in self.params}
