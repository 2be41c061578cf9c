"""The GPU self-check (fewshot/devices.py, gpu_check.py), on a machine without a GPU: the comparison it
makes finds no difference between a device and itself and finds one where there is one, and the command
says there is no GPU and exits 0."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import conftest  # noqa: F401 (first: the repository on the path, fewshot's TensorFlow CPU backend set up)

import pytest

from fewshot import devices  # noqa: E402
from fewshot.learners import MAML  # noqa: E402
import launch  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('name', sorted(devices.LEARNERS))
def test_a_device_agrees_with_itself_exactly(name):
    assert devices.agreement(devices.LEARNERS[name], devices.tasks(), '/CPU:0') == (0.0, 'query scores')


def test_a_difference_is_found_and_named():
    built = []

    def build(n_way):  # The second learner (the device under test) steps twice as far in its inner loop.
        learner = devices.LEARNERS['MAML (second order, ConvNet)'](n_way)
        built.append(learner)
        return MAML(learner.net, learner.model, inner_lr=0.4 * len(built), num_inner_steps=2, first_order=False)
    difference, tensor = devices.agreement(build, devices.tasks(), '/CPU:0')
    assert difference > devices.TOLERANCE and tensor.startswith(('gradient ', 'query scores'))


def test_the_command_says_there_is_no_gpu_and_exits_0():
    done = launch.run([sys.executable, os.path.join(REPO, 'gpu_check.py')], capture_output=True, text=True,
                      cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert 'GPUs: none' in done.stdout and 'No GPU: TensorFlow sees none' in done.stdout
