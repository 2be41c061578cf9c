"""One task from Python: `predict` (a task's query scores after its support set) for every learner, and
`adapt` (a Keras model adapted to a support set) where a Keras model can give those scores; both leave
θ as it was, and a wrong argument is one ValueError naming it before anything is traced."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import conftest  # noqa: F401 (first: the repository on the path, fewshot's TensorFlow CPU backend set up)

import keras
import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

import discovered  # noqa: E402
from fewshot import data, network  # noqa: E402
from fewshot.learners import MAML, MAMLPlusPlus  # noqa: E402
from test_maml import _episodes  # noqa: E402

N_WAY = 3


def _learner(name, *options):
    """The learner `name` (as discovered.learners() calls it) built from its command's defaults."""
    command, first_order = discovered.learners()[name]
    keras.utils.set_random_seed(0)
    with flagsaver.flagsaver():
        flags.FLAGS(['test', '--num_inner_steps=2', '--inner_lr=0.4', f'--n_way={N_WAY}', *options])
        return command.build_learner(network.ConvNet(n_way=N_WAY, num_filters=4), first_order)


def _task(seed=0, n_way=N_WAY):
    """(support images [N*K, 28, 28, 1], support labels [N*K], query images [N*Q, ...], query labels)."""
    episodes = _episodes(1, n_way=n_way, k_shot=2, num_query=3, seed=seed)
    return tuple(np.asarray(part)[0] for part in episodes)


def _state(learner):
    return {name: np.array(variable.numpy()) for name, variable in learner.state_variables().items()}


@pytest.mark.parametrize('name', sorted(discovered.learners()))
def test_predict_scores_a_task_as_evaluation_does_and_leaves_theta_alone(name):
    learner = _learner(name)
    support, labels, query, query_labels = _task()
    before = _state(learner)
    scores = learner.predict(support, labels, query, num_steps=2)
    assert scores.shape == (len(query), N_WAY) and np.all(np.isfinite(scores))
    evaluated = learner.evaluate(_episodes(1, n_way=N_WAY, k_shot=2, num_query=3, seed=0), num_steps=2)
    assert np.mean(scores.argmax(-1) == query_labels) == pytest.approx(evaluated['query_post_accuracy'][0])
    for key, value in _state(learner).items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)


def _adaptable():
    """(learner, options) whose query scores a Keras model can give: MAML's family at transductive batch norm
    (MAML++ evaluates with the support set's moments by default)."""
    family = sorted(name for name, (command, _) in discovered.learners().items()
                    if issubclass(command.learner_class, MAML) and not issubclass(command.learner_class, MAMLPlusPlus))
    return [(name, ()) for name in family] + [('MAML++', ('--eval_batch_norm=transductive',))]


@pytest.mark.parametrize('name, options', _adaptable())
def test_the_adapted_keras_model_gives_predicts_scores(name, options):
    learner = _learner(name, *options)
    support, labels, query, _ = _task(seed=3)
    before = _state(learner)
    model = learner.adapt(support, labels, num_steps=2)
    assert model is not learner.model
    np.testing.assert_allclose(model.predict(query, verbose=0), learner.predict(support, labels, query, num_steps=2),
                               rtol=1e-4, atol=1e-4)
    for key, value in _state(learner).items():
        np.testing.assert_array_equal(value, before[key], err_msg=key)
    # It is the adapted network, not θ: at 0 steps it is θ's (but for a head made from the support set).
    unadapted = learner.adapt(support, labels, num_steps=0).predict(query, verbose=0)
    assert not np.allclose(unadapted, model.predict(query, verbose=0), atol=1e-4)


def test_a_users_keras_model_adapted_is_a_keras_model_of_the_same_layers():
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(4, 3, strides=2, name='conv'),
                              keras.layers.BatchNormalization(name='norm'), keras.layers.ReLU(),
                              keras.layers.Flatten(), keras.layers.Dense(N_WAY, name='head')])
    learner = MAML(network.KerasNetwork(model), num_inner_steps=3)
    support, labels, query, _ = _task(seed=5)
    adapted = learner.adapt(support, labels)
    assert [layer.name for layer in adapted.layers] == [layer.name for layer in model.layers]
    np.testing.assert_allclose(adapted(query), learner.predict(support, labels, query), rtol=1e-4, atol=1e-4)
    learner.adapt(*_task(seed=6)[:2])  # Another task of the same shapes: the adaptation is not traced again.
    assert learner._adapted_weights.experimental_get_tracing_count() == 1


def test_a_learner_a_keras_model_cannot_stand_for_says_to_predict():
    support, labels, _, _ = _task()
    for name, options in (('MAML++', ()), ('RelationNet', ()), ('ProtoNet', ())):
        with pytest.raises(NotImplementedError, match=r'predict\('):
            _learner(name, *options).adapt(support, labels)


def test_a_metric_learner_predicts_tasks_of_another_number_of_classes():
    support, labels, query, query_labels = _task(n_way=5)
    scores = _learner('ProtoNet').predict(support, labels, query)
    assert scores.shape == (len(query), 5)


# (what is wrong, the argument the error names, the arguments (support, labels, query) made wrong)
MISTAKES = [
    ('the task axis left on', 'support_images', lambda s, y, q: (s[None], y, q)),
    ('RGB into a one-channel network', 'query_images', lambda s, y, q: (s, y, np.repeat(q, 3, axis=-1))),
    ('pixels of 0..255', 'support_images', lambda s, y, q: (np.round(255 * s).astype(np.uint8), y, q)),
    ('one label short', 'support_labels', lambda s, y, q: (s, y[:-1], q)),
    ('a class missing', 'support_labels', lambda s, y, q: (s, np.where(y == 1, 2, y), q)),
    ('four classes for a head of three', 'support_labels', lambda s, y, q: (s, np.arange(len(y)) % 4, q)),
]


@pytest.mark.parametrize('argument, wrong', [mistake[1:] for mistake in MISTAKES],
                         ids=[mistake[0] for mistake in MISTAKES])
def test_a_wrong_argument_is_one_error_naming_it_before_anything_is_traced(argument, wrong):
    learner = _learner('FO-MAML')
    support, labels, query, _ = _task()
    with pytest.raises(ValueError, match=rf'^{argument}: .*expected'):
        learner.predict(*wrong(support, labels, query))
    with pytest.raises(ValueError, match=r'^num_steps: a whole number'):
        learner.predict(support, labels, query, num_steps=1.5)
    assert learner._task_scores.experimental_get_tracing_count() == 0


# (what is wrong, the part of the meta-batch the error names, the meta-batch made wrong)
WRONG_META_BATCHES = [
    ('the task axis left out', 'support_images', lambda e: e._replace(support_images=e.support_images[0])),
    ('RGB into a one-channel network', 'query_images',
     lambda e: e._replace(query_images=np.repeat(e.query_images, 3, axis=-1))),
    ('labels of another meta-batch', 'query_labels', lambda e: e._replace(query_labels=e.query_labels[:, :2])),
    ('more classes than the head', 'support_labels', lambda e: e._replace(support_labels=e.support_labels + N_WAY)),
]


@pytest.mark.parametrize('part, wrong', [mistake[1:] for mistake in WRONG_META_BATCHES],
                         ids=[mistake[0] for mistake in WRONG_META_BATCHES])
def test_a_wrong_meta_batch_is_one_error_naming_its_part_before_anything_is_traced(part, wrong):
    learner = _learner('FO-MAML')
    episodes = wrong(data.Episodes(*(np.asarray(x) for x in _episodes(2, n_way=N_WAY))))
    for step in (learner.meta_train_step, learner.evaluate):
        with pytest.raises(ValueError, match=rf'^episodes\.{part}: .*expected'):
            step(episodes)
    assert learner._train_step.experimental_get_tracing_count() == 0
    assert learner._test_step.experimental_get_tracing_count() == 0


def test_a_model_is_saved_as_keras_files_only(tmp_path):
    with pytest.raises(ValueError, match=r"^path: a file ending in \.keras expected .*'.*model\.h5'"):
        _learner('FO-MAML').save_model(str(tmp_path / 'model.h5'))
    assert not os.listdir(tmp_path)
