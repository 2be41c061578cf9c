"""The GPU self-check: does a GPU compute what the CPU computes, and how fast (fewshot/devices.py).

    python gpu_check.py                  # on a machine with a GPU: each learner, GPU against CPU
    python gpu_check.py --timed_iterations 20   # time more meta-iterations

The tests check every learner's gradients on the CPU against float64 finite differences; this checks a
GPU against the CPU: the same learner, weights and tasks (5-way 1-shot, 4 tasks) give each learner's
meta-gradient and query scores on both, and their largest difference, relative to the tensor's largest
value, must be within devices.TOLERANCE (float32 rounding in another order). The learners cover the
grouped convolutions of the task-batched network (ConvNet, ResNet), second order, MAML++'s per-step batch
norm, the metric learners' embedding and a Keras Sequential's per-task loop. Then the seconds of one
compiled meta-iteration of each on the GPU and on the CPU.

Without a GPU it says so and exits 0: nothing to check. Exit status 1 if a learner disagrees. Never yet
run on a GPU: this project's machines have none (docs/speed/README.md).
"""

import os

import fewshot  # noqa: F401  First: it sets up TensorFlow's CPU backend, read as TensorFlow loads.
import tensorflow as tf
from absl import flags

from fewshot import cli, devices, errors, machine

flags.DEFINE_integer('timed_iterations', 5, 'Compiled meta-iterations timed on each device (the median is shown).',
                     lower_bound=1)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    gpus = tf.config.list_physical_devices('GPU')
    print(f'TensorFlow {tf.__version__}; CPU: {machine.cpu_model()}, {os.cpu_count()} cores; '
          f'GPUs: {", ".join(gpu.name for gpu in gpus) or "none"}')
    if not gpus:
        print('No GPU: TensorFlow sees none, so there is nothing to check (the tests check the CPU).')
        return
    device = '/GPU:0'
    details = tf.config.experimental.get_device_details(gpus[0])
    print(f'Checking {device} ({details.get("device_name", "unknown")}) against /CPU:0 on 5-way 1-shot tasks')
    episodes = devices.tasks()
    disagreeing = []
    print(f'{"learner":<32}{"largest difference (tensor)":<44}{"GPU s/it":>10}{"CPU s/it":>10}{"speed-up":>10}')
    for name, build in devices.LEARNERS.items():
        difference, tensor = devices.agreement(build, episodes, device)
        on_gpu = devices.seconds_per_iteration(build, episodes, device, FLAGS.timed_iterations)
        on_cpu = devices.seconds_per_iteration(build, episodes, '/CPU:0', FLAGS.timed_iterations)
        verdict = 'agrees' if difference <= devices.TOLERANCE else 'DISAGREES'
        print(f'{name:<32}{f"{difference:.1e} ({tensor}) {verdict}":<44}{on_gpu:>10.4f}{on_cpu:>10.4f}'
              f'{on_cpu / on_gpu:>9.1f}x', flush=True)
        if difference > devices.TOLERANCE:
            disagreeing.append(f'{name} ({tensor}: {difference:.1e})')
    if disagreeing:
        raise errors.SetupError(f'{device} computes otherwise than the CPU beyond {devices.TOLERANCE:g}: '
                                f'{"; ".join(disagreeing)}')


def run():
    """The command, as `python gpu_check.py` and `fewshot gpu_check` run it."""
    cli.run(main)
