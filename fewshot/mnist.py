"""MNIST for the initialization lab: the original IDX files or tensorflow-datasets, same arrays.

The IDX files (`train-images-idx3-ubyte.gz` and the three others) are read from
`--mnist_dir` or the MNIST_DIR environment variable; without either, tfds downloads
MNIST. tfds does not keep the IDX order, so both routes sort each split by
(label, pixels): that is what lets them give identical arrays.
"""

import gzip
import os
import zlib
from typing import NamedTuple

import numpy as np

from fewshot.errors import DataError, named

FILES = {'train_images': 'train-images-idx3-ubyte.gz', 'train_labels': 'train-labels-idx1-ubyte.gz',
         'test_images': 't10k-images-idx3-ubyte.gz', 'test_labels': 't10k-labels-idx1-ubyte.gz'}


class MNIST(NamedTuple):
    """images [N, 28, 28] uint8 (ink high), labels [N] int64; 60,000 train and 10,000 test."""
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def read_idx(path):
    """Reads an IDX file (gzipped or not) into a NumPy array."""
    opener = gzip.open if path.endswith('.gz') else open
    try:
        with opener(path, 'rb') as f:
            content = f.read()
    except FileNotFoundError:
        raise DataError(f'{path}: file not found (expected the original MNIST IDX files)') from None
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f'{path}: cannot be read ({error})') from None
    if len(content) < 4 or content[:2] != b'\0\0' or content[2] != 0x08:
        raise DataError(f'{path}: not an IDX file of unsigned bytes')
    dims = content[3]
    shape = tuple(int.from_bytes(content[4 + 4 * i:8 + 4 * i], 'big') for i in range(dims))
    body = np.frombuffer(content, np.uint8, offset=4 + 4 * dims)
    if body.size != int(np.prod(shape)):
        raise DataError(f'{path}: truncated ({body.size} values for shape {shape})')
    return body.reshape(shape)


def _check_pair(arrays, split, mnist_dir):
    """DataError naming the files unless a split's images are [N, 28, 28] and its labels [N] digits."""
    images, labels = arrays[f'{split}_images'], arrays[f'{split}_labels']
    where = (f'{os.path.join(mnist_dir, FILES[f"{split}_images"])} and '
             f'{os.path.join(mnist_dir, FILES[f"{split}_labels"])}')
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f'{where}: the images file holds an array of shape {images.shape}, '
                        'expected [N, 28, 28] (are the files swapped?)')
    if labels.ndim != 1 or len(labels) != len(images) or labels.size and labels.max() > 9:
        raise DataError(f'{where}: {len(images)} images but labels of shape {labels.shape}; '
                        'the two files do not belong together')


def _canonical(images, labels):
    """Sorts a split by (label, pixels)."""
    order = sorted(range(len(labels)), key=lambda i: (int(labels[i]), images[i].tobytes()))
    return images[order], labels[order].astype(np.int64)


def load_mnist(mnist_dir=None, cache_dir='data'):
    """MNIST from the IDX files in `mnist_dir`, or from tensorflow-datasets if it is empty."""
    if mnist_dir:
        if not os.path.isdir(mnist_dir):
            raise DataError(f'{named("mnist_dir")} / MNIST_DIR {mnist_dir}: folder does not exist')
        arrays = {name: read_idx(os.path.join(mnist_dir, file)) for name, file in FILES.items()}
        for split in ('train', 'test'):
            _check_pair(arrays, split, mnist_dir)
    else:
        import tensorflow_datasets as tfds  # Only this route needs it.
        arrays = {}
        for split in ('train', 'test'):
            try:
                images, labels = tfds.as_numpy(tfds.load('mnist', split=split, batch_size=-1, as_supervised=True,
                                                         data_dir=os.path.join(cache_dir, 'tfds')))
            except Exception as error:  # Network, checksum and disk errors come in many types.
                raise DataError(f'tensorflow-datasets could not prepare MNIST ({type(error).__name__}: '
                                f'{str(error).splitlines()[0][:200]}); without network access, set MNIST_DIR '
                                f'or {named("mnist_dir")} to a folder with the original IDX files') from None
            arrays[f'{split}_images'], arrays[f'{split}_labels'] = images[..., 0], labels
    train = _canonical(arrays['train_images'], arrays['train_labels'])
    test = _canonical(arrays['test_images'], arrays['test_labels'])
    return MNIST(*train, *test)


def create_task_datasets(dataset, task_classes, n_train=15, n_support=5, n_query=10, seed=0):
    """Disjoint train, support and query sets of a task over `task_classes`.

    Args:
      dataset: (images [N, 28, 28] uint8, labels [N]).
      task_classes: the digits of the task, e.g. (0, 1); digit task_classes[i] gets label i.
      n_train, n_support, n_query: examples per class in each set.
      seed: which examples are drawn.
    Returns:
      dict 'train' / 'support' / 'query' -> (images [n * C, 28, 28, 1] float32 in [0, 1], labels int32).
    """
    images, labels = dataset
    rng = np.random.default_rng(seed)
    sizes = {'train': n_train, 'support': n_support, 'query': n_query}
    parts = {name: ([], []) for name in sizes}
    for label, digit in enumerate(task_classes):
        candidates = np.flatnonzero(labels == digit)
        if len(candidates) < sum(sizes.values()):
            raise DataError(f'digit {digit} has {len(candidates)} examples, fewer than the '
                            f'{sum(sizes.values())} asked for')
        chosen = rng.permutation(candidates)
        start = 0
        for name, size in sizes.items():
            parts[name][0].append(chosen[start:start + size])
            parts[name][1].append(np.full(size, label, np.int32))
            start += size
    return {name: (images[np.concatenate(idx)][..., None].astype(np.float32) / 255.0, np.concatenate(lab))
            for name, (idx, lab) in parts.items()}
