"""Learner commands: the commands of fewshot/cli/scripts/ (maml, anil, protonet, ...) that each train
one learner class (a `learner.Learner`, in fewshot/learners/) from the flags.

A learner command defines its flags and ends with its description,

    COMMAND = commands.Command('anil', ANIL, 'FO-ANIL', build_learner, learner_flags, ...)

    def run():
        commands.main(COMMAND)

(a learner of MAML's shape takes MAML's flags and needs no more: its command is
`COMMAND = gradient.command('anil', ANIL, 'FO-ANIL', script=__name__)` and `run`)

and is then trained, meta-tested and saved by `run`; compare.py finds it by its name or its path
(`find`) and learns from its `Command` how to run it and where its runs are, so that a new learner
touches no shared file and may live anywhere: a script of one's own (not in this repository) that
imports `fewshot` and ends with `if __name__ == '__main__': commands.main(COMMAND)` is a learner
command like maml.
"""

import importlib
import importlib.util
import os
import re
import sys
from typing import Callable, NamedTuple

from absl import flags

from fewshot import cli, errors, folders, network
from fewshot.cli import config, experiment, scripts

# The flags of every learner that `run` builds: its network, and its meta-optimizer's step size where
# that is Adam's. A learner script makes them its own with `flags.adopt_module_key_flags(commands)`
# or by declaring them, so that other commands refuse them.
flags.DEFINE_enum('backbone', 'conv4', list(network.BACKBONES),
                  "The network: 'conv4', the MAML paper's four convolution blocks; 'resnet', a stem "
                  "convolution and three residual blocks (about twice the convolution work); 'relationnet', "
                  "the Relation Network paper's four blocks (the first two unpadded, each followed by 2x2 "
                  "max-pooling: 5x5 feature maps of 28x28 images); 'resnet12', MetaOptNet's ResNet-12, four "
                  'residual blocks of three convolutions each followed by 2x2 max-pooling, --num_filters x 1, '
                  '2.5, 5 and 10 filters (the paper: 64, 160, 320, 640; about 130 times the convolution work of '
                  'conv4 at 32 filters on 84x84 images).')
flags.register_multi_flags_validator(
    ['backbone', 'max_pool'], lambda values: values['backbone'] == 'conv4' or not values['max_pool'],
    message='--max_pool: only with --backbone conv4 (the residual network downsamples with strided '
            'convolutions, the Relation Network embedding and ResNet-12 pool in their own ways)')
flags.register_multi_flags_validator(
    ['backbone', 'image_size'],
    lambda values: network.BACKBONES[values['backbone']](2, image_size=values['image_size']).feature_map_size() >= 1,
    message='--image_size: too small for --backbone relationnet (its unpadded convolutions: at least 10 pixels) '
            'or resnet12 (its four max-poolings: at least 16 pixels)')
flags.DEFINE_boolean('flatten', False, "The head's input: the last feature maps flattened (the MAML paper's "
                     'mini-ImageNet network: 5x5x32 = 800 features of 84x84 images with --num_filters 32 --max_pool '
                     '--pool_padding valid) instead of their spatial mean (its Omniglot network).')
flags.DEFINE_enum('pool_padding', 'same', ['same', 'valid'], "With --max_pool: 'same' pools an odd edge on its own "
                  "(28 -> 14 -> 7 -> 4 -> 2); 'valid' drops it (84 -> 42 -> 21 -> 10 -> 5), as the MAML paper's code "
                  'and PyTorch do.')
flags.register_multi_flags_validator(
    ['backbone', 'flatten'], lambda values: values['backbone'] != 'relationnet' or not values['flatten'],
    message="--flatten: not with --backbone relationnet (the Relation Network compares feature maps, not features)")
flags.register_multi_flags_validator(
    ['max_pool', 'pool_padding'], lambda values: values['max_pool'] or values['pool_padding'] == 'same',
    message="--pool_padding: the padding of --max_pool's pooling; give --max_pool")
flags.DEFINE_float('meta_lr', 1e-3, 'Meta learning rate: the step size of the meta-optimizer, Adam (MAML calls '
                   'it beta).', lower_bound=1e-12)
FLAGS = flags.FLAGS


def no_steps():
    return 0


def nothing_fixed():
    return ()


class Command(NamedTuple):
    """What a learner command says about itself.

    name: the command's module, 'anil' for anil.py, and by default its run folders' prefix: its runs
      are named anil_fo_5way5shot_5steps_seed0 (see `run_name`).
    learner_class: a `learner.Learner` subclass (its `batch_norm` is recorded with every run).
    algorithm: what hyperparameters.json and the report call it, e.g. 'FO-ANIL'; for a learner
      with --first_order, at second order the 'FO-' is dropped.
    build_learner: (network, first_order) -> the learner of that network as the flags say (first_order
      for learners that have an order; the others ignore it).
    learner_flags: the flags of its own that tools set or name runs after (MAML's: first_order,
      num_inner_steps, ...).
    defaults: flags whose default differs in this command (Meta-SGD: one inner step).
    eval_inner_steps: () -> adaptation steps at validation and test as the flags say (0: no inner loop).
    training_stream: (splits) -> the meta-training task stream as the flags say, `sample(iteration, T)`
      -> `data.Episodes` (None: `experiment.episode_stream`, the flags' tasks).
    fixed_on_resume: () -> flags a resumed run must keep as the flags set them (see results.RunFolder),
      e.g. the iterations a schedule spreads over.
    prefix: the run folders' prefix, if not `name` (MAML++'s: maml++).
    name_suffix: () -> what the flags add to a run folder's name before its seed (MAML++: the fixes
      turned off), None: nothing.
    batch_norm: () -> how batch norm normalises at evaluation as the flags say, for hyperparameters.json
      and the report (None: the learner class's `batch_norm`).
    script: the command's file, which tools run (set by `find`).
    older_runs: {flag: value} for a flag added or whose default changed after runs were made: what a
      run folder that did not record the flag was trained with. Resuming or reusing such a folder
      checks the command line against it, not against the flag's default (iMAML's runs before
      --regularization descended the regularised loss).
    """
    name: str
    learner_class: type
    algorithm: str
    build_learner: Callable
    learner_flags: tuple = ()
    defaults: dict = {}
    eval_inner_steps: Callable = no_steps
    training_stream: Callable = None
    fixed_on_resume: Callable = nothing_fixed
    prefix: str = None
    name_suffix: Callable = None
    batch_norm: Callable = None
    script: str = None
    older_runs: dict = {}

    def takes(self, flag):
        """True if the learner has the flag `flag` (e.g. 'first_order': it has an order)."""
        return flag in self.learner_flags

    def default(self, flag):
        """The default of `flag` in this command."""
        return self.defaults.get(flag, FLAGS[flag].default)

    def algorithm_name(self, first_order):
        """The algorithm's name at the given order (learners without an order have one name)."""
        return self.algorithm if first_order or not self.takes('first_order') else self.algorithm.removeprefix('FO-')

    def run_name(self, n_way, k_shot, seed, backbone='conv4', first_order=True, num_inner_steps=None, suffix=''):
        """The run folder a run of this command is given unless --run_name says otherwise:
        prefix, order, setting, inner steps, backbone (unless conv4), suffix and seed, leaving out what
        the learner has no flag for (protonet_5way5shot_seed0). num_inner_steps: default the command's."""
        parts = [self.prefix or self.name]
        if self.takes('first_order'):
            parts.append('fo' if first_order else 'so')
        parts.append(f'{n_way}way{k_shot}shot')
        if self.takes('num_inner_steps'):
            parts.append(f'{self.default("num_inner_steps") if num_inner_steps is None else num_inner_steps}steps')
        if backbone != 'conv4':
            parts.append(backbone)
        return '_'.join(parts) + f'{suffix}_seed{seed}'

    def build(self, n_way, first_order, precision=None):
        """(network, learner) as the flags say, with an `n_way`-way head, the given order and
        `precision` (default --precision)."""
        net = experiment.convnet(n_way, FLAGS.backbone, precision, FLAGS.flatten, FLAGS.pool_padding)
        return net, self.build_learner(net, first_order)


def run(command, flag_module):
    """Trains and meta-tests the command's learner as the flags say; returns `experiment.Outcome`.

    flag_module: the command's module, whose key flags are recorded besides the shared ones.
    After the meta-test the learner's `save(folder)` writes what else it learned.
    """
    first_order = FLAGS.first_order if command.takes('first_order') else True

    def build(splits, precision):
        del splits
        return command.build(FLAGS.n_way, first_order, precision)[1]

    num_inner_steps = FLAGS.num_inner_steps if command.takes('num_inner_steps') else None
    outcome = experiment.run(experiment.Run(
        algorithm=command.algorithm_name(first_order),
        default_run_name=command.run_name(FLAGS.n_way, FLAGS.k_shot, FLAGS.seed, FLAGS.backbone, first_order,
                                          num_inner_steps, command.name_suffix() if command.name_suffix else ''),
        build=build, tasks=experiment.image_tasks(command.training_stream or experiment.episode_stream),
        flag_modules=[config, flag_module], num_eval_inner_steps=command.eval_inner_steps(),
        extra={'batch_norm': command.batch_norm() if command.batch_norm else command.learner_class.batch_norm},
        fixed_on_resume=command.fixed_on_resume(), older_runs=command.older_runs))
    outcome.learner.save(outcome.folder.path)
    folders.redraw(outcome.folder.path)  # With what the learner saved (Meta-SGD's rates, MAML++'s).
    return outcome


def main(command):
    """Runs the learner command `command` as the running script: its flags, then `run`."""
    cli.run(main_for(command, sys.modules['__main__']))


def main_for(command, flag_module):
    """A learner command's `main`: `run`, with the command's own defaults."""
    for flag, value in command.defaults.items():
        FLAGS.set_default(flag, value)

    def main(argv):
        del argv
        run(command, flag_module)
    return main


def find(name, flag):
    """The `Command` of the learner command `name`, with its `script`: a command of the package (e.g.
    'anil'), or the path of a learner script anywhere (e.g. 'mine/cosine.py'); FlagError naming `flag`
    if there is none.

    A script of one's own is imported as a plugin, under its file's name. Only a command that assigns
    COMMAND is imported: importing a tool (compare, sine) would run its flag definitions a second time.
    """
    not_a_learner = errors.FlagError(
        f'{flag}: {name!r} is not a learner command (one defining COMMAND, a commands.Command: maml, anil, '
        'reptile, protonet, imaml, ... or the path of a script of your own)')
    script = name if name.endswith('.py') else os.path.join(scripts.HERE, f'{name}.py')
    if not name.endswith('.py') and not (name in scripts.NAMES and os.path.isfile(script)):
        raise not_a_learner
    if os.path.isfile(script) and not _assigns_command(script):
        raise not_a_learner
    try:
        module = _import_script(name, flag)
    except flags.Error as error:  # Its flags clash with the running command's: not a learner script.
        raise errors.FlagError(f'{flag}: {name!r} cannot be loaded beside this command ({error})') from None
    command = getattr(module, 'COMMAND', None)
    if not isinstance(command, Command):
        raise not_a_learner
    return command._replace(script=os.path.abspath(module.__file__))


def _assigns_command(script):
    """True if the text of `script` assigns COMMAND at its top level (what every learner script does)."""
    try:
        with open(script, encoding='utf-8') as f:
            return re.search(r'^COMMAND\s*[:=]', f.read(), re.MULTILINE) is not None
    except (OSError, UnicodeDecodeError):
        return False


def _import_script(name, flag):
    """The module of the command `name` (a command of the package, or a path ending in .py)."""
    if not name.endswith('.py'):
        return importlib.import_module(f'{scripts.__name__}.{name}')
    module_name = os.path.basename(name)[:-3]
    if not os.path.isfile(name) or not module_name.isidentifier():
        raise errors.FlagError(f'{flag}: {name!r} is not a file whose name is a Python identifier')
    loaded = sys.modules.get(module_name)
    if loaded is not None:
        if os.path.realpath(getattr(loaded, '__file__', '') or '') != os.path.realpath(name):
            raise errors.FlagError(f'{flag}: {name!r} has the name of the module {module_name!r}, '
                                   f'{getattr(loaded, "__file__", "built in")}; rename it')
        return loaded
    spec = importlib.util.spec_from_file_location(module_name, name)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # As an import would: the script may look itself up.
    spec.loader.exec_module(module)
    return module
