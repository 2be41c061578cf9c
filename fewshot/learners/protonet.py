"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017).

No inner loop: the body φ_θ embeds a task's support and query images, each class k is the mean
of its support embeddings, and a query is scored by its negative squared Euclidean distance to
each of these prototypes:

    c_k = 1/K Σ_{(x, k) ∈ support} φ_θ(x),   logit_k(x) = −‖φ_θ(x) − c_k‖²,
    L(θ) = 1/T Σ_t CE(softmax(logits), y) over task t's queries,

minimised over θ with Adam, task by task as they will be met at test (episodic training). The
body is the network without its head (the run's model.keras keeps an unused one).

Batch norm normalises every task's support and query images together, with their moments, in
training and evaluation alike (the paper's code embeds them in one batch too): see
`learner.MetricLearner`, which holds the training and evaluation steps.

The paper trains Omniglot with 60 classes and 5 queries per class per training task, one task
per step, for 5-way testing: `train_n_way` (default: the network's N, as every other learner here
trains) and the training tasks' shape choose that. The paper's learning-rate halving every 2000
episodes is the meta-optimizer's schedule (protonet.py's --meta_lr_halving_interval).

protonet.py at the top of the repository is its command.
"""

import tensorflow as tf

from fewshot import network
from fewshot.learner import MetricLearner


class PrototypicalNetwork(MetricLearner):
    """Classifies queries by the nearest support prototype in a learned embedding (see the module docstring)."""

    @staticmethod
    def distance_logits(queries, prototypes):
        """−‖q − c_k‖² for queries [T, Q, F] and prototypes [T, N, F] -> [T, Q, N]."""
        return -tf.reduce_sum(tf.square(queries[:, :, None, :] - prototypes[:, None, :, :]), axis=-1)

    def scores(self, params, episodes, n_way):
        """The distance logits of the queries to the support set's prototypes."""
        support, query = self.embed(self.net.features, params, episodes)
        return self.distance_logits(query, network.prototypes(support, episodes.support_labels, n_way))
