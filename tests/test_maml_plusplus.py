"""MAML++: each fix does what it claims, and second-order gradients match finite differences."""

import json
import math
import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import launch
from fewshot import data, network, results
from fewshot.learner import named_groups
import maml_plusplus
from maml_plusplus import INNER_LR, PER_STEP, RUNNING, Fixes, MAMLPlusPlus
from test_maml import _dot, _episodes, _moved, _params

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_SCHEDULES = Fixes(msl=False, da=False)


def _learner(fixes=Fixes(), num_inner_steps=2, optimizer=None, inner_lr=0.4, seed=0):
    keras.utils.set_random_seed(seed)
    net = network.ConvNet(n_way=2, num_filters=4)
    return MAMLPlusPlus(net, net.keras_model(), inner_lr, num_inner_steps,
                        optimizer or keras.optimizers.Adam(1e-2), fixes)


def _gradient(learner, params, episodes, num_steps, **options):
    with tf.GradientTape() as tape:
        tape.watch(params)
        loss = learner.meta_objective(params, episodes, num_steps, **options)[0]
    return loss, tape.gradient(loss, params)


def _numpy(variables):
    return {name: value.numpy().copy() for name, value in variables.items()}


def test_msl_weights_start_uniform_sum_to_one_and_end_on_the_last_step():
    np.testing.assert_allclose(maml_plusplus.msl_weights(1, 5, 100), np.full(5, 0.2))
    previous = None
    for iteration in range(1, 102):
        weights = maml_plusplus.msl_weights(iteration, 5, 100)
        assert math.isclose(weights.sum(), 1.0) and (weights >= 0).all()
        if previous is not None:
            assert weights[-1] >= previous[-1] and (weights[:-1] <= previous[:-1]).all()
        previous = weights
    np.testing.assert_allclose(maml_plusplus.msl_weights(101, 5, 100), [0, 0, 0, 0, 1])


def test_multi_step_loss_is_the_weighted_sum_of_the_per_step_query_losses():
    learner = _learner(num_inner_steps=3)
    episodes = _episodes(2)
    weights = tf.constant([0.5, 0.3, 0.2])
    msl, msl_gradient = _gradient(learner, _params(learner, tf.float32), episodes, 3, first_order=False,
                                  msl_weights=weights)
    msl_gradient = named_groups(msl_gradient)
    # The query loss after s steps is the plain objective of an s-step inner loop.
    per_step = [_gradient(learner, _params(learner, tf.float32), episodes, s, first_order=False) for s in (1, 2, 3)]
    assert float(msl) == pytest.approx(sum(float(w) * float(loss)
                                           for w, (loss, _) in zip(weights, per_step)), rel=1e-5)
    for name in msl_gradient:
        expected = sum(float(w) * named_groups(g)[name] for w, (_, g) in zip(weights, per_step))
        np.testing.assert_allclose(msl_gradient[name], expected, rtol=1e-4,
                                   atol=1e-5 * float(tf.reduce_max(tf.abs(expected))))
    # MSL is scheduled only for its first iterations; the weights reach the last step.
    learner = _learner(Fixes(msl_iterations=4))
    assert learner.schedule(1)[1] is not None and learner.schedule(5)[1] is None


def test_derivative_order_annealing_is_first_order_before_the_switch_and_second_order_after():
    """With SGD at learning rate 1, a meta-step moves θ by exactly minus the meta-gradient used."""
    learner = _learner(Fixes(msl=False, da_iterations=1), optimizer=keras.optimizers.SGD(1.0))
    batch = data.Episodes(*(x.numpy() for x in _episodes(2)))
    for expected_order in ('first', 'second'):
        before = _params(learner, tf.float32)
        gradients = {order: named_groups(_gradient(learner, before, _episodes(2), 2, first_order=order == 'first')[1])
                     for order in ('first', 'second')}
        learner.meta_train_step(batch)
        before, after = named_groups(before), named_groups(learner.params)
        step = {name: before[name] - tf.convert_to_tensor(value) for name, value in after.items()}
        other = 'second' if expected_order == 'first' else 'first'
        for name in step:
            scale = float(tf.reduce_max(tf.abs(gradients[expected_order][name])))
            np.testing.assert_allclose(step[name], gradients[expected_order][name], rtol=1e-3,
                                       atol=1e-4 * scale)
        assert max(float(tf.reduce_max(tf.abs(step[n] - gradients[other][n]))) for n in step) > 1e-3


def test_per_step_statistics_differ_between_steps_and_are_used_at_evaluation():
    learner = _learner(Fixes(msl=False, da=False, eval_batch_norm='running'))
    episodes = data.Episodes(*(x.numpy() for x in _episodes(2)))
    initial = _numpy(learner.statistics)
    for _ in range(3):
        learner.meta_train_step(episodes)
    for name, value in learner.statistics.items():
        assert value.shape == (3, 4)  # S + 1 steps, 4 filters.
        assert np.abs(value.numpy() - initial[name]).max() > 1e-3  # Training moved them ...
        assert np.abs(value.numpy()[0] - value.numpy()[2]).max() > 1e-4  # ... differently per step.

    evaluated = learner.evaluate(episodes)['query_post_loss']
    scaled = learner.statistics['bn1/moving_variance']
    scaled.assign(scaled * 100.0)
    assert np.abs(learner.evaluate(episodes)['query_post_loss'] - evaluated).max() > 1e-4

    # With running statistics a prediction depends on its image alone, not on the batch.
    weights, context = learner.split(learner.params, training=False)
    assert set(context) == {PER_STEP, INNER_LR, RUNNING}
    params = network.tile(weights, 1)
    images = tf.constant(episodes.query_images[:1])
    together = learner.forward(params, images, 2, context)[0]
    alone = [learner.forward(params, images[:, i:i + 1], 2, context)[0] for i in range(images.shape[1])]
    np.testing.assert_allclose(together, tf.concat(alone, axis=1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('mode', ['support', 'transductive'])
def test_support_and_transductive_evaluation_ignore_the_running_statistics(mode):
    learner = _learner(Fixes(msl=False, da=False, eval_batch_norm=mode))
    episodes = data.Episodes(*(x.numpy() for x in _episodes(2)))
    learner.meta_train_step(episodes)
    evaluated = learner.evaluate(episodes)['query_post_loss']
    learner.statistics['bn1/moving_variance'].assign(learner.statistics['bn1/moving_variance'] * 100)
    np.testing.assert_array_equal(learner.evaluate(episodes)['query_post_loss'], evaluated)


def _with_query(episodes, indices):
    return data.Episodes(episodes.support_images, episodes.support_labels,
                         episodes.query_images[:, indices], episodes.query_labels[:, indices])


def test_support_statistics_make_each_query_prediction_independent_of_the_other_queries():
    """The loss of queries [x, z] is the mean of the losses of [x, x] and [z, z] only if a
    prediction depends on its own image alone; with batch moments it is not."""
    episodes = data.Episodes(*(x.numpy() for x in _episodes(2)))
    for mode, independent in (('support', True), ('transductive', False)):
        learner = _learner(Fixes(msl=False, da=False, eval_batch_norm=mode))
        learner.meta_train_step(episodes)
        loss = {name: learner.evaluate(_with_query(episodes, indices))['query_post_loss']
                for name, indices in (('xz', [0, 3]), ('xx', [0, 0]), ('zz', [3, 3]))}
        difference = np.abs(loss['xz'] - (loss['xx'] + loss['zz']) / 2).max()
        assert (difference < 1e-5) if independent else (difference > 1e-4), (mode, difference)


def test_learned_inner_learning_rates_get_gradients_and_change():
    learner = _learner(NO_SCHEDULES, num_inner_steps=3)
    gradient = _gradient(learner, _params(learner, tf.float32), _episodes(2), 3, first_order=True)[1][INNER_LR]
    rates = learner.params[INNER_LR]
    assert len(rates) == 4 + 2  # Four convolution kernels and the head's kernel and bias.
    before = _numpy(rates)
    for name in rates:
        assert (np.abs(gradient[name].numpy()) > 0).all(), name  # Every step of every tensor.
    learner.meta_train_step(data.Episodes(*(x.numpy() for x in _episodes(2))))
    for name in rates:
        assert (rates[name].numpy() != before[name]).all(), name
    rows = learner.inner_learning_rates()
    assert len(rows) == 6 * 3 and {row['step'] for row in rows} == {0, 1, 2}


def test_per_step_batch_norm_weights_are_meta_learned_per_step_not_adapted():
    learner = _learner(NO_SCHEDULES)
    assert set(learner.params[PER_STEP]) == set(network.batch_norm_parameters(learner.model))
    assert not set(learner.params[PER_STEP]) & set(learner.params['network'])
    episodes = _episodes(2)
    gradient = _gradient(learner, _params(learner, tf.float32), episodes, 2, first_order=False)[1]
    gamma = gradient[PER_STEP]['bn2/gamma'].numpy()
    assert gamma.shape == (3, 4) and np.abs(gamma).min(axis=1).max() > 0
    assert np.abs(gamma[0] - gamma[2]).max() > 1e-6  # Each step's weights have their own gradient.
    trajectory = learner.meta_objective(learner.params, episodes, 2)[2]
    assert set(trajectory.params[-1]) == set(learner.params['network'])


def test_meta_learning_rate_follows_the_cosine_schedule():
    meta_lr, min_meta_lr, num_iterations = 1e-3, 1e-5, 6
    optimizer = keras.optimizers.Adam(maml_plusplus.cosine_meta_lr(meta_lr, min_meta_lr, num_iterations))
    learner = _learner(NO_SCHEDULES, optimizer=optimizer)
    episodes = data.Episodes(*(x.numpy() for x in _episodes(2)))
    for iteration in range(num_iterations + 1):
        expected = min_meta_lr + (meta_lr - min_meta_lr) * (1 + math.cos(math.pi * iteration / num_iterations)) / 2
        assert float(optimizer.learning_rate) == pytest.approx(expected, rel=1e-5)
        learner.meta_train_step(episodes)


def test_second_order_gradient_with_lslr_bnwb_and_msl_matches_float64_finite_differences():
    learner = _learner(Fixes(), num_inner_steps=2)
    params = _params(learner, tf.float64)
    episodes = _episodes(1, dtype=np.float64)
    weights = tf.constant([0.3, 0.7], tf.float64)

    def loss_at(point):
        return learner.meta_objective(point, episodes, 2, first_order=False, msl_weights=weights)[0]
    gradient = _gradient(learner, params, episodes, 2, first_order=False, msl_weights=weights)[1]
    assert {'inner_lr/conv1/kernel', 'per_step/bn1/gamma', 'per_step/bn4/beta'} <= set(named_groups(gradient))
    rng = np.random.default_rng(7)
    for only in (None, INNER_LR, PER_STEP):  # All parameters, then the per-step ones alone.
        direction = {group: {name: tf.constant(rng.normal(size=value.shape) if only in (None, group)
                                               else np.zeros(value.shape), tf.float64)
                             for name, value in named.items()}
                     for group, named in params.items()}
        # A ReLU net's inner-loop gradient jumps where an activation crosses zero, so the
        # meta-objective is only piecewise smooth: a small step stays within one piece.
        epsilon = 1e-7
        numeric = (float(loss_at(_moved(params, direction, epsilon)))
                   - float(loss_at(_moved(params, direction, -epsilon)))) / (2 * epsilon)
        assert _dot(gradient, direction) == pytest.approx(numeric, rel=1e-5, abs=1e-9)


def test_every_fix_can_be_turned_off_and_the_learner_still_trains():
    episodes = data.Episodes(*(x.numpy() for x in _episodes(2)))
    for off in ('msl', 'da', 'bnrs', 'bnwb', 'lslr'):
        learner = _learner(Fixes(**{off: False}))
        before = [value.numpy().copy() for value in tf.nest.flatten(learner.params)]
        metrics = learner.meta_train_step(episodes)
        assert np.isfinite(metrics['query_post_loss']).all()
        assert any(np.abs(b - v.numpy()).max() > 0 for b, v in zip(before, tf.nest.flatten(learner.params)))
        assert np.isfinite(learner.evaluate(episodes)['query_post_accuracy']).all()


@pytest.mark.parametrize('mode', ['support', 'running', 'transductive'])
def test_the_residual_network_takes_every_fix_its_blocks_batch_norms_per_step(mode):
    keras.utils.set_random_seed(0)
    net = network.ResNet(n_way=2, num_filters=4)
    learner = MAMLPlusPlus(net, inner_lr=0.4, num_inner_steps=2, fixes=Fixes(da=False, eval_batch_norm=mode))
    layers = {name.split('/')[0] for name in network.statistics(net.keras_model())}  # bn1, bn2a, bn2b, bn2s, ...
    assert {name.split('/')[0] for name in learner.params[PER_STEP]} == layers and len(layers) == 1 + 3 * 3
    episodes = data.Episodes(*(x.numpy() for x in _episodes(2)))
    before = _numpy(learner.statistics)
    assert np.isfinite(learner.meta_train_step(episodes)['query_post_loss']).all()  # Second order.
    assert any(not np.array_equal(before[name], value.numpy()) for name, value in learner.statistics.items())
    assert np.isfinite(learner.evaluate(episodes)['query_post_accuracy']).all()


def test_command_line_run_writes_the_learned_learning_rates(synthetic_dir, tmp_path):
    tiny = ['--num_filters=4', '--n_way=3', '--k_shot=1', '--num_query=2', '--meta_batch_size=2',
            '--num_val_classes=4', '--num_train_classes=10', '--num_val_tasks=4', '--num_test_tasks=4',
            '--num_inner_steps=2', '--num_iterations=6', '--val_interval=3', '--msl_iterations=2',
            '--da_iterations=3', '--progress=false']
    command = [sys.executable, os.path.join(REPO, 'maml_plusplus.py'), f'--data_dir={synthetic_dir}',
               f'--cache_dir={tmp_path}/cache', f'--results_dir={tmp_path}', *tiny]
    result = launch.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    folder = tmp_path / 'maml++_3way1shot_2steps_seed0'
    rows = results.read_csv(folder / results.INNER_LR_FILE)
    assert len(rows) == 6 * 2 and any(row['inner_lr'] != 0.4 for row in rows)
    for name in ('inner_learning_rates.png', maml_plusplus.PER_STEP_FILE, 'val_accuracy.png',
                 results.SUMMARY_FILE, results.MODEL_FILE):
        assert (folder / name).exists(), name
    hyperparameters = json.loads((folder / results.HYPERPARAMETERS_FILE).read_text())
    assert hyperparameters['batch_norm'].startswith('support-set moments')
    assert hyperparameters['flags']['inner_lr'] == 0.4 and hyperparameters['flags']['msl'] is True
    assert 'first_order' not in hyperparameters['flags']  # A MAML flag that MAML++ does not use.

    bad = launch.run(command[:2] + ['--num_eval_inner_steps=3', '--num_inner_steps=2'],
                     capture_output=True, text=True, cwd=REPO, timeout=300)
    assert bad.returncode != 0 and 'Traceback' not in bad.stderr
    assert '--num_eval_inner_steps must not exceed --num_inner_steps' in bad.stderr
