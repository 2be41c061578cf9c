"""Ten-class sets of 28x28 grey images, for cross-domain meta-testing: MNIST, Fashion-MNIST, Animal-MNIST.

Ten classes are too few to meta-train on, so each is all meta-test (its train and validation splits are
empty): meta-train on Omniglot, meta-test N-way K-shot tasks of these classes, as Koch et al. (2015) did
from Omniglot to MNIST. The tasks are drawn from each set's 10,000 test images (about 1,000 per class),
ink high on a dark background as Omniglot's are here.

Files (formats, provenance and licenses in ../shared/data/README.md):
  mnist          t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz (LeCun et al.'s IDX files);
  fashion_mnist  the same two names (Xiao, Rasul & Vollgraf 2017; Debian's dataset-fashion-mnist);
  animal_mnist   animal_data_version_3.gz, animal_label_version_3.gz: gzipped pickles of one numpy array
                 each (PyPI's animal-mnist 0.4), read by `safe_pickle`, which admits numpy arrays only.
"""

import os

import numpy as np

from fewshot.datasets import Source, safe_pickle
from fewshot.errors import DataError
from fewshot.mnist import read_idx

# Class names in label order: the datasets' own documentation (Fashion-MNIST's README; animal-mnist's
# package description lists the animals in this order).
FASHION_CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag',
                   'Ankle boot')
ANIMAL_CLASSES = ('bear', 'bird', 'cat', 'cow', 'dog', 'elephant', 'giraffe', 'horse', 'sheep', 'zebra')


def _classes(images, labels, names, where):
    """(split, name, images [m, 28, 28, 1]) of every class, all meta-test; DataError naming `where` unless
    the images are [N, 28, 28] uint8 with N labels 0..9, every class present."""
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f'{where}: images of shape {images.shape} and type {images.dtype}; expected [N, 28, 28] '
                        'uint8')
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer) \
            or set(np.unique(labels)) != set(range(10)):
        raise DataError(f'{where}: {len(images)} images but labels of shape {labels.shape} with values '
                        f'{sorted(set(np.unique(labels).tolist()))[:12]}; expected one label 0..9 per image, '
                        'every class present')
    return [('test', name, images[labels == label][..., None]) for label, name in enumerate(names)]


def _idx_reader(names):
    def read(folder, tfds_dir):
        files = [os.path.join(folder, name) for name in ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')]
        return _classes(read_idx(files[0]), read_idx(files[1]), names, ' and '.join(files))
    return read


def _read_animal(folder, tfds_dir):
    files = [os.path.join(folder, name) for name in ('animal_data_version_3.gz', 'animal_label_version_3.gz')]
    for path in files:
        if not os.path.isfile(path):
            raise DataError(f'{path}: file not found (expected the animal-mnist package\'s two files)')
    images, labels = (safe_pickle.load_file(path) for path in files)
    for path, value in zip(files, (images, labels)):
        if not isinstance(value, np.ndarray):
            raise DataError(f'{path}: holds a {type(value).__name__}; expected one numpy array')
    return _classes(images, labels, ANIMAL_CLASSES, ' and '.join(files))


SOURCES = [
    Source('mnist', _idx_reader([str(digit) for digit in range(10)]), (28, 28, 1), 'MNIST_DIR',
           'MNIST digits (LeCun et al. 1998): the 10 classes of its 10,000 test images, all meta-test.'),
    Source('fashion_mnist', _idx_reader(FASHION_CLASSES), (28, 28, 1), 'FASHION_MNIST_DIR',
           'Fashion-MNIST (Xiao et al. 2017): the 10 classes of its 10,000 test images, all meta-test.'),
    Source('animal_mnist', _read_animal, (28, 28, 1), 'ANIMAL_MNIST_DIR',
           'Animal-MNIST (PyPI animal-mnist 0.4): its 10 classes of 1,000 images, all meta-test.'),
]
