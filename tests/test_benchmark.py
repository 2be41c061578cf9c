"""The benchmark command end to end, on a tiny setting (its figures are not checked here: speed
targets are the benchmark's own output, not a test's)."""

import os
import re
import sys

import launch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_times_each_algorithm_in_its_own_process():
    # Space-separated flag values, as a user types them: the measurements must get the setting.
    result = launch.run([sys.executable, os.path.join(REPO, 'benchmark.py'), '--repeats', '1',
                         '--orders', 'first', '--algorithms', 'maml,maml++', '--meta_batch_size', '2',
                         '--num_filters', '4', '--num_inner_steps', '1', '--tasks_per_chunk', '1', '--profile'],
                        capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'T=2 tasks' in result.stdout and '1 inner steps, 4 filters' in result.stdout
    assert re.search(r'CPUs, native bfloat16: ', result.stdout)
    # bfloat16's peak where the CPU computes it (else emulated: measured only with --precision=bfloat16).
    assert re.search(r'convolution peak .*: float32 \d+ GFLOP/s, bfloat16 (\d+ GFLOP/s|not measured \(emulated)',
                     result.stdout)
    for algorithm in ('maml', 'maml++'):
        assert re.search(rf'^ +{re.escape(algorithm)},  first order \(1 task at a time\): median \d+\.\d+ s/iteration',
                         result.stdout, re.MULTILINE), result.stdout
    # --profile: each measurement's operations by kind, the convolutions layer by layer (here of a chunk's step).
    assert result.stdout.count('profile: ') == 2
    for layer in ('conv1', 'conv4'):
        assert re.search(rf'^ +\d+\.\d% +\d+\.\d+ s  {layer} weight gradient$', result.stdout, re.MULTILINE)


def test_peer_line_gives_the_ratio_and_the_work_the_peer_leaves_out(tmp_path):
    """--peer with a stand-in peer script: the ratio is read from its last line, and the line says how
    much more convolution work this project's meta-iteration does (its two accuracy passes)."""
    script = tmp_path / 'peer.py'
    script.write_text("print('warm-up line')\nprint('peer=stand-in order=1 s_per_iter_median=4.000 peak_rss_mb=500')\n")
    result = launch.run([sys.executable, os.path.join(REPO, 'benchmark.py'), '--repeats', '1', '--orders', 'first',
                         '--algorithms', 'maml', '--peer', sys.executable, '--peer_script', str(script)],
                        capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    ours = float(re.search(r'maml,  first order \(the whole meta-batch at once\): median (\d+\.\d+) s',
                           result.stdout).group(1))
    line = re.search(r'learn2learn,  first order: median 4\.000 s/iteration, peak memory 0\.50 GB .*', result.stdout)
    assert line, result.stdout
    faster = re.search(r'(this project|the peer) is (\d+\.\d+)x faster', line.group(0))
    assert faster and (faster.group(1) == 'this project') == (ours <= 4.0), line.group(0)
    ratio = float(faster.group(2)) if ours <= 4.0 else 1 / float(faster.group(2))
    assert abs(ratio - 4.0 / ours) < 0.01 + 4.0 * 0.001 / ours ** 2  # Both sides printed rounded.
    # Per task, 5 steps x 25 support images x (F + B) and 75 query images x (F + B), against the same plus
    # 25 x F and 75 x F, with the default network's F = 2,656,512 and B = 5,200,128 multiply-adds.
    assert 'with 17% more convolution work' in line.group(0)


def test_the_miniimagenet_setting_times_the_maml_papers_shape_and_asks_the_peer_for_it(tmp_path):
    """--setting miniimagenet: the MAML paper's mini-ImageNet protocol (T=4, 5-way 1-shot, 15 queries, 5
    steps at 0.01, Conv-4 of 32 filters with max-pooling on 84x84x3 images, its 5x5 maps flattened), tasks
    drawn from uint8 images with the share of the iteration that takes, and the peer run at the same setting."""
    script = tmp_path / 'peer.py'
    script.write_text("import sys\nassert sys.argv[sys.argv.index('--setting') + 1] == 'miniimagenet', sys.argv\n"
                      "print('peer=stand-in order=1 s_per_iter_median=4.000 peak_rss_mb=500')\n")
    result = launch.run([sys.executable, os.path.join(REPO, 'benchmark.py'), '--setting', 'miniimagenet',
                         '--repeats', '1', '--orders', 'first', '--algorithms', 'maml', '--peer', sys.executable,
                         '--peer_script', str(script)], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'T=4 tasks, 5-way 1-shot, 15 queries, 5 inner steps, 32 filters' in result.stdout
    assert ('Setting miniimagenet: 84x84x3 images, inner rate 0.01, Conv-4 (max-pooling) with its 5x5 maps flattened '
            'into the head; tasks drawn from random images [64, 600, 84, 84, 3] uint8') in result.stdout
    # Convolutions of 84, 42, 21 and 10 pixels (the pooling drops an odd edge), the first of 3 channels: an image's
    # F = 27,339,264 and B = 48,582,144 multiply-adds; per task 5 steps x 5 support images and 75 queries x (F + B),
    # and 5 x F and 75 x F for the accuracies: 78 GFLOP for 4 tasks, 29% more than the peer's.
    assert re.search(r'^ +maml,  first order \(the whole meta-batch at once\): median \d+\.\d+ s/iteration .*'
                     r'; producing its tasks \d+\.\d+ s, \d+\.\d% of an iteration with them; .*\(78 GFLOP\)',
                     result.stdout, re.MULTILINE), result.stdout
    line = re.search(r'learn2learn,  first order: median 4\.000 s/iteration, peak memory 0\.50 GB .*', result.stdout)
    assert line and 'with 29% more convolution work' in line.group(0), result.stdout


def test_the_peer_is_refused_a_flag_that_changes_the_settings_shape():
    result = launch.run([sys.executable, os.path.join(REPO, 'benchmark.py'), '--setting', 'miniimagenet',
                         '--num_filters', '64', '--peer', sys.executable], capture_output=True, text=True, cwd=REPO,
                        timeout=300)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == ('error: --peer: the peer times MAML at the flags of --setting '
                                                      'miniimagenet only; drop --num_filters')
