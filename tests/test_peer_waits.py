"""No wait without an end (issue 41, item 7): a TF_CONFIG that can never work is one error line, a
process of a cluster waits for the others at most --peer_timeout_seconds, and SIGTERM ends a command
cleanly with one error line, whether it trains alone or waits for its cluster."""

import contextlib
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import launch
from conftest import free_ports, wait_for_checkpoint
from fewshot import results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--num_filters=4', '--n_way=3', '--k_shot=1', '--num_query=2', '--meta_batch_size=2',
        '--num_val_classes=4', '--num_train_classes=10', '--num_val_tasks=4', '--num_test_tasks=4',
        '--num_inner_steps=1', '--progress=false', '--val_interval=5']


def _maml(synthetic_dir, tmp_path, *flags):
    return [sys.executable, os.path.join(REPO, 'maml.py'), f'--data_dir={synthetic_dir}',
            f'--cache_dir={tmp_path}/cache', f'--results_dir={tmp_path}/results', '--run_name=run', *TINY, *flags]


def _tf_config(hosts, index=0):
    return json.dumps({'cluster': {'worker': hosts}, 'task': {'type': 'worker', 'index': index}})


def _start(command, tf_config=None, log=None, **env):
    """The command started with TF_CONFIG and `env`, its stderr to the file `log` (a pipe nobody reads could fill)."""
    env = {**os.environ, **({'TF_CONFIG': tf_config} if tf_config else {}), **env}
    with open(log, 'w') as stderr:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr)


def _ended(process, log, timeout):
    """(exit status, stderr) of `process` once it ends; it fails the test, killed, if it takes over `timeout` s."""
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f'still running {timeout} s on; its stderr ends: {log.read_text()[-2000:]}')
    return process.returncode, log.read_text()


def _one_error_line(stderr):
    errors = [line for line in stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and 'Traceback' not in stderr, stderr[-3000:]
    return errors[0]


@pytest.mark.parametrize('cluster, expected', [
    # TensorFlow waited for ever for the second process, which could never take the same address.
    ({'worker': ['localhost:{0}', 'localhost:{0}']}, r'TF_CONFIG: the address localhost:\d+ is in "cluster" twice'),
    # TensorFlow crashed (a segmentation fault).
    ({'chief': [], 'worker': ['localhost:{0}']}, r'TF_CONFIG: "cluster" has an empty "chief" list'),
    # TensorFlow waited for ever to reach its own server through a name that does not resolve.
    ({'worker': ['no-such-host.invalid:{0}']}, r"TF_CONFIG: this process's address no-such-host\.invalid:\d+: the "
                                                r"host 'no-such-host\.invalid' is unknown here"),
], ids=['the same address twice', 'an empty job', 'an unknown own host'])
def test_a_tf_config_that_cannot_work_is_one_error_line(synthetic_dir, tmp_path, cluster, expected):
    port, = free_ports(1)
    config = json.dumps({'cluster': {job: [host.format(port) for host in hosts] for job, hosts in cluster.items()},
                         'task': {'type': 'worker', 'index': 0}})
    log = tmp_path / 'stderr'
    status, stderr = _ended(_start(_maml(synthetic_dir, tmp_path, '--strategy=multi_worker'), config, log), log, 90)
    assert status == 1
    assert re.search(expected, _one_error_line(stderr)), stderr[-2000:]


def test_a_peer_never_started_ends_the_wait_after_the_timeout(synthetic_dir, tmp_path):
    """A valid cluster of two whose worker 1 is never started: worker 0 waited for ever."""
    hosts = [f'127.0.0.1:{port}' for port in free_ports(2)]
    log = tmp_path / 'stderr'
    started = time.time()
    process = _start(_maml(synthetic_dir, tmp_path, '--strategy=multi_worker', '--peer_timeout_seconds=5'),
                     _tf_config(hosts), log)
    status, stderr = _ended(process, log, 90)
    assert status == 1
    error = _one_error_line(stderr)
    assert f"the cluster's other processes ({hosts[1]}) did not answer within 5 s (--peer_timeout_seconds)" in error
    assert time.time() - started >= 5
    assert not os.path.exists(tmp_path / 'results' / 'run')


def test_processes_given_different_clusters_each_say_so(synthetic_dir, tmp_path):
    """Two processes each listing its own address first, both worker 0 of a cluster of two: each
    waited for ever for its worker 1."""
    hosts = [f'127.0.0.1:{port}' for port in free_ports(2)]
    logs = [tmp_path / 'stderr0', tmp_path / 'stderr1']
    processes = [_start(_maml(synthetic_dir, tmp_path / str(i), '--strategy=multi_worker'),
                        _tf_config(order), log) for i, (order, log) in enumerate(zip((hosts, hosts[::-1]), logs))]
    try:
        ended = [_ended(process, log, 90) for process, log in zip(processes, logs)]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    for status, stderr in ended:
        assert status == 1
        assert _one_error_line(stderr).startswith('error: TF_CONFIG: the process '), stderr[-2000:]
        assert 'has another "cluster"' in stderr


def test_sigterm_ends_a_process_waiting_for_its_peers(synthetic_dir, tmp_path):
    """TensorFlow's preemption notifier took SIGTERM and went on waiting."""
    hosts = [f'127.0.0.1:{port}' for port in free_ports(2)]
    log = tmp_path / 'stderr'
    process = _start(_maml(synthetic_dir, tmp_path, '--strategy=multi_worker'), _tf_config(hosts), log)
    try:
        _wait_until_listening(process, int(hosts[0].rpartition(':')[2]))
    except BaseException:
        process.kill()
        raise
    time.sleep(1)  # Well into the wait.
    process.send_signal(signal.SIGTERM)
    status, stderr = _ended(process, log, 20)
    assert (status, _one_error_line(stderr)) == (143, 'error: terminated (SIGTERM)')


def _wait_until_listening(process, port, timeout=90):
    """Returns once `process` listens on `port`: it is waiting for the others of its cluster."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        try:
            socket.create_connection(('127.0.0.1', port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f'the process did not listen on port {port} (exit status {process.poll()})')


# Worker 1 of a cluster of two that meets worker 0 (fewshot.distribution.meet), says 'met', waits
# argv[1] seconds and then lets TensorFlow connect it (argv[2] 'connect') or never does.
PEER = '''import sys, time
import fewshot
from fewshot import distribution
distribution.meet(*distribution.read_tf_config(), 90)
print('met', flush=True)
time.sleep(float(sys.argv[1]))
if sys.argv[2] == 'connect':
    import tensorflow as tf
    tf.distribute.MultiWorkerMirroredStrategy()
    time.sleep(60)
'''


@contextlib.contextmanager
def _killed_at_the_end(process):
    """`process` for the block; killed after it if it still runs, so that no test leaves one behind."""
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def _met_peer(hosts, delay, then):
    """The PEER process as worker 1, once it has met worker 0."""
    peer = subprocess.Popen([sys.executable, '-c', PEER, str(delay), then], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env={**os.environ, 'TF_CONFIG': _tf_config(hosts, 1)})
    if not select.select([peer.stdout], [], [], 90)[0] or peer.stdout.readline() != b'met\n':
        peer.kill()
        peer.wait()
        pytest.fail('the peer did not meet worker 0')
    return peer


def test_tensorflow_connecting_the_cluster_is_bounded_too(synthetic_dir, tmp_path):
    """Processes that have all met, one of which never lets TensorFlow connect it: the wait inside
    TensorFlow (which holds Python's lock) ends after the timeout too, with one line."""
    hosts = [f'127.0.0.1:{port}' for port in free_ports(2)]
    log = tmp_path / 'stderr'
    process = _start(_maml(synthetic_dir, tmp_path, '--strategy=multi_worker', '--peer_timeout_seconds=5'),
                     _tf_config(hosts), log)
    with _killed_at_the_end(process):
        with _killed_at_the_end(_met_peer(hosts, 120, 'never')):
            status, stderr = _ended(process, log, 60)
    assert status == 1
    assert 'TensorFlow did not connect this process to the others' in _one_error_line(stderr)


def test_sigterm_while_tensorflow_connects_the_cluster_ends_the_command(synthetic_dir, tmp_path):
    """SIGTERM while TensorFlow connects the cluster is taken by TensorFlow's preemption notifier; the
    command ends with one line as soon as TensorFlow returns."""
    hosts = [f'127.0.0.1:{port}' for port in free_ports(2)]
    log = tmp_path / 'stderr'
    process = _start(_maml(synthetic_dir, tmp_path, '--strategy=multi_worker'), _tf_config(hosts), log)
    with _killed_at_the_end(process):
        with _killed_at_the_end(_met_peer(hosts, 8, 'connect')):
            time.sleep(3)  # Worker 0 is inside TensorFlow, waiting for the peer.
            process.send_signal(signal.SIGTERM)
            status, stderr = _ended(process, log, 60)
    assert (status, _one_error_line(stderr)) == (143, 'error: terminated (SIGTERM)')
    if not os.environ.get('TF_CPP_MIN_LOG_LEVEL'):  # TensorFlow's log says it took the SIGTERM.
        assert 'SIGTERM caught' in stderr


def test_sigterm_ends_training_cleanly_and_the_run_resumes(synthetic_dir, tmp_path):
    """One process, the default strategy: SIGTERM ended it on the spot, no message, maybe a
    temporary file left behind."""
    folder = tmp_path / 'results' / 'run'
    checkpoint = folder / results.CHECKPOINT_FILE
    log = tmp_path / 'stderr'
    process = _start(_maml(synthetic_dir, tmp_path, '--num_iterations=5000'), log=log)
    wait_for_checkpoint(process, checkpoint, 5, timeout=120)
    assert process.poll() is None, f'the run ended before it could be stopped: {log.read_text()[-2000:]}'
    process.send_signal(signal.SIGTERM)
    status, stderr = _ended(process, log, 30)
    assert (status, _one_error_line(stderr)) == (143, 'error: terminated (SIGTERM)')
    leftovers = [name for _, _, names in os.walk(folder) for name in names if f'.tmp{process.pid}' in name]
    assert leftovers == []
    with np.load(checkpoint) as saved:
        stopped_at = int(saved['iteration'])
    resumed = launch.run(_maml(synthetic_dir, tmp_path, f'--num_iterations={stopped_at + 5}', '--resume'),
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f'Resuming {folder} from iteration {stopped_at}' in resumed.stdout + resumed.stderr
    assert results.read_summary(str(folder)) is not None


# Imported by the worker's Python at start-up (sitecustomize on PYTHONPATH): SIGUSR1 makes its main
# thread wait for ever, as a process stuck in its own code, while TensorFlow's threads keep answering
# the cluster's heartbeats (a process stopped whole, SIGSTOP, is found by those within seconds).
STUCK_ON_SIGUSR1 = '''import signal, time
signal.signal(signal.SIGUSR1, lambda signum, frame: time.sleep(10 ** 6))
'''


def test_a_stuck_peer_ends_training_after_the_timeout(synthetic_dir, tmp_path):
    """A process of the cluster stuck in its own code held the others at their next collective
    operation for ever; they now stop after --peer_timeout_seconds, one error line each."""
    hosts = [f'127.0.0.1:{port}' for port in free_ports(2)]
    command = _maml(synthetic_dir, tmp_path, '--strategy=multi_worker', '--num_iterations=5000',
                    '--peer_timeout_seconds=10')
    worker_command = [f'--results_dir={tmp_path}/worker_results' if a.startswith('--results_dir=') else a
                      for a in command]
    (tmp_path / 'stuck').mkdir()
    (tmp_path / 'stuck' / 'sitecustomize.py').write_text(STUCK_ON_SIGUSR1)
    logs = [tmp_path / 'stderr0', tmp_path / 'stderr1']
    worker = _start(worker_command, _tf_config(hosts, 1), logs[1], PYTHONPATH=str(tmp_path / 'stuck'))
    chief = _start(command, _tf_config(hosts, 0), logs[0])
    try:
        wait_for_checkpoint(chief, tmp_path / 'results' / 'run' / results.CHECKPOINT_FILE, 5, timeout=180)
        assert chief.poll() is None, f'the chief ended before the worker was stuck: {logs[0].read_text()[-2000:]}'
        worker.send_signal(signal.SIGUSR1)
        stuck = time.time()
        status, stderr = _ended(chief, logs[0], 90)
        assert time.time() - stuck >= 7  # Not before the timeout (10 s, minus a step under way).
    finally:
        worker.kill()
        worker.wait()
    assert status == 1
    error = _one_error_line(stderr)
    assert 'a process of the cluster stopped or cannot be reached' in error
    assert 'no answer within --peer_timeout_seconds' in error and '--resume' in error
