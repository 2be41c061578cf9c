"""mini- and tiered-ImageNet (fewshot/datasets/imagenet.py): a small replica of each form users hold, written
here in its exact format (file names, keys, dtypes, CSV columns, PNG bytes in a pickle), is read into the
expected classes and splits, cached through `datasets.load` and sampled; every bad input is a one-line
DataError naming its file, and a crafted pickle runs nothing."""

import io
import os
import pickle
import pickletools

import numpy as np
import pytest
from PIL import Image

from fewshot import data, datasets
from fewshot.datasets import imagenet
from fewshot.errors import DataError

# Split -> {class name: number of images}, in the order the files list them (not sorted, on purpose: the
# reader sorts). Train has five classes so that a 5-way task can be drawn; each class has at least 3 images
# for a 1-shot task with 2 queries. The real sets have 64/16/20 and 351/97/160 classes: the reader counts none.
MINI_LAYOUT = {'train': {'n03017168': 3, 'n01532829': 4, 'n02110063': 3, 'n01749939': 3, 'n04596742': 3},
               'val': {'n02971356': 3, 'n01855672': 3},
               'test': {'n04522168': 3, 'n02099601': 3}}
TIERED_LAYOUT = {'train': {'tench, Tinca tinca': 3, 'goldfish, Carassius auratus': 4, 'robin, American robin': 3,
                           'house finch, linnet': 3, 'bulbul': 3},
                 'val': {'tabby, tabby cat': 3, 'Egyptian cat': 3},
                 'test': {'volcano': 3, 'alp': 3}}
MINI_VAL_NAMES = ('mini-imagenet-cache-val.pkl', 'mini-imagenet-cache-validation.pkl')


def _picture(rng, height=84, width=84):
    """uint8 [height, width, 3] of smooth colour gradients (JPEG keeps them close, unlike noise)."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    start, slope_y, slope_x = rng.uniform(30, 120, (3, 3))
    return np.clip(start + slope_y * y[..., None] + slope_x * x[..., None], 0, 255).astype(np.uint8)


def _png(pixels):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format='PNG')
    return buffer.getvalue()


def _dump(path, value):
    """Pickles `value` with protocol 4, the highest of the Python 3.6 the sets were written with (numpy pickles an
    array under protocol 5 through numpy._core.numeric._frombuffer, which safe_pickle does not admit)."""
    with open(path, 'wb') as file:
        pickle.dump(value, file, protocol=4)


def write_mini_folder(folder, layout=MINI_LAYOUT, seed=0):
    """Ravi & Larochelle's form: {split}.csv (header filename,label) and images/<filename> JPEGs, a few of them
    84x84 already, the others 120x100 or greyscale. Returns [(split, wnid, [paths in CSV order], [written
    pixels or None])], classes sorted within each split: what the reader must give."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(folder, 'images'), exist_ok=True)
    expected = []
    for split, classes in layout.items():
        rows = ['filename,label']
        for name, count in classes.items():
            paths, written = [], []
            for number in range(count, 0, -1):  # CSV order is not file-name order.
                file = f'{name}{number:08d}.jpg'
                pixels, image = _mini_image(rng, number)
                image.save(os.path.join(folder, 'images', file), quality=95)
                rows.append(f'{file},{name}')
                paths.append(os.path.join(folder, 'images', file))
                written.append(pixels)
            expected.append((split, name, paths, written))
        with open(os.path.join(folder, f'{split}.csv'), 'w') as file:
            file.write('\n'.join(rows) + '\n')
    return sorted(expected, key=lambda item: (imagenet.SPLITS.index(item[0]), item[1]))


def _mini_image(rng, number):
    """(the pixels if the file is 84x84 RGB, else None; the PIL image to save) for image `number` of a class."""
    if number % 3 == 1:
        pixels = _picture(rng)
        return pixels, Image.fromarray(pixels)
    if number % 3 == 2:
        return None, Image.fromarray(_picture(rng, 100, 120))
    return None, Image.fromarray(_picture(rng)).convert('L')


def _pil_decode(path):
    """What the folder form must give for a file: PIL's own decode, RGB, Lanczos-resized to 84x84 if it is not."""
    with Image.open(path) as image:
        image = image.convert('RGB')
    return np.asarray(image if image.size == (84, 84) else image.resize((84, 84), Image.Resampling.LANCZOS))


def write_mini_pickles(folder, layout=MINI_LAYOUT, val_name=MINI_VAL_NAMES[0], python2=False, seed=1):
    """learn2learn's form: mini-imagenet-cache-{split}.pkl, each {'image_data': uint8 [N, 84, 84, 3],
    'class_dict': {wnid: [int indices]}}. The classes are interleaved in image_data (Ren et al.'s are
    contiguous) so that the reader must gather them. python2: keys and wnids are bytes, as safe_pickle reads a
    Python 2 pickle. Returns [(split, wnid, images)] in the reader's order."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    expected = []
    for split, classes in layout.items():
        owner = rng.permutation(np.repeat(list(classes), list(classes.values())))
        images = rng.integers(0, 256, (len(owner), 84, 84, 3), dtype=np.uint8)
        class_dict = {name: [int(index) for index in np.flatnonzero(owner == name)] for name in classes}
        name = val_name if split == 'val' else f'mini-imagenet-cache-{split}.pkl'
        content = {'image_data': images, 'class_dict': class_dict}
        if python2:
            content = {b'image_data': images,
                       b'class_dict': {wnid.encode(): indices for wnid, indices in class_dict.items()}}
        _dump(os.path.join(folder, name), content)
        expected += [(split, wnid, images[class_dict[wnid]]) for wnid in sorted(classes)]
    return expected


def write_tiered(folder, layout=TIERED_LAYOUT, python2=False, seed=2):
    """tiered-imagenet.tar's form: {split}_images_png.pkl, a list of PNGs each a uint8 array [n, 1] of its bytes
    (OpenCV's imencode output), and {split}_labels.pkl, {'label_specific': int32 [N], 'label_general': int32
    [N], 'label_specific_str': [names], 'label_general_str': [names]}, the labels shuffled. python2: keys,
    names and images are bytes, as safe_pickle reads a Python 2 pickle. Returns [(split, name, images)] in the
    reader's order."""
    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    expected = []
    for split, classes in layout.items():
        names = list(classes)
        labels = rng.permutation(np.repeat(np.arange(len(names)), list(classes.values()))).astype(np.int32)
        images = rng.integers(0, 256, (len(labels), 84, 84, 3), dtype=np.uint8)
        encoded = [np.frombuffer(_png(image), np.uint8).reshape(-1, 1) for image in images]
        content = {'label_specific': labels, 'label_general': np.zeros_like(labels), 'label_specific_str': names,
                   'label_general_str': ['category']}
        if python2:
            encoded = [item.tobytes() for item in encoded]
            content = {key.encode(): [name.encode() for name in value] if key.endswith('_str') else value
                       for key, value in content.items()}
        _dump(os.path.join(folder, f'{split}_images_png.pkl'), encoded)
        _dump(os.path.join(folder, f'{split}_labels.pkl'), content)
        expected += [(split, names[label], images[labels == label]) for label in np.argsort(names)]
    return expected


def _assert_classes(read, expected):
    """The (split, name, images) of `read` are those of `expected`, pixel for pixel, in order."""
    assert [(split, name) for split, name, _ in read] == [(split, name) for split, name, *_ in expected]
    for (_, name, images), (_, _, wanted, *_) in zip(read, expected):
        assert images.dtype == np.uint8 and images.shape == (len(wanted), 84, 84, 3), name
        np.testing.assert_array_equal(images, wanted, err_msg=name)


# ----------------------------------------------------------------------------
# Each form read as written.


def test_mini_folder_form_gives_sorted_classes_with_images_in_csv_order(tmp_path):
    expected = write_mini_folder(str(tmp_path))
    read = list(imagenet.SOURCES[0].read(str(tmp_path), ''))
    _assert_classes(read, [(split, name, np.stack([_pil_decode(path) for path in paths]))
                           for split, name, paths, _ in expected])
    # The decode is RGB in the right channel order: an 84x84 RGB file is its written pixels, up to JPEG's loss.
    for (_, _, images), (_, _, _, written) in zip(read, expected):
        for image, pixels in zip(images, written):
            if pixels is not None:
                assert np.abs(image.astype(int) - pixels).mean() < 3


@pytest.mark.parametrize('val_name, python2', [(MINI_VAL_NAMES[0], False), (MINI_VAL_NAMES[1], False),
                                               (MINI_VAL_NAMES[0], True)],
                         ids=['val-name', 'learn2learn-validation-name', 'python2-pickles'])
def test_mini_pickles_read_exactly(tmp_path, val_name, python2):
    expected = write_mini_pickles(str(tmp_path), val_name=val_name, python2=python2)
    _assert_classes(list(imagenet.SOURCES[0].read(str(tmp_path), '')), expected)


def test_mini_pickles_are_read_when_both_forms_are_present(tmp_path):
    write_mini_folder(str(tmp_path))
    expected = write_mini_pickles(str(tmp_path))
    _assert_classes(list(imagenet.SOURCES[0].read(str(tmp_path), '')), expected)


@pytest.mark.parametrize('python2', [False, True], ids=['python3-pickles', 'python2-pickles'])
def test_tiered_png_pickles_read_exactly(tmp_path, python2):
    expected = write_tiered(str(tmp_path), python2=python2)
    _assert_classes(list(imagenet.SOURCES[1].read(str(tmp_path), '')), expected)


def test_tiered_decodes_one_class_at_a_time(tmp_path, monkeypatch):
    write_tiered(str(tmp_path))
    decoded = []
    decode = imagenet._decode_png
    monkeypatch.setattr(imagenet, '_decode_png', lambda encoded, where: decoded.append(where) or decode(encoded, where))
    classes = iter(imagenet.SOURCES[1].read(str(tmp_path), ''))
    first = next(classes)
    assert len(decoded) == len(first[2])
    second = next(classes)
    assert len(decoded) == len(first[2]) + len(second[2])


# ----------------------------------------------------------------------------
# Through the registry: the cache gives the same classes, and tasks are drawn from it.


def _write_mini_folder_decoded(folder):
    """write_mini_folder, returning [(split, wnid, images)] as the reader must give them."""
    return [(split, name, np.stack([_pil_decode(path) for path in paths]))
            for split, name, paths, _ in write_mini_folder(folder)]


# Form -> (the dataset's name, the function writing a replica of it and returning [(split, name, images)]).
FORMS = {'mini_folder': ('mini_imagenet', _write_mini_folder_decoded),
         'mini_pickles': ('mini_imagenet', write_mini_pickles),
         'tiered': ('tiered_imagenet', write_tiered)}


@pytest.mark.parametrize('form', FORMS)
def test_load_caches_the_classes_and_draws_tasks(tmp_path, monkeypatch, form):
    name, write = FORMS[form]
    expected = write(str(tmp_path / 'files'))
    monkeypatch.setenv(datasets.source(name).environment, str(tmp_path / 'files'))  # No --dataset_dir: its variable.
    dataset = datasets.load(name, cache_dir=str(tmp_path / 'cache'))
    assert dataset.image_shape == (84, 84, 3)
    for split in datasets.SPLITS:
        classes = getattr(dataset.splits, split)
        wanted = [(class_name, images) for where, class_name, images in expected if where == split]
        assert isinstance(classes, data.ClassImages) and list(classes.names) == [class_name for class_name, _ in wanted]
        np.testing.assert_array_equal(classes.counts, [len(images) for _, images in wanted])
        np.testing.assert_array_equal(classes.images, np.concatenate([images for _, images in wanted]))
    assert datasets.load(name, cache_dir=str(tmp_path / 'cache')).checksum == dataset.checksum
    tasks = data.EpisodeSampler(dataset.splits.train, 5, 1, 2, seed=0).sample(0, 3)
    assert tasks.support_images.shape == (3, 5, 84, 84, 3) and tasks.query_images.shape == (3, 10, 84, 84, 3)
    for images in (tasks.support_images, tasks.query_images):
        assert images.dtype == np.float32 and 0 <= images.min() and images.max() <= 1


# ----------------------------------------------------------------------------
# Bad inputs: a one-line DataError naming the file.


class _Payload:
    """Pickles as a call of open(marker, 'w'): loading it with pickle.load would create the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, 'w')


def _read_error(source, folder):
    """The DataError message of reading `folder` as SOURCES[source], checked to be one line."""
    with pytest.raises(DataError) as raised:
        list(imagenet.SOURCES[source].read(folder, ''))
    assert '\n' not in str(raised.value)
    return str(raised.value)


def _truncate(path):
    with open(path, 'rb') as file:
        content = file.read()
    with open(path, 'wb') as file:
        file.write(content[:len(content) // 2])


@pytest.mark.parametrize('target', ['mini-imagenet-cache-train.pkl', 'train_images_png.pkl', 'val_labels.pkl'])
def test_a_crafted_pickle_runs_nothing(tmp_path, target):
    mini = target.startswith('mini')
    (write_mini_pickles if mini else write_tiered)(str(tmp_path))
    marker = str(tmp_path / 'marker')
    _dump(str(tmp_path / target), {'image_data': _Payload(marker), 'class_dict': {}})
    with open(tmp_path / target, 'rb') as file:
        assert 'REDUCE' in {opcode.name for opcode, _, _ in pickletools.genops(file)}  # Loading would call.
    message = _read_error(0 if mini else 1, str(tmp_path))
    assert message.startswith(str(tmp_path / target)) and 'io.open' in message
    assert not os.path.exists(marker)


def _mini_pickle_with(folder, **entries):
    """Replaces the train pickle of a mini-ImageNet replica with one of its dict's entries changed."""
    content = {'image_data': np.zeros((4, 84, 84, 3), np.uint8), 'class_dict': {'n01532829': [0, 1, 2, 3]}}
    _dump(os.path.join(folder, 'mini-imagenet-cache-train.pkl'), {**content, **entries})


@pytest.mark.parametrize('entries, expected', [
    ({'image_data': np.zeros((4, 80, 80, 3), np.uint8)}, 'expected a uint8 array [N, 84, 84, 3]'),
    ({'image_data': [np.zeros((84, 84, 3), np.uint8)] * 4}, 'image_data is a list; expected a uint8 array'),
    ({'class_dict': {'n01532829': [[0, 1], [2]]}}, "class_dict['n01532829']: object (); expected a list of integers"),
    ({'class_dict': {'n01532829': [0, 1, 2, 3], 'n01558993': []}}, "class_dict['n01558993'] lists no images"),
    ({'image_data': np.array([None] * 4, object)}, 'holds an array of Python objects'),
    ({'class_dict': {'n01532829': [0, 1, 2, 9]}}, 'class_dict lists 4 image indices (0 to 9) for the 4 images'),
    ({'class_dict': {'n01532829': [0, 1], 'n01558993': [1, 2]}}, 'expected each image in exactly one class'),
    ({'class_dict': {}, 'image_data': np.zeros((0, 84, 84, 3), np.uint8)}, 'holds no images or no classes'),
    ({'class_dict': None}, 'holds no images or no classes'),
], ids=['mixed-sizes', 'not-an-array', 'ragged-indices', 'empty-class', 'object-array', 'index-out-of-range',
        'image-in-two-classes', 'empty', 'no-classes'])
def test_mini_pickle_contents_must_be_one_split(tmp_path, entries, expected):
    write_mini_pickles(str(tmp_path))
    _mini_pickle_with(str(tmp_path), **entries)
    message = _read_error(0, str(tmp_path))
    assert message.startswith(str(tmp_path / 'mini-imagenet-cache-train.pkl')) and expected in message


def test_mini_pickle_without_its_keys(tmp_path):
    write_mini_pickles(str(tmp_path))
    _dump(str(tmp_path / 'mini-imagenet-cache-test.pkl'), {'data': np.zeros((4, 84, 84, 3), np.uint8)})
    assert "mini-imagenet-cache-test.pkl: holds a dict with keys ['data']; expected a dict with the entry " \
           "'image_data'" in _read_error(0, str(tmp_path))


@pytest.mark.parametrize('damage, expected', [
    (lambda folder: os.remove(os.path.join(folder, 'mini-imagenet-cache-val.pkl')),
     'mini-imagenet-cache-val.pkl: file not found'),
    (lambda folder: _truncate(os.path.join(folder, 'mini-imagenet-cache-test.pkl')),
     'mini-imagenet-cache-test.pkl: not a readable pickle'),
], ids=['missing', 'truncated'])
def test_mini_pickles_missing_or_truncated(tmp_path, damage, expected):
    write_mini_pickles(str(tmp_path))
    damage(str(tmp_path))
    assert expected in _read_error(0, str(tmp_path))


def test_a_folder_of_neither_form_names_both(tmp_path):
    message = _read_error(0, str(tmp_path))
    assert message.startswith(str(tmp_path / 'train.csv')) and 'mini-imagenet-cache-{train,val,test}.pkl' in message


def _first_image(folder, split='train'):
    with open(os.path.join(folder, f'{split}.csv')) as file:
        return os.path.join(folder, 'images', file.read().splitlines()[1].split(',')[0])


def _rewrite(path, text):
    with open(path, 'w') as file:
        file.write(text)


@pytest.mark.parametrize('damage, expected', [
    (lambda folder: os.remove(os.path.join(folder, 'test.csv')), '{folder}/test.csv: file not found'),
    (lambda folder: os.remove(_first_image(folder, 'val')),
     '{val_image}: file not found (listed in {folder}/val.csv)'),
    (lambda folder: _truncate(_first_image(folder)), '{train_image}: not a readable image'),
    (lambda folder: _rewrite(os.path.join(folder, 'val.csv'), 'filename,label\n'),
     '{folder}/val.csv: lists no images (an empty split)'),
    (lambda folder: _rewrite(os.path.join(folder, 'val.csv'), 'image,class\nn0185567200000001.jpg,n01855672\n'),
     '{folder}/val.csv: expected the header filename,label'),
    (lambda folder: _rewrite(os.path.join(folder, 'test.csv'), 'filename,label\nn0452216800000001.jpg\n'),
     '{folder}/test.csv: line 2: expected filename,label'),
], ids=['missing-csv', 'missing-image', 'truncated-jpeg', 'empty-split', 'wrong-header', 'short-row'])
def test_mini_folder_damaged(tmp_path, damage, expected):
    folder = str(tmp_path)
    write_mini_folder(folder)
    train_image, val_image = _first_image(folder), _first_image(folder, 'val')
    damage(folder)
    assert expected.format(folder=folder, train_image=train_image, val_image=val_image) in _read_error(0, folder)


def _replace_in_pickle(path, change):
    """Rewrites the tiered-ImageNet pickle `path` with change(its content) (read back with safe_pickle)."""
    _dump(path, change(imagenet.safe_pickle.load_file(path)))


def _with_image(encoded, index, replacement):
    return encoded[:index] + [replacement] + encoded[index + 1:]


@pytest.mark.parametrize('damage, expected', [
    (lambda folder: os.remove(os.path.join(folder, 'test_labels.pkl')), 'test_labels.pkl: file not found'),
    (lambda folder: _truncate(os.path.join(folder, 'train_images_png.pkl')),
     'train_images_png.pkl: not a readable pickle'),
    (lambda folder: _replace_in_pickle(os.path.join(folder, 'train_images_png.pkl'),
                                       lambda encoded: _with_image(encoded, 2, encoded[2][:len(encoded[2]) // 2])),
     'train_images_png.pkl: image 2: not a readable PNG image'),
    (lambda folder: _replace_in_pickle(os.path.join(folder, 'val_images_png.pkl'),
                                       lambda encoded: _with_image(encoded, 1, _png(np.zeros((80, 80, 3), np.uint8)))),
     'val_images_png.pkl: image 1: a 80x80 image; expected 84x84'),
    (lambda folder: _replace_in_pickle(os.path.join(folder, 'val_images_png.pkl'), lambda encoded: encoded[:-1]),
     'val_images_png.pkl holds 5 images but {folder}/val_labels.pkl labels 6'),
    (lambda folder: _replace_in_pickle(os.path.join(folder, 'test_labels.pkl'),
                                       lambda labels: {**labels, 'label_specific_str': ['volcano']}),
     'test_labels.pkl: label_specific runs from 0 to 1 but label_specific_str names 1 classes'),
    (lambda folder: _replace_in_pickle(os.path.join(folder, 'train_images_png.pkl'), lambda encoded: encoded[0]),
     'train_images_png.pkl: holds a ndarray; expected a list of PNG-encoded images'),
    (lambda folder: [_dump(os.path.join(folder, 'val_images_png.pkl'), []),
                     _dump(os.path.join(folder, 'val_labels.pkl'),
                           {'label_specific': np.zeros(0, np.int32), 'label_specific_str': []})],
     'val_labels.pkl: labels no images (an empty split)'),
], ids=['missing', 'truncated-pickle', 'truncated-png', 'mixed-sizes', 'fewer-images-than-labels',
        'label-without-name', 'not-a-list', 'empty-split'])
def test_tiered_damaged(tmp_path, damage, expected):
    folder = str(tmp_path)
    write_tiered(folder)
    damage(folder)
    message = _read_error(1, folder)
    assert message.startswith(folder) and expected.format(folder=folder) in message
