"""mini-ImageNet and tiered-ImageNet: classes of ImageNet (ILSVRC-12) as 84x84 colour images, in the forms
users hold them. Class names are sorted within a split; a class's images keep their order in the files.

mini_imagenet: Vinyals et al. (2016, "Matching Networks for One Shot Learning"), with the split of Ravi &
Larochelle (2017, "Optimization as a Model for Few-Shot Learning"): 64 train / 16 val / 20 test classes of
600 images each (the counts are the paper's; the loader takes the classes the files list). MINI_IMAGENET_DIR
holds either of:
  * the pickles mini-imagenet-cache-train.pkl, mini-imagenet-cache-val.pkl (learn2learn names it
    mini-imagenet-cache-validation.pkl; either is read, the first if both are there) and
    mini-imagenet-cache-test.pkl: each a dict {'image_data': uint8 [N, 84, 84, 3] RGB, 'class_dict': {wnid:
    [indices into image_data]}}, the format Ren et al.'s code writes (renmengye/few-shot-ssl-public,
    fewshot/data/mini_imagenet.py, `_write_cache`: images resized with OpenCV's default bilinear filter) and
    learn2learn reads (learnables/learn2learn, learn2learn/vision/datasets/mini_imagenet.py). Each pickle is
    read whole (about 0.8 GB for train): the format has no index to read part of it by.
  * Ravi & Larochelle's split files train.csv, val.csv, test.csv (header `filename,label`, rows such as
    `n0153282900000005.jpg,n01532829`; copies in renmengye/few-shot-ssl-public,
    fewshot/data/mini_imagenet_split/Ravi/) and the folder images/ holding those files. An image not
    already 84x84 is converted to RGB and resized to 84x84 with PIL's Lanczos filter, as the MAML code's
    preprocessing does (cbfinn/maml, data/miniImagenet/proc_images.py).
When both forms are present the pickles are read (any one of them present selects that form). The two
forms are not pixel-identical: their 84x84 images were resized by different filters.

tiered_imagenet: Ren et al. (2018, "Meta-Learning for Semi-Supervised Few-Shot Classification"): 608 classes
(779,165 images) under 34 higher-level categories, the categories split 20 / 6 / 8 so that the classes are
351 train / 97 val / 160 test. TIERED_IMAGENET_DIR holds the files of the authors' tiered-imagenet.tar (and
of learn2learn's download): for each split,
  * {split}_images_png.pkl: a list of PNG-encoded 84x84 images (resized by the authors with OpenCV's bicubic
    filter, renmengye/few-shot-ssl-public, fewshot/data/tiered_imagenet.py), each a uint8 array of the encoded
    bytes (OpenCV's imencode output, fewshot/data/compress_tiered_imagenet.py there; bytes are read too).
    The list is loaded whole (several GB for train); the PNGs are decoded with PIL one class at a time, so
    a split is never held decoded in memory;
  * {split}_labels.pkl: a dict with 'label_specific' (int [N], the class of each image: what learn2learn's
    learn2learn/vision/datasets/tiered_imagenet.py trains on), 'label_specific_str' (the class names, by
    label), 'label_general' and 'label_general_str' (the higher-level category; not used here). Its keys
    are bytes when it is a Python 2 pickle (renmengye/few-shot-ssl-public, fewshot/data/tiered_imagenet.py
    reads b"label_specific"); both are accepted.

Every pickle is read by `safe_pickle`, which admits arrays and plain data only (a pickle can run code).
"""

import csv
import io
import os

import numpy as np
from PIL import Image

from fewshot.datasets import SPLITS, Source, safe_pickle
from fewshot.errors import DataError

SIZE = 84
IMAGE_SHAPE = (SIZE, SIZE, 3)

# Split -> the names its mini-ImageNet pickle goes by, in the order they are looked for.
MINI_PICKLES = {'train': ('mini-imagenet-cache-train.pkl',),
                'val': ('mini-imagenet-cache-val.pkl', 'mini-imagenet-cache-validation.pkl'),
                'test': ('mini-imagenet-cache-test.pkl',)}
MINI_CSV_HEADER = ['filename', 'label']
MINI_FORMS = ('mini-imagenet-cache-{train,val,test}.pkl, or train.csv, val.csv and test.csv with their images/ '
              'folder')


# ----------------------------------------------------------------------------
# mini-ImageNet.


def _read_mini(folder, tfds_dir):
    """(split, wnid, images [m, 84, 84, 3] uint8) of every class, from the pickles if one is in `folder`,
    else from the split CSV files and images/."""
    names = [name for split_names in MINI_PICKLES.values() for name in split_names]
    if any(os.path.isfile(os.path.join(folder, name)) for name in names):
        return _mini_pickle_classes(folder)
    return _mini_folder_classes(folder)


def _mini_pickle_classes(folder):
    for split in SPLITS:
        path = _mini_pickle_path(folder, split)
        images, classes = _mini_pickle(path)
        for name in sorted(classes):
            yield split, name, images[classes[name]]


def _mini_pickle_path(folder, split):
    """The path of the split's pickle; DataError naming the file if it is under none of its names."""
    paths = [os.path.join(folder, name) for name in MINI_PICKLES[split]]
    for path in paths:
        if os.path.isfile(path):
            return path
    raise DataError(f'{paths[0]}: file not found (expected {MINI_FORMS})')


def _mini_pickle(path):
    """(images [N, 84, 84, 3] uint8, {wnid: [m] int64 indices into images, ascending}) of one split's pickle;
    DataError naming the file unless every image is in exactly one class."""
    content = safe_pickle.load_file(path)
    images, class_dict = _entry(content, 'image_data', path), _entry(content, 'class_dict', path)
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPE:
        found = f'{images.dtype} {images.shape}' if isinstance(images, np.ndarray) else f'a {type(images).__name__}'
        raise DataError(f'{path}: image_data is {found}; expected a uint8 array [N, {SIZE}, {SIZE}, 3] (images of '
                        'mixed sizes are not one dataset)')
    if not len(images) or not isinstance(class_dict, dict) or not class_dict:
        raise DataError(f'{path}: holds no images or no classes (an empty split)')
    classes = {}
    for name, indices in class_dict.items():
        indices = _integers(indices, f'{path}: class_dict[{name!r}]')
        if not len(indices):
            raise DataError(f'{path}: class_dict[{name!r}] lists no images')
        classes[_text(name, path)] = np.sort(indices)  # The images' order in the file.
    listed = np.concatenate(list(classes.values()))
    if listed.min() < 0 or listed.max() >= len(images) or len(listed) != len(images) \
            or len(np.unique(listed)) != len(images):
        raise DataError(f'{path}: class_dict lists {len(listed)} image indices ({listed.min()} to {listed.max()}) '
                        f'for the {len(images)} images of image_data; expected each image in exactly one class')
    return images, classes


def _mini_folder_classes(folder):
    for split in SPLITS:
        csv_path = os.path.join(folder, f'{split}.csv')
        for name, files in sorted(_mini_csv(csv_path).items()):
            yield split, name, np.stack([_read_mini_image(os.path.join(folder, 'images', file), csv_path)
                                         for file in files])


def _mini_csv(path):
    """{wnid: [its image file names, in the file's order]} of a split file with columns filename,label;
    DataError naming the file for a missing, unreadable or empty one."""
    if not os.path.isfile(path):
        raise DataError(f'{path}: file not found (expected {MINI_FORMS})')
    try:
        with open(path, newline='', encoding='utf-8') as file:
            reader = csv.reader(file)
            rows = [(reader.line_num, row) for row in reader if row]  # (line number, fields), blank lines skipped.
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f'{path}: cannot be read as a CSV file ({error})') from None
    if not rows or rows[0][1] != MINI_CSV_HEADER:
        raise DataError(f'{path}: expected the header {",".join(MINI_CSV_HEADER)} (Ravi & Larochelle\'s split files)')
    classes = {}
    for line, row in rows[1:]:
        if len(row) != 2:
            raise DataError(f'{path}: line {line}: expected filename,label, got {",".join(row)[:80]}')
        classes.setdefault(row[1], []).append(row[0])
    if not classes:
        raise DataError(f'{path}: lists no images (an empty split)')
    return classes


def _read_mini_image(path, listed_in):
    """One image file as [84, 84, 3] uint8: RGB, resized with PIL's Lanczos filter unless already 84x84."""
    try:
        with Image.open(path) as image:
            image = image.convert('RGB')  # ImageNet has some greyscale and CMYK JPEGs.
    except FileNotFoundError:
        raise DataError(f'{path}: file not found (listed in {listed_in})') from None
    except Exception as error:  # PIL raises many types for a damaged file.
        raise DataError(f'{path}: not a readable image ({error})') from None
    if image.size != (SIZE, SIZE):
        image = image.resize((SIZE, SIZE), Image.Resampling.LANCZOS)
    return np.asarray(image)


# ----------------------------------------------------------------------------
# tiered-ImageNet.


def _read_tiered(folder, tfds_dir):
    """(split, class name, images [m, 84, 84, 3] uint8) of every class, split after split."""
    for split in SPLITS:
        yield from _tiered_split(folder, split)


def _tiered_split(folder, split):
    """The classes of one split, each decoded when it is yielded (the encoded split is in memory throughout)."""
    images_path, labels_path = (os.path.join(folder, f'{split}_{kind}.pkl') for kind in ('images_png', 'labels'))
    for path in (images_path, labels_path):
        if not os.path.isfile(path):
            raise DataError(f'{path}: file not found (expected {{train,val,test}}_images_png.pkl and '
                            '{train,val,test}_labels.pkl, the files of tiered-imagenet.tar)')
    labels, names = _tiered_labels(labels_path)  # First: small, so that its errors come before a long read.
    encoded = safe_pickle.load_file(images_path)
    if not isinstance(encoded, (list, tuple)):
        raise DataError(f'{images_path}: holds a {type(encoded).__name__}; expected a list of PNG-encoded images')
    if len(encoded) != len(labels):
        raise DataError(f'{images_path} holds {len(encoded)} images but {labels_path} labels {len(labels)}; '
                        'expected one label per image')
    for label in sorted(np.unique(labels), key=lambda label: names[label]):
        yield split, names[label], np.stack([_decode_png(encoded[index], f'{images_path}: image {index}')
                                             for index in np.flatnonzero(labels == label)])


def _tiered_labels(path):
    """(labels [N] int64, each image's class; names [L] str, the class name of each label) of a labels
    pickle; DataError naming the file for an empty split or labels without a name."""
    content = safe_pickle.load_file(path)
    labels = _integers(_entry(content, 'label_specific', path), f'{path}: label_specific')
    names = _entry(content, 'label_specific_str', path)
    if not isinstance(names, (list, tuple)):
        raise DataError(f'{path}: label_specific_str is a {type(names).__name__}; expected a list of class names')
    if not len(labels):
        raise DataError(f'{path}: labels no images (an empty split)')
    if labels.min() < 0 or labels.max() >= len(names):
        raise DataError(f'{path}: label_specific runs from {labels.min()} to {labels.max()} but label_specific_str '
                        f'names {len(names)} classes')
    return labels, [_text(name, path) for name in names]


def _decode_png(encoded, where):
    """[84, 84, 3] uint8 of one PNG-encoded image: bytes, or a uint8 array of them (OpenCV's imencode gives
    [n, 1]); DataError naming `where` (the file and the image's number) otherwise."""
    if isinstance(encoded, np.ndarray) and encoded.dtype == np.uint8:
        encoded = encoded.tobytes()
    if not isinstance(encoded, bytes):
        raise DataError(f'{where}: a {type(encoded).__name__}; expected the bytes of a PNG image')
    try:
        with Image.open(io.BytesIO(encoded), formats=('PNG',)) as image:
            pixels = np.asarray(image.convert('RGB'))
    except Exception as error:  # PIL raises many types for damaged data.
        raise DataError(f'{where}: not a readable PNG image ({error})') from None
    if pixels.shape != IMAGE_SHAPE:
        raise DataError(f'{where}: a {pixels.shape[1]}x{pixels.shape[0]} image; expected {SIZE}x{SIZE} (images of '
                        'mixed sizes are not one dataset)')
    return pixels


# ----------------------------------------------------------------------------
# Both.


def _entry(content, key, path):
    """content[key] of a pickled dict; a Python 2 pickle read with encoding='bytes' (as safe_pickle reads)
    has bytes keys, so b'key' is looked up too. DataError naming the file if neither is there."""
    if isinstance(content, dict):
        for candidate in (key, key.encode()):
            if candidate in content:
                return content[candidate]
    found = f'a dict with keys {sorted(map(str, content))[:8]}' if isinstance(content, dict) else \
        f'a {type(content).__name__}'
    raise DataError(f'{path}: holds {found}; expected a dict with the entry {key!r}')


def _integers(value, where):
    """value (a list or array of integers) as int64 [n]; DataError naming `where` (file and entry) otherwise."""
    try:
        array = np.asarray(value)
    except ValueError:  # Lists of different lengths.
        array = np.asarray(None)
    if array.ndim != 1 or (len(array) and not np.issubdtype(array.dtype, np.integer)):
        raise DataError(f'{where}: {array.dtype} {array.shape}; expected a list of integers')
    return array.astype(np.int64)


def _text(name, path):
    """A class name as str (bytes in a Python 2 pickle, decoded as Latin-1, as torchmeta reads tiered-ImageNet's
    labels: any bytes decode)."""
    if isinstance(name, bytes):
        return name.decode('latin-1')
    if not isinstance(name, str):
        raise DataError(f'{path}: a class name of type {type(name).__name__} ({name!r}); expected a string')
    return name


SOURCES = [
    Source('mini_imagenet', _read_mini, IMAGE_SHAPE, 'MINI_IMAGENET_DIR',
           'mini-ImageNet (Vinyals et al. 2016): 100 ImageNet classes of 600 84x84 colour images, Ravi & '
           'Larochelle (2017)\'s split of 64 train / 16 val / 20 test classes.'),
    Source('tiered_imagenet', _read_tiered, IMAGE_SHAPE, 'TIERED_IMAGENET_DIR',
           'tiered-ImageNet (Ren et al. 2018): 608 ImageNet classes of 84x84 colour images, 351 train / 97 val / '
           '160 test classes split by their 34 higher-level categories.'),
]
