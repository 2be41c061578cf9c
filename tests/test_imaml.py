"""iMAML: on a linear head over fixed features, where the regularised inner problem is solved
exactly in float64, the conjugate-gradient meta-gradient equals the closed-form implicit gradient
and finite differences of the meta-objective, and more CG steps leave a smaller residual; the
regularised inner loss; nothing of the inner loop recorded for differentiation; and the learner
improving on real Omniglot."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from fewshot import network
from test_maml import _episodes, _improvement
import imaml
import maml

LAM, NUM_TASKS, N_WAY, FEATURES = 2.0, 2, 3, 4


def _linear_problem():
    """Per-task support and query features and labels (NumPy), and the support and query losses
    of a linear head over them (TensorFlow, float64)."""
    rng = np.random.default_rng(0)
    support, query = (rng.normal(size=(NUM_TASKS, size, FEATURES)) for size in (6, 9))
    labels = [rng.integers(0, N_WAY, size=(NUM_TASKS, size)).astype(np.int32) for size in (6, 9)]

    def loss(features, labels, reduce):
        def of(weights):
            logits = network.head(weights['kernel'], weights['bias'], tf.constant(features))
            return reduce(network.task_losses(logits, tf.constant(labels)))
        return of
    return (support, labels[0]), loss(support, labels[0], tf.reduce_sum), loss(query, labels[1], tf.reduce_mean)


def _inner_solution(theta, support):
    """argmin_φ Σ_t L_support_t(φ_t) + λ/2 ‖φ_t − θ‖², per task, by gradient descent in NumPy to
    float64 precision (the problem is λ-strongly convex)."""
    features, labels = support
    one_hot = np.eye(N_WAY)[labels]
    kernel, bias = (np.repeat(theta[k].numpy()[None], NUM_TASKS, 0) for k in ('kernel', 'bias'))
    for _ in range(300):
        logits = features @ kernel + bias[:, None]
        probabilities = np.exp(logits - logits.max(-1, keepdims=True))
        probabilities /= probabilities.sum(-1, keepdims=True)
        error = (probabilities - one_hot) / labels.shape[1]  # d(mean cross-entropy)/d(logits).
        kernel = kernel - 0.2 * (np.einsum('tbf,tbn->tfn', features, error) + LAM * (kernel - theta['kernel'].numpy()))
        bias = bias - 0.2 * (error.sum(1) + LAM * (bias - theta['bias'].numpy()))
    return {'kernel': tf.constant(kernel), 'bias': tf.constant(bias)}


def _flat(weights, task):
    return np.concatenate([weights['kernel'][task].numpy().ravel(), weights['bias'][task].numpy().ravel()])


def _system(phi, support_loss, query_loss, cg_damping=0.0, lam_damping=0.0):
    """Per task, the matrix (1 + c) I + H_t/(λ + d) and the query gradient, flattened (kernel then bias)."""
    with tf.GradientTape() as outer:
        outer.watch(phi)
        with tf.GradientTape() as inner:
            inner.watch(phi)
            loss = support_loss(phi)
        gradient = inner.gradient(loss, phi)
        flat = tf.concat([tf.reshape(gradient['kernel'], [NUM_TASKS, -1]), gradient['bias']], axis=1)
    jacobian = outer.jacobian(flat, phi)  # Tasks are independent: only the diagonal blocks are non-zero.
    size = FEATURES * N_WAY + N_WAY
    with tf.GradientTape() as tape:
        tape.watch(phi)
        target = query_loss(phi)
    query_gradient = tape.gradient(target, phi)
    systems = []
    for task in range(NUM_TASKS):
        hessian = np.concatenate([tf.reshape(jacobian['kernel'][task, :, task], [size, -1]).numpy(),
                                  jacobian['bias'][task, :, task].numpy()], axis=1)
        systems.append(((1 + cg_damping) * np.eye(size) + hessian / (LAM + lam_damping), _flat(query_gradient, task)))
    return systems


def test_the_cg_meta_gradient_equals_the_closed_form_implicit_gradient_and_finite_differences():
    support, support_loss, query_loss = _linear_problem()
    rng = np.random.default_rng(1)
    theta = {'kernel': tf.constant(rng.normal(size=(FEATURES, N_WAY))), 'bias': tf.constant(rng.normal(size=N_WAY))}
    phi = _inner_solution(theta, support)
    solution = imaml.implicit_gradient(support_loss, query_loss, phi, LAM, cg_steps=40)
    for task, (matrix, query_gradient) in enumerate(_system(phi, support_loss, query_loss)):
        np.testing.assert_allclose(_flat(solution, task), np.linalg.solve(matrix, query_gradient), rtol=1e-8,
                                   atol=1e-12)
    meta_gradient = {k: tf.reduce_sum(solution[k], 0) for k in solution}  # Of the mean query loss.

    def meta_objective(weights):
        return float(query_loss(_inner_solution(weights, support)))
    epsilon = 1e-5
    for _ in range(3):
        direction = {k: tf.constant(rng.normal(size=v.shape)) for k, v in theta.items()}
        numeric = (meta_objective({k: theta[k] + epsilon * direction[k] for k in theta})
                   - meta_objective({k: theta[k] - epsilon * direction[k] for k in theta})) / (2 * epsilon)
        analytic = sum(float(tf.reduce_sum(meta_gradient[k] * direction[k])) for k in theta)
        assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-10)


def test_the_damped_system_of_the_authors_code_is_solved():
    """((1 + c) I + H/(λ + d)) x = g, c = 1 and d = 10 as the authors' code runs it."""
    support, support_loss, query_loss = _linear_problem()
    theta = {'kernel': tf.zeros([FEATURES, N_WAY], tf.float64), 'bias': tf.zeros([N_WAY], tf.float64)}
    phi = _inner_solution(theta, support)
    solution = imaml.implicit_gradient(support_loss, query_loss, phi, LAM, 40, cg_damping=1.0, lam_damping=10.0)
    for task, (matrix, query_gradient) in enumerate(_system(phi, support_loss, query_loss, 1.0, 10.0)):
        np.testing.assert_allclose(_flat(solution, task), np.linalg.solve(matrix, query_gradient), rtol=1e-8,
                                   atol=1e-12)


def test_more_conjugate_gradient_steps_leave_a_smaller_residual():
    support, support_loss, query_loss = _linear_problem()
    theta = {'kernel': tf.zeros([FEATURES, N_WAY], tf.float64), 'bias': tf.zeros([N_WAY], tf.float64)}
    phi = _inner_solution(theta, support)
    systems = _system(phi, support_loss, query_loss)
    residuals = []
    for steps in (1, 2, 4, 8):
        solution = imaml.implicit_gradient(support_loss, query_loss, phi, LAM, cg_steps=steps)
        residuals.append([np.linalg.norm(matrix @ _flat(solution, task) - b)
                          for task, (matrix, b) in enumerate(systems)])
    residuals = np.array(residuals)
    assert np.all(np.diff(residuals, axis=0) < 0), residuals


def test_conjugate_gradient_stops_a_task_where_its_system_is_not_positive_definite():
    """Task 0's A is positive definite: CG solves it exactly in two steps. Task 1's has curvature −2
    along e₂ (a support loss curving down faster than λ pulls), so bᵀAb = −1 < 0 at the first
    step: plain CG would step to x = −2b and on; truncated CG stops that task where it is."""
    matrices = tf.constant([[[2.0, 0.5], [0.5, 1.0]], [[1.0, 0.0], [0.0, -2.0]]], tf.float64)
    b = {'w': tf.constant([[1.0, 1.0], [1.0, 1.0]], tf.float64)}
    solution = imaml.conjugate_gradient(lambda v: {'w': tf.einsum('tij,tj->ti', matrices, v['w'])}, b, 2)
    np.testing.assert_allclose(solution['w'][0], np.linalg.solve(matrices[0], [1.0, 1.0]), rtol=1e-12)
    np.testing.assert_array_equal(solution['w'][1], [0.0, 0.0])


def _imaml(num_inner_steps=2, lam=LAM, n_way=2, num_filters=4, regularization='every_step', cg_damping=0.0,
           lam_damping=0.0):
    """iMAML as the paper writes it unless told otherwise (the class's defaults are its authors' code's)."""
    keras.utils.set_random_seed(0)
    net = network.ConvNet(n_way, num_filters)
    return imaml.IMAML(net, net.keras_model(), 0.1, num_inner_steps, keras.optimizers.Adam(1e-3), lam, cg_steps=2,
                       regularization=regularization, cg_damping=cg_damping, lam_damping=lam_damping)


def test_the_pull_back_adapts_on_the_support_loss_then_steps_toward_theta_in_training_only():
    """The authors' code: the inner steps descend L_support alone, as MAML's (at evaluation that is
    all); in training one more step α on λ/2 ‖φ − θ‖² gives θ + (1 − αλ)(φ − θ)."""
    learner = _imaml(num_inner_steps=3, regularization='pull_back')
    plain = maml.MAML(learner.net, learner.model, 0.1, 3)
    episodes = _episodes(2)
    start, _, _, evaluated = learner.adapt_tasks(learner.params, episodes, 3, True, training=False)
    trained = learner.adapt_tasks(learner.params, episodes, 3, True, training=True)[3].params[-1]
    expected = plain.adapt_tasks(plain.params, episodes, 3, True, training=False)[3].params[-1]
    regularised = _imaml(num_inner_steps=3).adapt_tasks(learner.params, episodes, 3, True, training=False)[3].params[-1]
    for name, value in evaluated.params[-1].items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-6, atol=1e-7, err_msg=name)
        np.testing.assert_allclose(trained[name], start[name] + (1 - 0.1 * LAM) * (value - start[name]),
                                   rtol=1e-5, atol=1e-7, err_msg=name)
    assert max(float(tf.reduce_max(tf.abs(regularised[name] - expected[name]))) for name in expected) > 1e-4


def test_the_inner_loss_pulls_toward_theta():
    learner = _imaml(lam=3.0)
    episodes = _episodes(2)
    start = network.tile(learner.params, 2)
    moved = {name: value + 0.5 for name, value in start.items()}
    logits = learner.net.forward(moved, episodes.support_images)
    size = sum(int(np.prod(value.shape)) for value in start.values())
    expected = float(tf.reduce_sum(network.task_losses(logits, episodes.support_labels))) + 3.0 / 2 * 0.25 * size
    assert float(learner.inner_loss(logits, episodes.support_labels, moved, start)) == pytest.approx(expected, rel=1e-5)


def test_a_meta_step_records_nothing_of_the_inner_loop_and_moves_theta():
    learner = _imaml(num_inner_steps=3)
    episodes = _episodes(2)
    with tf.GradientTape() as tape:
        meta_loss = learner.meta_objective(learner.params, episodes, 3)[0]
    assert all(gradient is None for gradient in tape.gradient(meta_loss, learner.params).values())
    before = {name: value.numpy().copy() for name, value in learner.params.items()}
    learner.meta_train_step(type(episodes)(*(x.numpy() for x in episodes)))
    assert all(np.abs(learner.params[name].numpy() - before[name]).max() > 0 for name in before)


def test_learner_improves_on_real_validation_tasks(real_omniglot):
    """A few dozen meta-iterations beat the initial weights on the same fixed 5-way 1-shot tasks."""
    learner = _imaml(num_inner_steps=5, n_way=5, num_filters=32)
    initial, trained = _improvement(learner, real_omniglot, k_shot=1, num_query=5, meta_batch_size=8)
    assert trained > initial + 0.05, (initial, trained)
