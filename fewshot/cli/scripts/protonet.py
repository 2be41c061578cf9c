"""Prototypical Networks (Snell, Swersky & Zemel, NeurIPS 2017).

    python protonet.py                                     # 5-way 5-shot Omniglot
    python protonet.py --k_shot 1 --train_n_way 20         # more classes per training task than at test
    python protonet.py --flagfile protocols/protonet_paper_5way1shot.flags   # the paper's Omniglot protocol

The learner is `PrototypicalNetwork` (fewshot/learners/protonet.py). The paper trains Omniglot with
60 classes and 5 queries per class per training task, one task per step, for 5-way testing; here
--train_n_way (default: the test's --n_way, as every other learner here trains) and the shared
--num_query and --meta_batch_size choose that, and the default is the assignment's shape so that
compare.py compares like with like.
"""

import sys

import fewshot  # noqa: F401  First: it sets up TensorFlow's CPU backend, read as TensorFlow loads.
from absl import flags

from fewshot import cli
from fewshot.cli import commands, config, experiment, metric, strategy
from fewshot.learners.protonet import PrototypicalNetwork

flags.adopt_module_key_flags(config)  # --help lists the shared flags too.
flags.adopt_module_key_flags(strategy)  # --strategy and --cpu_replicas.
flags.adopt_module_key_flags(commands)  # --backbone and --meta_lr.
flags.adopt_module_key_flags(metric)  # --meta_lr_halving_interval.
flags.DEFINE_integer('train_n_way', 0, 'Classes per meta-training task (0: --n_way; else at least 2, as a '
                     'one-way task has nothing to tell apart). The paper trains Omniglot 60-way for 5-way testing: '
                     'about 12 times the images per task here.', lower_bound=0)
flags.register_validator('train_n_way', lambda value: value != 1,
                         message='--train_n_way: 0 (the test\'s --n_way) or at least 2; a one-way task has nothing '
                                 'to tell apart')
FLAGS = flags.FLAGS


def build_learner(net, first_order):
    """The Prototypical Network as the flags say, meta-trained by Adam."""
    del first_order  # No inner loop, no order.
    return PrototypicalNetwork(net, meta_optimizer=metric.meta_optimizer(),
                               train_n_way=FLAGS.train_n_way or FLAGS.n_way)


def training_stream(splits):
    """Meta-training tasks of --train_n_way classes, otherwise shaped as the flags say."""
    return experiment.episode_stream(splits, FLAGS.train_n_way, '--train_n_way' if FLAGS.train_n_way else '--n_way')


COMMAND = commands.Command('protonet', PrototypicalNetwork, 'ProtoNet', build_learner,
                           ('train_n_way', 'meta_lr', 'meta_lr_halving_interval', 'backbone'),
                           training_stream=training_stream)


def run():
    """The command, as `python protonet.py` and `fewshot protonet` run it."""
    cli.run(commands.main_for(COMMAND, sys.modules[__name__]))
