"""Run by test_distribution.py in a process of its own, because TensorFlow's CPU can be split into
logical devices only before TensorFlow starts: trains each learner in one process on one device
and on a MirroredStrategy over two logical CPU devices, from the same weights on the same tasks,
and prints what the test compares as JSON: {learner: {'start': the initial state (name -> list),
'single', 'replicated': the states after the first and the last of ten meta-iterations,
'metrics_single', 'metrics_replicated': the per-task metrics of each and of an evaluation of an
odd number of tasks}}.
"""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]
import fewshot  # noqa: E402,F401 (first: it sets up TensorFlow's CPU backend)
import tensorflow as tf  # noqa: E402

tf.config.set_logical_device_configuration(tf.config.list_physical_devices('CPU')[0],
                                           [tf.config.LogicalDeviceConfiguration()] * 2)

from maml_plusplus import Fixes  # noqa: E402
from test_maml import _episodes, _maml  # noqa: E402
from test_maml_plusplus import _learner as _maml_plusplus  # noqa: E402
from test_protonet import _protonet  # noqa: E402

LEARNERS = {
    'FO-MAML': lambda: _maml(first_order=True, num_inner_steps=1),
    'MAML': lambda: _maml(first_order=False, num_inner_steps=1),
    # Derivative-order annealing over one iteration: the first meta-step first order, the others
    # second order; the multi-step loss and the running batch-norm statistics (what `measured`
    # carries across the replicas) throughout.
    'MAML++': lambda: _maml_plusplus(Fixes(da_iterations=1)),
    'ProtoNet': lambda: _protonet(n_way=2),  # A learner of another shape: no inner loop.
}


def state(learner):
    return {name: variable.numpy().tolist() for name, variable in learner.state_variables().items()}


def trained(learner, batches, evaluation):
    """(the state after the first and the last meta-iteration, the per-task metrics of each and
    of `evaluation`)."""
    metrics = [learner.meta_train_step(batches[0])]
    after_one = state(learner)
    metrics += [learner.meta_train_step(batch) for batch in batches[1:]]
    metrics.append(learner.evaluate(evaluation, 1))
    return after_one, state(learner), [{name: values.tolist() for name, values in m.items()} for m in metrics]


def main():
    strategy = tf.distribute.MirroredStrategy([device.name for device in tf.config.list_logical_devices('CPU')])
    batches = [_episodes(4, seed=seed) for seed in range(10)]
    evaluation = _episodes(5, seed=99)
    report = {}
    for name, make in LEARNERS.items():
        single = make()
        with strategy.scope():
            replicated = make()
        start = state(single)
        one, last, metrics_single = trained(single, batches, evaluation)
        other, other_last, metrics_replicated = trained(replicated, batches, evaluation)
        report[name] = {'replicas': replicated.replicated.num_replicas, 'start': start,
                        'single': [one, last], 'replicated': [other, other_last],
                        'metrics_single': metrics_single, 'metrics_replicated': metrics_replicated}
    print(json.dumps(report))


if __name__ == '__main__':
    main()
