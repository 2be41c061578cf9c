"""Named datasets (fewshot/datasets): the cache every source is read into, the numpy-only unpickler, the
ten-class sets (MNIST, Fashion-MNIST, Animal-MNIST) and cross-domain meta-testing (--test_dataset,
cross_domain.py). The mini-/tiered-ImageNet, CIFAR and CUB readers have their own test files."""

import gzip
import json
import os
import pickle
import re
import sys

import numpy as np
import pytest

import launch
from fewshot import data, datasets
from fewshot.datasets import cache, idx, safe_pickle
from fewshot.errors import DataError
from conftest import shared_data_dir, write_synthetic_archives

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _classes(shapes, seed=0):
    """(split, name, images) of classes of the given (split, count) with 6x5x3 random uint8 images."""
    rng = np.random.default_rng(seed)
    return [(split, f'{split}{i}', rng.integers(0, 256, (count, 6, 5, 3), dtype=np.uint8))
            for i, (split, count) in enumerate(shapes)]


# The cache ----------------------------------------------------------------------------------------

def test_a_cache_gives_back_each_split_class_by_class_memory_mapped(tmp_path):
    classes = _classes([('train', 3), ('train', 5), ('test', 2), ('test', 4)])
    cache.write(str(tmp_path / 'c'), classes, (6, 5, 3), 'test data')
    images, index = cache.read(str(tmp_path / 'c'))
    assert isinstance(images, cache.ImageRows) and images.dtype == np.uint8 and images.shape == (14, 6, 5, 3)
    assert index['splits']['val'] == {'starts': [8], 'names': []}  # An empty split between two others.
    splits = data.Splits(*(datasets.split_of(images, index['splits'][s]) for s in datasets.SPLITS))
    assert [len(splits.train), len(splits.val), len(splits.test)] == [2, 0, 2]
    for split, name, expected in classes:
        part = getattr(splits, split)
        c = list(part.names).index(name)
        np.testing.assert_array_equal(part.images[part.starts[c]:part.starts[c + 1]], expected)
    cache.write(str(tmp_path / 'd'), classes, (6, 5, 3), 'test data')
    assert cache.read(str(tmp_path / 'd'))[1]['checksum'] == index['checksum']
    changed = [(s, n, x.copy()) for s, n, x in classes]
    changed[-1][2][0, 0, 0, 0] ^= 1
    cache.write(str(tmp_path / 'e'), changed, (6, 5, 3), 'test data')
    assert cache.read(str(tmp_path / 'e'))[1]['checksum'] != index['checksum']


@pytest.mark.parametrize('classes, message', [
    (_classes([('test', 2), ('train', 2)]), "class 'train1' of split 'train' comes after the test split"),
    ([('train', 'a', np.zeros((2, 6, 5, 3), np.uint8)), ('val', 'a', np.zeros((2, 6, 5, 3), np.uint8))],
     "class 'a' is in the train split and again in the val split"),
    ([('train', 'a', np.zeros((2, 6, 5, 3), np.uint8)), ('train', 'b', np.zeros((2, 7, 5, 3), np.uint8))],
     'images of mixed sizes'),
    ([('train', 'a', np.zeros((2, 6, 5, 3), np.float32))], 'type float32'),
    ([('train', 'a', np.zeros((0, 6, 5, 3), np.uint8))], 'expected at least one'),
    ([], 'no classes found'),
])
def test_a_cache_refuses_inconsistent_classes_and_leaves_nothing(tmp_path, classes, message):
    with pytest.raises(DataError, match=message):
        cache.write(str(tmp_path / 'c'), iter(classes), (6, 5, 3), 'test data')
    assert os.listdir(tmp_path) == []


def test_a_changed_source_file_gets_a_new_cache_and_an_unchanged_one_reuses_it(tmp_path, monkeypatch):
    folder = tmp_path / 'animal'
    _write_animal(folder, np.arange(20) % 10)
    monkeypatch.delenv('ANIMAL_MNIST_DIR', raising=False)
    first = datasets.load('animal_mnist', str(folder), str(tmp_path / 'cache'))
    again = datasets.load('animal_mnist', str(folder), str(tmp_path / 'cache'))
    assert again.checksum == first.checksum and len(os.listdir(tmp_path / 'cache')) == 1
    _write_animal(folder, np.arange(20) % 10, images=np.full((20, 28, 28), 7, np.uint8))
    changed = datasets.load('animal_mnist', str(folder), str(tmp_path / 'cache'))
    assert changed.checksum != first.checksum and len(os.listdir(tmp_path / 'cache')) == 2
    assert changed.splits.test.images[0].max() == 7


# Reading pickles ----------------------------------------------------------------------------------

class _Crafted:
    """A pickle that, loaded with pickle.load, creates a file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, 'w')


def test_a_crafted_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / 'ran'
    for value in (_Crafted(str(marker)), {'image_data': [_Crafted(str(marker))]},
                  np.array([_Crafted(str(marker))], dtype=object)):
        with pytest.raises(DataError, match=r'x\.pkl: the pickle asks for io\.open; only numpy arrays'):
            safe_pickle.load(pickle.dumps(value), 'x.pkl')
        assert not marker.exists()
    with pytest.raises(DataError, match='x.pkl: holds an array of Python objects'):
        safe_pickle.load(pickle.dumps(np.array(['a', 1], dtype=object)), 'x.pkl')
    with pytest.raises(DataError, match='x.pkl: not a readable pickle'):
        safe_pickle.load(pickle.dumps(np.zeros(100))[:-30], 'x.pkl')


@pytest.mark.parametrize('protocol', [2, 4, 5])
def test_arrays_and_plain_data_are_read_back_exactly(protocol):
    value = {'image_data': np.arange(24, dtype=np.uint8).reshape(2, 3, 4), 'class_dict': {'n01': [0, 1]},
             b'fine_labels': [3, 4], 'scale': np.float32(2.5), 'labels': np.arange(3, dtype=np.int64)}
    loaded = safe_pickle.load(pickle.dumps(value, protocol=protocol), 'x.pkl')
    assert loaded.keys() == value.keys() and loaded['class_dict'] == {'n01': [0, 1]}
    for key in ('image_data', 'labels'):
        assert loaded[key].dtype == value[key].dtype
        np.testing.assert_array_equal(loaded[key], value[key])


# The ten-class sets -------------------------------------------------------------------------------

def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b''.join(int(d).to_bytes(4, 'big') for d in array.shape)
    with gzip.open(path, 'wb') as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_mnist(folder, labels, seed=0):
    """t10k IDX files in `folder`: an image per label, class c's images bright in row c (learnable)."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, (len(labels), 28, 28))
    images[np.arange(len(labels)), 2 * np.asarray(labels) + 4] = 250
    _write_idx(os.path.join(folder, 't10k-images-idx3-ubyte.gz'), images)
    _write_idx(os.path.join(folder, 't10k-labels-idx1-ubyte.gz'), np.asarray(labels))
    return images.astype(np.uint8)


def _write_animal(folder, labels, images=None):
    os.makedirs(folder, exist_ok=True)
    images = np.arange(len(labels) * 784, dtype=np.uint8).reshape(-1, 28, 28) if images is None else images
    for name, value in (('animal_data_version_3.gz', images), ('animal_label_version_3.gz', np.asarray(labels))):
        with gzip.open(os.path.join(folder, name), 'wb') as f:
            pickle.dump(value, f, protocol=4)
    return images


def test_mnist_files_give_ten_meta_test_classes_in_label_order(tmp_path):
    labels = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 0, 0, 8, 2, 4, 6, 7, 7])
    images = write_mnist(tmp_path / 'mnist', labels)
    dataset = datasets.load('mnist', str(tmp_path / 'mnist'), str(tmp_path / 'cache'))
    assert dataset.image_shape == (28, 28, 1) and len(dataset.splits.train) == len(dataset.splits.val) == 0
    test = dataset.splits.test
    assert list(test.names) == [str(d) for d in range(10)]
    assert list(test.counts) == list(np.bincount(labels))
    for digit in range(10):
        np.testing.assert_array_equal(test.images[test.starts[digit]:test.starts[digit + 1], :, :, 0],
                                      images[labels == digit])


def test_animal_mnist_is_read_through_the_safe_unpickler(tmp_path):
    labels = np.arange(30) % 10
    images = _write_animal(tmp_path / 'animal', labels)
    test = datasets.load('animal_mnist', str(tmp_path / 'animal'), str(tmp_path / 'cache')).splits.test
    assert list(test.names) == list(idx.ANIMAL_CLASSES)
    np.testing.assert_array_equal(test.images[test.starts[2]:test.starts[3], :, :, 0], images[labels == 2])
    marker = tmp_path / 'ran'
    with gzip.open(tmp_path / 'animal' / 'animal_label_version_3.gz', 'wb') as f:
        pickle.dump(_Crafted(str(marker)), f)
    with pytest.raises(DataError, match='animal_label_version_3.gz: the pickle asks for io.open'):
        datasets.load('animal_mnist', str(tmp_path / 'animal'), str(tmp_path / 'cache2'))
    assert not marker.exists() and not (tmp_path / 'cache2').exists()


@pytest.mark.parametrize('damage, message', [
    (lambda f: os.remove(f / 't10k-labels-idx1-ubyte.gz'), 't10k-labels-idx1-ubyte.gz: file not found'),
    (lambda f: _write_idx(str(f / 't10k-labels-idx1-ubyte.gz'), np.arange(19) % 10), 'labels of shape'),
    (lambda f: _write_idx(str(f / 't10k-labels-idx1-ubyte.gz'), np.arange(20) % 9), 'every class present'),
    (lambda f: _write_idx(str(f / 't10k-images-idx3-ubyte.gz'), np.zeros((20, 32, 32))), r'expected \[N, 28, 28\]'),
])
def test_damaged_mnist_files_are_one_error_naming_them(tmp_path, damage, message):
    write_mnist(tmp_path / 'mnist', np.arange(20) % 10)
    damage(tmp_path / 'mnist')
    with pytest.raises(DataError, match=message):
        datasets.load('mnist', str(tmp_path / 'mnist'), str(tmp_path / 'cache'))
    assert not os.path.exists(tmp_path / 'cache') or os.listdir(tmp_path / 'cache') == []


@pytest.mark.parametrize('name, variable, counts', [
    ('mnist', 'MNIST_DIR', [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]),
    ('fashion_mnist', 'FASHION_MNIST_DIR', [1000] * 10),
    ('animal_mnist', 'ANIMAL_MNIST_DIR', [1000] * 10),
])
def test_the_real_ten_class_sets_load_with_their_documented_counts(name, variable, counts, tmp_path):
    dataset = datasets.load(name, shared_data_dir(variable), str(tmp_path))
    assert list(dataset.splits.test.counts) == counts
    images = np.asarray(dataset.splits.test.images)
    assert images.dtype == np.uint8 and images.max() == 255 and np.median(images) < 128  # Ink high, as Omniglot's.


# Sampling uint8 classes -----------------------------------------------------------------------------

def test_uint8_classes_give_the_tasks_of_the_same_images_in_float32(tmp_path):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (7, 9, 6, 6, 3), dtype=np.uint8)
    flat = data.ClassImages(images.reshape(-1, 6, 6, 3), np.arange(0, 64, 9), None)
    as_uint8 = data.EpisodeSampler(flat, 4, 2, 3, seed=5).sample(2, 6)
    as_float = data.EpisodeSampler(images.astype(np.float32) / 255, 4, 2, 3, seed=5).sample(2, 6)
    for a, b in zip(as_uint8, as_float):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


# Cross-domain meta-testing --------------------------------------------------------------------------

TINY = ['--num_filters=4', '--n_way=3', '--k_shot=1', '--num_query=2', '--meta_batch_size=2', '--num_val_classes=4',
        '--num_train_classes=10', '--num_val_tasks=4', '--num_test_tasks=8', '--num_iterations=2',
        '--val_interval=2', '--progress=false']


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp('cross_domain')
    write_mnist(folder / 'mnist', np.arange(60) % 10)
    return {'omniglot': write_synthetic_archives(str(folder / 'omniglot')), 'mnist': str(folder / 'mnist'),
            'cache': str(folder / 'cache')}


def _command(script, arguments, world, results_dir):
    return launch.run([sys.executable, os.path.join(REPO, script), f'--data_dir={world["omniglot"]}',
                       f'--cache_dir={world["cache"]}', f'--results_dir={results_dir}', *TINY, *arguments],
                      capture_output=True, text=True, cwd=REPO, timeout=300,
                      env={**os.environ, 'MNIST_DIR': world['mnist']})


def test_every_learner_is_meta_tested_on_the_same_cross_domain_tasks(world, tmp_path):
    scores = {}
    for script in ('maml.py', 'protonet.py'):
        done = _command(script, ['--test_dataset=mnist', '--run_name=run'], world, tmp_path / script)
        assert done.returncode == 0, done.stderr[-2000:]
        assert 'mnist 3-way 1-shot meta-test accuracy' in done.stdout
        with open(tmp_path / script / 'run' / 'meta_test_mnist_3way1shot.json') as f:
            scores[script] = json.load(f)
        assert scores[script]['test_tasks'] == 8 and 0 <= scores[script]['test_post_accuracy'] <= 1
    assert scores['maml.py']['task_checksum'] == scores['protonet.py']['task_checksum']
    assert scores['maml.py']['data_checksum'] == scores['protonet.py']['data_checksum']
    # A finished run, resumed with another test shape: ProtoNet scores any N; the run itself is unchanged.
    before = {name: (tmp_path / 'protonet.py' / 'run' / name).read_bytes() for name in ('summary.json', 'model.keras')}
    done = _command('protonet.py', ['--test_dataset=mnist', '--test_n_way=10', '--run_name=run', '--resume'], world,
                    tmp_path / 'protonet.py')
    assert done.returncode == 0, done.stderr[-2000:]
    with open(tmp_path / 'protonet.py' / 'run' / 'meta_test_mnist_10way1shot.json') as f:
        ten_way = json.load(f)
    assert ten_way['n_way'] == 10 and ten_way['task_checksum'] != scores['protonet.py']['task_checksum']
    assert before == {name: (tmp_path / 'protonet.py' / 'run' / name).read_bytes() for name in before}


@pytest.mark.parametrize('script, arguments, message', [
    ('maml.py', ['--test_dataset=mnist', '--test_n_way=10'], r'--test_n_way 10: FO-MAML adapts a head of 3 outputs'),
    ('protonet.py', ['--test_dataset=mnist', '--test_n_way=11'], r'--test_n_way 11 exceeds the 10 classes of the mn'),
    ('protonet.py', ['--dataset=mnist'], r'--dataset mnist: its classes are all meta-test'),
    ('protonet.py', ['--dataset=mini_imagenet'], r'--dataset mini_imagenet: give the folder of its files'),
])
def test_a_cross_domain_test_that_cannot_work_is_one_error_line_before_training(world, tmp_path, script, arguments,
                                                                                 message):
    done = _command(script, [*arguments, '--run_name=run'], world, tmp_path / 'runs')
    errors = [line for line in done.stderr.splitlines() if line.startswith('error:')]
    assert done.returncode == 1 and len(errors) == 1 and 'Traceback' not in done.stderr, done.stderr[-2000:]
    assert re.search(message, errors[0]), errors[0]
    assert not (tmp_path / 'runs').exists()


def test_released_omniglot_weights_recognise_mnist_digits_from_one_example(tmp_path):
    """The kept ProtoNet (Omniglot 5-way 1-shot) through cross_domain.py on the real MNIST: far above chance."""
    shared_data_dir('MNIST_DIR')
    table = tmp_path / 'table.md'
    done = launch.run([sys.executable, os.path.join(REPO, 'cross_domain.py'),
                       os.path.join(REPO, 'reference', 'protonet_paper_5way1shot'), '--test_datasets=mnist',
                       '--shapes=5x1', f'--keep_dir={tmp_path / "kept"}', f'--table={table}'],
                      capture_output=True, text=True, cwd=REPO, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    with open(tmp_path / 'kept' / 'protonet_paper_5way1shot' / 'meta_test_mnist_5way1shot.json') as f:
        result = json.load(f)
    assert result['test_tasks'] == 600 and result['test_post_accuracy'] - result['test_post_ci95'] > 0.5  # Chance: 0.2.
    row = [line for line in table.read_text().splitlines() if 'protonet_paper_5way1shot' in line]
    assert len(row) == 1 and f"{100 * result['test_post_accuracy']:.2f}" in row[0]


def test_dataset_py_prepares_a_named_dataset_and_measures_it(tmp_path):
    write_mnist(tmp_path / 'mnist', np.arange(200) % 10)
    done = launch.run([sys.executable, os.path.join(REPO, 'dataset.py'), '--dataset=mnist',
                       f'--dataset_dir={tmp_path / "mnist"}', f'--cache_dir={tmp_path / "cache"}', '--batches=3',
                       '--iterations=2'], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert 'mnist: classes 0 / 0 / 10 (train / val / test), 200 images of 28x28x1' in done.stdout
    assert re.search(r'FO-MAML .* s per meta-iteration over 2', done.stdout)
    assert re.search(r'resident memory: [\d.]+ GB of the process', done.stdout)
    assert len(os.listdir(tmp_path / 'cache')) == 1


def test_a_run_whose_schedule_is_fixed_is_tested_at_its_checkpoint_but_never_extended(world, tmp_path):
    """MAML++ spreads its schedule over --num_iterations, so a resumed run must keep it; a resume that trains
    nothing (cross_domain.py's, at the checkpoint) may give fewer, and the weights stay the checkpoint's."""
    done = _command('maml_plusplus.py', ['--run_name=run', '--num_iterations=4'], world, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    checkpoint = (tmp_path / 'run' / 'checkpoint.npz').read_bytes()
    done = _command('maml_plusplus.py', ['--run_name=run', '--resume', '--num_iterations=2', '--test_dataset=mnist'],
                    world, tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / 'run' / 'meta_test_mnist_3way1shot.json').exists()
    assert (tmp_path / 'run' / 'checkpoint.npz').read_bytes() == checkpoint
    done = _command('maml_plusplus.py', ['--run_name=run', '--resume', '--num_iterations=6'], world, tmp_path)
    assert done.returncode == 1 and 'was started with other settings (num_iterations)' in done.stderr
