"""Speed and memory of a meta-iteration (MAML, its family, MAML++) against this machine's convolution peak.

    python benchmark.py                       # the paper's setting: T=32, 5-way 5-shot, 15 queries, 5 steps
    python benchmark.py --algorithms maml     # MAML only
    python benchmark.py --algorithms maml,anil,boil,meta_sgd,proto_maml   # the family, each beside MAML
    python benchmark.py --precision bfloat16  # mixed precision (fast only with native bfloat16)
    python benchmark.py --algorithms maml --orders second --tasks_per_chunk 32  # the whole meta-batch at once
    python benchmark.py --algorithms maml --profile                      # where the time goes
    python benchmark.py --algorithms maml --strategy mirrored --cpu_replicas 2   # the meta-batch on 2 replicas
    python benchmark.py --algorithms maml --peer ~/.cache/peers/l2l/bin/python   # beside learn2learn
    python benchmark.py --setting miniimagenet --algorithms maml --peer ~/.cache/peers/l2l/bin/python
                                              # the MAML paper's mini-ImageNet shape, beside learn2learn

--setting omniglot (the default) times the flags' setting above, the MAML paper's Omniglot; --setting
miniimagenet its mini-ImageNet protocol (Finn et al. 2017, Sec. 5.2): Conv-4 of 32 filters with 2x2
max-pooling (dropping an odd edge), its 5x5x32 maps flattened into the head, 84x84x3 images, T=4,
5-way 1-shot, 15 queries, 5 inner steps at 0.01, as ../shared/peers/bench_learn2learn.py --setting
miniimagenet. A setting gives those flags their defaults: a flag on the command line still wins.

It prints the CPU (model, and whether it computes bfloat16 natively) and the measured peak of a
large 64->64 convolution (forward and backward) in float32, and in bfloat16 where the CPU computes it
natively or --precision=bfloat16 asks for it. For each algorithm and
derivative order it prints the median seconds per meta-iteration and the peak resident memory (each
runs in its own process, so the peaks do not mix). MAML++ is timed with every fix on, without and
with the multi-step loss (which adds a query pass per inner step while it is active), and its ratio
to MAML of the same order is printed. MAML's convolution work divided by the convolution peak of
the precision it ran in is the lower bound its ratio is taken against. Each line also gives the time to
produce a meta-batch of tasks (drawn from random images of the setting's dataset shape, as stored:
Omniglot's float32, mini-ImageNet's uint8 converted to float32 per task, as a run's task stream does)
and its share of a meta-iteration with it, which a run spends in sequence. --profile adds, for each,
where a meta-iteration's operations spend their time. --peer times learn2learn's MAML on the same
setting (../shared/peers/bench_learn2learn.py in another Python, a measurement aid that is never a
dependency) right after ours, and prints the ratio, with the share of convolution work its
iteration leaves out (it computes no accuracy: no support pass after adaptation, no query pass
before it).

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
import shutil
import statistics
import subprocess
import time
from typing import NamedTuple

import fewshot  # noqa: F401  First: it sets up TensorFlow's CPU backend, read as TensorFlow loads.
import keras
import numpy as np
import tensorflow as tf
from absl import flags

from fewshot import cli, data, errors, machine, network, profiling, training
from fewshot.cli import commands, gradient, runs, scripts, strategy  # noqa: F401  runs: --algorithms; gradient: MAML's flags
from fewshot.learners.maml_plusplus import Fixes, MAMLPlusPlus

flags.DEFINE_integer('repeats', 10, 'Timed meta-iterations per order (after 2 warm-up ones), and timed runs of '
                     'the convolution peak (after one).', lower_bound=1)
flags.DEFINE_list('orders', ['first', 'second'], 'Derivative orders to measure: first, second.')
flags.declare_key_flag('algorithms')  # fewshot/cli/runs.py's; here also maml++ and maml++ with MSL.
flags.DEFINE_string('measure', '', 'Internal: measure one "algorithm:order" in this process and print JSON.')
flags.DEFINE_boolean('profile', False,
                     "Also trace one meta-iteration of each and print where its operations' time goes.")
flags.DEFINE_string('peer', '', 'A Python interpreter with learn2learn (see ../shared/peers/README.md): time its MAML '
                    "on the same setting right after ours and print the ratio (only with the --setting's own flags).")
flags.DEFINE_string('peer_script', os.path.join(scripts.ROOT, '..', 'shared', 'peers',
                                                'bench_learn2learn.py'), "The peer's timing script (with --peer).")
flags.register_validator('orders', lambda orders: bool(orders) and set(orders) <= {'first', 'second'},
                         message='--orders: a list of first, second')
PLUS_PLUS = ('maml++', 'maml++ with MSL')  # MAML++ held at one derivative order, without or with MSL.
SETTING_FLAGS = ('n_way', 'k_shot', 'num_query', 'meta_batch_size', 'num_filters', 'max_pool', 'inner_lr',
                 'num_inner_steps', 'meta_lr', 'precision', 'tasks_per_chunk',
                 'strategy', 'cpu_replicas')  # Shared flags that set what is timed.
for _name in SETTING_FLAGS:
    flags.declare_key_flag(_name)
FLAGS = flags.FLAGS


class Setting(NamedTuple):
    """A shape of meta-iteration to time.

    flags: defaults it gives flags of SETTING_FLAGS (a flag on the command line overrides them).
    image_size, channels: of the images, image_size x image_size x channels.
    flatten, pool_padding: the Conv-4's head input and (with --max_pool) pooling (`network.ConvNet`'s).
    source_shape, source_dtype: the random images tasks are drawn from, [C, M, H, W(, channels)] (M images
      of each of C classes), in the type a run holds its dataset in.
    """
    flags: dict
    image_size: int
    channels: int
    flatten: bool
    pool_padding: str
    source_shape: tuple
    source_dtype: type


SETTINGS = {
    # The MAML paper's Omniglot: the flags' own defaults (T=32, 5-way 5-shot, 15 queries, 5 steps at 0.4, 64 filters).
    'omniglot': Setting({}, 28, 1, False, 'same', (200, 20, 28, 28), np.float32),
    # Its mini-ImageNet (Sec. 5.2, and its code): 64 meta-training classes of 600 images, stored as uint8.
    'miniimagenet': Setting(dict(n_way=5, k_shot=1, num_query=15, meta_batch_size=4, num_filters=32, max_pool=True,
                                 inner_lr=0.01, num_inner_steps=5),
                            84, 3, True, 'valid', (64, 600, 84, 84, 3), np.uint8),
}
flags.DEFINE_enum('setting', 'omniglot', list(SETTINGS),
                  "The shape timed: 'omniglot', the MAML paper's Omniglot (the flags' defaults); 'miniimagenet', its "
                  'mini-ImageNet protocol (Conv-4 of 32 filters with max-pooling, flattened into the head, 84x84x3 '
                  'images, T=4, 5-way 1-shot, 15 queries, 5 inner steps at 0.01).')


def apply_setting():
    """Gives the flags of --setting their defaults (flags given on the command line keep their values)."""
    for name, value in SETTINGS[FLAGS.setting].flags.items():
        try:
            FLAGS.set_default(name, value)
        except flags.IllegalFlagValueError as error:  # A flag on the command line that the setting's values refuse.
            raise errors.FlagError(f'--setting {FLAGS.setting} (--{name}={value}): {error}') from None


def timed_network():
    """The Conv-4 timed, as --setting and the flags shape it."""
    setting = SETTINGS[FLAGS.setting]
    return network.build('conv4', FLAGS.n_way, FLAGS.num_filters, FLAGS.max_pool, FLAGS.precision,
                         setting.image_size, setting.channels, setting.flatten,
                         setting.pool_padding if FLAGS.max_pool else 'same')


def source_images():
    """The random images of --setting's dataset shape and type that tasks are drawn from."""
    setting = SETTINGS[FLAGS.setting]
    rng = np.random.default_rng(0)
    if setting.source_dtype == np.uint8:
        return rng.integers(0, 256, setting.source_shape, dtype=np.uint8)
    return rng.random(setting.source_shape).astype(setting.source_dtype)


def conv_sizes(net):
    """H' = W' of each block's convolution output."""
    size, sizes = net.image_size, []
    for _ in range(net.num_blocks):
        if not net.max_pool:  # Stride 2; with max-pooling the convolution keeps the size, the pool halves it.
            size = (size + 1) // 2
        sizes.append(size)
        if net.max_pool:
            size = size // 2 if net.pool_padding == 'valid' else (size + 1) // 2
    return sizes


def conv_macs(net, backward):
    """Multiply-adds of the convolutions for one image: forward, or backward (input + weight grads)."""
    channels, total = net.channels, 0
    for block, out in enumerate(conv_sizes(net)):
        layer = out * out * 9 * channels * net.num_filters
        # Backward: the weight gradient always; the input gradient except for the first layer.
        total += (layer if block == 0 else 2 * layer) if backward else layer
        channels = net.num_filters
    return total


def meta_iteration_macs(net, first_order, accuracies=True):
    """Convolution multiply-adds of a meta-iteration (module docstring); without `accuracies`, as
    the peer's: no post-adaptation support pass, no pre-adaptation query pass."""
    forward, backward = conv_macs(net, False), conv_macs(net, True)
    support = FLAGS.n_way * FLAGS.k_shot
    query = FLAGS.n_way * FLAGS.num_query
    inner = FLAGS.num_inner_steps * support * (forward + backward)
    per_task = inner + query * (forward + backward)
    if accuracies:
        per_task += support * forward + query * forward
    if not first_order:
        per_task += 2 * inner
    return FLAGS.meta_batch_size * per_task


def conv_peak(dtype, batch=256, size=28, channels=64, repeats=10):
    """Measured multiply-adds per second of a large 3x3 convolution, `channels` -> `channels`, stride 1
    (forward, input gradient and weight gradient), shared weights: as fast as this network's
    convolutions can be on this machine."""
    images = tf.cast(tf.random.uniform([batch, size, size, channels]), dtype)
    kernel = tf.cast(tf.random.normal([3, 3, channels, channels]), dtype)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            tape.watch([images, kernel])
            output = tf.nn.conv2d(images, kernel, 1, 'SAME')
        return tape.gradient(output, [images, kernel], output_gradients=output)
    step()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        tf.nest.map_structure(lambda x: x.numpy(), step())
        seconds.append(time.perf_counter() - start)
    return 3 * batch * size * size * 9 * channels * channels / statistics.median(seconds)


def build(algorithm, first_order):
    """The learner to time: a learner command's, or MAML++ held at one derivative order, with or
    without MSL."""
    keras.utils.set_random_seed(0)
    net = timed_network()
    if algorithm not in PLUS_PLUS:
        learner = commands.find(algorithm, '--algorithms').build_learner(net, first_order)
    else:
        never = 10 ** 9  # A schedule switch that is never reached.
        fixes = Fixes(msl=algorithm == 'maml++ with MSL', msl_iterations=never, da=first_order, da_iterations=never)
        learner = MAMLPlusPlus(net, net.keras_model(), FLAGS.inner_lr, FLAGS.num_inner_steps,
                               keras.optimizers.Adam(FLAGS.meta_lr), fixes)
    if FLAGS.tasks_per_chunk:  # Else the learner's own, as a run has it (second order: 8 tasks at a time).
        learner.tasks_per_chunk = FLAGS.tasks_per_chunk
    return net, learner


def measure(what):
    """Times meta-iterations of one "algorithm:order" in this process; returns a dict of figures."""
    algorithm, order = what.rsplit(':', 1)
    first_order = order == 'first'
    cluster = strategy.cluster_from_flags()  # First: TensorFlow must not have started yet.
    cluster.check_meta_batch(FLAGS.meta_batch_size)
    with cluster.scope():
        net, learner = build(algorithm, first_order)
    sampler = data.EpisodeSampler(source_images(), FLAGS.n_way, FLAGS.k_shot, FLAGS.num_query, seed=0)
    # As a run does: draw a meta-batch, step on it, let it go (holding every batch would time fresh
    # pages of memory instead of the drawing: 0.08 s against 0.015 s a meta-batch at 84x84x3).
    sampling, seconds = [], []
    for i in range(FLAGS.repeats + 2):
        start = time.perf_counter()
        batch = sampler.sample(i, FLAGS.meta_batch_size)
        sampling.append(time.perf_counter() - start)
        start = time.perf_counter()
        learner.meta_train_step(batch)
        seconds.append(time.perf_counter() - start)
    first_call, seconds = seconds[0], seconds[2:]  # The first call traces; the second is a warm-up.
    chunk = min(learner.tasks_per_chunk or FLAGS.meta_batch_size, FLAGS.meta_batch_size)  # Tasks per compiled call.
    figures = {'algorithm': algorithm, 'order': order, 'median_seconds': statistics.median(seconds),
               'min_seconds': min(seconds), 'first_call_seconds': first_call,
               'task_seconds': statistics.median(sampling[2:]),  # Those of the timed iterations.
               'peak_rss_gb': training.peak_memory_gb(), 'macs': meta_iteration_macs(net, first_order),
               'peer_macs': meta_iteration_macs(net, first_order, accuracies=False),
               'replicas': cluster.num_replicas,
               # None: under a strategy each replica computes its share of the tasks at once (no chunks).
               'tasks_per_chunk': None if learner.replicated else chunk}
    if FLAGS.profile:
        figures['profile'] = profile(net, learner, batch, chunk)
    return figures


def profile(net, learner, batch, chunk):
    """(wall seconds, seconds inside the compiled step, {category: operation seconds}) of one
    meta-iteration on `batch`, computed `chunk` tasks per compiled call (see fewshot/profiling.py);
    convolutions named by block, from the size of their output (a residual block's three
    convolutions share block i's name)."""
    episodes = type(batch)(*(tf.convert_to_tensor(x) for x in batch))
    options = learner.train_step_options()
    # pylint: disable=protected-access
    if chunk < data.num_tasks(episodes):  # One compiled call a chunk.
        graph = learner._meta_direction.get_concrete_function(data.task_slice(episodes, 0, chunk), **options).graph
    else:
        graph = learner._train_step.get_concrete_function(episodes, **options).graph
    layers = {(size, size): f'conv{block}' for block, size in enumerate(conv_sizes(net), 1)}
    return profiling.profile(lambda: learner.meta_train_step(batch), graph, layers)


def peer(order):
    """(median seconds, peak memory GB) of the peer's meta-iteration of `order` ('first' or 'second')."""
    command = [os.path.expanduser(FLAGS.peer), FLAGS.peer_script, '--order', '1' if order == 'first' else '2',
               '--iters', str(FLAGS.repeats), '--setting', FLAGS.setting]
    try:
        result = subprocess.run(command, capture_output=True, text=True)
    except OSError as error:
        raise errors.FlagError(f'--peer: {FLAGS.peer} cannot be run ({error.strerror})') from None
    last = (result.stdout.strip().splitlines() or [''])[-1]
    if result.returncode != 0 or not last.startswith('peer='):
        reason = (result.stderr.strip().splitlines() or ['no message'])[-1]
        raise errors.SetupError(f'--peer: the peer failed (exit status {result.returncode}): {reason}')
    fields = dict(field.split('=', 1) for field in last.split())
    return float(fields['s_per_iter_median']), float(fields['peak_rss_mb']) / 1e3


def print_profile(figures):
    wall, inside, categories = figures['profile']
    total = sum(categories.values())
    print(f'    profile: {wall:.3f} s per meta-iteration, {inside:.3f} s inside the compiled step '
          f'({wall - inside:.3f} s Python, conversions and dispatch); operations, summed over '
          f'threads: {total:.3f} s')
    for category, seconds in sorted(categories.items(), key=lambda item: -item[1]):
        if seconds >= 0.002 * total:
            print(f'      {100 * seconds / total:5.1f}%  {seconds:.3f} s  {category}')


def main(argv):
    del argv
    apply_setting()
    if FLAGS.measure.startswith('peak:'):
        print(json.dumps(conv_peak(FLAGS.measure.removeprefix('peak:'), repeats=FLAGS.repeats)))
        return
    if FLAGS.measure:
        print(json.dumps(measure(FLAGS.measure)))
        return
    network.check_grouped_convolutions()
    for algorithm in FLAGS.algorithms:
        if algorithm not in PLUS_PLUS:
            commands.find(algorithm, '--algorithms')
    if FLAGS.peer:
        changed = [name for name in SETTING_FLAGS if FLAGS[name].value != FLAGS[name].default and name != 'precision']
        if changed or 'maml' not in FLAGS.algorithms:
            fix = 'drop ' + ', '.join('--' + name for name in changed) if changed else 'add maml to --algorithms'
            raise errors.FlagError(f'--peer: the peer times MAML at the flags of --setting {FLAGS.setting} only; {fix}')
        if not os.path.isfile(FLAGS.peer_script):
            raise errors.FlagError(f'--peer_script: {FLAGS.peer_script} does not exist (see ../shared/peers/README.md)')
        if not shutil.which(os.path.expanduser(FLAGS.peer)):
            raise errors.FlagError(f'--peer: {FLAGS.peer} is not a program (a Python with learn2learn is expected)')
    if FLAGS.profile and FLAGS.strategy != 'default':
        raise errors.FlagError('--profile: profiles a meta-iteration computed in one process; drop --strategy')
    # What each measurement needs (a flag without a value, --tasks_per_chunk's default, serializes to '').
    passed = [flag for flag in (FLAGS[name].serialize() for name in ('repeats', 'profile', 'setting', *SETTING_FLAGS))
              if flag]

    def in_subprocess(what):
        result = subprocess.run([*scripts.argv(__file__), f'--measure={what}', *passed],
                                capture_output=True, text=True, env=scripts.environment())
        if result.returncode != 0:
            reason = result.stderr.strip().splitlines()[-1:] or ['no message']
            raise errors.SetupError(f'measuring {what} failed (exit status {result.returncode}): {reason[0]}')
        return json.loads(result.stdout.strip().splitlines()[-1])
    native = ', '.join(machine.bfloat16_flags()) or 'none: emulated, slow'
    print(f'{machine.cpu_model()}, {os.cpu_count()} CPUs, native bfloat16: {native}; TensorFlow {tf.__version__}')
    print(f'Meta-iteration, T={FLAGS.meta_batch_size} tasks, {FLAGS.n_way}-way '
          f'{FLAGS.k_shot}-shot, {FLAGS.num_query} queries, {FLAGS.num_inner_steps} inner steps, '
          f'{FLAGS.num_filters} filters, precision {FLAGS.precision}')
    net, setting = timed_network(), SETTINGS[FLAGS.setting]
    source = f'[{", ".join(map(str, setting.source_shape))}] {np.dtype(setting.source_dtype).name}'
    print(f'Setting {FLAGS.setting}: {net.image_size}x{net.image_size}x{net.channels} images, inner rate '
          f'{FLAGS.inner_lr:g}, Conv-4 ({"max-pooling" if net.max_pool else "stride 2"}) with its '
          f'{net.feature_map_size()}x{net.feature_map_size()} maps {"flattened" if net.flatten else "averaged"} '
          f'into the head; tasks drawn from random images {source} '
          f'({np.prod(setting.source_shape) * np.dtype(setting.source_dtype).itemsize / 1e9:.2f} GB, '
          'in each peak memory below), as float32')
    # An emulated bfloat16 peak (a tenth of float32's or less) takes long to measure and says no more than
    # the line above: measured only where the CPU has it or the run asks for it.
    measured = ('float32', 'bfloat16') if machine.native_bfloat16() or FLAGS.precision == 'bfloat16' else ('float32',)
    peaks = {dtype: in_subprocess(f'peak:{dtype}') for dtype in measured}
    print('convolution peak (3x3, 64 -> 64 channels, 256 images of 28x28, forward and backward): '
          + ', '.join(f'{dtype} {2 * macs / 1e9:.0f} GFLOP/s' for dtype, macs in peaks.items())
          + ('' if 'bfloat16' in peaks else ', bfloat16 not measured (emulated; --precision=bfloat16 measures it)'))
    maml_seconds = {}
    for order in FLAGS.orders:
        for algorithm in FLAGS.algorithms:
            figures = in_subprocess(f'{algorithm}:{order}')
            seconds = figures['median_seconds']
            chunk = figures['tasks_per_chunk']
            at = ("each replica's tasks at once" if chunk is None
                  else 'the whole meta-batch at once' if chunk == FLAGS.meta_batch_size
                  else f'{chunk} task{"s" * (chunk > 1)} at a time')
            line = (f'{algorithm:>15}, {order:>6} order ({at}): median {seconds:.3f} s/iteration '
                    f'(min {figures["min_seconds"]:.3f}, first call with tracing '
                    f'{figures["first_call_seconds"]:.1f} s), {FLAGS.meta_batch_size / seconds:.1f} tasks/s, '
                    f'peak memory {figures["peak_rss_gb"]:.2f} GB')
            tasks = figures['task_seconds']
            line += f'; producing its tasks {tasks:.3f} s, {tasks / (tasks + seconds):.1%} of an iteration with them'
            if FLAGS.strategy != 'default':
                line += f'; --strategy {FLAGS.strategy}, {figures["replicas"]} replicas'
            if algorithm == 'maml':
                maml_seconds[order] = seconds
                bound = figures['macs'] / peaks[FLAGS.precision]
                line += (f'; lower bound at the {FLAGS.precision} convolution peak {bound:.3f} s '
                         f'({2 * figures["macs"] / 1e9:.0f} GFLOP), ratio {seconds / bound:.2f}x')
            elif order in maml_seconds:
                line += f'; {seconds / maml_seconds[order]:.2f}x MAML of the same order'
            print(line, flush=True)
            if FLAGS.profile:
                print_profile(figures)
            if FLAGS.peer and algorithm == 'maml':
                peer_seconds, peer_memory = peer(order)
                extra = figures['macs'] / figures['peer_macs'] - 1
                faster = (f'this project is {peer_seconds / seconds:.2f}x faster' if peer_seconds >= seconds
                          else f'the peer is {seconds / peer_seconds:.2f}x faster')
                print(f'{"learn2learn":>15}, {order:>6} order: median {peer_seconds:.3f} s/iteration, peak memory '
                      f'{peer_memory:.2f} GB (PyTorch, same setting, timed just after); {faster}, '
                      f'with {extra:.0%} more '
                      'convolution work (the peer computes no accuracy: no pre-adaptation query pass, no '
                      'post-adaptation support pass)', flush=True)


def run():
    """The command, as `python benchmark.py` and `fewshot benchmark` run it."""
    # What is timed unless --algorithms says otherwise; the learners of `runs` are named there too.
    FLAGS.set_default('algorithms', ['maml', *PLUS_PLUS])
    cli.run(main)
