"""The field's few-shot datasets as users hold them, each a named source giving the same thing: the
classes of its standard meta-train / meta-validation / meta-test split and their images.

    dataset = datasets.load('mini_imagenet', '/data/mini-imagenet')   # a `Dataset`
    dataset.splits.train                                           # a data.ClassImages, uint8, memory-mapped

A source reads its files once (`Source.read`), and its images are kept in a cache under `cache_dir`
(`cache.py`): uint8, one class after another in one raw file that every later run memory-maps, so a
dataset of any size trains in a bounded process memory. Each source is a module of this package
listing its `SOURCES` (and named in `MODULES`); Omniglot and image folders keep their own loaders (fewshot/data.py).
"""

import dataclasses
import importlib
import os
from typing import Callable, NamedTuple

import numpy as np

from fewshot import data
from fewshot.datasets import cache
from fewshot.errors import DataError

SPLITS = ('train', 'val', 'test')


class Source(NamedTuple):
    """A named dataset.

    name: what --dataset calls it, e.g. 'mini_imagenet'.
    read: function(dataset_dir, tfds_dir) -> an iterable of (split, class name, images [m, H, W, channels] uint8),
      every class of 'train', then of 'val', then of 'test', each class once; dataset_dir may be '' for a
      source that can fall back on tensorflow-datasets (which keeps its files in tfds_dir).
    image_shape: (H, W, channels) of its images.
    environment: the environment variable naming its folder when --dataset_dir is not given.
    summary: one line for --help: what it is, its split and where the split comes from.
    version: bumped when `read` changes what it produces, so that older caches are rebuilt.
    needs_dir: whether it can only be read from a folder (no tensorflow-datasets route).
    """
    name: str
    read: Callable
    image_shape: tuple
    environment: str
    summary: str
    version: int = 1
    needs_dir: bool = True


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A source's classes, loaded.

    splits: data.Splits of three data.ClassImages (uint8, memory-mapped from the cache).
    checksum: sha256 of the class names and images of the three splits, in order.
    image_shape: (H, W, channels).
    """
    name: str
    splits: data.Splits
    checksum: str
    image_shape: tuple


# Every named dataset and the module of this package whose SOURCES define it (imported when it is used).
MODULES = {'mini_imagenet': 'imagenet', 'tiered_imagenet': 'imagenet', 'cifar_fs': 'cifar', 'fc100': 'cifar',
           'cub': 'cub', 'mnist': 'idx', 'fashion_mnist': 'idx', 'animal_mnist': 'idx'}
NAMES = tuple(MODULES)
# How tables and figures name a --dataset value.
DISPLAY_NAMES = {'omniglot': 'Omniglot', 'mini_imagenet': 'mini-ImageNet', 'tiered_imagenet': 'tiered-ImageNet',
                 'cifar_fs': 'CIFAR-FS', 'fc100': 'FC100', 'cub': 'CUB', 'mnist': 'MNIST',
                 'fashion_mnist': 'Fashion-MNIST', 'animal_mnist': 'Animal-MNIST'}


def display_name(dataset):
    """How a table or a figure names the --dataset value `dataset` ('folder:PATH': the folder's name)."""
    if dataset.startswith('folder:'):
        return os.path.basename(os.path.normpath(dataset[len('folder:'):])) or dataset
    return DISPLAY_NAMES.get(dataset, dataset)


def source(name):
    """The Source called `name`; DataError listing the names otherwise."""
    if name not in MODULES:
        raise DataError(f'--dataset {name}: not a named dataset; expected one of {", ".join(NAMES)}')
    module = importlib.import_module(f'fewshot.datasets.{MODULES[name]}')
    return next(source for source in module.SOURCES if source.name == name)


def tfds_builder(name, tfds_dir, environment, expected):
    """The tensorflow-datasets builder `name` in tfds_dir, prepared (downloaded on first use); one-line DataError
    telling the user to set `environment` to `expected` (what its folder holds) when it cannot be prepared."""
    import tensorflow_datasets as tfds  # Imported lazily: the folder routes do not need it.
    builder = tfds.builder(name, data_dir=tfds_dir)
    try:
        builder.download_and_prepare()
    except Exception as error:  # Network, checksum and disk errors come in many types.
        reason = (str(error).splitlines() or [''])[0][:200]
        raise DataError(f'tensorflow-datasets could not prepare {name} ({type(error).__name__}: {reason}); without '
                        f'network access, give --dataset_dir or {environment}: {expected}') from None
    return builder


def folder_of(name, given=''):
    """Where the dataset `name`'s files are: `given`, else its environment variable ('' if neither)."""
    return given or os.environ.get(source(name).environment, '')


def load(name, dataset_dir='', cache_dir='data'):
    """The dataset `name` (a key of `MODULES`), read from `dataset_dir` (default: its environment
    variable; neither: tensorflow-datasets, for a source that has that route) and cached in `cache_dir`.

    DataError naming the folder or file for missing, damaged or inconsistent data.
    """
    chosen = source(name)
    folder = folder_of(name, dataset_dir)
    if folder and not os.path.isdir(folder):
        raise DataError(f'--dataset_dir / {chosen.environment} {folder}: folder does not exist')
    if not folder and chosen.needs_dir:
        raise DataError(f'--dataset {name}: give the folder of its files with --dataset_dir or {chosen.environment} '
                        '(it has no tensorflow-datasets route)')
    key = cache.source_key(folder) if folder else 'tfds'
    path = os.path.join(cache_dir, f'{name}-v{chosen.version}-{key}')
    if not cache.is_complete(path):
        cache.write(path, chosen.read(folder, os.path.join(cache_dir, 'tfds')), chosen.image_shape,
                    f'--dataset {name} ({folder or "tensorflow-datasets"})')
    images, index = cache.read(path)
    return Dataset(name, data.Splits(*(split_of(images, index['splits'][split]) for split in SPLITS)),
                   index['checksum'], chosen.image_shape)


def split_of(images, entry):
    """The `data.ClassImages` of one split of a cache: its images (a view of the memory map) and classes."""
    start, stop = entry['starts'][0], entry['starts'][-1]
    starts = [offset - start for offset in entry['starts']]
    return data.ClassImages(images[start:stop], np.array(starts, np.int64), np.array(entry['names']))
