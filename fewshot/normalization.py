"""Batch norm with the exact moments of the batch, differentiable twice at the cost of a few passes.

For a channel with N values x (over batch, height and width), mean mu, biased variance v,
s = (v + eps)^(-1/2) and x^ = (x - mu) s, batch norm is y = gamma x^ + beta. Its gradient, for an
upstream gradient g = dL/dy, is

    dbeta = sum g,    dgamma = sum g x^,    dx = gamma s P(g),    P(f) = f - mean(f) - x^ mean(f x^),

where P projects out the two directions the moments remove. Second-order MAML differentiates
that gradient again (the inner loop's steps are made of it). For upstream gradients a (of dx),
b (of dgamma) and c (of dbeta), with A = sum a (g - mean g), m_g = mean(g x^), m_a = mean(a x^),

    d/dg     = gamma s P(a) + b x^ + c
    d/dgamma = s sum a P(g)
    d/dx     = -gamma s^2 x^ (A / N - m_g m_a) - gamma s^2 (m_a P(g) + m_g P(a)) + b s P(g)

(s and x^ both depend on x: ds/dx = -s^2 x^ / N, and d(sum f x^)/dx = s P(f)). Written out, that
is five per-channel sums and two weighted sums of x^, g and a. TensorFlow's own second derivative
of its fused batch-norm kernel rebuilds the gradient formula from elementary ops and differentiates
them, about three times the passes over every activation: it was the largest single cost of a
second-order meta-iteration on a CPU. Tests check both derivatives against float64 finite
differences and against the composed form. There is no third derivative: asking for one raises.
"""

import tensorflow as tf

BATCH_NORM_EPSILON = 1e-3
_AXES = [0, 1, 2]  # A channel's values: batch, height and width of [B, H, W, C].


def batch_norm(h, gamma, beta):
    """Batch norm of h [B, H, W, C] with the exact moments of the batch over [B, H, W].

    Returns (normalised h [B, H, W, C], mean [C], variance [C]): the moments it normalised with,
    as constants (no gradient flows back through them; the learners record them, they do not
    differentiate them). Correct to second order, as second-order MAML needs: Keras'
    BatchNormalization on the TensorFlow backend computes the variance around stop_gradient(mean),
    which breaks derivatives of derivatives. float32 and bfloat16 run TensorFlow's fused kernels
    forward and backward; float64 (the gradient tests') the same formulas from elementary ops.
    """
    y, mean, variance = _normalise(h, gamma, beta)
    return y, tf.stop_gradient(mean), tf.stop_gradient(variance)


def composed_batch_norm(h, gamma, beta):
    """`batch_norm` from elementary ops, differentiated by TensorFlow: the reference the tests hold
    the hand-written derivatives against (the variance is an ordinary function of the mean)."""
    mean = tf.reduce_mean(h, axis=_AXES)
    centered = h - mean
    variance = tf.reduce_mean(tf.square(centered), axis=_AXES)
    return centered * (gamma * tf.math.rsqrt(variance + BATCH_NORM_EPSILON)) + beta, mean, variance


def _fused(dtype):
    return dtype != tf.float64  # TensorFlow has fused CPU kernels for float32 and bfloat16 only.


@tf.custom_gradient
def _normalise(h, gamma, beta):
    """(y, mean, variance) of `batch_norm`; the gradient is `_gradient`, itself differentiable."""
    if _fused(h.dtype):
        y, mean, unbiased, *reserved = tf.raw_ops.FusedBatchNormV3(
            x=h, scale=gamma, offset=beta, mean=tf.zeros([0], gamma.dtype), variance=tf.zeros([0], gamma.dtype),
            epsilon=BATCH_NORM_EPSILON, is_training=True)
        count = h.shape[0] * h.shape[1] * h.shape[2]
        variance = unbiased * ((count - 1) / count)  # The kernel reports the unbiased variance.
    else:
        y, mean, variance = composed_batch_norm(h, gamma, beta)
        reserved = []

    def gradient(dy, _mean, _variance):  # The moments are constants to the caller (`batch_norm`).
        return _gradient(dy, h, gamma, mean, variance, *reserved)

    return (y, mean, variance), gradient


@tf.custom_gradient
def _gradient(dy, h, gamma, mean, variance, *reserved):
    """(dx, dgamma, dbeta) of batch norm for the upstream gradient dy; differentiable (module doc)."""
    if reserved:
        dx, dgamma, dbeta, _, _ = tf.raw_ops.FusedBatchNormGradV3(
            y_backprop=dy, x=h, scale=gamma, reserve_space_1=reserved[0], reserve_space_2=reserved[1],
            reserve_space_3=reserved[2], epsilon=BATCH_NORM_EPSILON, is_training=True)
    else:
        s, x_hat = _standardised(h, mean, variance)
        dgamma, dbeta = tf.reduce_sum(dy * x_hat, _AXES), tf.reduce_sum(dy, _AXES)
        dx = gamma * s * _project(dy, x_hat)

    def second_derivatives(a, b, c):
        """Gradients of sum(a dx) + b.dgamma + c.dbeta for dy, h and gamma (the module's formulas)."""
        g, x = tf.cast(dy, gamma.dtype), tf.cast(h, gamma.dtype)  # bfloat16 activations: in float32.
        a = tf.cast(a, gamma.dtype)
        s, x_hat = _standardised(x, mean, variance)
        count = float(x.shape[0] * x.shape[1] * x.shape[2])
        mean_g, mean_a = tf.reduce_mean(g, _AXES), tf.reduce_mean(a, _AXES)
        m_g, m_a = tf.reduce_mean(g * x_hat, _AXES), tf.reduce_mean(a * x_hat, _AXES)
        a_dot_centered_g = tf.reduce_sum(a * g, _AXES) - count * mean_a * mean_g  # A
        gs2 = gamma * s * s
        # d/dx = x^ k_x + g k_g + a k_a + k_1, the formula's projections multiplied out.
        k_x = -gs2 * a_dot_centered_g / count + 3.0 * gs2 * m_g * m_a - b * s * m_g
        k_g = b * s - gs2 * m_a
        k_a = -gs2 * m_g
        k_1 = (gs2 * m_a - b * s) * mean_g + gs2 * m_g * mean_a
        d_h = x_hat * k_x + g * k_g + a * k_a + k_1
        d_dy = a * (gamma * s) + x_hat * (b - gamma * s * m_a) + (c - gamma * s * mean_a)
        d_gamma = s * (a_dot_centered_g - count * m_g * m_a)
        return _final(tf.cast(d_dy, dy.dtype), tf.cast(d_h, h.dtype), d_gamma) + (None, None) + (None,) * len(reserved)

    return (dx, dgamma, dbeta), second_derivatives


@tf.custom_gradient
def _final(*second_derivatives):
    """The second derivatives as they are; differentiating them once more (a third derivative, which no
    learner takes) raises rather than silently treating the batch's moments as constants."""
    def third_derivatives(*_):
        raise NotImplementedError('batch norm has no third derivative here (fewshot/normalization.py)')
    return second_derivatives, third_derivatives


def _standardised(h, mean, variance):
    """(s [C], x^ [B, H, W, C]): the inverse standard deviation and the standardised values."""
    s = tf.math.rsqrt(variance + BATCH_NORM_EPSILON)
    return s, (h - mean) * s


def _project(f, x_hat):
    """P(f) = f - mean(f) - x^ mean(f x^), per channel."""
    return f - tf.reduce_mean(f, _AXES) - x_hat * tf.reduce_mean(f * x_hat, _AXES)
