"""The benchmark command end to end, on a tiny setting (its figures are not checked here: speed
targets are the benchmark's own output, not a test's)."""

import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_times_each_algorithm_in_its_own_process():
    # Space-separated flag values, as a user types them: the measurements must get the setting.
    result = subprocess.run([sys.executable, os.path.join(REPO, 'benchmark.py'), '--repeats', '1',
                             '--orders', 'first', '--algorithms', 'maml,maml++', '--meta_batch_size', '2',
                             '--num_filters', '4', '--num_inner_steps', '1', '--profile'],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'T=2 tasks' in result.stdout and '1 inner steps, 4 filters' in result.stdout
    assert re.search(r'CPUs, native bfloat16: ', result.stdout)
    assert re.search(r'convolution peak .*: float32 \d+ GFLOP/s, bfloat16 \d+ GFLOP/s', result.stdout)
    for algorithm in ('maml', 'maml++'):
        assert re.search(rf'^ +{re.escape(algorithm)},  first order: median \d+\.\d+ s/iteration', result.stdout,
                         re.MULTILINE), result.stdout
    # --profile: each measurement's operations by kind, the convolutions layer by layer.
    assert result.stdout.count('profile: ') == 2
    for layer in ('conv1', 'conv4'):
        assert re.search(rf'^ +\d+\.\d% +\d+\.\d+ s  {layer} weight gradient$', result.stdout, re.MULTILINE)
