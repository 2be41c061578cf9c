"""The learners, one module each, every one a `fewshot.learner.Learner` built from keyword
arguments alone (a network, and the algorithm's hyperparameters, with the papers' defaults):

    from fewshot import network
    from fewshot.learners import MAML, inner
    learner = MAML(network.ConvNet(n_way=5), inner_lr=0.4, num_inner_steps=5)          # FO-MAML
    learner = MAML(network.ConvNet(n_way=5), adapted='head', inner_rule=inner.LearnedRates('weight'))

Every module here is found, not listed: the package exports the learner classes each defines, and
the list below is drawn from their docstrings, so that a new learner is one new module. The
top-level scripts of the same names are their commands (flags, run folders).

"""

import importlib
import inspect
import pkgutil
import textwrap

from fewshot.learner import Learner
from fewshot.learners import inner  # noqa: F401  The step rules, MAML's argument.
from fewshot.learners.maml_plusplus import Fixes  # noqa: F401  MAML++'s argument.


def _modules():
    """Every module of the package, imported, by name."""
    return {found.name: importlib.import_module(f'{__name__}.{found.name}') for found in pkgutil.iter_modules(__path__)}


def _learner_classes(module):
    """The public `Learner` classes `module` defines."""
    return {name: value for name, value in vars(module).items()
            if inspect.isclass(value) and issubclass(value, Learner) and value.__module__ == module.__name__
            and not name.startswith('_')}


_MODULES = _modules()
LEARNERS = {name: value for module in _MODULES.values() for name, value in _learner_classes(module).items()}
globals().update(LEARNERS)
__all__ = sorted([*LEARNERS, 'Fixes', 'inner'])


def _summary(module):
    """The first paragraph of `module`'s docstring, on one line."""
    return textwrap.shorten(inspect.getdoc(module).split('\n\n')[0], 90, placeholder=' ...')


__doc__ += '\n'.join(f'    {name:<14} {_summary(module)}' for name, module in _MODULES.items())
