"""Whether a device computes what the CPU computes, and how fast: the self-check for a GPU.

The tests check every learner's gradients on the CPU against float64 finite differences; a GPU (or any
other device) is then checked against the CPU: the same learner, weights and tasks give each learner's
meta-gradient and query scores on both devices, compared tensor by tensor. The grouped convolutions of
the task-batched network, the hand-written batch norm and `KerasNetwork`'s per-task loop each have a
learner here that runs them.
"""

import time

import keras
import numpy as np
import tensorflow as tf

from fewshot import data, network
from fewshot.learners import MAML, MAMLPlusPlus, PrototypicalNetwork

# float32 on two devices sums in other orders: this much relative difference is rounding, not a fault.
TOLERANCE = 1e-3


def _keras_net(n_way):
    """A user's Keras classifier (per-task loop), with Keras's batch norm layer."""
    return network.KerasNetwork(keras.Sequential([
        keras.Input((28, 28, 1)), keras.layers.Conv2D(8, 3, strides=2), keras.layers.BatchNormalization(),
        keras.layers.ReLU(), keras.layers.Flatten(), keras.layers.Dense(n_way)]))


# name -> learner on n_way classes: the network's kernels each of these runs.
LEARNERS = {
    'MAML (second order, ConvNet)': lambda n: MAML(network.ConvNet(n_way=n, num_filters=16), inner_lr=0.4,
                                                    num_inner_steps=2, first_order=False),
    'FO-MAML (ResNet)': lambda n: MAML(network.ResNet(n_way=n, num_filters=16), inner_lr=0.4, num_inner_steps=2,
                                       first_order=True),
    'MAML++ (per-step batch norm)': lambda n: MAMLPlusPlus(network.ConvNet(n_way=n, num_filters=16), inner_lr=0.1,
                                                           num_inner_steps=2),
    'ProtoNet (ConvNet)': lambda n: PrototypicalNetwork(network.ConvNet(n_way=n, num_filters=16)),
    'FO-MAML (a Keras Sequential)': lambda n: MAML(_keras_net(n), inner_lr=0.4, num_inner_steps=2, first_order=True),
}


def tasks(num_tasks=4, n_way=5, k_shot=1, num_query=5, seed=0):
    """A fixed meta-batch of random 28x28 tasks (`data.Episodes` of tensors)."""
    rng = np.random.default_rng(seed)
    episodes = data.sample_episodes(rng.random((20, 10, 28, 28)).astype(np.float32), n_way, k_shot, num_query,
                                    num_tasks, rng)
    return data.Episodes(*(tf.convert_to_tensor(part) for part in episodes))


def agreement(build, episodes, device, reference='/CPU:0'):
    """The largest difference between `device` and `reference` over the learner's meta-gradient and its
    query scores after adaptation, each relative to that tensor's largest magnitude: (difference, the
    tensor's name). The learner (`build(n_way)`) is built once and its weights copied to the other."""
    n_way = int(np.max(episodes.support_labels)) + 1
    computed, weights = [], None
    for where in (reference, device):
        with tf.device(where):
            keras.utils.set_random_seed(0)
            learner = build(n_way)
            state = list(learner.state_variables().values())  # In the same order for both (Keras's layer
            if weights is None:                                # names are numbered anew: not by name).
                weights = [variable.numpy() for variable in state]
            for variable, value in zip(state, weights):  # The reference's, whatever each device's initializers.
                variable.assign(value)
            gradients, _, _ = learner.meta_direction(episodes, **learner.train_step_options())
            outputs = [(f'gradient {name}', value) for name, value in _by_name(gradients).items()]
            outputs.append(('query scores', learner.task_scores(episodes, learner.num_inner_steps, n_way)))
            computed.append([(name, np.asarray(value)) for name, value in outputs])
    differences = [(float(np.max(np.abs(got - value)) / max(float(np.max(np.abs(value))), 1e-12)), name)
                   for (name, value), (_, got) in zip(*computed)]
    return max(differences)


def seconds_per_iteration(build, episodes, device, repeats=5):
    """The median seconds of one compiled meta-iteration of the learner on `device`, after a warm-up."""
    with tf.device(device):
        keras.utils.set_random_seed(0)
        learner = build(int(np.max(episodes.support_labels)) + 1)
        learner.meta_train_step(episodes)  # Traces and compiles.
        times = []
        for _ in range(repeats):
            began = time.perf_counter()
            learner.meta_train_step(episodes)
            times.append(time.perf_counter() - began)
    return float(np.median(times))


def _by_name(structure):
    """{name: tensor} of a direction by name or by named groups ({group: {name: tensor}})."""
    flat = {}
    for name, value in structure.items():
        if isinstance(value, dict):
            flat.update({f'{name}/{inner}': tensor for inner, tensor in value.items()})
        else:
            flat[name] = value
    return flat
