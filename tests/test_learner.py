"""What every learner shares (fewshot/learner.py): a meta-batch processed in chunks of tasks takes
the same meta-step as the whole meta-batch at once, one chunk at a time."""

import keras
import tensorflow as tf
import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

from fewshot import data, errors, learners, network, training
from test_maml import _episodes
import discovered

# Every learner command's learner, at each order it has (FO-MAML and MAML, ..., ProtoNet): found, not listed.
LEARNERS = discovered.learners()
# A meta-optimizer whose step is proportional to the meta-gradient (Adam's first step is not: it
# would hide a wrongly weighted chunk).
SGD = 0.1


def _build(name, net):
    """The learner `name` of the small network `net` as its command builds it from the flags' defaults
    (two inner steps for a learner that has an inner loop), meta-trained by SGD."""
    command, first_order = LEARNERS[name]
    with flagsaver.flagsaver():
        flags.FLAGS(['test', '--num_inner_steps=2', '--inner_lr=0.4'])
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


def test_a_chunk_of_the_whole_meta_batch_is_the_unchunked_step():
    episodes = data.Episodes(*(np.array(x) for x in _episodes(2)))
    _, _, sizes = _stepped('FO-MAML', 2, episodes)
    assert sizes == []


def test_second_order_meta_steps_go_by_chunks_of_tasks_unless_told_and_first_order_ones_at_once():
    net = network.ConvNet(n_way=2, num_filters=4)
    assert learners.MAML(net, first_order=False).tasks_per_chunk == learners.maml.SECOND_ORDER_TASKS_PER_CHUNK
    assert learners.MAMLPlusPlus(net).tasks_per_chunk == learners.maml.SECOND_ORDER_TASKS_PER_CHUNK
    assert learners.MAML(net).tasks_per_chunk is None
    _, _, sizes = _stepped('MAML', None, data.Episodes(*(np.array(x) for x in _episodes(5))))
    assert sizes == []  # Told None, the whole meta-batch in one compiled step (the test above relies on it).


def test_a_memory_budget_chooses_the_most_tasks_per_chunk_that_fit():
    """All tasks when the budget is ample; an error naming the flag when not one task fits."""
    keras.utils.set_random_seed(0)
    learner = _build('MAML', network.ConvNet(n_way=2, num_filters=32))
    episodes = data.Episodes(*(np.array(x) for x in _episodes(5)))
    assert learner.tasks_per_chunk_within(episodes, budget_gb=1000) == 5
    with pytest.raises(errors.SetupError, match='--memory_budget_gb'):
        learner.tasks_per_chunk_within(episodes, budget_gb=training.peak_memory_gb())
