"""Learner commands: scripts at the top of the repository (maml.py, anil.py, protonet.py, ...)
that each hold one learner class (a `learner.Learner`) and train it from the flags.

A learner script ends with

    COMMAND = commands.Command('anil', ANIL, 'FO-ANIL')

    if __name__ == '__main__':
        errors.run(commands.main_for(COMMAND, sys.modules[__name__]))

and is then trained, meta-tested and saved by `run`; compare.py and benchmark.py find it by
its name (`find`) and learn from its `Command` how to run it and where its runs are, so that
a new learner touches no shared file.
"""

import importlib
import os
from typing import NamedTuple

from absl import flags

from fewshot import errors, experiment, network

FLAGS = flags.FLAGS
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Command(NamedTuple):
    """What a learner command says about itself.

    name: the command's module and its run folders' prefix: 'anil' is anil.py, whose runs are
      named anil_fo_5way5shot_5steps_seed0 (see `run_name`).
    learner_class: a `learner.Learner` subclass; its `learner_flags` are the flags of its own
      that tools set or name runs after (MAML's: first_order, num_inner_steps, ...).
    algorithm: what hyperparameters.json and the report call it, e.g. 'FO-ANIL'; for a learner
      with --first_order, at second order the 'FO-' is dropped.
    defaults: flags whose default differs in this command (Meta-SGD: one inner step).
    """
    name: str
    learner_class: type
    algorithm: str
    defaults: dict = {}

    def takes(self, flag):
        """True if the learner has the flag `flag` (e.g. 'first_order': it has an order)."""
        return flag in self.learner_class.learner_flags

    def default(self, flag):
        """The default of `flag` in this command."""
        return self.defaults.get(flag, FLAGS[flag].default)

    def algorithm_name(self, first_order):
        """The algorithm's name at the given order (learners without an order have one name)."""
        return self.algorithm if first_order or not self.takes('first_order') else self.algorithm.removeprefix('FO-')

    def run_name(self, n_way, k_shot, seed, backbone='conv4', first_order=True, num_inner_steps=None):
        """The run folder a run of this command is given unless --run_name says otherwise:
        name, order, setting, inner steps, backbone (unless conv4) and seed, leaving out what the
        learner has no flag for (protonet_5way5shot_seed0). num_inner_steps: default the command's."""
        parts = [self.name]
        if self.takes('first_order'):
            parts.append('fo' if first_order else 'so')
        parts.append(f'{n_way}way{k_shot}shot')
        if self.takes('num_inner_steps'):
            parts.append(f'{self.default("num_inner_steps") if num_inner_steps is None else num_inner_steps}steps')
        if backbone != 'conv4':
            parts.append(backbone)
        return '_'.join(parts + [f'seed{seed}'])

    def build(self, n_way, first_order):
        """(network, learner) as the flags say, with an `n_way`-way head and the given order."""
        net = network.build(FLAGS.backbone, n_way, FLAGS.num_filters, FLAGS.max_pool, FLAGS.precision)
        return net, self.learner_class.from_flags(net, first_order)


def run(command, flag_module):
    """Trains and meta-tests the command's learner as the flags say; returns `experiment.Outcome`.

    flag_module: the command's module, whose key flags are recorded besides the shared ones.
    After the meta-test the learner's `save(folder)` writes what else it learned.
    """
    first_order = FLAGS.first_order if command.takes('first_order') else True

    def build(splits):
        del splits
        return command.build(FLAGS.n_way, first_order)[1]

    num_inner_steps = FLAGS.num_inner_steps if command.takes('num_inner_steps') else None
    outcome = experiment.run(
        algorithm=command.algorithm_name(first_order),
        default_run_name=command.run_name(FLAGS.n_way, FLAGS.k_shot, FLAGS.seed, FLAGS.backbone, first_order,
                                          num_inner_steps),
        build=build, training_stream=command.learner_class.training_stream, flag_modules=[flag_module],
        num_eval_inner_steps=command.learner_class.eval_inner_steps_from_flags(),
        extra={'batch_norm': command.learner_class.batch_norm},
        fixed_on_resume=command.learner_class.fixed_on_resume())
    outcome.learner.save(outcome.folder.path)
    return outcome


def main_for(command, flag_module):
    """A learner command's `main`: `run`, with the command's own defaults."""
    for flag, value in command.defaults.items():
        FLAGS.set_default(flag, value)

    def main(argv):
        del argv
        run(command, flag_module)
    return main


def find(name, flag):
    """The `Command` of the learner command `name` (the script name.py at the top of the
    repository); FlagError naming `flag` if there is none.

    The script is imported by name, as a plugin: the package never imports a command otherwise.
    """
    script = os.path.join(REPO, f'{name}.py')
    module = importlib.import_module(name) if name.isidentifier() and os.path.exists(script) else None
    command = getattr(module, 'COMMAND', None)
    if not isinstance(command, Command):
        raise errors.FlagError(f'{flag}: {name!r} is not a learner command (a script beside maml.py defining '
                               'COMMAND = commands.Command(...), e.g. maml, anil, reptile, protonet, imaml)')
    return command
