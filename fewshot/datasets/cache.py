"""A named dataset's images on disk, read once from the source and memory-mapped by every run after.

A cache is a folder of two files:
  images.u8   every image, uint8 [M, H, W, channels] row-major, class after class, split after split
              (train, val, test), no header, so that any image is read without the rest (`ImageRows`);
  index.json  its shape, each split's classes (names, and where each starts in images.u8) and the
              checksum of it all.
The folder is written under a temporary name and renamed when complete, so a cache is whole or absent.
"""

import hashlib
import json
import logging
import os
import shutil

import numpy as np

from fewshot import results
from fewshot.errors import DataError

FORMAT = 1
IMAGES, INDEX = 'images.u8', 'index.json'
SPLITS = ('train', 'val', 'test')


def source_key(folder):
    """20 hex digits naming the files below `folder` as they are now (paths, sizes, modification times):
    a source's files that change get a new cache. Cheap: 16 GB of files are not read to name them."""
    digest = hashlib.sha256()
    for root, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            status = os.stat(os.path.join(root, name))
            digest.update(f'{os.path.relpath(os.path.join(root, name), folder)}\0{status.st_size}\0'
                          f'{status.st_mtime_ns}\n'.encode())
    return digest.hexdigest()[:20]


def is_complete(path):
    """Whether `path` holds a whole cache of this format."""
    try:
        with open(os.path.join(path, INDEX)) as f:
            index = json.load(f)
        return index['format'] == FORMAT and os.path.getsize(os.path.join(path, IMAGES)) == np.prod(index['shape'])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def read(path):
    """(images: an `ImageRows` [M, H, W, channels] uint8 over images.u8, index: the parsed index.json) of a cache."""
    with open(os.path.join(path, INDEX)) as f:
        index = json.load(f)
    return ImageRows(os.path.join(path, IMAGES), index['shape']), index


class ImageRows:
    """The images of a cache's images.u8, [M, H, W, channels] uint8, read from the file when indexed.

    Not a memory map: a task reads a few images here and there, and a map would keep resident what each
    read brings in around them (large page-cache folios: 5.5 GB after 60 meta-batches of tiered-ImageNet,
    `python dataset.py --synthetic=tiered_imagenet`). Read with os.pread, the file's pages stay in the
    kernel's page cache, shared and dropped as memory is needed, and the process holds only the images it
    asked for. Indexing follows NumPy's for what the samplers and tests do: rows[i] and rows[array] read
    those images (an array of any shape, its shape first), rows[a:b] is a view of rows a to b, a tuple
    indexes the rows read by its first element with the rest, and np.asarray(rows) reads them all.
    """

    def __init__(self, path, shape, start=0, stop=None):
        self.path, self.image_shape = path, tuple(shape[1:])
        self.start, self.stop = start, shape[0] if stop is None else stop
        self.file = os.open(path, os.O_RDONLY)
        self.row_bytes = int(np.prod(self.image_shape))

    def __del__(self):
        os.close(self.file)

    def __len__(self):
        return self.stop - self.start

    @property
    def shape(self):
        return (len(self), *self.image_shape)

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __getitem__(self, key):
        if isinstance(key, tuple):
            return np.asarray(self[key[0]])[(slice(None), *key[1:]) if isinstance(key[0], slice) else key[1:]]
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                raise IndexError('ImageRows: a slice of step 1 only')
            return ImageRows(self.path, self.shape, self.start + start, self.start + max(start, stop))
        rows = np.asarray(key)
        if not np.issubdtype(rows.dtype, np.integer):
            raise IndexError(f'ImageRows: integer rows or a slice, not {rows.dtype}')
        rows = np.where(rows < 0, rows + len(self), rows)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f'ImageRows: a row outside 0..{len(self) - 1}')
        out = np.empty((rows.size, self.row_bytes), np.uint8)
        for position, row in enumerate(rows.ravel() + self.start):
            if os.preadv(self.file, [out[position]], int(row) * self.row_bytes) != self.row_bytes:
                raise OSError(f'{self.path}: ends before image {row} (truncated?)')
        return out.reshape(rows.shape + self.image_shape)

    def __array__(self, dtype=None, copy=None):
        rows = self[np.arange(len(self))]
        return rows if dtype is None else rows.astype(dtype)


def write(path, classes, image_shape, what):
    """Writes the cache `path` from `classes`, an iterable of (split, class name, images [m, H, W, channels]
    uint8) in split order (train, val, test); image_shape: (H, W, channels) every image must have.
    what: how an error names the source (e.g. '--dataset cub (/data/CUB_200_2011)'). DataError, and
    nothing left behind, for classes out of split order, a class named twice, an empty class or an image
    of another shape or type.
    """
    parent = os.path.dirname(path) or '.'
    results.check_writable(parent, '--cache_dir')
    os.makedirs(parent, exist_ok=True)
    temporary = f'{path}.tmp{os.getpid()}'
    shutil.rmtree(temporary, ignore_errors=True)
    os.makedirs(temporary)
    logging.info('Caching %s into %s', what, path)
    try:
        with open(os.path.join(temporary, IMAGES), 'wb') as file:
            index = _write_images(file, classes, tuple(image_shape), what)
        results.write_json(os.path.join(temporary, INDEX), index)
        if is_complete(path):  # Another process finished the same cache first: keep its.
            shutil.rmtree(temporary)
            return
        shutil.rmtree(path, ignore_errors=True)  # An incomplete one, e.g. of a killed process.
        os.replace(temporary, path)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise


def _write_images(file, classes, image_shape, what):
    """Appends every class's images to `file`; returns the index (see the module docstring)."""
    digest = hashlib.sha256()
    splits = {split: {'starts': [], 'names': []} for split in SPLITS}
    current, offset, seen = 0, 0, {}  # current: the index of the split being written; seen: {class: its split}.
    for split, name, images in classes:
        if split not in SPLITS or SPLITS.index(split) < current:
            raise DataError(f'{what}: class {name!r} of split {split!r} comes after the {SPLITS[current]} split')
        for ended in SPLITS[current:SPLITS.index(split)]:  # Its last class's end (an empty split: its only start).
            splits[ended]['starts'].append(offset)
        current = SPLITS.index(split)
        if name in seen:
            raise DataError(f'{what}: class {name!r} is in the {seen[name]} split and again in the {split} split')
        seen[name] = split
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != image_shape or not len(images):
            raise DataError(f'{what}: class {name!r} has images of shape {images.shape[1:]} and type {images.dtype} '
                            f'({len(images)} of them); expected at least one, each {"x".join(map(str, image_shape))} '
                            'uint8 (images of mixed sizes are not one dataset)')
        splits[split]['starts'].append(offset)
        splits[split]['names'].append(str(name))
        content = np.ascontiguousarray(images).tobytes()
        file.write(content)
        digest.update(f'{split}\0{name}\0'.encode() + content)
        offset += len(images)
    for ended in SPLITS[current:]:
        splits[ended]['starts'].append(offset)
    if not offset:
        raise DataError(f'{what}: no classes found')
    return {'format': FORMAT, 'shape': [offset, *image_shape], 'splits': splits, 'checksum': digest.hexdigest()}
