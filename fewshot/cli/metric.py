"""The flag of the metric learners' meta-optimizer (protonet.py, relationnet.py): Adam at --meta_lr,
halved on a schedule, as the Prototypical Network paper and the Relation Network code train."""

import keras
from absl import flags

from fewshot.cli import commands  # noqa: F401  It defines --meta_lr.

flags.DEFINE_integer('meta_lr_halving_interval', 0, 'Halve --meta_lr every this many meta-iterations (0: never). '
                     'The paper halves it every 2000 episodes (one task per step); the Relation Network code '
                     'every 100,000.', lower_bound=0)
FLAGS = flags.FLAGS


def meta_optimizer():
    """Adam at --meta_lr, halved every --meta_lr_halving_interval meta-iterations if given."""
    learning_rate = FLAGS.meta_lr
    if FLAGS.meta_lr_halving_interval:
        learning_rate = keras.optimizers.schedules.ExponentialDecay(
            FLAGS.meta_lr, FLAGS.meta_lr_halving_interval, decay_rate=0.5, staircase=True)
    return keras.optimizers.Adam(learning_rate)
