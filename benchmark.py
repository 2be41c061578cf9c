"""Speed and memory of a meta-iteration (MAML, its family, MAML++) against this machine's lower bound.

    python benchmark.py                       # the paper's setting: T=32, 5-way 5-shot, 15 queries, 5 steps
    python benchmark.py --algorithms maml     # MAML only
    python benchmark.py --algorithms maml,anil,boil,meta_sgd,proto_maml   # the family, each beside MAML

For each algorithm and derivative order it prints the median seconds per
meta-iteration and the peak resident memory (each runs in its own process, so
the peaks do not mix). MAML++ is timed with every fix on, without and with the
multi-step loss (which adds a query pass per inner step while it is active),
and its ratio to MAML of the same order is printed. It also measures the
machine's convolution throughput on the same network (forward and backward of
one large batch with shared weights, the most favourable case for the
convolution kernels) and divides the convolution work of a meta-iteration by
it: that is the lower bound the ratio is taken against.

Convolution work of a first-order meta-iteration (per task; S support, Q query images;
F = forward multiply-adds of one image, B = backward, i.e. input and weight gradients):
    inner loop      steps x S x (F + B)
    support after   S x F             (post-adaptation support accuracy)
    query           Q x (F + B) + Q x F   (meta-gradient; pre-adaptation accuracy)
Second order adds the reverse pass through every inner step, counted as steps x S x 2(F + B).
Timings use random images: the cost does not depend on the pixels.
"""

import json
import os
import statistics
import subprocess
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from absl import flags

from fewshot import commands, data, errors, experiment, network, training
from fewshot import runs  # noqa: F401  (defines --algorithms)
import maml  # noqa: F401  (MAML's flags, which set what is timed)
import maml_plusplus

flags.DEFINE_integer('repeats', 10, 'Timed meta-iterations per order (after 2 warm-up ones).', lower_bound=1)
flags.DEFINE_list('orders', ['first', 'second'], 'Derivative orders to measure: first, second.')
flags.declare_key_flag('algorithms')  # fewshot/runs.py's; here also maml++ and maml++ with MSL.
flags.DEFINE_string('measure', '', 'Internal: measure one "algorithm:order" in this process and print JSON.')
flags.register_validator('orders', lambda orders: bool(orders) and set(orders) <= {'first', 'second'},
                         message='--orders: a list of first, second')
PLUS_PLUS = ('maml++', 'maml++ with MSL')  # MAML++ held at one derivative order, without or with MSL.
SETTING = ('n_way', 'k_shot', 'num_query', 'meta_batch_size', 'num_filters', 'max_pool', 'inner_lr',
           'num_inner_steps', 'meta_lr', 'precision')  # Shared flags that set what is timed.
for _name in SETTING:
    flags.declare_key_flag(_name)
FLAGS = flags.FLAGS


def conv_macs(net, backward):
    """Multiply-adds of the convolutions for one image: forward, or backward (input + weight grads)."""
    size, channels, total = net.image_size, 1, 0
    for block in range(net.num_blocks):
        out = size if net.max_pool else (size + 1) // 2
        layer = out * out * 9 * channels * net.num_filters
        # Backward: the weight gradient always; the input gradient except for the first layer.
        total += (layer if block == 0 else 2 * layer) if backward else layer
        size = (out + 1) // 2 if net.max_pool else out
        channels = net.num_filters
    return total


def meta_iteration_macs(net, first_order):
    forward, backward = conv_macs(net, False), conv_macs(net, True)
    support = FLAGS.n_way * FLAGS.k_shot
    query = FLAGS.n_way * FLAGS.num_query
    inner = FLAGS.num_inner_steps * support * (forward + backward)
    per_task = inner + support * forward + query * (2 * forward + backward)
    if not first_order:
        per_task += 2 * inner
    return FLAGS.meta_batch_size * per_task


def conv_throughput(net, batch=800, repeats=15):
    """Measured multiply-adds per second of the network's forward + backward on one big batch."""
    model = net.keras_model()
    params = network.parameters(model)
    images = tf.random.uniform([1, batch, net.image_size, net.image_size, 1])
    labels = tf.zeros([1, batch], tf.int32)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tiled = network.tile(params, 1)
            tape.watch(tiled)
            loss = tf.reduce_sum(network.task_losses(net.forward(tiled, images), labels))
        return tape.gradient(loss, tiled)
    step()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        tf.nest.map_structure(lambda x: x.numpy(), step())
        seconds.append(time.perf_counter() - start)
    return batch * (conv_macs(net, False) + conv_macs(net, True)) / statistics.median(seconds)


def build(algorithm, first_order):
    """The learner to time: a learner command's, or MAML++ held at one derivative order, with or
    without MSL."""
    keras.utils.set_random_seed(0)
    if algorithm not in PLUS_PLUS:
        return commands.find(algorithm, '--algorithms').build(FLAGS.n_way, first_order)
    net = experiment.convnet()
    optimizer = keras.optimizers.Adam(FLAGS.meta_lr)
    never = 10 ** 9  # A schedule switch that is never reached.
    fixes = maml_plusplus.Fixes(msl=algorithm == 'maml++ with MSL', msl_iterations=never,
                                da=first_order, da_iterations=never)
    return net, maml_plusplus.MAMLPlusPlus(net, net.keras_model(), FLAGS.inner_lr, FLAGS.num_inner_steps,
                                           optimizer, fixes)


def measure(what):
    """Times meta-iterations of one "algorithm:order" in this process; returns a dict of figures."""
    algorithm, order = what.split(':')
    first_order = order == 'first'
    net, learner = build(algorithm, first_order)
    images = np.random.default_rng(0).random((200, 20, 28, 28)).astype(np.float32)
    sampler = data.EpisodeSampler(images, FLAGS.n_way, FLAGS.k_shot, FLAGS.num_query, seed=0)
    batches = [sampler.sample(i, FLAGS.meta_batch_size) for i in range(FLAGS.repeats + 2)]
    start = time.perf_counter()
    learner.meta_train_step(batches[0])
    first_call = time.perf_counter() - start
    learner.meta_train_step(batches[1])
    seconds = []
    for batch in batches[2:]:
        start = time.perf_counter()
        learner.meta_train_step(batch)
        seconds.append(time.perf_counter() - start)
    return {'algorithm': algorithm, 'order': order, 'median_seconds': statistics.median(seconds),
            'min_seconds': min(seconds), 'first_call_seconds': first_call,
            'peak_rss_gb': training.peak_memory_gb(),
            'macs': meta_iteration_macs(net, first_order)}


def main(argv):
    del argv
    if FLAGS.measure == 'throughput':
        print(json.dumps(conv_throughput(experiment.convnet())))
        return
    if FLAGS.measure:
        print(json.dumps(measure(FLAGS.measure)))
        return
    network.check_grouped_convolutions()
    for algorithm in FLAGS.algorithms:
        if algorithm not in PLUS_PLUS:
            commands.find(algorithm, '--algorithms')
    passed = [FLAGS[name].serialize() for name in ('repeats', *SETTING)]  # What each measurement needs.

    def in_subprocess(what):
        result = subprocess.run([sys.executable, __file__, f'--measure={what}', *passed],
                                capture_output=True, text=True)
        if result.returncode != 0:
            reason = result.stderr.strip().splitlines()[-1:] or ['no message']
            raise errors.SetupError(f'measuring {what} failed (exit status {result.returncode}): {reason[0]}')
        return json.loads(result.stdout.strip().splitlines()[-1])
    print(f'Meta-iteration, T={FLAGS.meta_batch_size} tasks, {FLAGS.n_way}-way {FLAGS.k_shot}-shot, '
          f'{FLAGS.num_query} queries, {FLAGS.num_inner_steps} inner steps, {FLAGS.num_filters} filters, '
          f'{os.cpu_count()} CPUs, TensorFlow {tf.__version__}')
    throughput = in_subprocess('throughput')
    print(f'network throughput (forward + backward of 800 images, shared weights, convolutions counted): '
          f'{2 * throughput / 1e9:.0f} GFLOP/s')
    maml_seconds = {}
    for order in FLAGS.orders:
        for algorithm in FLAGS.algorithms:
            figures = in_subprocess(f'{algorithm}:{order}')
            seconds = figures['median_seconds']
            line = (f'{algorithm:>15}, {order:>6} order: median {seconds:.3f} s/iteration '
                    f'(min {figures["min_seconds"]:.3f}, first call with tracing '
                    f'{figures["first_call_seconds"]:.1f} s), peak memory {figures["peak_rss_gb"]:.2f} GB')
            if algorithm == 'maml':
                maml_seconds[order] = seconds
                bound = figures['macs'] / throughput
                line += (f'; arithmetic lower bound {bound:.3f} s ({2 * figures["macs"] / 1e9:.0f} GFLOP), '
                         f'ratio {seconds / bound:.2f}x')
            elif order in maml_seconds:
                line += f'; {seconds / maml_seconds[order]:.2f}x MAML of the same order'
            print(line, flush=True)


if __name__ == '__main__':
    # What is timed unless --algorithms says otherwise; the learners of `runs` are named there too.
    FLAGS.set_default('algorithms', ['maml', *PLUS_PLUS])
    errors.run(main)
