"""Reading the pickles datasets are distributed as (Animal-MNIST, the mini- and tiered-ImageNet caches,
CIFAR-100's python archive) without running what a pickle may ask to run.

`pickle.load` calls any function a file names: a crafted file runs code. `load` admits only what these
datasets hold: dicts, lists, tuples, strings, bytes and numbers (which unpickling builds without a call)
and numpy arrays of numbers or bytes (whose unpickling names numpy's array reconstructor and dtype, and
nothing else). Any other name, an object array included, is a DataError naming the file.
"""

import gzip
import io
import pickle

import numpy as np

from fewshot.errors import DataError

# (module, name) pairs a numpy array's pickle names, by numpy version (numpy 2 renamed numpy.core) and
# pickle protocol (5 rebuilds an array from its bytes with _frombuffer): each builds an array from data.
_ARRAY_GLOBALS = ({(module, name) for module in ('numpy.core.multiarray', 'numpy._core.multiarray')
                   for name in ('_reconstruct', 'scalar')}
                  | {(module, '_frombuffer') for module in ('numpy.core.numeric', 'numpy._core.numeric')}
                  | {('numpy', 'ndarray'), ('numpy', 'dtype')}
                  | {('_codecs', 'encode')})  # Protocols 2 and below pickle bytes as a string to encode.


class _ArraysOnly(pickle.Unpickler):
    def __init__(self, file, where):
        super().__init__(file, encoding='bytes')  # CIFAR-100's archive is a Python 2 pickle of byte strings.
        self.where = where

    def find_class(self, module, name):
        if (module, name) not in _ARRAY_GLOBALS:
            raise DataError(f'{self.where}: the pickle asks for {module}.{name}; only numpy arrays, lists, dicts, '
                            'strings and numbers are read from a dataset file (a pickle can run code when loaded)')
        return super().find_class(module, name)


def load_file(path):
    """The object pickled in the file `path` (gzip-compressed if its name ends in .gz), read as `load` reads."""
    try:
        with (gzip.open if path.endswith('.gz') else open)(path, 'rb') as file:
            return load(file, path)
    except OSError as error:  # Missing, unreadable, or not gzip after all.
        raise DataError(f'{path}: cannot be read ({error.strerror or error})') from None


def load(file, where):
    """The object pickled in `file` (a binary file, or bytes), read as above; DataError naming `where` (the
    file) for a damaged pickle or anything but arrays and plain data (object arrays included)."""
    try:
        value = _ArraysOnly(io.BytesIO(file) if isinstance(file, bytes) else file, where).load()
    except (DataError, OSError):
        raise
    except Exception as error:  # A damaged pickle raises many types (UnpicklingError, EOFError, ValueError...).
        raise DataError(f'{where}: not a readable pickle ({type(error).__name__}: {error})') from None
    _check_no_objects(value, where)
    return value


def _check_no_objects(value, where):
    """DataError if an array in `value` holds Python objects (their pickles were admitted one by one, but an
    object array is not data these loaders use)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, np.ndarray) and item.dtype.hasobject:
            raise DataError(f'{where}: holds an array of Python objects; expected arrays of numbers or bytes')
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
