"""Transfer learning: only the new head changes, tasks match MAML's, pretraining learns."""

import dataclasses
import json
import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import launch
from fewshot import data, network
from fewshot.cli import experiment
from fewshot.learners import transfer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _classifier(num_classes=6, n_way=3, **adaptation):
    keras.utils.set_random_seed(0)
    return transfer.PretrainedClassifier(
        network.ConvNet(num_classes, num_filters=8), keras.optimizers.Adam(1e-3),
        transfer.Adaptation(steps=20, **adaptation), n_way)


def _episodes(num_tasks=3, n_way=3, k_shot=2):
    images = np.random.default_rng(0).random((10, 20, 28, 28)).astype(np.float32)
    return data.sample_episodes(images, n_way, k_shot, 4, num_tasks, np.random.default_rng(1))


@pytest.mark.parametrize('head_init', ['random', 'zero', 'prototype'])
@pytest.mark.parametrize('optimizer', ['sgd', 'adam'])
def test_adaptation_leaves_the_pretrained_model_bit_identical(head_init, optimizer):
    learner = _classifier(head_init=head_init, optimizer=optimizer, lr=0.1)
    before = [v.numpy().copy() for v in learner.model.variables]
    metrics = learner.evaluate(_episodes(), num_steps=20)
    for b, v in zip(before, learner.model.variables):
        np.testing.assert_array_equal(b, v.numpy())
    assert metrics['query_post_accuracy'].shape == (3,)
    assert np.all(metrics['query_post_loss'] != metrics['query_pre_loss'])


def test_the_new_head_is_the_only_thing_that_adapts_and_it_fits_the_support_set():
    learner = _classifier(lr=0.05)
    net, episodes = learner.net, _episodes(n_way=3, k_shot=2)  # 6 points, 8 features: separable.
    params = network.tile({k: tf.convert_to_tensor(v)
                           for k, v in net.groups(network.parameters(learner.model))['body'].items()}, 3)
    stats = network.tile({k: tf.convert_to_tensor(v) for k, v in network.statistics(learner.model).items()}, 3)
    features = net.features(params, tf.constant(episodes.support_images), stats)
    adaptation = dataclasses.replace(learner.adaptation, steps=200)
    head = net.head_weights(*transfer._initial_head(features, tf.constant(episodes.support_labels), 3,
                                                         adaptation))
    assert head['head/kernel'].shape == (3, 8, 3) and head['head/bias'].shape == (3, 3)
    adapted = transfer._fit(lambda w: tf.reduce_sum(network.task_losses(
        network.head(w['head/kernel'], w['head/bias'], features), tf.constant(episodes.support_labels))),
        head, adaptation)
    assert set(adapted) == {'head/kernel', 'head/bias'}
    logits = network.head(adapted['head/kernel'], adapted['head/bias'], features)
    accuracy = network.task_accuracies(logits, tf.constant(episodes.support_labels))
    assert float(tf.reduce_mean(accuracy)) > 0.9


def test_finetune_all_runs_and_also_leaves_the_model_unchanged():
    learner = _classifier(finetune_all=True, lr=0.01)
    before = [v.numpy().copy() for v in learner.model.variables]
    metrics = learner.evaluate(_episodes(), num_steps=3)
    assert metrics['query_post_accuracy'].shape == (3,)
    for b, v in zip(before, learner.model.variables):
        np.testing.assert_array_equal(b, v.numpy())


def test_head_size_must_match_the_tasks():
    learner = _classifier(n_way=2)
    with pytest.raises(ValueError, match='the new head has 2 outputs but the tasks have 3 classes'):
        learner.evaluate(_episodes(n_way=3), num_steps=1)


def test_image_stream_is_deterministic_epoch_based_and_shifts():
    images = np.random.default_rng(0).random((7, 20, 28, 28)).astype(np.float32)
    stream = data.ImageStream(images, batch_size=32, seed=3)
    assert stream.steps_per_epoch == 5
    seen = np.concatenate([stream.sample(i, 32)[1] for i in range(1, 6)])
    assert sorted(seen.tolist()) == sorted(np.repeat(np.arange(7), 20).tolist())  # One epoch.
    x, y = stream.sample(4, 32)
    x2, y2 = data.ImageStream(images, 32, seed=3).sample(4, 32)
    np.testing.assert_array_equal(x, x2)
    shifted = data.ImageStream(images, 32, seed=3, max_shift=2).sample(4, 32)
    np.testing.assert_array_equal(shifted[1], y)
    assert not np.array_equal(shifted[0], x)
    assert shifted[0].shape == (32, 28, 28, 1)


def test_pretraining_loss_falls_on_real_data(real_omniglot):
    splits = data.make_splits(real_omniglot)
    stream = data.ImageStream(splits.train, 64, seed=0)
    keras.utils.set_random_seed(0)
    learner = transfer.PretrainedClassifier(network.ConvNet(len(splits.train)), keras.optimizers.Adam(1e-3),
                                                 transfer.Adaptation(), 5)
    first = [np.mean(learner.meta_train_step(stream.sample(i, 64))['loss']) for i in range(1, 11)]
    for i in range(11, 300):
        learner.meta_train_step(stream.sample(i, 64))
    last = [np.mean(learner.meta_train_step(stream.sample(i, 64))['loss']) for i in range(300, 310)]
    assert np.mean(last) < np.mean(first) - 0.5, (first, last)


def test_transfer_and_maml_runs_evaluate_on_the_same_tasks(synthetic_dir, tmp_path):
    shared = [f'--data_dir={synthetic_dir}', f'--cache_dir={tmp_path}/cache', f'--results_dir={tmp_path}',
              '--num_filters=4', '--n_way=3', '--k_shot=1', '--num_query=2', '--meta_batch_size=2',
              '--num_val_classes=4', '--num_train_classes=10', '--num_val_tasks=3', '--num_test_tasks=3',
              '--val_interval=5', '--progress=false']
    runs = {'maml': [os.path.join(REPO, 'maml.py'), '--num_iterations=2', '--num_inner_steps=1'],
            'transfer': [os.path.join(REPO, 'maml_transfer.py'), '--epochs=1', '--batch_size=100',
                         '--adapt_steps=2']}
    checksums = {}
    for name, command in runs.items():
        result = launch.run([sys.executable, *command, *shared, f'--run_name={name}'],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        with open(tmp_path / name / 'hyperparameters.json') as f:
            checksums[name] = json.load(f)['task_checksums']
    assert checksums['maml'] == checksums['transfer']
    assert checksums['maml']['val'] != checksums['maml']['test']


def test_comparison_tasks_are_the_tasks_every_script_evaluates_on(real_omniglot):
    """maml.py and maml_transfer.py both draw test tasks through experiment.evaluation_batches;
    the comparison, given a MAML run's task shape, draws the same ones."""
    from absl import flags
    flags.FLAGS(['test'])  # Defaults: the same flags for both scripts.
    splits = data.make_splits(real_omniglot)
    a = experiment.evaluation_batches(splits.test, 'meta-test', 40, 1)
    b = experiment.evaluation_batches(splits.test, 'meta-test', 40, 1, 5, 5, 15)
    for x, y in zip(a, b):
        for u, v in zip(x, y):
            np.testing.assert_array_equal(u, v)


def test_compare_with_a_missing_maml_run_is_a_clear_error(synthetic_dir, tmp_path):
    command = [sys.executable, os.path.join(REPO, 'maml_transfer.py'), f'--data_dir={synthetic_dir}',
               f'--cache_dir={tmp_path}/cache', f'--results_dir={tmp_path}', '--num_filters=4',
               '--n_way=3', '--k_shot=1', '--num_query=2', '--meta_batch_size=2', '--num_val_classes=4',
               '--num_train_classes=10', '--num_val_tasks=2', '--num_test_tasks=2', '--epochs=1',
               '--batch_size=50', '--val_interval=2', '--adapt_steps=2', '--progress=false',
               f'--compare_with={tmp_path}/no_such_run']
    result = launch.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 1 and 'Traceback' not in result.stderr
    assert 'no_such_run: folder does not exist' in result.stderr.strip().splitlines()[-1]
    assert not os.path.exists(tmp_path / 'transfer_3way1shot_seed0')  # Refused before pretraining.
