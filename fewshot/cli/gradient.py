"""The flags of the gradient-based learners, MAML's family: the inner loop's rate and steps and the
derivative order, meaning the same in every command that takes them (maml.py, anil.py, boil.py,
meta_sgd.py, proto_maml.py; iMAML, Reptile and MAML++ take some of them), and `command`, the
`commands.Command` of a learner of MAML's shape built from them.

A command of MAML's shape takes this module's key flags, which are its own, the shared ones (config,
strategy) and the network's (commands), by naming itself; anil.py is, besides its docstring,

    from fewshot.cli import commands, gradient
    from fewshot.learners.anil import ANIL

    COMMAND = gradient.command('anil', ANIL, 'FO-ANIL', script=__name__)

    if __name__ == '__main__':
        commands.main(COMMAND)
"""

import sys

import keras
from absl import flags

from fewshot.cli import commands, config, strategy

flags.adopt_module_key_flags(config)  # --help of a command that adopts this module lists the shared flags too,
flags.adopt_module_key_flags(strategy)  # --strategy and --cpu_replicas,
flags.adopt_module_key_flags(commands)  # and the network's: --backbone, --flatten, --pool_padding, --meta_lr.

flags.DEFINE_float('inner_lr', 0.4, 'Inner-loop SGD learning rate (alpha).', lower_bound=1e-12)
flags.DEFINE_integer('num_inner_steps', 5, 'Inner-loop SGD steps during meta-training.', lower_bound=1)
flags.DEFINE_integer('num_eval_inner_steps', 0, 'Inner-loop steps at validation and test '
                     '(0: the same as --num_inner_steps).', lower_bound=0)
flags.DEFINE_boolean('first_order', True, 'First-order MAML (FO-MAML, the assignment\'s setting); '
                     '--first_order=false differentiates through the inner loop (second order).')
FLAGS = flags.FLAGS
# The flags every learner of MAML's shape takes, meaning the same there (its `Command.learner_flags`).
LEARNER_FLAGS = ('inner_lr', 'num_inner_steps', 'num_eval_inner_steps', 'first_order', 'meta_lr', 'backbone')


def eval_inner_steps():
    """Adaptation steps at validation and test: --num_eval_inner_steps, else --num_inner_steps."""
    return FLAGS.num_eval_inner_steps or FLAGS.num_inner_steps


def command(name, learner_class, algorithm, defaults=None, script=None):
    """The `commands.Command` of a learner of MAML's shape, built from these flags: its constructor
    takes (net, inner_lr=, num_inner_steps=, first_order=, meta_optimizer=), meta-trained by Adam.

    script: the command's `__name__`: these flags become its key flags, as
    `flags.adopt_module_key_flags(gradient)` there would make them (--help lists them, and
    `cli.check_used_flags` takes no other), so that a learner command is its `COMMAND` line and a `main`.
    """
    if script is not None:  # absl names the main module by its path.
        module = sys.argv[0] if script == '__main__' else script
        for flag in FLAGS.get_key_flags_for_module(__name__):
            FLAGS.register_key_flag_for_module(module, flag)
    def build_learner(net, first_order):
        return learner_class(net, inner_lr=FLAGS.inner_lr, num_inner_steps=FLAGS.num_inner_steps,
                             first_order=first_order, meta_optimizer=keras.optimizers.Adam(FLAGS.meta_lr))
    return commands.Command(name, learner_class, algorithm, build_learner, LEARNER_FLAGS, defaults or {},
                            eval_inner_steps)
