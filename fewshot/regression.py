"""Few-shot regression: sine-wave tasks (Finn, Abbeel & Levine, 2017, Section 5.1) and the network
fitted to them, a multilayer perceptron over explicit weights.

A regression task is carried in a `data.Episodes` like a classification task, with points in place
of images: support_images x [T, K, 1] and support_labels y [T, K, 1] (float32), the query set
likewise. The learners of maml.py read a task only through those fields and score it only through
their network's `task_losses` and `task_scores`, so the same learner that adapts the Omniglot
classifier adapts `MLP` to a sine wave.
"""

import dataclasses
import math

import keras
import numpy as np
import tensorflow as tf

from fewshot import data, network

# The paper's task distribution: y = A sin(x − φ), A ~ U[0.1, 5], φ ~ U[0, π], x ~ U[−5, 5].
AMPLITUDE = (0.1, 5.0)
PHASE = (0.0, math.pi)
INPUT_RANGE = (-5.0, 5.0)


@dataclasses.dataclass(frozen=True)
class MLP(network.LinearHead):
    """A fully connected regressor, inputs -> hidden (ReLU) ... -> outputs; the paper's is 1-40-40-1.

    Its last layer is a linear head ('head/kernel', 'head/bias'), as the classifier's, so that
    learners adapting only the head (ANIL) or the body find it.
    """
    hidden: tuple = (40, 40)
    inputs: int = 1
    outputs: int = 1
    score_name = 'mse'  # What `task_scores` measures: the metrics' names end in it (query_post_mse).
    n_way = 1  # A task's examples are one group, not classes (what Reptile's minibatches cycle through).

    def keras_model(self):
        """The same network as a Keras model; its trainable weights are the meta-parameters."""
        layers = [keras.Input((self.inputs,))]
        layers += [keras.layers.Dense(width, activation='relu', name=f'hidden{i}')
                   for i, width in enumerate(self.hidden, start=1)]
        return keras.Sequential(layers + [keras.layers.Dense(self.outputs, name='head')], name='mlp')

    def features(self, params, x):
        """The last hidden layer's activations [T, B, hidden[-1]] of inputs x [T, B, inputs] under
        weights dict name -> [T, *shape]."""
        h = x
        for i in range(1, len(self.hidden) + 1):
            h = tf.nn.relu(tf.einsum('tbi,tio->tbo', h, params[f'hidden{i}/kernel'])
                           + params[f'hidden{i}/bias'][:, None, :])
        return h

    def forward(self, params, x):
        """Predictions [T, B, outputs] of inputs x [T, B, inputs] under every task's own weights."""
        features = self.features(params, x)
        return self.head_outputs(params, features)

    @staticmethod
    def task_losses(predictions, targets):
        """Mean squared error of each task: predictions, targets [T, B, outputs] -> [T]."""
        return tf.reduce_mean(tf.square(predictions - targets), axis=[1, 2])

    task_scores = task_losses  # A regressor is scored by the loss it descends.


def sine_tasks(rng, num_tasks, num_points):
    """(x [T, P, 1], y [T, P, 1], amplitude [T], phase [T]) of `num_tasks` sine waves drawn by `rng`."""
    amplitude = rng.uniform(*AMPLITUDE, size=num_tasks)
    phase = rng.uniform(*PHASE, size=num_tasks)
    x = rng.uniform(*INPUT_RANGE, size=(num_tasks, num_points, 1))
    y = amplitude[:, None, None] * np.sin(x - phase[:, None, None])
    return x.astype(np.float32), y.astype(np.float32), amplitude, phase


class SineSampler(data.TaskStream):
    """The sine-wave task stream (see `data.TaskStream`).

    Each task has `k_shot` support points and `num_query` query points, all drawn uniformly from
    the input range (the paper's code draws 2K points and splits them K and K).
    """

    def __init__(self, k_shot, num_query, seed):
        self.k_shot, self.num_query, self.seed = k_shot, num_query, seed

    def sample(self, index, num_tasks):
        """Meta-batch number `index` of `num_tasks` tasks, a `data.Episodes` of points."""
        x, y, _, _ = sine_tasks(np.random.default_rng([self.seed, index]), num_tasks, self.k_shot + self.num_query)
        k = self.k_shot
        return data.Episodes(x[:, :k], y[:, :k], x[:, k:], y[:, k:])
