"""The gradient-based family over MAML's core (ANIL, BOIL, Meta-SGD, Proto-MAML): what each inner
loop may change it changes and nothing else, second-order meta-gradients against float64 finite
differences, each learner improves on real Omniglot, and every learner's command trains,
checkpoints, resumes exactly and reports through the shared code."""

import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from fewshot import data, folders, network, results
from fewshot.cli import commands, gradient
import launch
from test_contract import assert_second_order_matches_finite_differences
from test_maml import _episodes, _improvement, _meta_gradient, _params
from test_training import REPO, _without_time
import discovered
import anil
import boil
import maml
import meta_sgd
import proto_maml
import report

# MAML's variants with a command of MAML's shape (ANIL, BOIL, Meta-SGD, Proto-MAML, ...), found, not listed:
# the learner and its command's default inner steps.
VARIANTS = {name: (command.learner_class, command.defaults.get('num_inner_steps', 3))
            for name, (command, first_order) in discovered.learners().items()
            if first_order and command.learner_flags == gradient.LEARNER_FLAGS
            and command.learner_class is not maml.MAML}


def _learner(kind, inner_lr=0.4, num_inner_steps=2, first_order=False, n_way=2, num_filters=4, seed=0,
             backbone='conv4'):
    keras.utils.set_random_seed(seed)
    net = network.build(backbone, n_way, num_filters, False)
    return kind(net, net.keras_model(), inner_lr, num_inner_steps, first_order, keras.optimizers.Adam(1e-3))


@pytest.mark.parametrize('name', ['MAML', 'BOIL'])
def test_second_order_meta_gradient_matches_float64_finite_differences_through_the_residual_network(name):
    """Every second-order learner is checked on conv4 by test_contract.py; here the residual blocks."""
    assert_second_order_matches_finite_differences(_learner({'MAML': maml.MAML, 'BOIL': boil.BOIL}[name],
                                                            backbone='resnet'))


def _adapted(learner, episodes, num_steps=3):
    """(θ split into adapted and context parts, the inner loop's last weights)."""
    weights, context = learner.split(learner.params, training=True)
    support = learner.represent(episodes.support_images, context)
    start = learner.initial_weights(weights, context, support, episodes.support_labels, True)
    return weights, context, learner.inner_loop(start, support, episodes.support_labels, num_steps,
                                                True, context).params[-1]


def test_anil_adapts_the_head_only_and_the_body_stays_bit_identical():
    learner = _learner(anil.ANIL, n_way=2)
    episodes = _episodes(2)
    body_before = {k: v.numpy().copy() for k, v in learner.params.items() if not k.startswith('head/')}
    weights, context, adapted = _adapted(learner, episodes)
    body = context['body']
    assert set(adapted) == {'head/kernel', 'head/bias'} == set(weights)
    assert float(tf.reduce_max(tf.abs(adapted['head/kernel'] - network.tile(weights, 2)['head/kernel']))) > 0
    # The adapted network is the untouched body with the adapted head, exactly.
    logits = learner.forward(adapted, learner.represent(episodes.query_images, context), 0, context)[0]
    full = learner.net.forward({**network.tile(body, 2), **adapted}, episodes.query_images)
    np.testing.assert_array_equal(logits, full)
    for name, value in body_before.items():
        np.testing.assert_array_equal(body[name], value)


def test_boil_adapts_the_body_only_and_the_head_stays_bit_identical():
    learner = _learner(boil.BOIL, n_way=2)
    episodes = _episodes(2)
    head_before = {k: v.numpy().copy() for k, v in learner.params.items() if k.startswith('head/')}
    weights, context, adapted = _adapted(learner, episodes)
    head = context['head']
    assert set(adapted) == set(weights) and not any(name.startswith('head/') for name in adapted)
    assert float(tf.reduce_max(tf.abs(adapted['conv1/kernel'] - network.tile(weights, 2)['conv1/kernel']))) > 0
    for name, value in head_before.items():
        np.testing.assert_array_equal(head[name], value)
    logits = learner.forward(adapted, episodes.query_images, 0, context)[0]
    np.testing.assert_array_equal(logits, learner.net.forward({**adapted, **network.tile(head, 2)},
                                                              episodes.query_images))


def test_feature_change_is_none_when_only_the_head_adapts_and_some_when_the_body_does():
    """ANIL leaves the body, so the features before and after adaptation are the same (cosine 1);
    BOIL adapts only the body, so they move."""
    episodes = _episodes(2, n_way=2)
    similarity = {kind: learner.evaluate(episodes, 3)['support_feature_similarity']
                  for kind, learner in (('ANIL', _learner(anil.ANIL)), ('BOIL', _learner(boil.BOIL)))}
    np.testing.assert_allclose(similarity['ANIL'], 1.0, rtol=1e-6)
    assert similarity['BOIL'].shape == (2,) and np.all(similarity['BOIL'] < 0.9999)


def test_meta_sgd_with_uniform_rates_adapts_as_maml_and_its_rates_are_learned():
    learner = _learner(meta_sgd.MetaSGD, inner_lr=0.3, first_order=True)
    reference = _learner(lambda *args: maml.MAML(*args), inner_lr=0.3, first_order=True)
    episodes = _episodes(2)
    _, _, adapted = _adapted(learner, episodes)
    _, _, expected = _adapted(reference, episodes)
    for name in expected:
        np.testing.assert_allclose(adapted[name], expected[name], rtol=1e-6, atol=1e-7)
    # Every rate tensor gets a gradient, and a meta-step moves it.
    gradient = _meta_gradient(learner, _params(learner, tf.float32), episodes, 2, first_order=True)
    rates = learner.params['inner_lr']
    assert set(rates) == set(expected) == set(learner.params['network'])
    assert all(float(tf.reduce_max(tf.abs(gradient['inner_lr'][name]))) > 0 for name in rates)
    before = {name: value.numpy().copy() for name, value in rates.items()}
    learner.meta_train_step(data.Episodes(*(x.numpy() for x in episodes)))
    assert all(np.abs(rates[name].numpy() - before[name]).max() > 0 for name in rates)


def test_proto_maml_initial_head_is_twice_the_prototypes_and_minus_their_squared_norms():
    learner = _learner(proto_maml.ProtoMAML, n_way=3)
    episodes = _episodes(2, n_way=3, k_shot=2)
    assert not any(name.startswith('head/') for name in learner.params)
    weights, context = learner.split(learner.params, training=True)
    start = learner.initial_weights(weights, context, episodes.support_images, episodes.support_labels, False)
    features = learner.net.features(network.tile(weights, 2), episodes.support_images).numpy()
    labels = episodes.support_labels.numpy()
    for task in range(2):
        for k in range(3):
            prototype = features[task][labels[task] == k].mean(axis=0)
            np.testing.assert_allclose(start['head/kernel'][task][:, k], 2 * prototype, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(start['head/bias'][task][k], -np.sum(prototype ** 2), rtol=1e-5, atol=1e-6)
    # The prototype head classifies every support image as its class's nearest prototype would.
    logits = learner.net.forward(start, episodes.support_images).numpy()
    distances = ((features[:, :, None, :] - np.stack([[features[t][labels[t] == k].mean(0) for k in range(3)]
                                                       for t in range(2)])[:, None]) ** 2).sum(-1)
    np.testing.assert_array_equal(logits.argmax(-1), distances.argmin(-1))


@pytest.mark.parametrize('name', list(VARIANTS))
def test_learner_improves_on_real_validation_tasks(name, real_omniglot):
    """A few dozen first-order meta-iterations beat the initial weights on the same fixed tasks."""
    learner_class, num_inner_steps = VARIANTS[name]
    learner = _learner(learner_class, inner_lr=0.4, num_inner_steps=num_inner_steps, first_order=True, n_way=5,
                       num_filters=32)
    initial, trained = _improvement(learner, real_omniglot, k_shot=1, num_query=5, meta_batch_size=8)
    assert trained > initial + 0.05, (initial, trained)


# The contract every learner's command keeps through the shared code --------------------------

# Every learner command (a script defining its commands.Command), found rather than listed.
LEARNER_SCRIPTS = discovered.learner_scripts()
COMMANDS = {**{script: ['--num_inner_steps=1'] if commands.find(script[:-3], 'script').takes('num_inner_steps')
                else [] for script in LEARNER_SCRIPTS},
            'maml_plusplus.py': ['--num_inner_steps=1', '--cosine_annealing=false']}
COMMANDS['reptile.py'].append('--final_meta_step_size=1')  # A constant ε: an annealed one fixes --num_iterations.
COMMANDS['reptile.py'].append('--num_eval_inner_steps=2')  # Its default 50 steps cost a minute, proving nothing more.


def test_the_contract_covers_every_learner_command():
    assert {'maml.py', 'anil.py', 'boil.py', 'meta_sgd.py', 'proto_maml.py', 'protonet.py'} <= set(LEARNER_SCRIPTS)
TINY = ['--num_filters=4', '--n_way=3', '--k_shot=1', '--num_query=2', '--meta_batch_size=2',
        '--num_val_classes=4', '--num_train_classes=10', '--num_val_tasks=4', '--num_test_tasks=4',
        '--progress=false', '--val_interval=2']


@pytest.mark.parametrize('script', list(COMMANDS))
def test_each_command_trains_checkpoints_resumes_exactly_and_reports(script, synthetic_dir, tmp_path):
    """Stopped after 2 iterations and resumed to 4, a run equals an uninterrupted one, and the
    report and the figures read its folder. (MAML++ without cosine annealing and Reptile without
    annealing its step size: their schedules depend on --num_iterations.) Both runs compute in
    bfloat16, a task at a time: the resumed one without saying so, as its run recorded them."""
    def run(name, *flags):
        command = [sys.executable, f'{REPO}/{script}', f'--data_dir={synthetic_dir}', f'--cache_dir={tmp_path}/cache',
                   f'--results_dir={tmp_path}', f'--run_name={name}', *TINY, *COMMANDS[script], *flags]
        result = launch.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        return os.path.join(tmp_path, name)

    mixed = ['--precision=bfloat16', '--tasks_per_chunk=1']
    whole = run('whole', '--num_iterations=4', *mixed)
    run('parts', '--num_iterations=2', *mixed)
    parts = run('parts', '--num_iterations=4', '--resume')
    assert results.read_hyperparameters(parts)['flags']['precision'] == 'bfloat16'
    rows = [_without_time(results.read_metrics(os.path.join(f, results.METRICS_FILE))) for f in (whole, parts)]
    assert [row['iteration'] for row in rows[0]] == [0, 2, 4]
    np.testing.assert_equal(rows[1], rows[0])
    summaries = [results.read_summary(f) for f in (whole, parts)]
    assert summaries[0]['test_post_accuracy'] == summaries[1]['test_post_accuracy']
    with np.load(os.path.join(parts, results.CHECKPOINT_FILE)) as checkpoint:
        assert 'model/conv1/kernel' in checkpoint.files and int(checkpoint['iteration']) == 4
    assert report.load_run(parts)['summary'] == summaries[1]
    assert os.path.basename(folders.redraw(parts)[0]) == 'val_accuracy.png'
