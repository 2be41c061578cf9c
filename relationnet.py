"""Relation Networks (Sung, Yang, Zhang, Xiang, Torr & Hospedales, "Learning to Compare", CVPR 2018).

    python relationnet.py                                  # 5-way 5-shot Omniglot
    python relationnet.py --k_shot 1

The learner is `RelationNetwork` (fewshot/learners/relationnet.py, whose docstring says how it
departs from the paper).
"""

import sys

import fewshot  # noqa: F401  First: it sets up TensorFlow's CPU backend, read as TensorFlow loads.
import keras
from absl import flags

from fewshot import cli
from fewshot.cli import commands, config, strategy
from fewshot.learners.relationnet import RelationNetwork, keras_model  # noqa: F401  (visible from relationnet)

flags.adopt_module_key_flags(config)  # --help lists the shared flags too.
flags.adopt_module_key_flags(strategy)  # --strategy and --cpu_replicas.
flags.adopt_module_key_flags(commands)  # --backbone and --meta_lr.
FLAGS = flags.FLAGS


def build_learner(net, first_order):
    """The Relation Network as the flags say, meta-trained by Adam."""
    del first_order  # No inner loop, no order.
    return RelationNetwork(net, meta_optimizer=keras.optimizers.Adam(FLAGS.meta_lr), train_n_way=FLAGS.n_way)


COMMAND = commands.Command('relationnet', RelationNetwork, 'RelationNet', build_learner, ('meta_lr', 'backbone'))

if __name__ == '__main__':
    cli.run(commands.main_for(COMMAND, sys.modules[__name__]))
