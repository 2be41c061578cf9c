"""Data: both sources agree, the cache is safe, splits and episodes keep their invariants."""

import json
import os
import shutil
import zipfile

import numpy as np
import pytest
from PIL import Image

from fewshot import data
from conftest import REPO, SYNTHETIC_LAYOUT, write_synthetic_archives

NUM_SYNTHETIC = sum(sum(a.values()) for a in SYNTHETIC_LAYOUT.values())


def test_archives_preprocess_to_28x28_strokes_on_background(synthetic_dir, tmp_path):
    omniglot = data.load_omniglot(synthetic_dir, str(tmp_path))
    assert omniglot.images.shape == (NUM_SYNTHETIC, 20, 28, 28)
    assert omniglot.images.dtype == np.uint8
    # Strokes are 1.0 (255) on a 0.0 background: most pixels are background.
    assert np.median(omniglot.images) == 0 and omniglot.images.max() == 255
    assert omniglot.background.sum() == sum(SYNTHETIC_LAYOUT['images_background'].values())
    assert list(omniglot.alphabets[:6]) == ['Alpha'] * 6


def test_zip_and_extracted_folder_give_identical_arrays(synthetic_dir, tmp_path):
    extracted = write_synthetic_archives(tmp_path / 'extracted', zipped=False)
    from_zip = data.load_omniglot(synthetic_dir, str(tmp_path / 'cache1'))
    from_folder = data.load_omniglot(extracted, str(tmp_path / 'cache2'))
    np.testing.assert_array_equal(from_zip.images, from_folder.images)
    assert from_zip.checksum == from_folder.checksum


def _feed_tfds_offline(archive_dir, tfds_dir):
    """Puts local zips into tfds' download cache the way ../shared/data/README.md describes."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.download import resource as resource_lib
    builder = tfds.builder('omniglot', data_dir=tfds_dir)
    downloads = os.path.join(tfds_dir, 'downloads', 'omniglot')
    os.makedirs(downloads, exist_ok=True)
    for url, info in builder.url_infos.items():
        target = os.path.join(downloads, resource_lib.get_dl_fname(url, info.checksum))
        shutil.copyfile(os.path.join(archive_dir, info.filename), target)
        with open(target + '.INFO', 'w') as f:
            json.dump({'urls': [url], 'original_fname': info.filename}, f)


def test_tfds_and_archives_give_identical_arrays(real_omniglot_dir, real_omniglot, tmp_path):
    # tfds' builder insists on all 1623 characters of 50 alphabets, so this runs on the real archives.
    _feed_tfds_offline(real_omniglot_dir, str(tmp_path / 'tfds'))
    from_tfds = data.load_omniglot(None, str(tmp_path))
    np.testing.assert_array_equal(from_tfds.images, real_omniglot.images)
    np.testing.assert_array_equal(from_tfds.alphabets, real_omniglot.alphabets)
    np.testing.assert_array_equal(from_tfds.background, real_omniglot.background)
    assert from_tfds.checksum == real_omniglot.checksum


def test_second_load_uses_cache_and_corrupt_cache_is_rebuilt(synthetic_dir, tmp_path, monkeypatch):
    first = data.load_omniglot(synthetic_dir, str(tmp_path))
    [cache] = [p for p in os.listdir(tmp_path) if p.endswith('.npz')]
    calls, read_archives = [], data.read_archives
    monkeypatch.setattr(data, 'read_archives', lambda d: calls.append(d) or read_archives(d))
    assert data.load_omniglot(synthetic_dir, str(tmp_path)).checksum == first.checksum
    assert calls == []  # Served from the cache.
    path = tmp_path / cache
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])  # A partial write.
    rebuilt = data.load_omniglot(synthetic_dir, str(tmp_path))
    assert calls == [synthetic_dir]
    np.testing.assert_array_equal(rebuilt.images, first.images)


def test_cache_with_altered_pixels_is_rebuilt(synthetic_dir, tmp_path):
    first = data.load_omniglot(synthetic_dir, str(tmp_path))
    [cache] = [p for p in os.listdir(tmp_path) if p.endswith('.npz')]
    tampered = dict(np.load(tmp_path / cache))
    tampered['images'] = tampered['images'].copy()
    tampered['images'][0, 0, 0, 0] ^= 1
    np.savez(tmp_path / cache, **tampered)
    np.testing.assert_array_equal(data.load_omniglot(synthetic_dir, str(tmp_path)).images, first.images)


@pytest.mark.parametrize('make, message', [
    (lambda d: os.path.join(d, 'missing'), 'folder does not exist'),
    (lambda d: d, 'expected images_background.zip'),
    (lambda d: _corrupt_zip(d), 'not a valid zip archive'),
    (lambda d: _empty_zip(d), 'holds no Omniglot PNGs'),
])
def test_bad_data_folders_get_clear_errors(tmp_path, make, message):
    with pytest.raises(data.DataError, match=message):
        data.load_omniglot(make(str(tmp_path)), str(tmp_path / 'cache'))


def _corrupt_zip(folder):
    for archive in data.ARCHIVES:
        with open(os.path.join(folder, archive + '.zip'), 'wb') as f:
            f.write(b'PK\x03\x04 this is not really a zip')
    return folder


def _empty_zip(folder):
    for archive in data.ARCHIVES:
        with zipfile.ZipFile(os.path.join(folder, archive + '.zip'), 'w') as zf:
            zf.writestr('README.txt', 'nothing here')
    return folder


# Splits -------------------------------------------------------------------------


def _fake_omniglot(num_characters=40, num_background=25):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(num_characters, 20, 28, 28), dtype=np.uint8)
    return data.Omniglot(images=images, alphabets=np.array(['a'] * num_characters),
                         background=np.arange(num_characters) < num_background, checksum='x')


def _rows(split_images, omniglot):
    """Which characters of `omniglot` a split holds (matched by their pixels)."""
    keys = {omniglot.images[i].tobytes(): i for i in range(len(omniglot.images))}
    return {keys[np.rint(c * 255).astype(np.uint8).tobytes()] for c in split_images}


def test_random_split_is_disjoint_complete_and_deterministic():
    omniglot = _fake_omniglot()
    splits = data.make_splits(omniglot, 'random', 20, 8, seed=3)
    train, val, test = (_rows(s, omniglot) for s in (splits.train, splits.val, splits.test))
    assert (len(train), len(val), len(test)) == (20, 8, 12)
    assert not (train & val) and not (train & test) and not (val & test)
    again = data.make_splits(omniglot, 'random', 20, 8, seed=3)
    np.testing.assert_array_equal(again.train, splits.train)
    other = data.make_splits(omniglot, 'random', 20, 8, seed=4)
    assert _rows(other.train, omniglot) != train


def test_lake_split_trains_on_background():
    omniglot = _fake_omniglot()
    splits = data.make_splits(omniglot, 'lake', num_val_classes=5, seed=0)
    assert _rows(splits.train, omniglot) == set(range(25))
    assert len(splits.val) == 5 and len(splits.test) == 10
    assert _rows(splits.val, omniglot) | _rows(splits.test, omniglot) == set(range(25, 40))


def test_rotations_add_three_rotated_classes_to_train_only():
    omniglot = _fake_omniglot()
    plain = data.make_splits(omniglot, 'random', 20, 8, seed=3)
    rotated = data.make_splits(omniglot, 'random', 20, 8, seed=3, rotations=True)
    assert len(rotated.train) == 80 and len(rotated.val) == 8
    np.testing.assert_array_equal(rotated.train[20:40], np.rot90(plain.train, 1, axes=(2, 3)))


def test_split_sizes_are_checked():
    with pytest.raises(data.DataError, match='num_train_classes'):
        data.make_splits(_fake_omniglot(), 'random', 35, 5)


# Episodes -----------------------------------------------------------------------


def _class_of(image, images):
    matches = np.flatnonzero((images == image).all(axis=(2, 3)).any(axis=1))
    assert len(matches) == 1
    return matches[0]


def test_episodes_shapes_labels_and_disjoint_support_query():
    images = np.random.default_rng(1).random((30, 20, 28, 28)).astype(np.float32)
    sampler = data.EpisodeSampler(images, n_way=5, k_shot=3, num_query=4, seed=7)
    episodes = sampler.sample(0, num_tasks=6)
    assert episodes.support_images.shape == (6, 15, 28, 28, 1)
    assert episodes.query_images.shape == (6, 20, 28, 28, 1)
    assert episodes.support_labels.dtype == np.int32
    classes_for_label0 = set()
    for t in range(6):
        support, query = episodes.support_images[t, ..., 0], episodes.query_images[t, ..., 0]
        # Every label is used K (Q) times and maps to one class, distinct across labels.
        assert np.bincount(episodes.support_labels[t]).tolist() == [3] * 5
        assert np.bincount(episodes.query_labels[t]).tolist() == [4] * 5
        label_class = {}
        for x, y in zip(np.concatenate([support, query]),
                        np.concatenate([episodes.support_labels[t], episodes.query_labels[t]])):
            assert label_class.setdefault(y, _class_of(x, images)) == _class_of(x, images)
        assert len(set(label_class.values())) == 5
        classes_for_label0.add(label_class[0])
        # No drawing is both in the support and in the query set.
        assert not {x.tobytes() for x in support} & {x.tobytes() for x in query}
    assert len(classes_for_label0) > 1  # The class-to-label assignment changes between tasks.


def test_episodes_depend_only_on_seed_and_index():
    images = np.random.default_rng(1).random((30, 20, 28, 28)).astype(np.float32)
    a = data.EpisodeSampler(images, 5, 1, 5, seed=7)
    b = data.EpisodeSampler(images, 5, 1, 5, seed=7)
    for x, y in zip(a.sample(12, 4), b.sample(12, 4)):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.sample(12, 4).query_images, a.sample(13, 4).query_images)
    assert not np.array_equal(a.sample(12, 4).query_images,
                              data.EpisodeSampler(images, 5, 1, 5, seed=8).sample(12, 4).query_images)
    batches = a.fixed_batches(num_tasks=10, batch_size=4)
    assert [len(b.support_images) for b in batches] == [4, 4, 2]


def _streams():
    from fewshot import regression
    images = np.random.default_rng(1).random((30, 20, 28, 28)).astype(np.float32)
    return {'omniglot': lambda seed: data.EpisodeSampler(images, 5, 1, 5, seed=seed, rotate=True),
            'sine': lambda seed: regression.SineSampler(k_shot=5, num_query=10, seed=seed)}


@pytest.mark.parametrize('source', ['omniglot', 'sine'])
def test_evaluation_tasks_do_not_depend_on_the_batch_size(source):
    """Task j of a fixed evaluation set depends on (seed, j) alone: 16 tasks drawn in batches of 4, 5, 16
    and 32 are the same tasks in the same order (the old sampler seeded each batch by its position, so
    batches of 4 and 32 shared no task)."""
    stream = _streams()[source]
    by_size = {size: stream(3).fixed_batches(16, size) for size in (4, 5, 16, 32)}
    assert [data.num_tasks(b) for b in by_size[5]] == [5, 5, 5, 1]
    checksums = {size: data.tasks_checksum(batches) for size, batches in by_size.items()}
    assert len(set(checksums.values())) == 1, checksums
    whole = by_size[16][0]
    for field, concatenated in zip(whole, data.concatenate_tasks(by_size[4])):
        np.testing.assert_array_equal(field, concatenated)
    # The first 10 tasks of a larger set are the tasks of a set of 10; another seed gives other tasks.
    assert data.tasks_checksum(stream(3).fixed_batches(10, 3)) == \
        data.tasks_checksum([data.task_slice(whole, 0, 10)])
    assert data.tasks_checksum(stream(4).fixed_batches(16, 16)) != checksums[16]


def test_tasks_checksum_tells_tasks_apart_not_their_grouping():
    batch = _streams()['omniglot'](0).sample(0, 6)
    grouped = [data.task_slice(batch, 0, 2), data.task_slice(batch, 2, 6)]
    assert data.tasks_checksum(grouped) == data.tasks_checksum([batch])
    swapped = data.concatenate_tasks([data.task_slice(batch, 1, 2), data.task_slice(batch, 0, 1),
                                      data.task_slice(batch, 2, 6)])
    assert data.tasks_checksum([swapped]) != data.tasks_checksum([batch])


@pytest.mark.parametrize('n_way, k_shot, num_query, message', [
    (31, 1, 1, '^n_way 31 exceeds the 30 classes'),
    (5, 6, 15, r'^k_shot \+ num_query must be at most 20'),
])
def test_impossible_tasks_are_refused(n_way, k_shot, num_query, message):
    """In the arguments' terms (the commands check first, in their flags': test_training.py)."""
    images = np.zeros((30, 20, 28, 28), np.float32)
    with pytest.raises(data.DataError, match=message):
        data.EpisodeSampler(images, n_way, k_shot, num_query, seed=0)


def _write_image_folder(folder, counts, sizes, mode='L'):
    """A folder per class of PNG and JPEG images of random sizes; class c's images are the value c/10."""
    rng = np.random.default_rng(0)
    for index, count in enumerate(counts):
        os.makedirs(folder / f'class_{index}')
        for j in range(count):
            size = tuple(int(v) for v in rng.choice(sizes, 2))
            pixels = np.full(size[::-1] + ((3,) if mode == 'RGB' else ()), min(255, 25 * index), np.uint8)
            Image.fromarray(pixels, mode).save(folder / f'class_{index}' / f'{j}.{"png" if j % 2 else "jpg"}')


@pytest.mark.parametrize('channels', [1, 3])
def test_an_image_folder_gives_tasks_of_its_own_classes_whatever_each_class_holds(tmp_path, channels):
    counts = [3, 7, 4, 5, 9, 3]  # Unequal, and some classes hold exactly k_shot + num_query.
    _write_image_folder(tmp_path / 'images', counts, sizes=[20, 33, 64], mode='RGB' if channels == 3 else 'L')
    names, classes = data.load_image_folder(str(tmp_path / 'images'), image_size=16, channels=channels)
    assert names == [f'class_{i}' for i in range(6)] and [len(c) for c in classes] == counts
    assert all(c.shape[1:] == (16, 16, channels) and c.dtype == np.float32 for c in classes)
    sampler = data.EpisodeSampler(classes, n_way=4, k_shot=1, num_query=2, seed=0, class_names=names)
    episodes = sampler.sample(0, 50)
    assert episodes.support_images.shape == (50, 4, 16, 16, channels)
    # Every drawn image is a real one of the class its label stands for (padding is never drawn,
    # and values 0.1 * class tell the class apart), support and query alike.
    for images, labels in ((episodes.support_images, episodes.support_labels),
                           (episodes.query_images, episodes.query_labels)):
        value = np.round(images.mean(axis=(2, 3, 4)) * 255 / 25).astype(int)  # [T, B] class index.
        for t in range(50):
            assert all(len(set(value[t][labels[t] == label])) == 1 for label in range(4))
    support = np.round(episodes.support_images.mean(axis=(2, 3, 4)) * 255 / 25).astype(int)
    assert set(support.ravel()) == set(range(6))  # Every class is drawn, the smallest ones too.


def test_an_image_folder_names_the_class_too_small_for_a_task_and_what_is_wrong(tmp_path):
    _write_image_folder(tmp_path / 'images', [5, 2, 5], sizes=[28])
    names, classes = data.load_image_folder(str(tmp_path / 'images'))
    with pytest.raises(data.DataError, match=r"class 'class_1' of the train split has 2 images; a task takes 1 \+ 2"):
        data.EpisodeSampler(classes, 2, 1, 2, seed=0, class_names=names)
    (tmp_path / 'images' / 'class_1' / 'broken.png').write_bytes(b'not an image')
    with pytest.raises(data.DataError, match='broken.png: not a readable image'):
        data.load_image_folder(str(tmp_path / 'images'))
    with pytest.raises(data.DataError, match='no class folders'):
        data.load_image_folder(str(tmp_path / 'images' / 'class_0'))


# The real data (CI sets OMNIGLOT_DIR) ---------------------------------------------


def test_real_omniglot_has_1623_characters_of_20_drawings(real_omniglot):
    assert real_omniglot.images.shape == (1623, 20, 28, 28)
    assert real_omniglot.background.sum() == 964
    assert len(set(real_omniglot.alphabets[real_omniglot.background])) == 30
    assert len(set(real_omniglot.alphabets[~real_omniglot.background])) == 20
    # Strokes on background: mean ink of a character is a small fraction of the image.
    ink = real_omniglot.images.astype(np.float32).mean() / 255
    assert 0.02 < ink < 0.3


def test_real_default_split_is_1100_100_423(real_omniglot):
    splits = data.make_splits(real_omniglot)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1100, 100, 423)


def test_the_evaluation_tasks_of_a_committed_run_are_drawn_again_exactly(real_omniglot):
    """The tasks a run recorded (here the full-protocol reference run, with rotations, whose released
    weights --evaluate re-scores) come out of the sampler unchanged: what the code draws for a seed must
    never move under a run that resumes or is re-scored."""
    with open(os.path.join(REPO, 'reference', 'fomaml_paper_5way1shot', 'hyperparameters.json')) as f:
        recorded = json.load(f)
    flags = recorded['flags']
    splits = data.make_splits(real_omniglot, flags['split'], flags['num_train_classes'], flags['num_val_classes'],
                              flags['split_seed'], flags['rotations'])
    for offset, (name, split) in enumerate((('val', splits.val), ('test', splits.test))):
        sampler = data.EpisodeSampler(split, flags['n_way'], flags['k_shot'], flags['num_query'],
                                      flags['eval_seed'] + offset, rotate=flags['task_rotations'] == 'all')
        batches = sampler.fixed_batches(flags[f'num_{name}_tasks'], flags['meta_batch_size'])
        assert data.tasks_checksum(batches) == recorded['task_checksums'][name], name
