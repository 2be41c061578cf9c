"""The MNIST initialization lab: IDX reading, both data routes, task sets, heads, end to end."""

import gzip
import json
import os
import shutil
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import initialization_lab
import launch
from fewshot import mnist, network
from fewshot.data import DataError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b''.join(int(d).to_bytes(4, 'big') for d in array.shape)
    with gzip.open(path, 'wb') as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope='module')
def synthetic_mnist(tmp_path_factory):
    """IDX files of random 'digits': 60 train and 30 test images per class."""
    folder = tmp_path_factory.mktemp('mnist')
    rng = np.random.default_rng(0)
    for split, per_class in (('train', 60), ('t10k', 30)):
        labels = np.repeat(np.arange(10), per_class)
        images = rng.integers(0, 256, size=(len(labels), 28, 28))
        images[:, labels, labels] = 255  # A class-dependent mark, so the classes are learnable.
        _write_idx(folder / f'{split}-images-idx3-ubyte.gz', images)
        _write_idx(folder / f'{split}-labels-idx1-ubyte.gz', labels)
    return str(folder)


def test_create_task_datasets_gives_disjoint_sets_with_remapped_labels():
    labels = np.repeat(np.arange(10), 40)
    images = np.arange(len(labels) * 784).reshape(-1, 28, 28) % 251  # Every image distinct.
    images[np.arange(len(labels)), 0, 0] = np.arange(len(labels)) % 256
    images[np.arange(len(labels)), 0, 1] = np.arange(len(labels)) // 256
    sets = mnist.create_task_datasets((images.astype(np.uint8), labels), (7, 2), 15, 5, 10, seed=3)
    seen = []
    for name, per_class in (('train', 15), ('support', 5), ('query', 10)):
        x, y = sets[name]
        assert x.shape == (2 * per_class, 28, 28, 1) and x.dtype == np.float32
        assert np.bincount(y).tolist() == [per_class, per_class]
        for image, label in zip(x[..., 0], y):
            [index] = np.flatnonzero((images == np.rint(image * 255)).all(axis=(1, 2)))
            assert labels[index] == (7, 2)[label]  # Digit task_classes[i] has label i.
            seen.append(index)
    assert len(seen) == len(set(seen))  # Train, support and query are disjoint.
    again = mnist.create_task_datasets((images.astype(np.uint8), labels), (7, 2), 15, 5, 10, seed=3)
    np.testing.assert_array_equal(again['query'][0], sets['query'][0])


def test_too_few_examples_is_a_clear_error():
    labels = np.repeat(np.arange(10), 5)
    with pytest.raises(DataError, match='digit 3 has 5 examples'):
        mnist.create_task_datasets((np.zeros((50, 28, 28), np.uint8), labels), (3, 4))


def test_idx_reader_rejects_other_files(tmp_path):
    path = tmp_path / 'bad.gz'
    with gzip.open(path, 'wb') as f:
        f.write(b'not an idx file')
    with pytest.raises(DataError, match='not an IDX file'):
        mnist.read_idx(str(path))


def test_small_cnn_forward_matches_its_keras_model():
    keras.utils.set_random_seed(0)
    net = network.SmallCNN(2)
    model = net.keras_model()
    images = tf.random.uniform([3, 4, 28, 28, 1])
    logits = net.forward(network.tile(network.parameters(model), 3), images)
    expected = tf.stack([model(images[t]) for t in range(3)])
    np.testing.assert_allclose(logits, expected, atol=1e-5)


def test_new_head_keeps_the_feature_weights():
    keras.utils.set_random_seed(0)
    model = network.SmallCNN(10).keras_model()
    new = initialization_lab.with_new_head(model, 2, seed=1)
    assert new.output_shape == (None, 2)
    for old_layer, new_layer in zip(model.layers[:-1], new.layers[:-1]):
        for a, b in zip(old_layer.get_weights(), new_layer.get_weights()):
            np.testing.assert_array_equal(a, b)
    new.layers[0].kernel.assign(new.layers[0].kernel * 0)  # Fine-tuning the copy leaves the original.
    assert np.abs(model.layers[0].get_weights()[0]).max() > 0


def test_macro_scores():
    labels = np.array([0, 0, 0, 1])
    predictions = np.array([0, 0, 1, 1])
    s = initialization_lab.scores(labels, predictions)
    assert s['accuracy'] == 0.75
    assert s['precision'] == pytest.approx((1.0 + 0.5) / 2)
    assert s['recall'] == pytest.approx((2 / 3 + 1.0) / 2)
    assert s['f1'] == pytest.approx((0.8 + 2 / 3) / 2)


def test_every_method_runs_end_to_end_on_a_tiny_budget(synthetic_mnist, tmp_path):
    command = [sys.executable, os.path.join(REPO, 'initialization_lab.py'), f'--mnist_dir={synthetic_mnist}',
               f'--results_dir={tmp_path}', '--num_seeds=2', '--scratch_epochs=3', '--finetune_epochs=3',
               '--maml_iterations=3', '--maml_meta_batch_size=2', '--maml_adapt_steps=3', '--large_query=20',
               '--maml_val_interval=2', '--maml_val_tasks=4']
    result = launch.run(command, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    text = (tmp_path / 'initialization_lab' / 'summary.md').read_text()
    for method in initialization_lab.METHODS:
        assert f'| {method}: ' in text
    assert (tmp_path / 'initialization_lab' / 'learning_curves.png').exists()
    # Method 3's meta-training is validated at its start, every 2 iterations and at its end.
    curve = json.loads((tmp_path / 'initialization_lab' / 'per_seed.json').read_text())['maml_validation']
    assert curve['iteration'] == [0, 2, 3] and all(0 <= a <= 1 for a in curve['accuracy'])
    assert (tmp_path / 'initialization_lab' / 'maml_validation.png').exists()
    assert 'Meta-trained 3 iterations: meta-validation accuracy' in text
    # The write-up is redrawn from per_seed.json alone, identically.
    (tmp_path / 'initialization_lab' / 'summary.md').unlink()
    redraw = launch.run(command + ['--redraw'], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert redraw.returncode == 0, redraw.stderr[-3000:]
    assert (tmp_path / 'initialization_lab' / 'summary.md').read_text() == text


# The real files (CI sets MNIST_DIR) -------------------------------------------------

def test_idx_files_parse_with_the_documented_counts(mnist_dir):
    dataset = mnist.load_mnist(mnist_dir)
    assert dataset.train_images.shape == (60000, 28, 28) and dataset.test_images.shape == (10000, 28, 28)
    # Class counts as documented in ../shared/data/README.md.
    assert np.bincount(dataset.train_labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(dataset.test_labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert dataset.train_images.mean() / 255 == pytest.approx(0.1306604762738429)


def test_tfds_and_idx_routes_give_identical_arrays(mnist_dir, tmp_path):
    manual = tmp_path / 'tfds' / 'downloads' / 'manual'
    os.makedirs(manual)
    for name in mnist.FILES.values():
        shutil.copyfile(os.path.join(mnist_dir, name), manual / name)
    from_tfds = mnist.load_mnist(None, str(tmp_path))
    from_idx = mnist.load_mnist(mnist_dir)
    for a, b in zip(from_tfds, from_idx):
        np.testing.assert_array_equal(a, b)
