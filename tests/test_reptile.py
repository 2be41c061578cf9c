"""Reptile: its meta-step against first-order MAML and float64 finite differences, the exact ε
step toward the adapted weights, its inner Adam and minibatches, the annealed ε, and learning
on real Omniglot."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl.testing import flagsaver

from fewshot import data, network
from test_maml import _dot, _episodes, _improvement, _params
import maml
import reptile


def _reptile(inner_lr=0.1, num_inner_steps=1, step_size=1.0, inner_optimizer='sgd', inner_batch_size=0, n_way=2,
             num_filters=4, seed=0, inner_adam_state='fresh'):
    keras.utils.set_random_seed(seed)
    net = network.ConvNet(n_way, num_filters)
    return reptile.Reptile(net, net.keras_model(), inner_lr, num_inner_steps, keras.optimizers.SGD(step_size),
                           inner_optimizer, inner_batch_size, inner_adam_state)


def _numpy(episodes):
    return data.Episodes(*(np.asarray(x) for x in episodes))


def _weights(learner):
    return {name: value.numpy().copy() for name, value in learner.params.items()}


def test_one_sgd_step_with_unit_step_size_is_first_order_maml_on_the_task_examples():
    """With one inner SGD step of size α on all of task t's examples (support and query sets),
    θ'_t = θ − α g_t(θ) (g_t the gradient of the task's loss on them at θ), so with ε = 1 Reptile's
    meta-step is

        θ ← θ + 1/T Σ_t (θ'_t − θ) = θ − α · 1/T Σ_t g_t(θ),

    one SGD step of size α on the mean loss over the tasks' examples: the step of first-order MAML
    with no inner step (θ' = θ) whose query set is all those examples, taken by SGD with learning
    rate ε·α = α."""
    alpha = 0.1
    learner = _reptile(inner_lr=alpha, step_size=1.0)
    keras.utils.set_random_seed(0)
    reference = maml.MAML(learner.net, learner.net.keras_model(), alpha, 0, True, keras.optimizers.SGD(alpha))
    start = _weights(learner)
    for name, value in reference.params.items():
        value.assign(start[name])
    episodes = _numpy(_episodes(2))
    examples = _numpy(reptile.every_example(episodes, 2))
    learner.meta_train_step(episodes)
    reference.meta_train_step(data.Episodes(*examples[:2], *examples[:2]))
    for name in start:
        assert np.abs(learner.params[name].numpy() - start[name]).max() > 0
        np.testing.assert_allclose(learner.params[name].numpy(), reference.params[name].numpy(), rtol=1e-4, atol=1e-6)


def test_the_meta_direction_of_one_sgd_step_matches_float64_finite_differences():
    """(θ − θ')/α = ∇ L_support(θ) for one inner SGD step of size α: the finite difference of the support loss."""
    alpha = 0.05
    learner = _reptile(inner_lr=alpha)
    params = _params(learner, tf.float64)
    episodes = _episodes(1, dtype=np.float64)  # One task: TensorFlow has no float64 grouped convolution.
    trajectory = learner.inner_loop(network.tile(params, 1), episodes.support_images, episodes.support_labels, 1)
    direction_of_step = {name: (params[name] - trajectory.params[-1][name][0]) / alpha for name in params}

    def support_loss(weights):
        return float(tf.reduce_mean(network.task_losses(
            learner.net.forward(network.tile(weights, 1), episodes.support_images), episodes.support_labels)))
    rng = np.random.default_rng(3)
    epsilon = 1e-7
    for _ in range(3):
        direction = {k: tf.constant(rng.normal(size=v.shape), tf.float64) for k, v in params.items()}
        numeric = (support_loss({k: params[k] + epsilon * direction[k] for k in params})
                   - support_loss({k: params[k] - epsilon * direction[k] for k in params})) / (2 * epsilon)
        assert _dot(direction_of_step, direction) == pytest.approx(numeric, rel=1e-5, abs=1e-8)


@pytest.mark.parametrize('step_size', [0.3, 1.0])
def test_theta_moves_toward_the_mean_adapted_weights_by_exactly_epsilon(step_size):
    learner = _reptile(num_inner_steps=3, step_size=step_size, inner_optimizer='adam', inner_batch_size=2)
    episodes = _episodes(3)
    examples = reptile.every_example(episodes, 2)
    start = _weights(learner)
    adapted = learner.inner_loop(network.tile(learner.params, 3), examples.support_images,
                                 examples.support_labels, 3).params[-1]
    learner.meta_train_step(_numpy(episodes))
    for name in start:
        expected = start[name] + step_size * (np.mean(adapted[name].numpy(), 0) - start[name])
        np.testing.assert_allclose(learner.params[name].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_meta_training_adapts_on_support_and_query_examples_class_by_class():
    """Each class's K support then Q query examples, class after class; the query set is kept."""
    episodes = _episodes(2, n_way=3, k_shot=2, num_query=3)
    examples = reptile.every_example(episodes, 3)
    assert examples.support_images.shape == (2, 15, 28, 28, 1)
    np.testing.assert_array_equal(examples.support_labels.numpy(), np.repeat(np.arange(3), 5)[None].repeat(2, 0))
    support, query = episodes.support_images.numpy(), episodes.query_images.numpy()
    for task in range(2):
        for label in range(3):
            joined = examples.support_images.numpy()[task, 5 * label:5 * label + 5]
            np.testing.assert_array_equal(joined[:2], support[task, 2 * label:2 * label + 2])
            np.testing.assert_array_equal(joined[2:], query[task, 3 * label:3 * label + 3])
    assert examples.query_images is episodes.query_images and examples.query_labels is episodes.query_labels


def test_inner_adam_with_zero_beta1_matches_its_formula():
    learner = _reptile(inner_lr=0.01, inner_optimizer='adam')
    params = {'w': tf.constant([[1.0, -2.0]])}
    gradients = [np.array([[0.5, -1.0]]), np.array([[0.25, 3.0]])]
    state, v = learner.inner_state(params), np.zeros((1, 2))
    expected = params['w'].numpy()
    for step, gradient in enumerate(gradients):
        params, state = learner.inner_update(params, {'w': tf.constant(gradient, tf.float32)}, step, {}, state)
        v = 0.999 * v + 0.001 * gradient ** 2
        expected = expected - 0.01 * gradient / (np.sqrt(v / (1 - 0.999 ** (step + 1))) + 1e-8)
        np.testing.assert_allclose(params['w'].numpy(), expected, rtol=1e-5)


def test_carried_inner_adam_continues_its_formula_from_the_carried_moments_and_steps():
    learner = _reptile(inner_lr=0.01, inner_optimizer='adam', inner_adam_state='carried')
    v = np.array([[0.3, 0.01]])
    learner.carried['moments'] = {'w': tf.Variable(v[0], dtype=tf.float32)}
    learner.carried['steps'].assign(7.0)
    params = {'w': tf.constant([[1.0, -2.0]])}
    state, expected = learner.inner_state(params), params['w'].numpy()
    for step, gradient in enumerate([np.array([[0.5, -1.0]]), np.array([[0.25, 3.0]])]):
        params, state = learner.inner_update(params, {'w': tf.constant(gradient, tf.float32)}, step, {}, state)
        v = 0.999 * v + 0.001 * gradient ** 2
        expected = expected - 0.01 * gradient / (np.sqrt(v / (1 - 0.999 ** (7 + step + 1))) + 1e-8)
        np.testing.assert_allclose(params['w'].numpy(), expected, rtol=1e-5)


def test_carried_inner_adam_state_is_the_tasks_mean_after_a_meta_step_and_evaluation_leaves_it():
    """'carried': zero at first (the first meta-step is the fresh one's, to rounding), then the mean over the tasks of
    where their moments ended and t + k; the next meta-step starts from it; evaluation changes nothing."""
    fresh, carried = (_reptile(inner_lr=0.01, num_inner_steps=2, inner_optimizer='adam', inner_adam_state=state)
                      for state in ('fresh', 'carried'))
    episodes = _numpy(_episodes(3, n_way=2))
    examples = reptile.every_example(episodes, 2)
    start = {name: tf.convert_to_tensor(value) for name, value in carried.params.items()}
    trajectory = fresh.inner_loop(network.tile(start, 3), examples.support_images, examples.support_labels, 2)
    ended = {name: value.numpy().mean(0) for name, value in trajectory.inner_state[0].items()}
    for learner in (fresh, carried):
        learner.meta_train_step(episodes)
    np.testing.assert_allclose(_weights(carried)['conv1/kernel'], _weights(fresh)['conv1/kernel'], rtol=1e-4,
                               atol=1e-6)  # The same but for float32 rounding (β2^s computed in float32).
    for name, value in ended.items():
        np.testing.assert_allclose(carried.carried['moments'][name].numpy(), value, rtol=1e-5, atol=1e-12)
    assert float(carried.carried['steps']) == 2.0 and fresh.carried is None
    before = {name: variable.numpy().copy() for name, variable in carried.state_variables().items()}
    carried.evaluate(episodes, 3)
    for name, variable in carried.state_variables().items():
        np.testing.assert_array_equal(variable.numpy(), before[name], err_msg=name)
    assert 'inner_adam/steps' in before and 'inner_adam/moments/conv1/kernel' in before
    assert not any(name.startswith('inner_adam/') for name in fresh.state_variables())
    for learner in (fresh, carried):
        learner.meta_train_step(episodes)
    assert np.abs(_weights(carried)['conv1/kernel'] - _weights(fresh)['conv1/kernel']).max() > 1e-4
    with pytest.raises(ValueError, match="inner_adam_state 'kept': one of carried, fresh"):
        _reptile(inner_adam_state='kept')


def test_sgd_keeps_no_inner_state_whichever_is_asked():
    """The default 'carried' is Adam's: with SGD it carries nothing and steps as 'fresh' does."""
    episodes = _numpy(_episodes(2))
    sgd = {state: _reptile(inner_adam_state=state) for state in ('carried', 'fresh')}
    assert sgd['carried'].carried is None and not any(name.startswith('inner_adam/')
                                                      for name in sgd['carried'].state_variables())
    for learner in sgd.values():
        learner.meta_train_step(episodes)
    np.testing.assert_array_equal(_weights(sgd['carried'])['conv1/kernel'], _weights(sgd['fresh'])['conv1/kernel'])


def test_inner_minibatches_cycle_through_the_task_examples_alternating_classes():
    learner = _reptile(n_way=3, inner_batch_size=6)
    labels = tf.constant(np.repeat(np.arange(3, dtype=np.int32), 4)[None])  # 3-way 4-shot, class by class.
    images = tf.reshape(tf.range(12, dtype=tf.float32), [1, 12])  # Each example's own index.
    seen = []
    for step in range(4):
        batch_images, batch_labels = learner.inner_batch(images, labels, step)
        assert sorted(batch_labels.numpy()[0]) == [0, 0, 1, 1, 2, 2]
        seen.append(batch_images.numpy()[0].astype(int))
    np.testing.assert_array_equal(np.sort(np.concatenate(seen[:2])), np.arange(12))  # Two steps: every example.
    np.testing.assert_array_equal(seen[2], seen[0])
    whole = _reptile(inner_batch_size=0).inner_batch(images, labels, 5)
    assert whole[0] is images and whole[1] is labels


def test_epsilon_anneals_linearly_over_the_iterations():
    if not reptile.FLAGS.is_parsed():
        reptile.FLAGS(['test'])  # The defaults, but for the flags saved below.
    with flagsaver.flagsaver(num_iterations=100, meta_step_size=1.0, final_meta_step_size=0.2):
        learner = reptile.build_learner(network.ConvNet(2, 4), first_order=True)
    step_sizes = []
    for iteration in (0, 50, 100):
        learner.meta_optimizer.iterations.assign(iteration)
        step_sizes.append(float(learner.meta_optimizer.learning_rate))
    assert step_sizes == pytest.approx([1.0, 0.6, 0.2])


def test_learner_improves_on_real_validation_tasks(real_omniglot):
    """A few dozen meta-iterations with the paper's inner loop beat the initial weights on the same
    fixed 5-way 5-shot tasks (Reptile moves θ by a few inner steps per iteration: at 1-shot, 40
    iterations are too few to tell)."""
    learner = _reptile(inner_lr=1e-3, num_inner_steps=5, inner_optimizer='adam', inner_batch_size=10, n_way=5,
                       num_filters=32)
    initial, trained = _improvement(learner, real_omniglot, k_shot=5, num_query=5, meta_batch_size=8)
    assert trained > initial + 0.05, (initial, trained)
