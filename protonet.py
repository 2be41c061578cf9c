"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017).

    python protonet.py                                     # 5-way 5-shot Omniglot
    python protonet.py --k_shot 1 --train_n_way 20         # more classes per training task than at test

No inner loop: the body φ_θ embeds a task's support and query images, each class k is the mean
of its support embeddings, and a query is scored by its negative squared Euclidean distance to
each of these prototypes:

    c_k = 1/K Σ_{(x, k) ∈ support} φ_θ(x),   logit_k(x) = −‖φ_θ(x) − c_k‖²,
    L(θ) = 1/T Σ_t CE(softmax(logits), y) over task t's queries,

minimised over θ with Adam, task by task as they will be met at test (episodic training). The
body is the --backbone without its head (the run's model.keras keeps an unused one).

Batch norm normalises every task's support and query images together, with their moments, in
training and evaluation alike (the paper's code embeds them in one batch too): see
`learner.MetricLearner`, which holds the training and evaluation steps.

The paper trains Omniglot with 60 classes and 5 queries per class per training task, one task
per step, for 5-way testing; here --train_n_way (default: the test's --n_way, as every other
learner here trains) and the shared --num_query and --meta_batch_size choose that, and the
default is the assignment's shape so that compare.py compares like with like. The paper's
learning-rate halving every 2000 episodes is not done.
"""

import sys

import fewshot  # noqa: F401  First: it sets up TensorFlow's CPU backend, read as TensorFlow loads.
import keras
import tensorflow as tf
from absl import flags

from fewshot import commands, config, data, distribution, errors, experiment, learner, network

flags.adopt_module_key_flags(config)  # --help lists the shared flags too.
flags.adopt_module_key_flags(distribution)  # --strategy and --cpu_replicas.
flags.adopt_module_key_flags(learner)  # --backbone and --meta_lr.
flags.DEFINE_integer('train_n_way', 0, 'Classes per meta-training task (0: --n_way; else at least 2, as a '
                     'one-way task has nothing to tell apart). The paper trains Omniglot 60-way for 5-way testing: '
                     'about 12 times the images per task here.', lower_bound=0)
flags.register_validator('train_n_way', lambda value: value != 1,
                         message='--train_n_way: 0 (the test\'s --n_way) or at least 2; a one-way task has nothing '
                                 'to tell apart')
FLAGS = flags.FLAGS


class PrototypicalNetwork(learner.MetricLearner):
    """Classifies queries by the nearest support prototype in a learned embedding (see the module docstring)."""

    learner_flags = ('train_n_way', 'meta_lr', 'backbone')

    @classmethod
    def from_flags(cls, net, first_order):
        del first_order  # No inner loop, no order.
        return cls(net, net.keras_model(), keras.optimizers.Adam(FLAGS.meta_lr), FLAGS.train_n_way or FLAGS.n_way)

    @classmethod
    def training_stream(cls, splits):
        """Meta-training tasks of --train_n_way classes, otherwise shaped as the flags say."""
        if FLAGS.train_n_way:  # Checked here for a message naming the flag.
            data.check_task_shape(len(splits.train), FLAGS.train_n_way, FLAGS.k_shot, FLAGS.num_query, 'meta-train',
                                  n_way_flag='--train_n_way')
        return experiment.episode_stream(splits, FLAGS.train_n_way)

    @staticmethod
    def distance_logits(queries, prototypes):
        """−‖q − c_k‖² for queries [T, Q, F] and prototypes [T, N, F] -> [T, Q, N]."""
        return -tf.reduce_sum(tf.square(queries[:, :, None, :] - prototypes[:, None, :, :]), axis=-1)

    def scores(self, params, episodes, n_way):
        """The distance logits of the queries to the support set's prototypes."""
        support, query = self.embed(self.net.features, params, episodes)
        return self.distance_logits(query, network.prototypes(support, episodes.support_labels, n_way))


COMMAND = commands.Command('protonet', PrototypicalNetwork, 'ProtoNet')

if __name__ == '__main__':
    errors.run(commands.main_for(COMMAND, sys.modules[__name__]))
