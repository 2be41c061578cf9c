"""The contract every learner keeps (fewshot/learner.py), checked for every learner command's learner
at each order it has: found (tests/discovered.py), not listed, so that a new learner is held to all of
it by existing: the meta-direction's shape, the documented metrics, a checkpoint that holds every
variable and resumes exactly, a loss that falls, chunks of tasks that step as the whole meta-batch.
What only some learners have (an inner loop to differentiate through) is checked for each that has it."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from absl.testing import flagsaver

from fewshot import data, network
import discovered
from test_maml import _directional_fd, _dot, _episodes, _meta_gradient, _params, _random_direction

# Every learner command's learner, at each order it has (FO-MAML and MAML, ..., ProtoNet): found, not listed.
LEARNERS = discovered.learners()
# A meta-optimizer whose step is proportional to the meta-gradient (Adam's first step is not: it
# would hide a wrongly weighted chunk).
SGD = 0.1


def _build(name, net):
    """The learner `name` of the small network `net` as its command builds it from the flags' defaults
    (two inner steps for a learner that has an inner loop, tasks of the network's classes), meta-trained
    by SGD."""
    command, first_order = LEARNERS[name]
    with flagsaver.flagsaver():
        flags.FLAGS(['test', '--num_inner_steps=2', '--inner_lr=0.4', f'--n_way={net.n_way}'])
        learner = command.build_learner(net, first_order)
    learner.meta_optimizer = keras.optimizers.SGD(SGD)  # Nothing traced yet: the steps will use it.
    learner.meta_optimizer.build(tf.nest.flatten(learner.params))
    return learner


def _stepped(name, tasks_per_chunk, episodes):
    """(state after one meta-step on `episodes` by name, its metrics, the chunk sizes computed)."""
    keras.utils.set_random_seed(0)
    learner = _build(name, network.ConvNet(n_way=2, num_filters=4))
    learner.tasks_per_chunk = tasks_per_chunk
    sizes, compiled = [], learner._meta_direction

    def recorded(chunk, **options):
        sizes.append(chunk.support_labels.shape[0])
        return compiled(chunk, **options)
    learner._meta_direction = recorded
    metrics = learner.meta_train_step(episodes)
    state = {name: value.numpy() for name, value in learner.state_variables().items()}
    return state, metrics, sizes


@pytest.mark.parametrize('name', LEARNERS)
def test_a_meta_step_in_chunks_of_tasks_equals_the_whole_meta_batch_at_once(name):
    """Float32, the grouped convolutions training runs on: weights, optimizer state and running
    statistics take the same step to rounding (within 1% of the step's largest element: iMAML's
    conjugate gradients amplify the rounding of another summation order to 0.13% of it, MAML's
    stays near 1e-6, a chunk weighted wrongly is tens of percent off), metrics task by task."""
    episodes = data.Episodes(*(np.array(x) for x in _episodes(5)))
    keras.utils.set_random_seed(0)
    start = {key: value.numpy() for key, value in
             _build(name, network.ConvNet(n_way=2, num_filters=4)).state_variables().items()}
    whole, whole_metrics, whole_sizes = _stepped(name, None, episodes)
    chunked, chunked_metrics, sizes = _stepped(name, 2, episodes)
    assert whole_sizes == [] and sizes == [2, 2, 1]  # Uneven chunks weigh by their number of tasks.
    assert whole.keys() == chunked.keys() == start.keys()
    for key in whole:
        step = np.abs(whole[key] - start[key]).max()
        np.testing.assert_allclose(chunked[key], whole[key], rtol=0, atol=max(1e-6, 1e-2 * step), err_msg=key)
    assert whole_metrics.keys() == chunked_metrics.keys()
    for key in whole_metrics:
        np.testing.assert_allclose(chunked_metrics[key], whole_metrics[key], rtol=1e-5, atol=1e-6, err_msg=key)


# The learners whose command has an order, at second order: their meta-gradient differentiates
# through the inner loop (`meta_objective(params, episodes, num_steps, first_order)`).
SECOND_ORDER = [name for name, (command, first_order) in LEARNERS.items()
                if command.takes('first_order') and not first_order]


def _learner(name, seed=0):
    keras.utils.set_random_seed(seed)
    return _build(name, network.ConvNet(n_way=2, num_filters=4))


def _values(variables):
    return {name: np.array(variable.numpy()) for name, variable in variables.items()}


def _key(variable):
    """The identity of a variable: a Keras variable's is that of the TensorFlow variable it holds."""
    return id(variable.value if isinstance(variable, keras.Variable) else variable)


def _every_variable(owner, seen=None):
    """{_key: variable} of the variables an object holds, as attributes or in containers, models and
    optimizers."""
    seen = {} if seen is None else seen
    if isinstance(owner, (tf.Variable, keras.Variable)):
        seen.setdefault(_key(owner), owner)
    elif isinstance(owner, (keras.Model, keras.optimizers.Optimizer)):
        for variable in owner.variables:
            _every_variable(variable, seen)
    elif isinstance(owner, dict):
        for value in owner.values():
            _every_variable(value, seen)
    elif isinstance(owner, (list, tuple)):
        for value in owner:
            _every_variable(value, seen)
    return seen


@pytest.mark.parametrize('name', LEARNERS)
def test_a_meta_step_keeps_the_contract(name):
    """meta_direction is shaped like θ and leaves every state variable as it was; the steps report the
    documented per-task metrics; state_variables holds every variable the learner keeps (θ's groups, the
    model's statistics, the optimizers' slots), so that a forgotten override fails; meta-steps on one
    fixed meta-batch lower its loss."""
    learner = _learner(name)
    episodes = data.Episodes(*(np.array(x) for x in _episodes(3)))
    before = _values(learner.state_variables())
    direction, metrics, _ = learner._meta_direction(episodes, **learner.train_step_options())
    assert tf.nest.map_structure(lambda x: tuple(x.shape), direction) == \
        tf.nest.map_structure(lambda x: tuple(x.shape), learner.params)
    for key, value in _values(learner.state_variables()).items():
        np.testing.assert_array_equal(value, before[key], err_msg=f'meta_direction changed {key}')
    assert set(learner.train_metrics) <= set(metrics) and all(metrics[k].shape == (3,) for k in learner.train_metrics)

    losses = [learner.meta_train_step(episodes)[learner.train_metrics[0]].mean() for _ in range(6)]
    assert losses[-1] < losses[0], losses
    held = {_key(variable) for variable in learner.state_variables().values()}
    missing = [v.path if hasattr(v, 'path') else v.name for key, v in _every_variable(vars(learner)).items()
               if key not in held]
    assert not missing, f'state_variables leaves out {missing}'
    scores = learner.evaluate(episodes, num_steps=1)
    for key in ('query_pre_accuracy', 'query_post_accuracy'):
        assert scores[key].shape == (3,) and np.all((scores[key] >= 0) & (scores[key] <= 1)), key


@pytest.mark.parametrize('name', LEARNERS)
def test_a_learner_restored_from_its_state_variables_takes_the_same_next_step(name):
    """What a checkpoint holds (`state_variables`) is all a meta-step depends on: a learner of other
    initial weights given the state of one that has stepped takes, bit for bit, the same next step."""
    episodes = [data.Episodes(*(np.array(x) for x in _episodes(2, seed=seed))) for seed in (0, 5)]
    stepped, restored = _learner(name), _learner(name, seed=1)
    stepped.meta_train_step(episodes[0])
    for key, variable in restored.state_variables().items():
        variable.assign(stepped.state_variables()[key])
    keras.utils.set_random_seed(2)
    stepped.meta_train_step(episodes[1])
    keras.utils.set_random_seed(2)
    restored.meta_train_step(episodes[1])
    expected = _values(stepped.state_variables())
    for key, value in _values(restored.state_variables()).items():
        np.testing.assert_array_equal(value, expected[key], err_msg=key)


@pytest.mark.parametrize('name', SECOND_ORDER)
def test_second_order_meta_gradient_matches_float64_finite_differences(name):
    """Along three random directions of θ (every group), and unlike the first-order one."""
    assert_second_order_matches_finite_differences(_learner(name))


def assert_second_order_matches_finite_differences(learner, directions=3, first_order_gap=1e-4):
    """The learner's meta-gradient through 2 inner steps, in float64, along random directions of θ
    against central finite differences of its meta-objective; the first-order one differs from them
    by more than `first_order_gap` of them."""
    params = _params(learner, tf.float64)
    episodes = _episodes(1, dtype=np.float64)  # One task: TensorFlow has no float64 grouped convolution.
    gradient = _meta_gradient(learner, params, episodes, 2, first_order=False)
    first_order = _meta_gradient(learner, params, episodes, 2, first_order=True)
    rng = np.random.default_rng(3)
    for _ in range(directions):
        direction = _random_direction(params, rng)
        numeric = _directional_fd(learner, params, episodes, 2, direction, epsilon=1e-7)
        assert _dot(gradient, direction) == pytest.approx(numeric, rel=1e-5, abs=1e-8)
        assert abs(_dot(first_order, direction) - numeric) > first_order_gap * abs(numeric)
