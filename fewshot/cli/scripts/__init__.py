"""The commands themselves, one module each: `fewshot <command> [flags]` once the package is installed
(`pip install .`), `python <command>.py [flags]` in a checkout, where each top-level script is a
doorway into its module here. Both run the same code: `run` of the command's module.

    fewshot                        # the commands, a line each
    fewshot maml --num_inner_steps 5
    fewshot compare --help

A tool that runs another command in a child process runs `argv(...)` of it, the same in a checkout and
installed. A command module imports no other command (`cli.commands.find` loads a learner command by
name, as a plug-in).
"""

import importlib
import os
import sys

from absl import flags

PROGRAM = 'fewshot'
HERE = os.path.dirname(os.path.abspath(__file__))
# The folder holding the package: a checkout (with its reference/, protocols/, docs/) or site-packages.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
NAMES = tuple(sorted(name[:-3] for name in os.listdir(HERE) if name.endswith('.py') and not name.startswith('_')))


def enter(caller, name):
    """What a top-level script of a checkout does: run the command `name` if the script is the one
    Python runs (`caller` is its __name__), else stand for the command's module (`import maml` is
    fewshot.cli.scripts.maml itself: one module, its flags defined once)."""
    module = importlib.import_module(f'{__name__}.{name}')
    if caller == '__main__':
        _run(module)
    else:
        sys.modules[caller] = module


def argv(script):
    """The command line that runs the command `script` in a child process: a name of NAMES ('maml') or a
    command's file (this package's 'maml.py', 'maml.py' of a checkout, or a learner script of one's own)."""
    name = os.path.basename(script).removesuffix('.py')
    if os.path.sep not in script and name in NAMES or os.path.dirname(os.path.abspath(script)) == HERE:
        return [sys.executable, '-m', 'fewshot', name]
    return [sys.executable, script]


def environment():
    """The environment for a child process of `argv`: this `fewshot` first on PYTHONPATH, so that the child
    imports the package this process runs (a checkout's, or the installed one) wherever it starts."""
    return {**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [ROOT, os.environ.get('PYTHONPATH')]))}


def main(arguments=None):
    """The `fewshot` command: `fewshot <command> [flags]` runs the command; alone, or with --help, it
    lists them."""
    arguments = sys.argv[1:] if arguments is None else list(arguments)
    if not arguments or arguments[0] in ('-h', '--help', 'help'):
        print(f'usage: {PROGRAM} <command> [flags]   ({PROGRAM} <command> --help: its flags)\n')
        for name in NAMES:
            print(f'  {name:<20}{_summary(name)}')
        return
    name = arguments[0]
    if name not in NAMES:
        sys.exit(f'error: {name!r} is not a command of {PROGRAM}: one of {", ".join(NAMES)}')
    sys.argv = [f'{PROGRAM} {name}', *arguments[1:]]
    _run(importlib.import_module(f'{__name__}.{name}'))


def _run(module):
    """Runs the command `module` as the main program: --help shows its docstring and lists its flags as
    absl lists the main module's (by the program's name, sys.argv[0])."""
    sys.modules['__main__'].__doc__ = module.__doc__
    for flag in flags.FLAGS.get_key_flags_for_module(module.__name__):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    module.run()


def _summary(name):
    """The first line of the command's docstring, read without importing it (importing is slow and
    defines its flags)."""
    with open(os.path.join(HERE, f'{name}.py'), encoding='utf-8') as f:
        text = f.read()
    quote = text.find('"""')
    return text[quote + 3:].split('\n', 1)[0].strip() if quote >= 0 else ''
