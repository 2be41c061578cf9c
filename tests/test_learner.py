"""What every learner shares (fewshot/learner.py): a meta-batch processed in chunks of tasks takes
the same meta-step as the whole meta-batch at once, one chunk at a time."""

import keras
import numpy as np
import pytest

from fewshot import data, errors, network, training
from maml_plusplus import Fixes, MAMLPlusPlus
from test_maml import _episodes
import anil
import imaml
import maml
import meta_sgd
import protonet
import relationnet
import reptile

# A meta-optimizer whose step is proportional to the meta-gradient (Adam's first step is not: it
# would hide a wrongly weighted chunk).
SGD = 0.1


def _build(name, net):
    """The learner `name` of the small network `net`, meta-trained by SGD (Reptile: its own SGD)."""
    sgd = keras.optimizers.SGD(SGD)
    gradient_based = {'FO-MAML': (maml.MAML, True), 'MAML': (maml.MAML, False), 'ANIL': (anil.ANIL, False),
                      'Meta-SGD': (meta_sgd.MetaSGD, False)}
    if name in gradient_based:
        kind, first_order = gradient_based[name]
        return kind(net, net.keras_model(), 0.4, 2, first_order, sgd)
    if name == 'MAML++':  # Second order, the multi-step loss, per-step batch norm and its running statistics.
        return MAMLPlusPlus(net, net.keras_model(), 0.4, 2, sgd, Fixes(da=False))
    if name == 'Reptile':
        return reptile.Reptile(net, net.keras_model(), 0.4, 2, sgd)
    if name == 'iMAML':
        return imaml.IMAML(net, net.keras_model(), 0.4, 2, sgd, lam=1.0, cg_steps=2)
    if name == 'ProtoNet':
        return protonet.PrototypicalNetwork(net, net.keras_model(), sgd, net.n_way)
    return relationnet.RelationNetwork(net, relationnet.keras_model(net), sgd, net.n_way)


LEARNERS = ('FO-MAML', 'MAML', 'ANIL', 'Meta-SGD', 'MAML++', 'Reptile', 'iMAML', 'ProtoNet', 'RelationNet')


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
    """Float32, the grouped convolutions training runs on:
    weights, optimizer state and running statistics equal to rounding, metrics task by task."""
    episodes = data.Episodes(*(np.array(x) for x in _episodes(5)))
    whole, whole_metrics, whole_sizes = _stepped(name, None, episodes)
    chunked, chunked_metrics, sizes = _stepped(name, 2, episodes)
    assert whole_sizes == [] and sizes == [2, 2, 1]  # Uneven chunks weigh by their number of tasks.
    assert whole.keys() == chunked.keys()
    for key in whole:
        np.testing.assert_allclose(chunked[key], whole[key], rtol=1e-5, atol=1e-6, err_msg=key)
    assert whole_metrics.keys() == chunked_metrics.keys()
    for key in whole_metrics:
        np.testing.assert_allclose(chunked_metrics[key], whole_metrics[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_a_chunk_of_the_whole_meta_batch_is_the_unchunked_step():
    episodes = data.Episodes(*(np.array(x) for x in _episodes(2)))
    _, _, sizes = _stepped('FO-MAML', 2, episodes)
    assert sizes == []


def test_a_memory_budget_chooses_the_most_tasks_per_chunk_that_fit():
    """All tasks when the budget is ample; an error naming the flag when not one task fits."""
    keras.utils.set_random_seed(0)
    learner = _build('MAML', network.ConvNet(n_way=2, num_filters=32))
    episodes = data.Episodes(*(np.array(x) for x in _episodes(5)))
    assert learner.tasks_per_chunk_within(episodes, budget_gb=1000) == 5
    with pytest.raises(errors.SetupError, match='--memory_budget_gb'):
        learner.tasks_per_chunk_within(episodes, budget_gb=training.peak_memory_gb())
