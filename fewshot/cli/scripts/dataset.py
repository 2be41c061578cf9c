"""Prepare a named dataset and see what it costs: its cache, its splits, and the memory and time of
drawing tasks and training on it.

    python dataset.py --dataset=mini_imagenet --dataset_dir=/data/mini-imagenet   # read it once into the cache
    python dataset.py --synthetic=tiered_imagenet --cache_dir=/big/disk   # tiered-ImageNet's size, random pixels

A named dataset is read from its files into a uint8 cache under --cache_dir once (fewshot/datasets), which
every run then memory-maps. --synthetic writes a cache of a dataset's size and layout instead (its
classes per split and images, random pixels), for measuring memory and speed at that scale without the
data. Then, either way: the first load (reading and caching) and a later load, the time to draw a
meta-batch of the MAML paper's mini-ImageNet tasks (5-way 1-shot, 15 queries, 4 tasks), and a few
iterations of FO-MAML (the MAML paper's mini-ImageNet Conv-4 at its images' size) with the process's resident
memory after them: anonymous (its own) and file-backed (pages of the cache the kernel may drop at will).
"""

import os
import statistics
import time

import fewshot  # noqa: F401  First: it sets up TensorFlow's CPU backend, read as TensorFlow loads.
import numpy as np
from absl import flags

from fewshot import cli, data, datasets, machine, network, training
from fewshot.cli import config  # noqa: F401  It defines --dataset, --dataset_dir and --cache_dir.
from fewshot.datasets import cache
from fewshot.errors import FlagError
from fewshot.learners.maml import MAML

for name in ('dataset', 'dataset_dir', 'cache_dir'):
    flags.declare_key_flag(name)
flags.DEFINE_enum('synthetic', None, ['tiered_imagenet', 'mini_imagenet'],
                  "Instead of --dataset: a cache of this dataset's size and layout with random pixels.")
flags.DEFINE_integer('batches', 50, 'Meta-batches of tasks drawn to time the sampler.', lower_bound=1)
flags.DEFINE_integer('iterations', 10, 'FO-MAML meta-iterations run to measure training memory and time (0: none).',
                     lower_bound=0)
FLAGS = flags.FLAGS

# Classes per split and images in all (Ren et al. 2018, Sec. 5: 608 classes, 779,165 images, 351 / 97 / 160;
# Ravi & Larochelle 2017: 64 / 16 / 20 classes of 600). A synthetic set spreads the images evenly over its
# classes (the real tiered-ImageNet's classes hold about 730 to 1,300 each).
LAYOUTS = {'tiered_imagenet': ((351, 97, 160), 779_165), 'mini_imagenet': ((64, 16, 20), 60_000)}
TASKS = {'n_way': 5, 'k_shot': 1, 'num_query': 15, 'meta_batch_size': 4}  # The MAML paper's mini-ImageNet 1-shot.


def synthetic_classes(name, seed=0):
    """(split, class name, random uint8 images) of every class of the layout `name`, one class at a time."""
    counts, total = LAYOUTS[name]
    per_class = np.diff(np.linspace(0, total, sum(counts) + 1).round().astype(int))
    rng = np.random.default_rng(seed)
    index = 0
    for split, count in zip(datasets.SPLITS, counts):
        for _ in range(count):
            yield split, f'class{index:04d}', rng.integers(0, 256, (per_class[index], 84, 84, 3), np.uint8)
            index += 1


def load_synthetic(name, cache_dir):
    """A `datasets.Dataset` of the synthetic layout `name`, cached in cache_dir (written on first use)."""
    path = os.path.join(cache_dir, f'synthetic-{name}-v{cache.FORMAT}')
    if not cache.is_complete(path):
        cache.write(path, synthetic_classes(name), (84, 84, 3), f'--synthetic {name}')
    images, index = cache.read(path)
    return datasets.Dataset(f'synthetic {name}', data.Splits(*(datasets.split_of(images, index['splits'][s])
                                                               for s in datasets.SPLITS)),
                            index['checksum'], (84, 84, 3))


def timed(load):
    start = time.perf_counter()
    value = load()
    return value, time.perf_counter() - start


def resident_memory_gb():
    """(anonymous, file-backed) resident memory of this process in GB (Linux's /proc/self/status)."""
    fields = {}
    with open('/proc/self/status') as f:
        for line in f:
            name, _, value = line.partition(':')
            fields[name] = value
    return tuple(int(fields[name].split()[0]) / 2 ** 20 for name in ('RssAnon', 'RssFile'))


def main(_):
    if FLAGS.synthetic and FLAGS['dataset'].present:
        raise FlagError('--dataset, --synthetic: give one of them')
    if not FLAGS.synthetic and FLAGS.dataset not in datasets.NAMES:
        raise FlagError(f'--dataset {FLAGS.dataset}: a named dataset ({", ".join(datasets.NAMES)}), or --synthetic')
    load = ((lambda: load_synthetic(FLAGS.synthetic, FLAGS.cache_dir)) if FLAGS.synthetic else
            (lambda: datasets.load(FLAGS.dataset, FLAGS.dataset_dir, FLAGS.cache_dir)))
    dataset, first = timed(load)
    dataset, again = timed(load)
    splits = dataset.splits
    size = sum(np.prod(part.images.shape) for part in (splits.train, splits.val, splits.test))  # uint8: bytes.
    print(f'{dataset.name}: classes {len(splits.train)} / {len(splits.val)} / {len(splits.test)} (train / val / test), '
          f'{sum(map(len, (s.images for s in (splits.train, splits.val, splits.test)))):,} images of '
          f'{"x".join(map(str, dataset.image_shape))}, {size / 1e9:.2f} GB uint8; checksum {dataset.checksum[:16]}')
    print(f'first load {first:.1f} s (reading and caching, or finding the cache), later load {again:.3f} s')
    name, part = ('train', splits.train) if len(splits.train) else ('test', splits.test)
    sampler = data.EpisodeSampler(part, TASKS['n_way'], TASKS['k_shot'], TASKS['num_query'], seed=0, split_name=name)
    seconds = [timed(lambda i=i: sampler.sample(i, TASKS['meta_batch_size']))[1] for i in range(FLAGS.batches)]
    print(f'a meta-batch of {TASKS["meta_batch_size"]} tasks (5-way 1-shot, 15 queries): median '
          f'{statistics.median(seconds) * 1e3:.1f} ms, first {seconds[0] * 1e3:.1f} ms, over {FLAGS.batches}')
    if FLAGS.iterations:
        height, _, channels = dataset.image_shape
        net = network.build('conv4', TASKS['n_way'], 32, True, 'float32', height, channels, flatten=True,
                            pool_padding='valid')  # The MAML paper's mini-ImageNet network.
        learner = MAML(net, inner_lr=0.01, num_inner_steps=5, first_order=True)
        iteration_seconds = [timed(lambda i=i: learner.meta_train_step(sampler.sample(FLAGS.batches + i, 4)))[1]
                             for i in range(FLAGS.iterations)]
        share = statistics.median(seconds) / statistics.median(iteration_seconds)
        print(f'FO-MAML (Conv-4, 32 filters, 5 inner steps): median {statistics.median(iteration_seconds):.2f} s per '
              f'meta-iteration over {FLAGS.iterations}; drawing its tasks takes {share:.1%} of that')
    anonymous, file_backed = resident_memory_gb()
    print(f'resident memory: {anonymous:.2f} GB of the process\'s own, {file_backed:.2f} GB of mapped files '
          f'(the cache and libraries; the kernel drops them as it needs); peak {training.peak_memory_gb():.2f} GB. '
          f'{machine.cpu_model()}, {os.cpu_count()} CPU cores')


def run():
    """The command, as `python dataset.py` and `fewshot dataset` run it."""
    cli.run(main)
