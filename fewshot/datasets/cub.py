"""CUB-200-2011 (Wah et al. 2011): 11,788 photographs of 200 bird species, split 100 / 50 / 50 classes as in
Chen et al. 2019, "A Closer Look at Few-shot Classification".

Split: Chen et al.'s filelists/CUB/write_CUB_filelist.py (github.com/wyharveychen/CloserLookFewShot, commit
e03aca8a2d01c9b5861a5a816cd5d3fdfc47cd45) sorts the class folders of images/ by name and puts class number i
(from 0) in meta-train ('base') if i % 2 == 0, meta-validation if i % 4 == 1 and meta-test ('novel') if
i % 4 == 3, with every image of a class (CUB's own train/test halves together). `split_of` is that rule.

Preprocessing: Chen et al.'s evaluation transform for a Conv-4 backbone (data/datamgr.py and train.py, same
commit): image_size 84, `Scale` to 96x96 (int(84 * 1.15); aspect ratio not kept), bilinear as torchvision's
Scale does on a PIL image, then `CenterCrop` 84. Their training-time augmentation (random crops, jitter, flips)
is drawn afresh at every step, so it is no part of a cached dataset. Grey images become RGB (PIL's convert).

Two routes give identical arrays:
  * --dataset_dir / CUB_DIR: the CUB_200_2011 folder as extracted from CUB_200_2011.tgz: classes.txt
    ('<class id> <folder>', e.g. '1 001.Black_footed_Albatross'), images.txt ('<image id> <path under images/>'),
    image_class_labels.txt ('<image id> <class id>') and images/<folder>/<file>.jpg;
  * neither: tensorflow-datasets' `caltech_birds2011` (features image, image/filename, label = class id - 1,
    label_name, bbox, segmentation_mask; the same JPEG bytes, decoded here by PIL as in the folder route).
A class is named as tensorflow-datasets spells it: its folder name in lower case ('001.black_footed_albatross');
within a class, images are in file-name order.
"""

import io
import os

import numpy as np
from PIL import Image

from fewshot import data
from fewshot.datasets import SPLITS, Source, tfds_builder
from fewshot.errors import DataError

NUM_CLASSES = 200
IMAGE_SIZE = 84
SCALED = int(IMAGE_SIZE * 1.15)  # 96: Chen et al.'s Scale before their CenterCrop.
CROP = int(round((SCALED - IMAGE_SIZE) / 2))  # 6: torchvision's CenterCrop offset.
EXPECTED = 'the CUB_200_2011 folder (classes.txt, images.txt, image_class_labels.txt, images/)'


def split_of(index):
    """Chen et al.'s split of the class ranked `index` (from 0) by folder name: 'train', 'val' or 'test'."""
    return 'train' if index % 2 == 0 else 'val' if index % 4 == 1 else 'test'


def split_order(names):
    """[(split, key)] of the 200 classes of {key: class name}, train classes first, then val, then test, each
    split in name order; a class's split is `split_of` its rank by name (folder names start with the class id,
    001 to 200, so this is class-id order)."""
    ranked = sorted(names, key=names.get)
    return [(split, key) for split in SPLITS for index, key in enumerate(ranked) if split_of(index) == split]


def preprocess(encoded, where):
    """The [84, 84, 3] uint8 image of an encoded image file (bytes): RGB, scaled to 96x96 bilinearly, centre 84x84
    (see the module docstring); DataError naming `where` if PIL cannot read it."""
    try:
        with Image.open(io.BytesIO(encoded)) as image:
            scaled = image.convert('RGB').resize((SCALED, SCALED), Image.Resampling.BILINEAR)
    except Exception as error:  # PIL raises many types for a damaged or cut-short file.
        raise DataError(f'{where}: not a readable image ({error})') from None
    return np.asarray(scaled)[CROP:CROP + IMAGE_SIZE, CROP:CROP + IMAGE_SIZE]


def _read_table(path):
    """{id: value} of one of CUB's index files, a line '<id> <value>' each; DataError naming the file (and line)
    if it is missing or a line is not of that form."""
    try:
        with open(path, encoding='utf-8') as file:
            lines = file.read().splitlines()
    except (OSError, ValueError) as error:  # Missing, unreadable, or not text.
        raise DataError(f'{path}: cannot be read ({getattr(error, "strerror", None) or error}); expected '
                        f'{EXPECTED}') from None
    table = {}
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:  # A blank line, e.g. a trailing one.
            continue
        if len(fields) != 2 or not fields[0].isdigit() or int(fields[0]) in table:
            raise DataError(f'{path}:{number}: expected "<id> <value>" with an id not seen before, got {line[:80]!r}')
        table[int(fields[0])] = fields[1]
    return table


def _files_by_class(folder):
    """({class id: folder name}, {class id: [image paths under images/]}) of a CUB_200_2011 folder; DataError
    naming the index file whose ids do not match the others', or that does not list 200 classes."""
    names = _read_table(os.path.join(folder, 'classes.txt'))
    if len(names) != NUM_CLASSES:
        raise DataError(f'{os.path.join(folder, "classes.txt")}: lists {len(names)} classes; expected CUB-200-2011\'s '
                        f'{NUM_CLASSES} (Chen et al.\'s split is defined on them)')
    paths = _read_table(os.path.join(folder, 'images.txt'))
    labels_file = os.path.join(folder, 'image_class_labels.txt')
    labels = _read_table(labels_file)
    if labels.keys() != paths.keys():
        unmatched = sorted(labels.keys() ^ paths.keys())
        raise DataError(f'{labels_file}: its image ids and images.txt\'s differ (e.g. {unmatched[:3]}); the two '
                        'list the same images')
    files = {class_id: [] for class_id in names}
    for image_id, path in sorted(paths.items()):
        class_id = int(labels[image_id]) if labels[image_id].isdigit() else None
        if class_id not in files:
            raise DataError(f'{labels_file}: image {image_id} is of class {labels[image_id]!r}, which classes.txt '
                            'does not list')
        files[class_id].append(path)
    return names, files


def read_folder(folder):
    """Yields (split, class name, images [m, 84, 84, 3] uint8 in file-name order) for every class of a
    CUB_200_2011 folder, split after split, reading one class at a time."""
    names, files = _files_by_class(folder)
    for split, class_id in split_order(names):
        if not files[class_id]:
            raise DataError(f'{os.path.join(folder, "image_class_labels.txt")}: no images of class '
                            f'{names[class_id]!r}')
        paths = [os.path.join(folder, 'images', path) for path in sorted(files[class_id], key=os.path.basename)]
        yield split, names[class_id].lower(), np.stack([preprocess(data.read_bytes(path), path) for path in paths])


def _tfds_examples(tfds_dir):
    """Yields (label, file path, label name, JPEG bytes) of every image of tensorflow-datasets' caltech_birds2011
    (both its splits, CUB's train and test halves), kept in tfds_dir. The image is read undecoded, so that PIL
    decodes it as in the folder route; the other features (boxes, segmentation masks) are not read."""
    import tensorflow_datasets as tfds
    builder = tfds_builder('caltech_birds2011', tfds_dir, 'CUB_DIR', EXPECTED)
    decoders = tfds.decode.PartialDecoding({'image': True, 'image/filename': True, 'label': True, 'label_name': True},
                                           decoders={'image': tfds.decode.SkipDecoding()})
    for part in ('train', 'test'):
        for batch in tfds.as_numpy(builder.as_dataset(split=part, decoders=decoders, batch_size=256)):
            for label, path, name, encoded in zip(batch['label'], batch['image/filename'], batch['label_name'],
                                                  batch['image']):
                yield int(label), path.decode('utf-8', 'replace'), name.decode('utf-8', 'replace'), encoded


def read_tfds(tfds_dir):
    """read_folder's classes from tensorflow-datasets' caltech_birds2011, kept in tfds_dir. Its examples come in
    no class order, so every image is held (preprocessed, 21 kB each) until the last is read."""
    names, images = {}, {}  # {label: class name}, {label: [(file name, image [84, 84, 3])]}
    for label, path, name, encoded in _tfds_examples(tfds_dir):
        # tfds' label is the class id - 1 and its label_name the folder name after 'NNN.', in lower case.
        names.setdefault(label, f'{label + 1:03d}.{name}')
        where = f'tensorflow-datasets caltech_birds2011 image {path}'
        images.setdefault(label, []).append((os.path.basename(path), preprocess(encoded, where)))
    missing = sorted(set(range(NUM_CLASSES)) - set(images))
    if missing:
        raise DataError(f'tensorflow-datasets caltech_birds2011: no images of the classes labelled {missing[:5]} '
                        f'({len(missing)} of {NUM_CLASSES} classes)')
    for split, label in split_order(names):
        yield split, names[label], np.stack([image for _, image in sorted(images[label], key=lambda pair: pair[0])])


def _read(folder, tfds_dir):
    return read_folder(folder) if folder else read_tfds(tfds_dir)


SOURCES = [
    Source('cub', _read, (IMAGE_SIZE, IMAGE_SIZE, 3), 'CUB_DIR',
           'CUB-200-2011 birds (Wah et al. 2011) at 84x84: Chen et al. (2019)\'s 100/50/50 class split.',
           needs_dir=False),
]
