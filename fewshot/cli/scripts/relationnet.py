"""Relation Networks (Sung, Yang, Zhang, Xiang, Torr & Hospedales, "Learning to Compare", CVPR 2018).

    python relationnet.py                                  # 5-way 5-shot Omniglot
    python relationnet.py --k_shot 1
    python relationnet.py --flagfile protocols/relationnet_paper_5way1shot.flags   # the paper's network and training

The learner is `RelationNetwork` (fewshot/learners/relationnet.py, whose docstring says how it
departs from the paper).
"""

import sys

import fewshot  # noqa: F401  First: it sets up TensorFlow's CPU backend, read as TensorFlow loads.
from absl import flags

from fewshot import cli, network
from fewshot.cli import commands, config, metric, strategy
from fewshot.learners.relationnet import RelationNetwork, max_pooled_blocks
from fewshot.learners.relationnet import keras_model  # noqa: F401  (visible from relationnet)

flags.adopt_module_key_flags(config)  # --help lists the shared flags too.
flags.adopt_module_key_flags(strategy)  # --strategy and --cpu_replicas.
flags.adopt_module_key_flags(commands)  # --backbone and --meta_lr.
flags.adopt_module_key_flags(metric)  # --meta_lr_halving_interval, as protonet.py's.
flags.DEFINE_integer('relation_blocks', 1, 'Convolution blocks of the relation module (the paper: 2, over the '
                     '5x5 maps of --backbone relationnet; 1 suits the 2x2 maps of conv4).', lower_bound=1)
flags.DEFINE_boolean('relation_max_pool', False, 'Follow each block of the relation module with 2x2 max-pooling '
                     '(as the paper: 5x5 -> 2x2 -> 1x1).')
flags.DEFINE_float('clip_norm', None, 'Clip the gradient of the embedding and that of the relation module each to '
                   'this global norm before the meta-step (the authors\' code: 0.5; default: no clipping).',
                   lower_bound=1e-12)
FLAGS = flags.FLAGS


@flags.multi_flags_validator(['relation_blocks', 'relation_max_pool', 'backbone', 'image_size'])
def _pooling_leaves_a_map(values):
    """Max-pooling each block must leave the relation module's maps at least 1x1."""
    net = network.BACKBONES[values['backbone']](2, image_size=values['image_size'])
    if values['relation_max_pool'] and values['relation_blocks'] > max_pooled_blocks(net):
        size = net.feature_map_size()
        raise flags.ValidationError(
            f'--relation_blocks {values["relation_blocks"]} --relation_max_pool: pooling would take the '
            f'{size}x{size} feature maps of --backbone {values["backbone"]} below 1x1; use at most '
            f'{max_pooled_blocks(net)} block(s), or --backbone relationnet (5x5 maps of 28x28 images)')
    return True


def build_learner(net, first_order):
    """The Relation Network as the flags say, meta-trained by Adam (on --meta_lr_halving_interval's schedule)."""
    del first_order  # No inner loop, no order.
    return RelationNetwork(net, meta_optimizer=metric.meta_optimizer(), train_n_way=FLAGS.n_way,
                           relation_blocks=FLAGS.relation_blocks, relation_max_pool=FLAGS.relation_max_pool,
                           clip_norm=FLAGS.clip_norm)


COMMAND = commands.Command('relationnet', RelationNetwork, 'RelationNet', build_learner,
                           ('meta_lr', 'meta_lr_halving_interval', 'backbone', 'relation_blocks', 'relation_max_pool',
                            'clip_norm'))


def run():
    """The command, as `python relationnet.py` and `fewshot relationnet` run it."""
    cli.run(commands.main_for(COMMAND, sys.modules[__name__]))
