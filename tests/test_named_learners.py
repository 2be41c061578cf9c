"""The named learners take exactly the steps they took before their variants became arguments of MAML
(issue 43): every learner command's learner, built from its command's defaults, steps twice on a fixed
meta-batch and is evaluated, and its state and metrics are compared with pins/named_learners.json,
written by this file's `write_pins` at the commit it names, before the change.

The pins are summaries, not the arrays: a SHA-256 of every array of a case, checked on a machine like
the one that wrote them (the same TensorFlow and CPU instruction sets), where the steps are bit for bit
the same; and each array's sum and L2 norm, checked elsewhere, where TensorFlow's kernels may sum in
another order, within what an element-wise float32 rounding (1e-5 relative, 1e-6 absolute) allows.

    python tests/test_named_learners.py   # rewrites the pins: only when a change of numbers is meant
"""

import hashlib
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

PINS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'pins', 'named_learners.json')
# The options of a command that change the step rule, beside its defaults.
OPTIONS = {'Reptile, inner Adam fresh': ('--inner_adam_state=fresh',),
           'Reptile, inner SGD': ('--inner_optimizer=sgd',),
           'MAML++, running statistics': ('--eval_batch_norm=running',)}


def read_pins():
    with open(PINS) as f:
        return json.load(f)


def pinned():
    """The cases the pins hold: every learner command's learner at each order when they were written, and
    OPTIONS (a learner added since has none: its own test and the contract hold it)."""
    return sorted(read_pins()['cases'])


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
    return {key: np.asarray(value) for key, value in found.items()}


def _nine_digits(number):
    """Enough digits for the tolerance below (a relative 5e-10), not so many that the file grows."""
    return float(f'{number:.9g}')


def summary(arrays):
    """{'sha256': of every array's name, dtype, shape and bytes, 'sums': {name: [sum, L2 norm]}}."""
    digest = hashlib.sha256()
    for key in sorted(arrays):
        value = np.ascontiguousarray(arrays[key])
        digest.update(f'{key}|{value.dtype.str}|{value.shape}|'.encode())
        digest.update(value.tobytes())
    wide = {key: np.ravel(value).astype(np.float64) for key, value in arrays.items()}
    sums = {key: [_nine_digits(np.sum(value)), _nine_digits(np.linalg.norm(value))] for key, value in wide.items()}
    return {'sha256': digest.hexdigest(), 'sums': sums}


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
    cases = {case: summary(outcome(case)) for case in [*discovered.learners(), *OPTIONS]}
    commit = subprocess.run(['git', 'rev-parse', 'HEAD'], capture_output=True, text=True).stdout.strip()
    os.makedirs(os.path.dirname(PINS), exist_ok=True)
    with open(PINS, 'w') as f:
        json.dump({'commit': commit, 'machine': machine(), 'cases': cases}, f, indent=0)


@pytest.mark.parametrize('case', pinned())
def test_a_named_learner_takes_the_steps_it_took_before_variants_became_arguments(case):
    pins = read_pins()
    expected, found = pins['cases'][case], outcome(case)
    assert found.keys() == expected['sums'].keys()
    for key, (total, norm) in summary(found)['sums'].items():
        # What |found - pinned| <= 1e-6 + 1e-5 |pinned|, element-wise, allows the sum and the norm.
        size, pinned_total, pinned_norm = found[key].size, *expected['sums'][key]
        assert abs(total - pinned_total) <= 1e-6 * size + 1e-5 * np.sqrt(size) * pinned_norm, key
        assert abs(norm - pinned_norm) <= 1e-6 * np.sqrt(size) + 1e-5 * pinned_norm, key
    if pins['machine'] == machine():
        assert summary(found)['sha256'] == expected['sha256'], 'not bit for bit the steps pinned'


if __name__ == '__main__':
    write_pins()
