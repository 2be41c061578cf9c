"""Reptile (Nichol, Achiam & Schulman, "On First-Order Meta-Learning Algorithms", 2018).

Reptile has no query loss to differentiate. Every task's weights take k steps of an ordinary
optimizer on minibatches of its examples, starting from θ, and the meta-step moves θ toward
where the tasks went:

    θ'_t = U^k_t(θ)   (k steps of Adam or SGD on task t),   θ ← θ + ε · 1/T Σ_t (θ'_t − θ),

with ε annealed linearly over the meta-iterations (the meta-optimizer's schedule).
Here that is the meta-optimizer SGD with learning rate ε descending θ − mean_t θ'_t, so the
checkpoint and resume machinery are MAML's. All tasks of a meta-batch adapt at once on the
task-grouped network, as MAML's do. In meta-training a task's examples are its support and query
sets together (`every_example`): nothing is held out, since no loss is scored after adaptation,
and the steps need distinct minibatches: to second order, what Reptile's update learns about
adapting is the inner product of gradients on different minibatches, which the same minibatch at
every step leaves as joint training on it (measured at 5-way 1-shot, where the support set is one
minibatch: 42% after 5 minutes of training on it alone, against FO-MAML's 92%). Evaluation
adapts the same way on the support set (the command's --num_eval_inner_steps) and scores the query set with
its own batch moments: transductive, as recorded in hyperparameters.json (the paper reports
both; its transductive Omniglot numbers are the higher).

The inner Adam's second-moment estimates v (`inner_adam_state`): 'carried' (the default) keeps
them across tasks and meta-iterations, as the authors' code does (its TensorFlow optimizer's slots
are never reset; only the weights are): every task of a meta-batch starts from the carried v and
its step count t, and after the meta-step v becomes the mean over the tasks of where theirs ended,
t + k (the code adapts its tasks one after another, each from the previous one's v; here they
adapt at once, so v averages k steps per meta-iteration where the code's takes T·k). Evaluation
starts from the carried v too and leaves it as it was, as the code's does. 'fresh' starts them at
zero for every task, so that its first step moves every weight by about α whatever its gradient
(|g| / √g²): at 2,000 iterations of the 5-way 1-shot protocol it reached 68% where carried reached
82% (docs/reptile/README.md). SGD keeps no state: with it the two are the same.

The command's defaults (reptile.py) are the paper's Omniglot ones where this machine allows (this
class's are SGD's, as MAML's): Adam with β1 = 0 and learning rate 1e-3 in the inner loop, 5 inner
steps in training and 50 at evaluation, inner minibatches of 10, ε from 1 to 0. Unlike the paper, a
training task has --k_shot + --num_query examples per class (the paper's Omniglot runs train on 10,
its "train shots") and a meta-batch is the shared --meta_batch_size (the paper: 5). Minibatches
cycle through a task's examples in an order that alternates classes, so a minibatch of a multiple of
N examples holds every class equally. The training metrics score the query set after adaptation on
it (evaluation's do not).

reptile.py at the top of the repository is its command.
"""

import keras
import numpy as np
import tensorflow as tf

from fewshot import data
from fewshot.learners import inner
from fewshot.learners.maml import MAML

INNER_ADAM_STATES = ('carried', 'fresh')
INNER_OPTIMIZERS = ('adam', 'sgd')


class Reptile(MAML):
    """θ moves toward the mean of the task-adapted weights (see the module docstring)."""

    def __init__(self, net, model=None, inner_lr=0.4, num_inner_steps=5, meta_optimizer=None,
                 inner_optimizer='sgd', inner_batch_size=0, inner_adam_state='carried'):
        """
        Args:
          net, model, inner_lr, num_inner_steps: as for `MAML`.
          meta_optimizer: SGD, whose learning rate is ε (a schedule for the paper's annealing;
            default: ε = 1 throughout).
          inner_optimizer: 'adam' or 'sgd'.
          inner_batch_size: examples per inner step (0: all).
          inner_adam_state: 'carried' or 'fresh', the inner Adam's moment estimates (see the module
            docstring; no matter with SGD).
        """
        if inner_adam_state not in INNER_ADAM_STATES:
            raise ValueError(f'inner_adam_state {inner_adam_state!r}: one of {", ".join(INNER_ADAM_STATES)}')
        if inner_optimizer not in INNER_OPTIMIZERS:
            raise ValueError(f'inner_optimizer {inner_optimizer!r}: one of {", ".join(INNER_OPTIMIZERS)}')
        meta_optimizer = keras.optimizers.SGD(1.0) if meta_optimizer is None else meta_optimizer
        rule = inner.Adam(carried=inner_adam_state == 'carried') if inner_optimizer == 'adam' else inner.SGD()
        super().__init__(net, model, inner_lr, num_inner_steps, True, meta_optimizer, inner_rule=rule)
        self.inner_optimizer = inner_optimizer
        self.inner_batch_size = inner_batch_size

    def meta_direction(self, episodes, num_steps=None, **options):
        """The meta-step's direction with every task adapted on all its examples (`every_example`)."""
        return super().meta_direction(every_example(episodes, self.net.n_way), num_steps, **options)

    def inner_batch(self, images, labels, step):
        """Minibatch `step` of a task's examples [T, N*K, ...], class by class: the next
        `inner_batch_size` examples, cyclically, of an order that alternates classes (class 0
        shot 0, class 1 shot 0, ...)."""
        size = images.shape[1]
        batch = self.inner_batch_size
        if not batch or batch >= size:
            return images, labels
        n_way = self.net.n_way
        position = (step * batch + np.arange(batch)) % size
        index = (position % n_way) * (size // n_way) + position // n_way
        return tf.gather(images, index, axis=1), tf.gather(labels, index, axis=1)

    def meta_gradients(self, tape, meta_loss, trajectory, episodes):
        """θ − mean_t θ'_t, which the meta-optimizer (SGD, learning rate ε) descends."""
        del tape, meta_loss, episodes
        adapted = trajectory.params[-1]
        return {name: self.params[name] - tf.reduce_mean(adapted[name], axis=0) for name in self.params}


def every_example(episodes, n_way):
    """The meta-batch with each task's query examples joined to its support set, class by class:
    support [T, N*(K+Q), ...] (class 0's K + Q examples, then class 1's, ...), query unchanged."""
    def joined(support, query):
        def per_class(x):
            return tf.reshape(x, [x.shape[0], n_way, -1, *x.shape[2:]])
        both = tf.concat([per_class(support), per_class(query)], axis=2)
        return tf.reshape(both, [both.shape[0], -1, *both.shape[3:]])
    return data.Episodes(joined(episodes.support_images, episodes.query_images),
                         joined(episodes.support_labels, episodes.query_labels),
                         episodes.query_images, episodes.query_labels)
