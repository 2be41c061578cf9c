"""CIFAR-FS and FC100: CIFAR-100's 100 classes (Krizhevsky 2009), all 600 32x32 colour images of each (its
500 training and 100 test images), split into meta-train / meta-validation / meta-test classes.

  cifar_fs  Bertinetto et al. 2019, "Meta-learning with differentiable closed-form solvers": 64 / 16 / 20
            classes drawn at random. The lists are those of their r2d2 code's split files
            (data/cifar-fs/splits/bertinetto/{train,val,test}.txt, shipped in its data archive, not in git),
            as copied in github.com/ArnoutDevos/maml-cifar-fs data/CIFARFS/cifar-fs-splits/{train,val,test}.txt
            (commit 56b8dfd367d916d1f5b8ec53ae6c9e747232dc71) and in torchmeta (github.com/tristandeleu/pytorch-meta
            torchmeta/datasets/assets/cifar100/cifar-fs/{train,val,test}.json, commit
            d55d89ebd47f340180267106bde3e4b723f23762); the two agree class for class.
  fc100     Oreshkin et al. 2018, "TADAM": split by CIFAR-100's 20 superclasses, 12 / 4 / 4 of them (60 / 20 / 20
            classes), so that no superclass spans two splits. The superclass lists are torchmeta's
            (torchmeta/datasets/assets/cifar100/fc100/{train,val,test}.json, same commit), i.e. TADAM's coarse
            labels 1-6, 9, 10, 15, 17-19 / 8, 11, 13, 16 / 0, 7, 12, 14.

Each split lists its classes in CIFAR-100's label order (alphabetical). The superclass of each class is CIFAR-100's
own (its meta file's coarse_label_names; torchmeta's cifar-fs lists pair every class with it). Images are kept as
stored (no resizing).

Two routes give identical arrays:
  * --dataset_dir / CIFAR100_DIR: a folder holding CIFAR-100's python archive, either extracted
    (cifar-100-python/{train,test,meta}) or as downloaded (cifar-100-python.tar.gz). Its files are Python 2 pickles
    of byte-string keys (b'data' uint8 [N, 3072], each row an image's red, green and blue planes of 32x32,
    b'fine_labels'; meta's b'fine_label_names'), read by `safe_pickle`, which runs nothing a pickle names;
  * neither: tensorflow-datasets' `cifar100` (features image, label, coarse_label, id), downloaded on first use.
tensorflow-datasets shuffles examples when it writes them, and its `id` numbers the images of CIFAR-100's binary
archive, not of the python one, so within a class the images are put in a canonical order: by their pixel bytes
(as fewshot/data.py orders Omniglot's drawings).
"""

import os
import tarfile
import zlib

import numpy as np

from fewshot.datasets import SPLITS, Source, safe_pickle, tfds_builder
from fewshot.errors import DataError

# CIFAR-100's 20 superclasses and their 5 classes each (its meta file's names).
SUPERCLASSES = {
    'aquatic_mammals': ('beaver', 'dolphin', 'otter', 'seal', 'whale'),
    'fish': ('aquarium_fish', 'flatfish', 'ray', 'shark', 'trout'),
    'flowers': ('orchid', 'poppy', 'rose', 'sunflower', 'tulip'),
    'food_containers': ('bottle', 'bowl', 'can', 'cup', 'plate'),
    'fruit_and_vegetables': ('apple', 'mushroom', 'orange', 'pear', 'sweet_pepper'),
    'household_electrical_devices': ('clock', 'keyboard', 'lamp', 'telephone', 'television'),
    'household_furniture': ('bed', 'chair', 'couch', 'table', 'wardrobe'),
    'insects': ('bee', 'beetle', 'butterfly', 'caterpillar', 'cockroach'),
    'large_carnivores': ('bear', 'leopard', 'lion', 'tiger', 'wolf'),
    'large_man-made_outdoor_things': ('bridge', 'castle', 'house', 'road', 'skyscraper'),
    'large_natural_outdoor_scenes': ('cloud', 'forest', 'mountain', 'plain', 'sea'),
    'large_omnivores_and_herbivores': ('camel', 'cattle', 'chimpanzee', 'elephant', 'kangaroo'),
    'medium_mammals': ('fox', 'porcupine', 'possum', 'raccoon', 'skunk'),
    'non-insect_invertebrates': ('crab', 'lobster', 'snail', 'spider', 'worm'),
    'people': ('baby', 'boy', 'girl', 'man', 'woman'),
    'reptiles': ('crocodile', 'dinosaur', 'lizard', 'snake', 'turtle'),
    'small_mammals': ('hamster', 'mouse', 'rabbit', 'shrew', 'squirrel'),
    'trees': ('maple_tree', 'oak_tree', 'palm_tree', 'pine_tree', 'willow_tree'),
    'vehicles_1': ('bicycle', 'bus', 'motorcycle', 'pickup_truck', 'train'),
    'vehicles_2': ('lawn_mower', 'rocket', 'streetcar', 'tank', 'tractor'),
}
# CIFAR-100's fine labels 0..99 name these, in this (alphabetical) order, in both archives and in tfds.
FINE_NAMES = tuple(sorted(name for names in SUPERCLASSES.values() for name in names))

# Bertinetto et al.'s CIFAR-FS split (sources in the module docstring), in label order.
CIFAR_FS_SPLIT = {
    'train': ('apple', 'aquarium_fish', 'bear', 'bee', 'bottle', 'bowl', 'boy', 'bridge', 'bus', 'can', 'castle',
              'caterpillar', 'chair', 'clock', 'cloud', 'cockroach', 'couch', 'cup', 'dinosaur', 'dolphin', 'elephant',
              'forest', 'girl', 'hamster', 'house', 'kangaroo', 'keyboard', 'lawn_mower', 'lion', 'lizard', 'lobster',
              'mountain', 'mouse', 'mushroom', 'oak_tree', 'orange', 'orchid', 'palm_tree', 'pear', 'pine_tree',
              'plate', 'porcupine', 'possum', 'rabbit', 'raccoon', 'ray', 'road', 'seal', 'shrew', 'skunk',
              'skyscraper', 'snake', 'spider', 'squirrel', 'streetcar', 'sunflower', 'tank', 'tiger', 'train',
              'trout', 'tulip', 'turtle', 'willow_tree', 'wolf'),
    'val': ('beaver', 'beetle', 'butterfly', 'camel', 'cattle', 'crab', 'crocodile', 'flatfish', 'lamp',
            'maple_tree', 'motorcycle', 'otter', 'sea', 'shark', 'television', 'tractor'),
    'test': ('baby', 'bed', 'bicycle', 'chimpanzee', 'fox', 'leopard', 'man', 'pickup_truck', 'plain', 'poppy',
             'rocket', 'rose', 'snail', 'sweet_pepper', 'table', 'telephone', 'wardrobe', 'whale', 'woman', 'worm'),
}

# Oreshkin et al.'s FC100 superclasses per split (torchmeta's lists, see the module docstring).
FC100_SUPERCLASSES = {
    'train': ('fish', 'flowers', 'food_containers', 'fruit_and_vegetables', 'household_electrical_devices',
              'household_furniture', 'large_man-made_outdoor_things', 'large_natural_outdoor_scenes', 'reptiles',
              'trees', 'vehicles_1', 'vehicles_2'),
    'val': ('large_carnivores', 'large_omnivores_and_herbivores', 'non-insect_invertebrates', 'small_mammals'),
    'test': ('aquatic_mammals', 'insects', 'medium_mammals', 'people'),
}
FC100_SPLIT = {split: tuple(sorted(name for superclass in superclasses for name in SUPERCLASSES[superclass]))
               for split, superclasses in FC100_SUPERCLASSES.items()}

FOLDER, ARCHIVE = 'cifar-100-python', 'cifar-100-python.tar.gz'
EXPECTED = f'a folder holding {FOLDER}/ (train, test, meta) or {ARCHIVE}, CIFAR-100\'s python archive'


def canonical_order(images):
    """images [m, H, W, channels] sorted by their pixel bytes: an order both routes give whatever order the images
    came in."""
    keys = [image.tobytes() for image in images]
    return images[sorted(range(len(images)), key=keys.__getitem__)]


def _pickles(folder):
    """{'train', 'test', 'meta': (its unpickled content, its path)} of the python archive in `folder`, extracted or
    not; DataError naming the file that is missing, damaged or not plain data."""
    extracted = os.path.join(folder, FOLDER)
    if os.path.isdir(extracted):
        return {name: (safe_pickle.load_file(os.path.join(extracted, name)), os.path.join(extracted, name))
                for name in ('train', 'test', 'meta')}
    archive = os.path.join(folder, ARCHIVE)
    if not os.path.isfile(archive):
        raise DataError(f'{folder}: neither {FOLDER}/ nor {ARCHIVE} in it (expected {EXPECTED})')
    return _archive_pickles(archive)


def _archive_pickles(archive):
    """_pickles' result from the members cifar-100-python/{train,test,meta} of the tar.gz `archive`, read in one
    pass over it (a gzip stream is slow to seek back in)."""
    found = {}
    try:
        with tarfile.open(archive, 'r:gz') as tar:
            for member in tar:
                name = member.name[len(FOLDER) + 1:] if member.name.startswith(FOLDER + '/') else ''
                if name in ('train', 'test', 'meta') and member.isfile():
                    where = f'{archive}:{member.name}'
                    found[name] = (safe_pickle.load(tar.extractfile(member), where), where)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:  # Damaged or cut short.
        raise DataError(f'{archive}: not a readable tar.gz archive ({type(error).__name__}: {error})') from None
    for name in ('train', 'test', 'meta'):
        if name not in found:
            raise DataError(f'{archive}: no member {FOLDER}/{name} (expected CIFAR-100\'s python archive)')
    return found


def _images_and_labels(batch, where, num_classes):
    """(images [N, 32, 32, 3] uint8, labels [N] int64) of an unpickled train or test file; DataError naming it
    (`where`) unless it is a dict of b'data' uint8 [N, 3072] and N b'fine_labels' in 0..num_classes-1."""
    if not isinstance(batch, dict) or not isinstance(batch.get(b'data'), np.ndarray):
        raise DataError(f'{where}: expected a dict with b\'data\' (a numpy array) and b\'fine_labels\', as in '
                        'CIFAR-100\'s python archive')
    data = batch[b'data']
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f'{where}: b\'data\' has shape {data.shape} and type {data.dtype}; expected [N, 3072] uint8')
    try:
        labels = np.asarray(batch.get(b'fine_labels'), np.int64)
    except (TypeError, ValueError):
        labels = np.zeros((0,), np.int64)
    if labels.shape != (len(data),) or not np.all((labels >= 0) & (labels < num_classes)):
        raise DataError(f'{where}: b\'fine_labels\' must hold one label 0..{num_classes - 1} per image '
                        f'({len(data)} images)')
    # A row is the red plane, then green, then blue, each 32 rows of 32: channel-first, hence the transpose.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _label_names(meta, where):
    """The fine label names (str, in label order) of an unpickled meta file; DataError naming it (`where`)."""
    names = meta.get(b'fine_label_names') if isinstance(meta, dict) else None
    if not isinstance(names, list) or not all(isinstance(name, bytes) for name in names):
        raise DataError(f'{where}: expected a dict with b\'fine_label_names\', a list of byte strings')
    return [name.decode('utf-8', 'replace') for name in names]


def read_archive(folder):
    """(images [60000, 32, 32, 3] uint8: the train file's then the test file's, in file order; labels [60000];
    names: the label names; where: (the meta file, the two image files) for error messages) of the python
    archive in `folder`."""
    pickles = _pickles(folder)
    names = _label_names(*pickles['meta'])
    parts = [_images_and_labels(*pickles[name], len(names)) for name in ('train', 'test')]
    images, labels = (np.concatenate(arrays) for arrays in zip(*parts))
    return images, labels, names, (pickles['meta'][1], f'{pickles["train"][1]} and {pickles["test"][1]}')


def read_tfds(tfds_dir):
    """read_archive's result from tensorflow-datasets' cifar100 (its train split, then test), kept in tfds_dir."""
    import tensorflow_datasets as tfds
    builder = tfds_builder('cifar100', tfds_dir, 'CIFAR100_DIR', EXPECTED)
    # In batches: batch_size=-1 batches by the split's recorded size, or by sys.maxsize (which aborts TensorFlow)
    # when none is recorded, as in tfds' mock.
    batches = [batch for split in ('train', 'test') for batch in tfds.as_numpy(builder.as_dataset(split=split,
                                                                                                  batch_size=5000))]
    images = np.concatenate([batch['image'] for batch in batches])
    labels = np.concatenate([batch['label'] for batch in batches]).astype(np.int64)
    # tfds' label is CIFAR-100's fine label, which FINE_NAMES names in order (tfds takes its names from the
    # download, so a builder not yet prepared, or mocked, has none).
    where = 'tensorflow-datasets cifar100'
    return images, labels, list(FINE_NAMES), (where, where)


def split_classes(images, labels, names, where, split):
    """Yields (split, class name, its images [m, 32, 32, 3] in canonical order; m = 600 in CIFAR-100) for every
    class of the split `split` ({'train', 'val', 'test': class names}), split after split. names: the label names;
    where: (what an error about the names names, what an error about the images names)."""
    label_of = {name: label for label, name in enumerate(names)}
    for part in SPLITS:
        for name in split[part]:
            if name not in label_of:
                raise DataError(f'{where[0]}: no class {name!r} among its {len(names)} labels; the {part} split '
                                'names it (expected CIFAR-100\'s 100 classes)')
            chosen = images[labels == label_of[name]]
            if not len(chosen):
                raise DataError(f'{where[1]}: no images of class {name!r}')
            yield part, name, canonical_order(chosen)


def _reader(split):
    def read(folder, tfds_dir):
        return split_classes(*(read_archive(folder) if folder else read_tfds(tfds_dir)), split)
    return read


SOURCES = [
    Source('cifar_fs', _reader(CIFAR_FS_SPLIT), (32, 32, 3), 'CIFAR100_DIR',
           'CIFAR-FS (Bertinetto et al. 2019): CIFAR-100, 600 32x32 images a class, their random 64/16/20 class split.',
           needs_dir=False),
    Source('fc100', _reader(FC100_SPLIT), (32, 32, 3), 'CIFAR100_DIR',
           'FC100 (Oreshkin et al. 2018): CIFAR-100 split by superclass, 12/4/4 superclasses (60/20/20 classes).',
           needs_dir=False),
]
