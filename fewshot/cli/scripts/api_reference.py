"""The API reference, docs/api.md, generated from the docstrings of the package's public surface.

    python api_reference.py                        # writes docs/api.md
    python api_reference.py --verify               # exit 1 if docs/api.md is not what the code says

Every class and function a module defines without a leading underscore, module by module (MODULES), with
its signature and docstring, and each class's public methods. A test runs --verify, so that the reference
cannot drift from the code.
"""

import importlib
import inspect
import os
import re

import fewshot  # noqa: F401  First: it sets up TensorFlow's CPU backend, read as TensorFlow loads.
from absl import flags

from fewshot import cli, errors, results
from fewshot.cli import scripts

# The public surface, in the order a user meets it.
MODULES = ('fewshot', 'fewshot.learners', 'fewshot.learner', 'fewshot.learners.inner', 'fewshot.network',
           'fewshot.data', 'fewshot.training', 'fewshot.results', 'fewshot.errors', 'fewshot.devices')

flags.DEFINE_string('api_file', os.path.join(scripts.ROOT, 'docs', 'api.md'), 'Where the reference is written.')
flags.DEFINE_boolean('verify', False, 'Write nothing: exit 1 if --api_file differs from what the code says.')
FLAGS = flags.FLAGS


def reference():
    """The reference, as Markdown text."""
    lines = ['# API reference', '',
             f'Generated from the docstrings of fewshot {fewshot.__version__} by `python api_reference.py`; '
             'a test checks that it is current. Commands and flags: `python <command>.py --help`.', '']
    for name in MODULES:
        module = importlib.import_module(name)
        lines += [f'## `{name}`', '', _text(module), '']
        for member_name, member in _public(module):
            lines += _entry(f'{name}.{member_name}', member, level=3)
            if inspect.isclass(member):
                for method_name, method in _methods(member):
                    lines += _entry(f'{member_name}.{method_name}', method, level=4)
    return '\n'.join(lines).rstrip() + '\n'


def _public(module):
    """(name, object) of the classes and functions `module` defines (a package: its listed names too)."""
    names = getattr(module, '__all__', None) or sorted(vars(module))
    return [(name, getattr(module, name)) for name in names if not name.startswith('_')
            and (inspect.isclass(getattr(module, name)) or inspect.isfunction(getattr(module, name)))
            and (getattr(getattr(module, name), '__module__', '') == module.__name__
                 or module.__name__ == 'fewshot.learners')]


def _methods(cls):
    """(name, function) of the public methods and properties `cls` defines itself, in source order."""
    found = []
    for name, member in vars(cls).items():
        if name.startswith('_') and name != '__init__':
            continue
        if isinstance(member, (staticmethod, classmethod)):
            member = member.__func__
        if inspect.isfunction(member) or isinstance(member, property):
            found.append((name, member))
    return found


def _entry(title, member, level):
    signature = '' if isinstance(member, property) else _signature(member)
    kind = 'class ' if inspect.isclass(member) else ('property ' if isinstance(member, property) else '')
    return [f'{"#" * level} {kind}`{title}{signature}`', '', _text(member), '']


def _signature(member):
    try:
        text = str(inspect.signature(member))
    except (TypeError, ValueError):
        return ''
    return re.sub(r' at 0x[0-9a-f]+', '', text)  # A default object's address differs from run to run.


def _text(member):
    return inspect.cleandoc(member.__doc__ or '(no docstring)') if not isinstance(member, property) else \
        inspect.cleandoc(member.fget.__doc__ or '(no docstring)')


def main(argv):
    del argv
    text = reference()
    if FLAGS.verify:
        try:
            with open(FLAGS.api_file, encoding='utf-8') as f:
                current = f.read() == text
        except OSError as error:
            raise errors.OutputError(f'--api_file {FLAGS.api_file}: {errors.describe_os_error(error)}') from None
        if not current:
            raise errors.OutputError(f'{FLAGS.api_file} is not what the code says: run python api_reference.py')
        print(f'{FLAGS.api_file} is current')
        return
    results.atomic_write(FLAGS.api_file, lambda f: f.write(text.encode('utf-8')))
    print(f'wrote {FLAGS.api_file} ({len(text.splitlines())} lines)')


def run():
    """The command, as `python api_reference.py` and `fewshot api_reference` run it."""
    cli.run(main)
