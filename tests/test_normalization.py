"""Batch norm is exact: its moments, and its hand-written first and second derivatives."""

import numpy as np
import pytest
import tensorflow as tf

from fewshot import normalization


def _inputs(dtype, shape=(6, 3, 3, 4)):
    rng = np.random.default_rng(0)
    h = tf.constant(rng.normal(1.0, 2.0, size=shape), dtype)
    gamma, beta = (tf.constant(rng.normal(size=shape[-1:]), dtype) for _ in range(2))
    weights = tf.constant(rng.normal(size=shape), dtype)
    return h, gamma, beta, weights


def _meta_loss(batch_norm, h, gamma, beta, weights):
    """A scalar that depends on second derivatives through batch norm: a gradient step on h, gamma and
    beta (through dx, dgamma and dbeta), then a loss at the stepped point."""
    with tf.GradientTape() as inner:
        inner.watch([h, gamma, beta])
        loss = tf.reduce_sum(tf.sin(batch_norm(h, gamma, beta) * weights))
    grad_h, grad_gamma, grad_beta = inner.gradient(loss, [h, gamma, beta])
    stepped = batch_norm(h - 0.3 * grad_h, gamma - 0.3 * grad_gamma, beta - 0.3 * grad_beta)
    return tf.reduce_sum(tf.cos(stepped * weights))


def _second_order(batch_norm, dtype, shape=(6, 3, 3, 4)):
    """d meta_loss / d (h, gamma, beta)."""
    h, gamma, beta, weights = _inputs(dtype, shape)
    with tf.GradientTape() as outer:
        outer.watch([h, gamma, beta])
        meta_loss = _meta_loss(batch_norm, h, gamma, beta, weights)
    return outer.gradient(meta_loss, [h, gamma, beta])


def _normalised(batch_norm):
    return lambda h, gamma, beta: batch_norm(h, gamma, beta)[0]


def test_second_derivatives_equal_float64_finite_differences():
    h, gamma, beta, weights = _inputs(tf.float64)
    exact = _second_order(_normalised(normalization.batch_norm), tf.float64)
    rng = np.random.default_rng(1)
    for _ in range(3):  # Directional derivatives along random directions of (h, gamma, beta).
        direction = [tf.constant(rng.normal(size=x.shape)) for x in (h, gamma, beta)]
        eps = 1e-6
        moved = [[x + sign * eps * d for x, d in zip((h, gamma, beta), direction)] for sign in (1, -1)]
        up, down = (float(_meta_loss(_normalised(normalization.batch_norm), *m, weights)) for m in moved)
        predicted = sum(float(tf.reduce_sum(g * d)) for g, d in zip(exact, direction))
        np.testing.assert_allclose(predicted, (up - down) / (2 * eps), rtol=1e-6)


def test_hand_written_derivatives_equal_tensorflows_of_the_composed_form():
    for dtype, rtol in ((tf.float64, 1e-10), (tf.float32, 1e-4)):
        hand_written = _second_order(_normalised(normalization.batch_norm), dtype)
        composed = _second_order(_normalised(normalization.composed_batch_norm), dtype)
        for a, b in zip(hand_written, composed):
            np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * float(tf.reduce_max(tf.abs(b))))


def test_bfloat16_second_derivatives_agree_with_float32():
    float32 = _second_order(_normalised(normalization.batch_norm), tf.float32, shape=(8, 6, 6, 4))
    bfloat16 = _second_order(lambda h, gamma, beta: tf.cast(normalization.batch_norm(
        tf.cast(h, tf.bfloat16), gamma, beta)[0], tf.float32), tf.float32, shape=(8, 6, 6, 4))
    for a, b in zip(bfloat16, float32):
        a, b = np.ravel(a), np.ravel(b)
        assert np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.99


def test_keras_style_moments_differ_to_second_order():
    """The checks above can fail: batch norm with the variance around stop_gradient(mean) of
    E[x^2] - mean^2 (Keras 3's TF moments) gives different second-order gradients."""
    def keras_style(h, gamma, beta):
        mean = tf.reduce_mean(h, axis=[0, 1, 2])
        variance = tf.reduce_mean(tf.square(h), axis=[0, 1, 2]) - tf.square(tf.stop_gradient(mean))
        return (h - mean) * gamma * tf.math.rsqrt(variance + normalization.BATCH_NORM_EPSILON) + beta
    exact = _second_order(_normalised(normalization.composed_batch_norm), tf.float64)
    approximate = _second_order(keras_style, tf.float64)
    assert max(float(tf.reduce_max(tf.abs(a - b))) for a, b in zip(exact, approximate)) > 1e-3


def test_batch_norm_normalises_each_channel_with_its_own_moments_and_returns_them_as_constants():
    h = tf.random.normal([10, 4, 4, 6]) * tf.range(1.0, 7.0) + tf.range(6.0)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(h)
        y, mean, variance = normalization.batch_norm(h, tf.ones([6]), tf.zeros([6]))
    np.testing.assert_allclose(tf.reduce_mean(y, [0, 1, 2]), np.zeros(6), atol=1e-5)
    np.testing.assert_allclose(tf.math.reduce_variance(y, [0, 1, 2]), np.ones(6), atol=1e-2)
    values = h.numpy().reshape(-1, 6)
    np.testing.assert_allclose(mean, values.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(variance, values.var(0), rtol=1e-4)
    _, composed_mean, composed_variance = normalization.composed_batch_norm(h, tf.ones([6]), tf.zeros([6]))
    np.testing.assert_allclose(composed_mean, mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(composed_variance, variance, rtol=1e-4)
    assert tape.gradient(mean, h) is None and tape.gradient(variance, h) is None


def test_a_third_derivative_is_refused_not_wrong():
    h, gamma, beta, weights = _inputs(tf.float64)
    with tf.GradientTape() as third:
        third.watch(h)
        with tf.GradientTape() as outer:
            outer.watch(h)
            meta_loss = _meta_loss(_normalised(normalization.batch_norm), h, gamma, beta, weights)
        second = tf.reduce_sum(outer.gradient(meta_loss, h) ** 2)
    with pytest.raises(NotImplementedError, match='no third derivative'):
        third.gradient(second, h)
