"""Few-shot tasks: Omniglot (reading, preprocessing, caching, splits), any folder of images with a
folder per class (`load_image_folder`), and the episode sampler over either.

Two sources give the same arrays:
  * a local folder with the original archives `images_background.zip` and
    `images_evaluation.zip` (or their extracted folders), named by `--data_dir`
    or the OMNIGLOT_DIR environment variable;
  * tensorflow-datasets (`omniglot`), downloaded on first use.

Every image is preprocessed once to 28x28 (area-averaged, i.e. antialiased),
strokes 1.0 on a 0.0 background, and cached under `data/` keyed by a checksum
of the source. tfds does not keep the drawer number of an image, so within a
character the 20 images are put in a canonical order (by their pixels); that
is what lets both sources yield identical arrays.
"""

import dataclasses
import hashlib
import io
import logging
import os
import re
import zipfile
import zlib
from typing import NamedTuple

import numpy as np
from PIL import Image

from fewshot import results
from fewshot.errors import DataError, OutputError, named

IMAGE_SIZE = 28
ORIGINAL_SIZE = 105
IMAGES_PER_CHARACTER = 20
ARCHIVES = ('images_background', 'images_evaluation')
_PNG_PATH = re.compile(
    r'(?:^|/)(images_background|images_evaluation)/([^/]+)/character(\d+)/[^/]+\.png$')
_CACHE_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class Omniglot:
    """All 1623 characters, preprocessed.

    images: [num_characters, 20, 28, 28] uint8, ink 255 on background 0.
    alphabets: [num_characters] str, the alphabet of each character.
    background: [num_characters] bool, True for Lake's background (training) set.
    checksum: sha256 of `images`; identical whichever source produced them.
    """
    images: np.ndarray
    alphabets: np.ndarray
    background: np.ndarray
    checksum: str


# ----------------------------------------------------------------------------
# Reading the sources. Both return (ink, keys): ink [M, 105, 105] bool (True on
# strokes), keys [M] tuples (archive, alphabet, character number).


def _decode_png(data, where):
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as error:  # PIL raises many types for a damaged file.
        raise DataError(f'{where}: not a readable PNG image ({error})') from None
    pixels = np.asarray(image.convert('L'))
    if pixels.shape != (ORIGINAL_SIZE, ORIGINAL_SIZE):
        raise DataError(f'{where}: expected a {ORIGINAL_SIZE}x{ORIGINAL_SIZE} image, '
                        f'got {pixels.shape[1]}x{pixels.shape[0]}')
    return pixels < 128  # Omniglot draws black strokes on white.


def _locate(data_dir, archive):
    """Where an archive is in `data_dir`: ('folder', path) if extracted, else ('zip', path)."""
    folder = os.path.join(data_dir, archive)
    if os.path.isdir(folder):
        return 'folder', folder
    zip_path = folder + '.zip'
    if os.path.isfile(zip_path):
        return 'zip', zip_path
    raise DataError(f'{data_dir}: expected {archive}.zip or the extracted folder {archive}/ '
                    '(the original Omniglot archives)')


def _files_under(folder):
    """Every file below `folder`, in a fixed (sorted) order."""
    return sorted(os.path.join(root, name) for root, _, files in os.walk(folder) for name in files)


def _archive_members(data_dir, archive):
    """Yields (key, png bytes, where) for one archive, zipped or extracted."""
    kind, location = _locate(data_dir, archive)
    if kind == 'folder':
        for path in _files_under(location):
            match = _PNG_PATH.search(os.path.relpath(path, data_dir).replace(os.sep, '/'))
            if match:
                yield (match[1], match[2], int(match[3])), read_bytes(path), path
        return
    zip_path = location
    try:
        with zipfile.ZipFile(zip_path) as zf:
            for name in sorted(zf.namelist()):
                match = _PNG_PATH.search(name)
                if match:
                    yield (match[1], match[2], int(match[3])), zf.read(name), f'{zip_path}:{name}'
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error) as error:
        raise DataError(f'{zip_path}: not a valid zip archive, or damaged ({error})') from None
    except OSError as error:
        raise DataError(f'{zip_path}: cannot be read ({error.strerror or error})') from None


def read_bytes(path):
    """The content of a data file; DataError naming it if it cannot be read."""
    try:
        with open(path, 'rb') as f:
            return f.read()
    except OSError as error:
        raise DataError(f'{path}: cannot be read ({error.strerror or error})') from None


def read_archives(data_dir):
    """Reads the original Omniglot archives from `data_dir`; returns (ink, keys)."""
    ink, keys = [], []
    for archive in ARCHIVES:
        count = 0
        for key, png, where in _archive_members(data_dir, archive):
            ink.append(_decode_png(png, where))
            keys.append(key)
            count += 1
        if count == 0:
            raise DataError(f'{data_dir}: {archive} holds no Omniglot PNGs '
                            f'(expected {archive}/<alphabet>/characterNN/*.png)')
    return np.stack(ink), keys


def read_tfds(tfds_dir):
    """Reads Omniglot through tensorflow-datasets (downloading it if needed); returns (ink, keys)."""
    import tensorflow_datasets as tfds  # Imported lazily: the archive route does not need it.
    builder = tfds.builder('omniglot', data_dir=tfds_dir)
    try:
        builder.download_and_prepare()
    except Exception as error:  # Network, checksum and disk errors come in many types.
        raise DataError(f'tensorflow-datasets could not prepare Omniglot ({type(error).__name__}: '
                        f'{str(error).splitlines()[0][:200]}); without network access, set OMNIGLOT_DIR '
                        f'or {named("data_dir")} to a folder with the original archives') from None
    alphabet_names = builder.info.features['alphabet'].names
    ink, keys = [], []
    for split, archive in (('train', ARCHIVES[0]), ('test', ARCHIVES[1])):
        for example in tfds.as_numpy(builder.as_dataset(split=split)):
            ink.append(example['image'][:, :, 0] < 128)
            keys.append((archive, alphabet_names[example['alphabet']],
                         int(example['alphabet_char_id']) + 1))
    return np.stack(ink), keys


def source_checksum(data_dir):
    """sha256 over the archives (or the extracted files) in `data_dir`: the cache key."""
    digest = hashlib.sha256()
    for archive in ARCHIVES:
        kind, location = _locate(data_dir, archive)
        paths = _files_under(location) if kind == 'folder' else [location]
        for path in paths:
            if kind == 'folder':
                digest.update(os.path.relpath(path, data_dir).encode())
            digest.update(read_bytes(path))
    return digest.hexdigest()


# ----------------------------------------------------------------------------
# Preprocessing and caching.


def preprocess(ink, keys):
    """Groups images by character, orders them canonically and resizes them to 28x28.

    Args:
      ink: [M, 105, 105] bool, True on strokes.
      keys: [M] (archive, alphabet, character number) per image.
    Returns:
      An `Omniglot` with characters ordered by (archive, alphabet, number).
    """
    import tensorflow as tf  # Heavy import, only needed when (re)building the cache.
    by_character = {}
    for index, key in enumerate(keys):
        by_character.setdefault(key, []).append(index)
    characters = sorted(by_character)
    for key in characters:
        if len(by_character[key]) != IMAGES_PER_CHARACTER:
            raise DataError(f'character {key[1]}/character{key[2]:02d} in {key[0]} has '
                            f'{len(by_character[key])} images, expected {IMAGES_PER_CHARACTER}')
    order = []
    for key in characters:
        indices = by_character[key]
        packed = [np.packbits(ink[i]).tobytes() for i in indices]
        order.extend(i for _, i in sorted(zip(packed, indices)))
    strokes = tf.constant(ink[order, :, :, None], tf.float32)
    resized = np.concatenate([
        tf.image.resize(strokes[i:i + 2048], [IMAGE_SIZE, IMAGE_SIZE], method='area').numpy()
        for i in range(0, len(order), 2048)])
    images = np.rint(resized[..., 0] * 255).astype(np.uint8)
    images = images.reshape(len(characters), IMAGES_PER_CHARACTER, IMAGE_SIZE, IMAGE_SIZE)
    return Omniglot(images=images,
                    alphabets=np.array([key[1] for key in characters]),
                    background=np.array([key[0] == ARCHIVES[0] for key in characters]),
                    checksum=hashlib.sha256(images.tobytes()).hexdigest())


def _save_cache(path, data):
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    results.atomic_write(path, lambda f: np.savez(
        f, format=_CACHE_FORMAT, images=data.images, alphabets=data.alphabets,
        background=data.background, checksum=data.checksum))


def check_cache_path(path, cache_dir):
    """OutputError unless the cache file `path` in `cache_dir` can be written (checked before the
    minutes of preprocessing that would fill it)."""
    results.check_writable(cache_dir, named('cache_dir'))
    if os.path.isdir(path):
        raise OutputError(f'{named("cache_dir")} {cache_dir}: {path} is a folder, where the cache file goes; '
                          f'move it away or choose another {named("cache_dir")}')


def _load_cache(path):
    """Returns the cached `Omniglot`, or None (with a warning) if the file is unusable."""
    try:
        with np.load(path) as cache:
            data = Omniglot(images=cache['images'], alphabets=cache['alphabets'],
                            background=cache['background'], checksum=str(cache['checksum']))
            fmt = int(cache['format'])
    except Exception as error:  # Truncated or foreign files raise many types.
        logging.warning('Cache %s is unreadable (%s); rebuilding it.', path, error)
        return None
    if fmt != _CACHE_FORMAT or hashlib.sha256(data.images.tobytes()).hexdigest() != data.checksum:
        logging.warning('Cache %s is corrupt or outdated; rebuilding it.', path)
        return None
    return data


def load_omniglot(data_dir=None, cache_dir='data'):
    """Loads preprocessed Omniglot, building and caching it on first use.

    Args:
      data_dir: folder with the original archives; None or '' uses tensorflow-datasets.
      cache_dir: where the preprocessed arrays (and tfds' files) are kept.
    """
    if data_dir:
        if not os.path.isdir(data_dir):
            raise DataError(f'{named("data_dir")} / OMNIGLOT_DIR {data_dir}: folder does not exist')
        key = 'archives-' + source_checksum(data_dir)[:20]
    else:
        key = 'tfds-omniglot-3.0.0'
    path = os.path.join(cache_dir, f'omniglot{IMAGE_SIZE}-{key}.npz')
    data = _load_cache(path) if os.path.isfile(path) else None
    if data is None:
        check_cache_path(path, cache_dir)
        logging.info('Preprocessing Omniglot from %s into %s', data_dir or 'tensorflow-datasets', path)
        ink, keys = read_archives(data_dir) if data_dir else read_tfds(os.path.join(cache_dir, 'tfds'))
        data = preprocess(ink, keys)
        _save_cache(path, data)
    return data


# ----------------------------------------------------------------------------
# Character-level splits.


@dataclasses.dataclass(frozen=True)
class Splits:
    """Disjoint class splits: Omniglot's characters, arrays [num_classes, 20, 28, 28] float32 in [0, 1],
    or a folder's classes, lists of arrays [M_c, H, W, channels] (`split_classes`)."""
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def make_splits(data, split='random', num_train_classes=1100, num_val_classes=100,
                seed=1, rotations=False):
    """Splits the characters of `data` into meta-train / meta-val / meta-test.

    split='random': all characters shuffled with `seed`; the first `num_train_classes`
      train, the next `num_val_classes` validate, the rest test (1100 / 100 / 423 by default).
    split='lake': Lake's background set trains; the evaluation set is shuffled with
      `seed`, its first `num_val_classes` validate and the rest test.
    rotations: add each training character rotated by 90, 180 and 270 degrees as three
      new classes (as in the MAML paper); validation and test classes are not rotated.
    """
    rng = np.random.default_rng(seed)
    count = len(data.images)
    if split == 'random':
        if num_train_classes + num_val_classes >= count:
            raise DataError(f'{named("num_train_classes")} + {named("num_val_classes")} must leave test classes: '
                            f'{num_train_classes} + {num_val_classes} >= {count} characters')
        order = rng.permutation(count)
        train = order[:num_train_classes]
        val = order[num_train_classes:num_train_classes + num_val_classes]
        test = order[num_train_classes + num_val_classes:]
    elif split == 'lake':
        evaluation = rng.permutation(np.flatnonzero(~data.background))
        if num_val_classes >= len(evaluation):
            raise DataError(f'{named("num_val_classes")} must be below the {len(evaluation)} characters '
                            f'of the evaluation set, got {num_val_classes}')
        train = np.flatnonzero(data.background)
        val, test = evaluation[:num_val_classes], evaluation[num_val_classes:]
    else:
        raise DataError(f"{named('split')} must be 'random' or 'lake', got {split!r}")
    images = data.images.astype(np.float32) / 255.0
    train_images = images[train]
    if rotations:
        train_images = np.concatenate(
            [np.rot90(train_images, k, axes=(2, 3)) for k in range(4)])
    return Splits(train=np.ascontiguousarray(train_images), val=images[val], test=images[test])


def split_classes(classes, num_train_classes, num_val_classes, seed=1):
    """Splits a list of classes (`load_image_folder`'s) at random with `seed`: the first
    `num_train_classes` train, the next `num_val_classes` validate, the rest test."""
    if num_train_classes + num_val_classes >= len(classes):
        raise DataError(f'{named("num_train_classes")} + {named("num_val_classes")} must leave test classes: '
                        f'{num_train_classes} + {num_val_classes} >= {len(classes)} classes')
    order = np.random.default_rng(seed).permutation(len(classes))
    picked = [[classes[index] for index in part] for part in np.split(order, [num_train_classes,
                                                                             num_train_classes + num_val_classes])]
    return Splits(*picked)


def classes_checksum(names, classes):
    """sha256 of a folder's classes as loaded: their names and every image's pixels."""
    digest = hashlib.sha256()
    for name, images in zip(names, classes):
        digest.update(name.encode() + b'\0' + np.ascontiguousarray(images).tobytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------
# Episodes.


class Episodes(NamedTuple):
    """A meta-batch of T few-shot tasks (N-way, K-shot, Q queries per class).

    support_images: [T, N*K, H, W, C] float32 ([T, N*K, 28, 28, 1] for Omniglot);
    support_labels: [T, N*K] int32
    query_images:   [T, N*Q, H, W, C] float32;  query_labels:   [T, N*Q] int32
    Labels run 0..N-1; which class gets which label is drawn anew for every task.
    """
    support_images: np.ndarray
    support_labels: np.ndarray
    query_images: np.ndarray
    query_labels: np.ndarray


def num_tasks(batch):
    """T of a meta-batch: every field of one (an `Episodes`, a navigation.py `Tasks`) has the tasks first."""
    return batch[0].shape[0]


def task_slice(batch, start, stop):
    """The tasks [start, stop) of a meta-batch, of the same type."""
    return type(batch)(*(x[start:stop] for x in batch))


def check_task_shape(num_classes, n_way, k_shot, num_query, split_name, per_class=IMAGES_PER_CHARACTER,
                     names=('n_way', 'k_shot', 'num_query')):
    """Raises DataError unless a split of `num_classes` classes of `per_class` images each can make
    such tasks. names: what the message calls n_way, k_shot and num_query (the arguments' names; a
    command, its flags')."""
    if n_way > num_classes:
        raise DataError(f'{names[0]} {n_way} exceeds the {num_classes} classes of the {split_name} split')
    if k_shot + num_query > per_class:
        raise DataError(f'{names[1]} + {names[2]} must be at most {per_class} '
                        f'(images per class), got {k_shot} + {num_query}')


def check_class_sizes(counts, k_shot, num_query, where, class_names=None):
    """Raises DataError naming the first class with fewer than k_shot + num_query images (counts [C]);
    where: what holds the classes, e.g. 'the train split' or a folder."""
    for index in np.flatnonzero(np.asarray(counts) < k_shot + num_query)[:1]:
        name = repr(str(class_names[index])) if class_names is not None else f'number {index}'
        raise DataError(f'class {name} of {where} has {counts[index]} images; a task takes '
                        f'{k_shot} + {num_query} (k_shot + num_query) of each of its classes')


@dataclasses.dataclass(frozen=True)
class ClassImages:
    """The images of C classes, stored one class after another (as many images per class as it has).

    images: [M, H, W, channels], uint8 in 0..255 (converted to float32 in [0, 1] per task: a large set stays
      uint8, and may be a read-only memory map of a cache on disk) or float32 in [0, 1].
    starts: [C + 1] int64; class c's images are images[starts[c]:starts[c + 1]].
    names: [C] str, the classes' names (None: unnamed, called by number).
    """
    images: np.ndarray
    starts: np.ndarray
    names: np.ndarray = None

    @classmethod
    def from_list(cls, classes, names=None):
        """ClassImages of a list of C arrays [M_c, H, W(, channels)] (a grayscale class gets its channel)."""
        starts = np.concatenate([[0], np.cumsum([len(images) for images in classes])]).astype(np.int64)
        images = np.concatenate(classes)
        if images.ndim == 3:
            images = images[..., None]
        return cls(images, starts, None if names is None else np.array(names))

    def __len__(self):
        return len(self.starts) - 1

    @property
    def counts(self):
        """[C] images per class."""
        return np.diff(self.starts)


def images_per_class(images):
    """The most images any class of `images` (an array [C, M, ...], a list of arrays, a `ClassImages`) has."""
    if isinstance(images, ClassImages):
        return int(images.counts.max()) if len(images) else 0
    return max(map(len, images)) if isinstance(images, (list, tuple)) else images.shape[1]


def sample_episodes(images, n_way, k_shot, num_query, num_tasks, rng, rotate=False, rotate_per_task=False):
    """Draws `num_tasks` tasks with the generator `rng` from `images`: an array [C, M, H, W] (grayscale) or
    [C, M, H, W, channels] of M images of each of C classes, or a `ClassImages` (as many per class as it has).

    Classes of a task are distinct, and its support and query images are distinct
    drawings; the draw is vectorised (no per-image Python loop). uint8 images come out as float32 in [0, 1].
    rotate: turn each class of each task by a random multiple of 90 degrees, the same for all
      its images, support and query alike (`rotate_classes`); drawn after everything else,
      so the tasks are otherwise those of rotate=False.
    rotate_per_task: with `rotate`, one quarter turn for every class of a task (the Relation Network
      code's), instead of one per class (the MAML codes').
    """
    num_classes, per_class = len(images), images_per_class(images)
    classes = rng.random((num_tasks, num_classes)).argsort(axis=1)[:, :n_way]
    order = rng.random((num_tasks, n_way, per_class))
    if isinstance(images, ClassImages):  # Past a class's last image the key is 2, above every random one: never drawn.
        order[np.arange(per_class) >= images.counts[classes][..., None]] = 2.0
    drawings = order.argsort(axis=2)[:, :, :k_shot + num_query]
    if isinstance(images, ClassImages):
        picked = images.images[images.starts[classes][..., None] + drawings]  # [T, N, K+Q, H, W, channels]
    else:
        picked = images[classes[:, :, None], drawings]  # [T, N, K+Q, H, W(, channels)]
    if picked.dtype == np.uint8:
        picked = picked.astype(np.float32) / 255
    if rotate:
        turns = rng.integers(0, 4, (num_tasks, 1 if rotate_per_task else n_way))
        picked = rotate_classes(picked, np.broadcast_to(turns, (num_tasks, n_way)))
    if picked.ndim == 5:  # Grayscale: one channel.
        picked = picked[..., None]
    labels = np.broadcast_to(np.arange(n_way, dtype=np.int32)[None, :, None],
                             (num_tasks, n_way, k_shot + num_query))

    def flat(x):
        return np.ascontiguousarray(x.reshape((num_tasks, -1) + x.shape[3:]))
    return Episodes(flat(picked[:, :, :k_shot]), flat(labels[:, :, :k_shot]),
                    flat(picked[:, :, k_shot:]), flat(labels[:, :, k_shot:]))


def rotate_classes(images, quarter_turns):
    """Turns the images of each class of each task by its own multiple of 90 degrees
    (counter-clockwise). images [T, N, M, H, W(, channels)] (M images of each class), quarter_turns
    [T, N] in 0..3 -> the same shape.

    The augmentation of the MAML and MAML++ codes for Omniglot: a character under a rotation is in
    effect another character, and the rotation is drawn afresh in every task.
    """
    turned = images.copy()
    for turns in (1, 2, 3):
        chosen = quarter_turns == turns
        turned[chosen] = np.rot90(images[chosen], turns, axes=(2, 3))  # [classes, M, H, W(, channels)].
    return turned


class TaskStream:
    """A task source whose meta-batch `index` depends only on (seed, index), so that a resumed run sees
    exactly the tasks an uninterrupted run would. A subclass defines `sample(index, num_tasks)`,
    returning a NamedTuple of arrays with the tasks first (`Episodes`, a navigation.py `Tasks`).
    """

    def sample(self, index, num_tasks):
        raise NotImplementedError

    def fixed_batches(self, num_tasks, batch_size):
        """A fixed evaluation set of `num_tasks` tasks, in meta-batches of at most `batch_size`.

        Task j is the one task of `sample(j, 1)`: it depends on (seed, j) alone, never on the batch
        size, so every run and tool given the same seed evaluates on the same tasks (`tasks_checksum`).
        """
        tasks = [self.sample(j, 1) for j in range(num_tasks)]
        return [concatenate_tasks(tasks[start:start + batch_size]) for start in range(0, num_tasks, batch_size)]


def concatenate_tasks(batches):
    """One meta-batch of the tasks of `batches` (meta-batches of one type), in order."""
    return type(batches[0])(*(np.concatenate(fields) for fields in zip(*batches)))


def tasks_checksum(batches):
    """sha256 of the tasks of a list of meta-batches, task by task: equal checksums mean the same tasks
    in the same order, array for array, however they are grouped into meta-batches."""
    digest = hashlib.sha256()
    for batch in batches:
        for task in range(num_tasks(batch)):
            for field in batch:
                digest.update(np.ascontiguousarray(field[task]).tobytes())
    return digest.hexdigest()


class EpisodeSampler(TaskStream):
    """The task stream of one split (see `TaskStream`): N-way K-shot tasks with Q queries per class.

    images: [C, M, H, W] (grayscale) or [C, M, H, W, channels] float32, M images of each of C
      classes (Omniglot's splits), a `ClassImages` (a named dataset's split, uint8) or a list of C arrays
      [M_c, H, W(, channels)] (`load_image_folder`'s), as many images per class as it has; every class
      needs k_shot + num_query of them.
    seed: the stream's seed; meta-batch `index` depends on (seed, index) alone.
    split_name, class_names: what an error message calls the split and its classes (a list's; a
      `ClassImages` names its own).
    rotate: each class of a task under a random multiple of 90 degrees (see `sample_episodes`), or
      with rotate_per_task, every class of a task under the same one.
    """

    def __init__(self, images, n_way, k_shot, num_query, seed, split_name='train', rotate=False,
                 class_names=None, rotate_per_task=False):
        if isinstance(images, (list, tuple)):
            images = ClassImages.from_list(images, class_names)
        if isinstance(images, ClassImages):
            check_class_sizes(images.counts, k_shot, num_query, f'the {split_name} split', images.names)
        check_task_shape(len(images), n_way, k_shot, num_query, split_name, images_per_class(images))
        self.images = images
        self.n_way, self.k_shot, self.num_query = n_way, k_shot, num_query
        self.seed, self.rotate, self.rotate_per_task = seed, rotate, rotate_per_task

    def sample(self, index, num_tasks):
        """Meta-batch number `index` of `num_tasks` tasks."""
        rng = np.random.default_rng([self.seed, index])
        return sample_episodes(self.images, self.n_way, self.k_shot, self.num_query, num_tasks, rng, self.rotate,
                               self.rotate_per_task)


IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.tif', '.tiff', '.webp')


def load_image_folder(folder, image_size=28, channels=1):
    """The images of a folder with one subfolder per class, any size and format PIL reads.

    Every image is resized to image_size x image_size (area-averaged) and converted to grayscale
    (channels=1) or RGB (3), float32 in [0, 1]. Returns (class names, sorted; a list of arrays
    [M_c, image_size, image_size, channels], one per class), ready for `EpisodeSampler`.
    DataError naming the folder or file for a missing folder, an empty class or an unreadable image.
    """
    if channels not in (1, 3) or isinstance(channels, bool):
        raise DataError(f'channels {channels!r}: 1 (grayscale) or 3 (RGB) expected')
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise DataError(f'image_size {image_size!r}: a whole number of pixels, 1 or more, expected')
    names, files = image_folder_files(folder)
    classes = [np.stack([_read_image(path, image_size, channels) for path in paths]) for paths in files]
    return names, classes


def image_folder_files(folder):
    """(class names, sorted; for each class the paths of its images, sorted) of a folder with one subfolder
    of images per class; DataError naming the folder for a missing folder or an empty class."""
    if not os.path.isdir(folder):
        raise DataError(f'{folder}: not a folder (expected a folder with a subfolder of images per class)')
    names = sorted(name for name in os.listdir(folder) if os.path.isdir(os.path.join(folder, name)))
    if not names:
        raise DataError(f'{folder}: no class folders in it (expected a subfolder of images per class)')
    files = []
    for name in names:
        images = sorted(file for file in os.listdir(os.path.join(folder, name))
                        if file.lower().endswith(IMAGE_SUFFIXES))
        if not images:
            raise DataError(f'{os.path.join(folder, name)}: no images in it ({", ".join(IMAGE_SUFFIXES)})')
        files.append([os.path.join(folder, name, image) for image in images])
    return names, files


def _read_image(path, image_size, channels):
    try:
        with Image.open(path) as image:
            image = image.convert('L' if channels == 1 else 'RGB').resize((image_size, image_size), Image.BOX)
    except Exception as error:  # PIL raises many types for a damaged file.
        raise DataError(f'{path}: not a readable image ({error})') from None
    return np.asarray(image, np.float32).reshape(image_size, image_size, channels) / 255.0


class ImageStream:
    """Minibatches of (image, class) pairs from all images of a split, for ordinary classification.

    Iterations run 1, 2, ... and go through the images in epochs, each epoch in its
    own order; batch i depends only on (seed, i), so a resumed run sees the same batches.
    `max_shift` > 0 moves every image by up to that many pixels in each direction.
    """

    def __init__(self, images, batch_size, seed, max_shift=0):
        self.images = images.reshape((-1,) + images.shape[2:])  # [C * 20, 28, 28]
        self.labels = np.repeat(np.arange(len(images), dtype=np.int32), images.shape[1])
        self.batch_size, self.seed, self.max_shift = batch_size, seed, max_shift
        self.steps_per_epoch = -(-len(self.images) // batch_size)

    def sample(self, index, batch_size):
        """Minibatch number `index` (1-based): images [B, 28, 28, 1] float32, labels [B] int32."""
        if batch_size != self.batch_size:
            raise ValueError(f'this stream was made for batches of {self.batch_size}, not {batch_size}')
        epoch, step = divmod(index - 1, self.steps_per_epoch)
        rng = np.random.default_rng([self.seed, epoch])
        chosen = rng.permutation(len(self.images))[step * batch_size:(step + 1) * batch_size]
        images = self.images[chosen]
        if self.max_shift:
            images = _shift(images, rng.integers(-self.max_shift, self.max_shift + 1, (len(chosen), 2)))
        return images[..., None], self.labels[chosen]


def _shift(images, offsets):
    """Moves image b by offsets[b] = (dy, dx) pixels, filling with background. images [B, H, W]."""
    size = images.shape[1]
    pad = int(np.abs(offsets).max())
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad)))
    rows = pad - offsets[:, :1] + np.arange(size)[None]  # [B, H]
    cols = pad - offsets[:, 1:] + np.arange(size)[None]  # [B, W]
    return padded[np.arange(len(images))[:, None, None], rows[:, :, None], cols[:, None, :]]
