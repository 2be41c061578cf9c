"""A learner command defined outside the package and outside the repository's top, as a researcher
would write one: cosine-similarity prototypes (a Prototypical Network scoring by the cosine, scaled,
instead of the negative squared distance). The tests copy it into a folder of their own and run it
directly and through compare.py, with no edit to any shared file."""

import sys

import fewshot  # noqa: F401  First: it sets up TensorFlow's CPU backend.
import keras
import tensorflow as tf
from absl import flags

from fewshot import cli, network
from fewshot.cli import commands, config, strategy
from fewshot.learner import MetricLearner

flags.adopt_module_key_flags(config)
flags.adopt_module_key_flags(strategy)
flags.adopt_module_key_flags(commands)
flags.DEFINE_float('cosine_scale', 10.0, 'The cosines are multiplied by this before the softmax.', lower_bound=0)
FLAGS = flags.FLAGS


class CosinePrototypes(MetricLearner):
    """logit_k(x) = s · cos(φ(x), c_k), c_k the mean support embedding of class k."""

    def __init__(self, net, scale, **options):
        super().__init__(net, **options)
        self.scale = scale

    def scores(self, params, episodes, n_way):
        support, query = self.embed(self.net.features, params, episodes)
        prototypes = network.prototypes(support, episodes.support_labels, n_way)  # [T, N, F]
        cosines = tf.einsum('tqf,tnf->tqn', tf.math.l2_normalize(query, -1), tf.math.l2_normalize(prototypes, -1))
        return self.scale * cosines


def build_learner(net, first_order):
    del first_order  # No inner loop.
    return CosinePrototypes(net, FLAGS.cosine_scale, meta_optimizer=keras.optimizers.Adam(FLAGS.meta_lr))


COMMAND = commands.Command('cosine_learner', CosinePrototypes, 'CosineProto', build_learner,
                           ('cosine_scale', 'meta_lr', 'backbone'))

if __name__ == '__main__':
    cli.run(commands.main_for(COMMAND, sys.modules[__name__]))
