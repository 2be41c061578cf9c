"""The named learners take exactly the steps they took before their variants became arguments of MAML
(issue 43): every learner command's learner, built from its command's defaults, steps twice on a fixed
meta-batch and is evaluated, and its state and metrics are compared with pins/named_learners.npz,
written by this file's `write_pins` at the commit named in pins/named_learners.json, before the change.

Bit for bit on a machine like the one that wrote them (the same TensorFlow and CPU instruction sets);
elsewhere TensorFlow's kernels may sum in another order, so there to float32 rounding (1e-5).

    python tests/test_named_learners.py   # rewrites the pins: only when a change of numbers is meant
"""

import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import conftest  # noqa: F401 (first: the repository on the path, fewshot's TensorFlow CPU backend set up)

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from absl.testing import flagsaver

import discovered  # noqa: E402
from fewshot import data, network  # noqa: E402
from test_maml import _episodes  # noqa: E402

PINS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'pins', 'named_learners')
# The options of a command that change the step rule, beside its defaults.
OPTIONS = {'Reptile, inner Adam fresh': ('--inner_adam_state=fresh',),
           'Reptile, inner SGD': ('--inner_optimizer=sgd',),
           'MAML++, running statistics': ('--eval_batch_norm=running',)}


def pinned():
    """The cases the pins hold: every learner command's learner at each order when they were written, and
    OPTIONS (a learner added since has none: its own test and the contract hold it)."""
    with np.load(PINS + '.npz') as pins:
        return sorted({key.split('|', 1)[0] for key in pins.files})


def _learner_of(case):
    name = case.split(',')[0]
    command, first_order = discovered.learners()[name]
    keras.utils.set_random_seed(0)
    with flagsaver.flagsaver():
        flags.FLAGS(['test', '--num_inner_steps=2', '--inner_lr=0.4', '--n_way=2', *OPTIONS.get(case, ())])
        return command.build_learner(network.ConvNet(n_way=2, num_filters=4), first_order)


def outcome(case):
    """{what: array}: the state after two meta-steps on fixed meta-batches, their metrics, and an
    evaluation's metrics (two inner steps)."""
    learner = _learner_of(case)
    found = {}
    for step, seed in enumerate((0, 5)):
        metrics = learner.meta_train_step(data.Episodes(*(np.array(x) for x in _episodes(3, seed=seed))))
        found.update({f'step{step}/{key}': value for key, value in metrics.items()})
    evaluated = learner.evaluate(data.Episodes(*(np.array(x) for x in _episodes(3, seed=7))), num_steps=2)
    found.update({f'evaluate/{key}': value for key, value in evaluated.items()})
    found.update({f'state/{key}': np.array(variable.numpy()) for key, variable in learner.state_variables().items()})
    return found


def machine():
    """What decides TensorFlow's float32 kernels here: its version and the CPU's instruction sets."""
    cpu_flags = set()
    with open('/proc/cpuinfo') as cpuinfo:
        for line in cpuinfo:
            if line.startswith('flags'):
                cpu_flags = set(line.split(':', 1)[1].split())
                break
    return {'tensorflow': tf.__version__, 'onednn': os.environ.get('TF_ENABLE_ONEDNN_OPTS'),
            'instructions': sorted(cpu_flags & {'avx2', 'avx512f', 'avx512_bf16', 'amx_tile', 'fma'})}


def write_pins():
    cases = [*discovered.learners(), *OPTIONS]
    pins = {f'{case}|{key}': value for case in cases for key, value in outcome(case).items()}
    os.makedirs(os.path.dirname(PINS), exist_ok=True)
    np.savez(PINS + '.npz', **pins)
    commit = subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True, text=True).stdout.strip()
    with open(PINS + '.json', 'w') as f:
        json.dump({'commit': commit, 'machine': machine()}, f, indent=1)


@pytest.mark.parametrize('case', pinned())
def test_a_named_learner_takes_the_steps_it_took_before_variants_became_arguments(case):
    with np.load(PINS + '.npz') as pins:
        expected = {key.split('|', 1)[1]: pins[key] for key in pins.files if key.split('|', 1)[0] == case}
    with open(PINS + '.json') as f:
        exact = json.load(f)['machine'] == machine()
    found = outcome(case)
    assert expected and found.keys() == expected.keys()
    for key, value in found.items():
        if exact:
            np.testing.assert_array_equal(value, expected[key], err_msg=key)
        else:
            np.testing.assert_allclose(value, expected[key], rtol=1e-5, atol=1e-6, err_msg=key)


if __name__ == '__main__':
    write_pins()
