"""What every learner shares (fewshot/learner.py): how a meta-batch is cut into chunks of tasks (that a
chunked step equals the whole one is part of every learner's contract: test_contract.py)."""

import keras
import numpy as np
import pytest

from fewshot import data, errors, learners, network, training
from test_maml import _episodes
from test_contract import _build, _stepped


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
    assert training.tasks_per_chunk_within(learner, episodes, budget_gb=1000) == 5
    with pytest.raises(errors.SetupError, match='memory_budget_gb'):
        training.tasks_per_chunk_within(learner, episodes, budget_gb=training.peak_memory_gb())
