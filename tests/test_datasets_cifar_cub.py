"""CIFAR-FS, FC100 and CUB (fewshot/datasets/cifar.py, cub.py), with nothing downloaded: each on-disk form is a small
replica written here in its exact format (file names, byte-string keys, dtypes, channel-first rows, JPEG files), and
the tensorflow-datasets routes run under tfds' own `tfds.testing.mock_data`."""

import io
import os
import pickle
import struct
import tarfile

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from fewshot import data, datasets
from fewshot.datasets import cifar, cub
from fewshot.errors import DataError


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch):
    # A folder named in the environment would take the place of the tfds route these tests mean.
    for variable in ('CIFAR100_DIR', 'CUB_DIR'):
        monkeypatch.delenv(variable, raising=False)


def _check_draws(split, image_shape):
    """A 5-way 1-shot task stream over `split` draws float32 tasks in [0, 1] of the dataset's image shape."""
    tasks = data.EpisodeSampler(split, 5, 1, 2, seed=0).sample(0, 3)
    assert tasks.support_images.shape == (3, 5, *image_shape)
    assert tasks.query_images.shape == (3, 10, *image_shape)
    for images in (tasks.support_images, tasks.query_images):
        assert images.dtype == np.float32 and images.min() >= 0 and images.max() <= 1


def _classes(dataset):
    """{split: {class name: images [m, H, W, channels]}} of a loaded dataset."""
    found = {}
    for name in datasets.SPLITS:
        split = getattr(dataset.splits, name)
        found[name] = {str(split.names[c]): np.asarray(split.images[split.starts[c]:split.starts[c + 1]])
                       for c in range(len(split))}
    return found


def _sorted_by_bytes(images):
    return np.stack(sorted(images, key=lambda image: image.tobytes()))


# ----------------------------------------------------------------------------------------------------------------
# CIFAR-100: its python archive as Python 2's cPickle wrote it.

class _Python2Pickler(pickle._Pickler):
    """Protocol 2 as Python 2 wrote CIFAR-100's files: a byte string is a str opcode (SHORT_BINSTRING / BINSTRING),
    read back as bytes with encoding='bytes' (Python 3's protocol 2 would call _codecs.encode instead), and numpy's
    array reconstructor is named numpy.core.multiarray's (numpy 2 calls it numpy._core)."""
    dispatch = dict(pickle._Pickler.dispatch)

    def save_bytes(self, value):
        short = len(value) < 256
        self.write((pickle.SHORT_BINSTRING + bytes([len(value)]) if short
                    else pickle.BINSTRING + struct.pack('<i', len(value))) + value)
        self.memoize(value)
    dispatch[bytes] = save_bytes

    def save_global(self, obj, name=None):
        if obj is np._core.multiarray._reconstruct:
            self.write(pickle.GLOBAL + b'numpy.core.multiarray\n_reconstruct\n')
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def _python2_pickle(value):
    file = io.BytesIO()
    _Python2Pickler(file, 2).dump(value)
    return file.getvalue()


def _cifar_replica(seed=0, per_class=(5, 1)):
    """{'train', 'test': (images [N, 32, 32, 3] uint8, fine labels [N]), 'meta': None}: per_class images of each of
    the 100 classes in each file, in a shuffled order, as a file holds them."""
    rng = np.random.default_rng(seed)
    replica = {}
    for name, count in zip(('train', 'test'), per_class):
        labels = rng.permutation(np.repeat(np.arange(100), count))
        replica[name] = (rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8), labels)
    return replica


def _cifar_files(replica, names=cifar.FINE_NAMES):
    """{file name: bytes} of CIFAR-100's python archive holding `replica`, with meta naming `names`."""
    coarse_names = sorted(cifar.SUPERCLASSES)
    coarse_of = {fine: coarse_names.index(coarse) for coarse, fines in cifar.SUPERCLASSES.items() for fine in fines}
    files = {'meta': _python2_pickle({b'fine_label_names': [name.encode() for name in names],
                                      b'coarse_label_names': [name.encode() for name in coarse_names]})}
    for name, (images, labels) in replica.items():
        files[name] = _python2_pickle({
            b'batch_label': f'{name}ing batch 1 of 1'.encode(),
            b'filenames': [f'image_{i:05d}.png'.encode() for i in range(len(labels))],
            b'fine_labels': [int(label) for label in labels],
            b'coarse_labels': [coarse_of[cifar.FINE_NAMES[label]] for label in labels],
            # A row: the red plane, then green, then blue, each 32 rows of 32 pixels.
            b'data': np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(len(images), 3072)})
    return files


def _write_cifar_folder(folder, files):
    os.makedirs(os.path.join(folder, 'cifar-100-python'))
    for name, content in files.items():
        with open(os.path.join(folder, 'cifar-100-python', name), 'wb') as file:
            file.write(content)
    return str(folder)


def _write_cifar_tar(folder, files):
    os.makedirs(folder)
    with tarfile.open(os.path.join(folder, 'cifar-100-python.tar.gz'), 'w:gz') as tar:
        for name, content in files.items():
            member = tarfile.TarInfo(f'cifar-100-python/{name}')
            member.size = len(content)
            tar.addfile(member, io.BytesIO(content))
    return str(folder)


def _expected_cifar(replica, split):
    """{split: {class: images}} the loader should give: each class's train then test images, by pixel bytes."""
    images = np.concatenate([replica['train'][0], replica['test'][0]])
    labels = np.concatenate([replica['train'][1], replica['test'][1]])
    return {part: {name: _sorted_by_bytes(images[labels == cifar.FINE_NAMES.index(name)]) for name in split[part]}
            for part in datasets.SPLITS}


def _assert_same_classes(found, expected):
    assert {part: list(classes) for part, classes in found.items()} == \
        {part: list(classes) for part, classes in expected.items()}
    for part in expected:
        for name in expected[part]:
            np.testing.assert_array_equal(found[part][name], expected[part][name], err_msg=f'{part} {name}')


def test_cifar_split_lists_partition_cifar100():
    assert len(cifar.FINE_NAMES) == len(set(cifar.FINE_NAMES)) == 100
    assert all(len(fines) == 5 for fines in cifar.SUPERCLASSES.values()) and len(cifar.SUPERCLASSES) == 20
    for split, sizes in ((cifar.CIFAR_FS_SPLIT, (64, 16, 20)), (cifar.FC100_SPLIT, (60, 20, 20))):
        assert tuple(len(split[part]) for part in datasets.SPLITS) == sizes
        assert sorted(sum((list(split[part]) for part in datasets.SPLITS), [])) == list(cifar.FINE_NAMES)
        assert all(list(split[part]) == sorted(split[part]) for part in datasets.SPLITS)  # Label order.
    assert tuple(len(cifar.FC100_SUPERCLASSES[part]) for part in datasets.SPLITS) == (12, 4, 4)
    # A few members as the sources list them (r2d2's split files; TADAM's test superclasses).
    assert {'otter', 'sea', 'cattle'} <= set(cifar.CIFAR_FS_SPLIT['val'])
    assert {'baby', 'worm', 'sweet_pepper'} <= set(cifar.CIFAR_FS_SPLIT['test'])
    assert set(cifar.SUPERCLASSES['people']) <= set(cifar.FC100_SPLIT['test'])


def test_cifar_archive_folder_and_tar_give_the_replica_pixel_exact(tmp_path):
    replica = _cifar_replica()
    files = _cifar_files(replica)
    folder = _write_cifar_folder(tmp_path / 'extracted', files)
    tar = _write_cifar_tar(tmp_path / 'downloaded', files)
    cifar_fs = datasets.load('cifar_fs', folder, str(tmp_path / 'cache'))
    _assert_same_classes(_classes(cifar_fs), _expected_cifar(replica, cifar.CIFAR_FS_SPLIT))
    assert datasets.load('cifar_fs', tar, str(tmp_path / 'cache')).checksum == cifar_fs.checksum
    fc100 = datasets.load('fc100', tar, str(tmp_path / 'cache'))
    _assert_same_classes(_classes(fc100), _expected_cifar(replica, cifar.FC100_SPLIT))
    for dataset in (cifar_fs, fc100):
        assert dataset.image_shape == (32, 32, 3)
        _check_draws(dataset.splits.test, (32, 32, 3))


def test_cifar_tfds_mock_classes_are_the_mock_labels_grouped(tmp_path):
    with tfds.testing.mock_data(num_examples=600):  # Random examples, in which each of the 100 labels is drawn.
        builder = tfds.builder('cifar100')
        mock = [next(iter(tfds.as_numpy(builder.as_dataset(split=part, batch_size=600)))) for part in ('train', 'test')]
        dataset = datasets.load('cifar_fs', '', str(tmp_path / 'cache'))
    replica = {part: (examples['image'], examples['label']) for part, examples in zip(('train', 'test'), mock)}
    assert set(replica['train'][1]) == set(range(100))
    _assert_same_classes(_classes(dataset), _expected_cifar(replica, cifar.CIFAR_FS_SPLIT))


def _serving(examples):
    """A tfds `_as_dataset` serving {split: {feature: array}} (in place of the mock's random examples)."""
    def as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
        return tf.data.Dataset.from_tensor_slices(examples[str(split)])
    return as_dataset


def test_cifar_tfds_and_archive_give_identical_datasets(tmp_path):
    replica = _cifar_replica(seed=1)
    folder = _write_cifar_folder(tmp_path / 'extracted', _cifar_files(replica))
    rng = np.random.default_rng(2)
    examples = {}
    for part, (images, labels) in replica.items():  # As tfds stores them: shuffled, not in file order.
        order = rng.permutation(len(labels))
        examples[part] = {'image': images[order], 'label': labels[order].astype(np.int64),
                          'coarse_label': np.zeros(len(labels), np.int64), 'id': np.array([b'x'] * len(labels))}
    with tfds.testing.mock_data(as_dataset_fn=_serving(examples)):
        from_tfds = datasets.load('cifar_fs', '', str(tmp_path / 'cache'))
    from_archive = datasets.load('cifar_fs', folder, str(tmp_path / 'cache'))
    assert from_tfds.checksum == from_archive.checksum
    np.testing.assert_array_equal(from_tfds.splits.val.images, from_archive.splits.val.images)


@pytest.mark.parametrize('name, variable', [('cifar_fs', 'CIFAR100_DIR'), ('cub', 'CUB_DIR')])
def test_tfds_that_cannot_download_is_one_line_naming_the_variable(tmp_path, monkeypatch, name, variable):
    def offline(self, *args, **kwargs):
        raise ConnectionError('Failed to establish a new connection: [Errno -3] Temporary failure\nin name resolution')
    monkeypatch.setattr(tfds.core.DatasetBuilder, 'download_and_prepare', offline)
    with pytest.raises(DataError) as error:
        datasets.load(name, '', str(tmp_path / 'cache'))
    message = str(error.value)
    assert '\n' not in message and variable in message and '--dataset_dir' in message
    assert 'ConnectionError' in message


def _damage_cifar(folder, damage):
    """Applies one damage to an extracted replica; returns the file an error should name."""
    path = os.path.join(folder, 'cifar-100-python', 'meta' if damage != 'truncated' else 'train')
    if damage == 'missing':
        os.remove(path)
    elif damage == 'truncated':
        content = open(path, 'rb').read()
        open(path, 'wb').write(content[:len(content) // 2])
    elif damage == 'class_missing':
        open(path, 'wb').write(_python2_pickle({b'fine_label_names': [b'apple_pie'] + [
            name.encode() for name in cifar.FINE_NAMES[1:]]}))
    return path


@pytest.mark.parametrize('damage, says', [('missing', 'cannot be read'), ('truncated', 'not a readable pickle'),
                                          ('class_missing', "no class 'apple'")])
def test_cifar_damaged_archive_is_one_line_naming_the_file(tmp_path, damage, says):
    folder = _write_cifar_folder(tmp_path / 'extracted', _cifar_files(_cifar_replica(per_class=(1, 1))))
    path = _damage_cifar(folder, damage)
    with pytest.raises(DataError) as error:
        datasets.load('fc100', folder, str(tmp_path / 'cache'))
    assert path in str(error.value) and says in str(error.value) and '\n' not in str(error.value)


class _Payload:
    """A pickle whose loading would run code: it asks for os.system, to create a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def test_cifar_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / 'marker'
    files = _cifar_files(_cifar_replica(per_class=(1, 1)))
    files['train'] = _python2_pickle({b'data': _Payload(marker), b'fine_labels': [0]})
    folder = _write_cifar_folder(tmp_path / 'extracted', files)
    with pytest.raises(DataError, match='asks for (posix|os).system'):
        datasets.load('cifar_fs', folder, str(tmp_path / 'cache'))
    assert not marker.exists()


def test_cifar_cut_short_or_absent_archive_is_one_line_naming_it(tmp_path):
    folder = _write_cifar_tar(tmp_path / 'downloaded', _cifar_files(_cifar_replica(per_class=(1, 1))))
    archive = tmp_path / 'downloaded' / 'cifar-100-python.tar.gz'
    archive.write_bytes(archive.read_bytes()[:archive.stat().st_size // 2])
    with pytest.raises(DataError, match=f'^{archive}') as error:
        datasets.load('cifar_fs', folder, str(tmp_path / 'cache'))
    assert '\n' not in str(error.value)
    (tmp_path / 'empty').mkdir()
    with pytest.raises(DataError, match='neither cifar-100-python/ nor cifar-100-python.tar.gz'):
        datasets.load('fc100', str(tmp_path / 'empty'), str(tmp_path / 'cache'))


# ----------------------------------------------------------------------------------------------------------------
# CUB-200-2011: the CUB_200_2011 folder.

def _cub_replica(folder, seed=0, per_class=3):
    """Writes a CUB_200_2011 folder of 200 classes with per_class small JPEGs each (class 1's first grey), its
    index files listing the images in a shuffled order; returns {class id: (folder name, [paths under images/])}."""
    rng = np.random.default_rng(seed)
    classes = {class_id: (f'{class_id:03d}.Bird_{"ABC"[class_id % 3]}_number_{class_id}', []) for class_id in
               range(1, 201)}
    for class_id, (name, paths) in classes.items():
        os.makedirs(os.path.join(folder, 'images', name))
        for number in rng.permutation(per_class):
            path = f'{name}/Bird_{class_id}_{number:04d}_{rng.integers(1e6)}.jpg'
            grey = class_id == 1 and not paths
            pixels = rng.integers(0, 256, (int(rng.integers(20, 40)), int(rng.integers(20, 40)), 3), dtype=np.uint8)
            image = Image.fromarray(pixels[..., 0] if grey else pixels)
            image.save(os.path.join(folder, 'images', path), quality=90)
            paths.append(path)
    listed = [(path, class_id) for class_id, (_, paths) in classes.items() for path in paths]
    listed = [listed[i] for i in rng.permutation(len(listed))]
    with open(os.path.join(folder, 'classes.txt'), 'w') as file:
        file.writelines(f'{class_id} {name}\n' for class_id, (name, _) in classes.items())
    with open(os.path.join(folder, 'images.txt'), 'w') as file:
        file.writelines(f'{image_id} {path}\n' for image_id, (path, _) in enumerate(listed, 1))
    with open(os.path.join(folder, 'image_class_labels.txt'), 'w') as file:
        file.writelines(f'{image_id} {class_id}\n' for image_id, (_, class_id) in enumerate(listed, 1))
    return classes


def _pil_84(path_or_bytes):
    """PIL's own decode of a file, scaled to 96x96 bilinearly and centre-cropped to 84 (Chen et al.'s transform)."""
    source = io.BytesIO(path_or_bytes) if isinstance(path_or_bytes, bytes) else path_or_bytes
    with Image.open(source) as image:
        return np.asarray(image.convert('RGB').resize((96, 96), Image.Resampling.BILINEAR).crop((6, 6, 90, 90)))


def test_cub_split_rule_is_chen_et_al_s():
    splits = [cub.split_of(index) for index in range(200)]
    assert [splits.count(part) for part in datasets.SPLITS] == [100, 50, 50]
    assert splits[:8] == ['train', 'val', 'train', 'test'] * 2


def test_cub_folder_gives_the_replica_split_by_class_rank(tmp_path):
    folder = tmp_path / 'CUB_200_2011'
    classes = _cub_replica(str(folder))
    dataset = datasets.load('cub', str(folder), str(tmp_path / 'cache'))
    found = _classes(dataset)
    expected = {part: {} for part in datasets.SPLITS}
    for class_id, (name, paths) in sorted(classes.items()):  # Folder names sort as class ids here.
        expected[cub.split_of(class_id - 1)][name.lower()] = np.stack(
            [_pil_84(str(folder / 'images' / path)) for path in sorted(paths, key=os.path.basename)])
    _assert_same_classes(found, expected)
    assert '001.bird_b_number_1' in found['train'] and '002.bird_c_number_2' in found['val']
    assert '004.bird_b_number_4' in found['test']
    assert dataset.image_shape == (84, 84, 3)
    _check_draws(dataset.splits.val, (84, 84, 3))


def test_cub_tfds_mock_classes_are_the_mock_labels_grouped(tmp_path):
    decoders = tfds.decode.PartialDecoding({'image': True, 'image/filename': True, 'label': True, 'label_name': True},
                                           decoders={'image': tfds.decode.SkipDecoding()})
    with tfds.testing.mock_data(num_examples=2000):  # Random examples, in which each of the 200 labels is drawn.
        builder = tfds.builder('caltech_birds2011')
        mock = next(iter(tfds.as_numpy(builder.as_dataset(split='train', decoders=decoders, batch_size=2000))))
        dataset = datasets.load('cub', '', str(tmp_path / 'cache'))
    assert set(mock['label']) == set(range(200))
    found = _classes(dataset)
    for label in range(200):
        part = cub.split_of(label)
        [name] = [name for name in found[part] if name.startswith(f'{label + 1:03d}.')]
        # The mock serves its examples once as the train split and again as the test split.
        chosen = sorted(np.flatnonzero(mock['label'] == label),
                        key=lambda i: os.path.basename(mock['image/filename'][i]))
        expected = np.stack([_pil_84(mock['image'][i]) for i in chosen])
        np.testing.assert_array_equal(found[part][name], np.repeat(expected, 2, axis=0))


def test_cub_tfds_and_folder_give_identical_datasets(tmp_path):
    folder = tmp_path / 'CUB_200_2011'
    classes = _cub_replica(str(folder), seed=1, per_class=1)
    listed = [(path, class_id) for class_id, (_, paths) in classes.items() for path in paths]
    examples = {}
    for part, chosen in (('train', listed[::2]), ('test', listed[1::2])):  # CUB's halves, as tfds keeps them.
        examples[part] = {
            'image': np.array([(folder / 'images' / path).read_bytes() for path, _ in chosen], dtype=object),
            'image/filename': np.array([f'CUB_200_2011/images/{path}' for path, _ in chosen]),
            'label': np.array([class_id - 1 for _, class_id in chosen], np.int64),
            'label_name': np.array([path.split('/')[0].split('.', 1)[1].lower() for path, _ in chosen])}
    with tfds.testing.mock_data(as_dataset_fn=_serving(examples)):
        from_tfds = datasets.load('cub', '', str(tmp_path / 'cache'))
    from_folder = datasets.load('cub', str(folder), str(tmp_path / 'cache'))
    assert from_tfds.checksum == from_folder.checksum
    assert list(from_tfds.splits.test.names) == list(from_folder.splits.test.names)


def _damage_cub(folder, damage):
    """Applies one damage to a replica; returns the file an error should name."""
    first = os.path.join(folder, 'images', open(os.path.join(folder, 'images.txt')).readline().split()[1])
    if damage == 'index_missing':
        os.remove(os.path.join(folder, 'images.txt'))
        return os.path.join(folder, 'images.txt')
    if damage == 'image_missing':
        os.remove(first)
    elif damage == 'image_truncated':
        content = open(first, 'rb').read()
        open(first, 'wb').write(content[:len(content) // 2])
    elif damage == 'image_not_an_image':
        open(first, 'wb').write(b'not a JPEG at all')
    elif damage == 'class_not_listed':
        path = os.path.join(folder, 'image_class_labels.txt')
        lines = open(path).read().splitlines()
        open(path, 'w').write('\n'.join([lines[0].split()[0] + ' 201'] + lines[1:]) + '\n')
        return path
    elif damage == 'classes_missing':
        path = os.path.join(folder, 'classes.txt')
        lines = open(path).readlines()
        open(path, 'w').write(''.join(lines[:150]))
        return path
    return first


@pytest.mark.parametrize('damage, says', [
    ('index_missing', 'cannot be read'), ('image_missing', 'cannot be read'),
    ('image_truncated', 'not a readable image'), ('image_not_an_image', 'not a readable image'),
    ('class_not_listed', "class '201'"), ('classes_missing', 'lists 150 classes')])
def test_cub_damaged_folder_is_one_line_naming_the_file(tmp_path, damage, says):
    folder = str(tmp_path / 'CUB_200_2011')
    _cub_replica(folder, per_class=1)
    path = _damage_cub(folder, damage)
    with pytest.raises(DataError) as error:
        datasets.load('cub', folder, str(tmp_path / 'cache'))
    assert path in str(error.value) and says in str(error.value) and '\n' not in str(error.value)
    assert not [name for name in os.listdir(tmp_path / 'cache') if name.startswith('cub')]  # Nothing half-written.
