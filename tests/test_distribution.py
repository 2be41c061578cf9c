"""tf.distribute: a meta-step split across replicas equals the one-process meta-step, and a cluster
of two worker processes trains, stops when one dies, and resumes, as one process would."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

from conftest import free_ports, wait_for_checkpoint
from fewshot import results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
TINY = ['--num_filters=4', '--n_way=3', '--k_shot=1', '--num_query=2', '--meta_batch_size=4',
        '--num_val_classes=4', '--num_train_classes=10', '--num_val_tasks=5', '--num_test_tasks=5',
        '--num_inner_steps=1', '--progress=false', '--val_interval=5']


def test_replicas_take_the_one_process_meta_step():
    """MirroredStrategy over two logical CPU devices, for MAML at first and second order, MAML++
    (its first meta-step first order, the others second order) and the Prototypical Network: the
    state (weights, MAML++'s running statistics, the optimizer's) after the first and the tenth
    meta-step, and the per-task metrics of each and of an evaluation of five tasks, equal one
    process's within float32 tolerance."""
    result = subprocess.run([sys.executable, os.path.join(HERE, 'replicated_steps.py')], capture_output=True,
                            text=True, cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert sorted(report) == ['FO-MAML', 'MAML', 'MAML++', 'ProtoNet']
    for learner, runs in report.items():
        assert runs['replicas'] == 2, learner
        for when, single, replicated in zip(('first', 'tenth'), runs['single'], runs['replicated']):
            assert single.keys() == replicated.keys() == runs['start'].keys()
            for name in single:
                np.testing.assert_allclose(replicated[name], single[name], rtol=1e-5, atol=1e-5,
                                           err_msg=f'{learner}, after the {when} meta-step: {name}')
        moved = max(float(np.max(np.abs(np.subtract(runs['single'][0][name], start))))
                    for name, start in runs['start'].items())
        assert moved > 1e-4, f'{learner}: the meta-step left the weights where they were'
        assert len(runs['metrics_single']) == 11
        for step, (single, replicated) in enumerate(zip(runs['metrics_single'], runs['metrics_replicated'])):
            assert single.keys() == replicated.keys()
            for name in single:
                np.testing.assert_allclose(replicated[name], single[name], rtol=1e-4, atol=1e-5,
                                           err_msg=f'{learner}, meta-iteration {step + 1}: {name}')
        assert len(runs['metrics_single'][-1]['query_post_accuracy']) == 5  # The evaluation's padding is dropped.


def _maml(synthetic_dir, results_dir, cache_dir, *flags):
    return [sys.executable, os.path.join(REPO, 'maml.py'), f'--data_dir={synthetic_dir}', f'--cache_dir={cache_dir}',
            f'--results_dir={results_dir}', '--run_name=run', *TINY, *flags]


def _start_cluster(command, tmp_path, attempt):
    """Two worker processes of `command` on 127.0.0.1, the chief first, each (process, its stderr file).
    The worker is given results and temporary folders of its own."""
    hosts = [f'127.0.0.1:{port}' for port in free_ports(2)]
    started = []
    for index in range(2):
        env = {**os.environ, 'TF_CONFIG': json.dumps({'cluster': {'worker': hosts},
                                                      'task': {'type': 'worker', 'index': index}})}
        argv = list(command)
        if index:
            os.makedirs(tmp_path / f'worker_tmp{attempt}')
            env['TMPDIR'] = str(tmp_path / f'worker_tmp{attempt}')
            argv = [f'--results_dir={tmp_path}/worker_results' if a.startswith('--results_dir=') else a
                    for a in argv]
        # A file, not a pipe: a pipe nobody reads while the run goes on could fill and stop it.
        log = tmp_path / f'stderr{attempt}_{index}'
        with open(log, 'w') as stderr:
            started.append((subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr), log))
    return started


def _finish(started, timeout=300):
    """(return code, stderr) of each process of `_start_cluster`; none outlives the test."""
    try:
        for process, _ in started:
            process.wait(timeout=timeout)
    finally:
        for process, _ in started:
            if process.poll() is None:
                process.kill()
                process.wait()
    return [(process.returncode, log.read_text()) for process, log in started]


def _metrics(path):
    return {key: [row[key] for row in results.read_metrics(path)] for key in results.read_metrics(path)[0]
            if key != 'seconds'}


def test_two_workers_train_as_one_process_stop_together_and_resume(synthetic_dir, tmp_path):
    cache = str(tmp_path / 'cache')
    one = subprocess.run(_maml(synthetic_dir, tmp_path / 'one', cache, '--num_iterations=40'), capture_output=True,
                         text=True, cwd=REPO, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]

    # A cluster of two, its worker killed after a checkpoint past the start.
    command = _maml(synthetic_dir, tmp_path / 'cluster', cache, '--num_iterations=40', '--strategy=multi_worker')
    cluster = _start_cluster(command, tmp_path, 0)
    (chief, _), (worker, _) = cluster
    checkpoint = tmp_path / 'cluster' / 'run' / results.CHECKPOINT_FILE
    wait_for_checkpoint(chief, checkpoint, 10)
    worker.send_signal(signal.SIGKILL)
    killed_at = time.time()
    (status, stderr), _ = _finish(cluster, timeout=120)
    assert time.time() - killed_at < 60, 'the chief took more than a minute to notice'
    with np.load(checkpoint) as saved:
        stopped_at = int(saved['iteration'])
    assert 10 <= stopped_at < 40, 'the run finished before its worker could be killed'
    assert status != 0
    errors = [line for line in stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and 'Traceback' not in stderr, stderr[-3000:]
    assert 'a process of the cluster stopped' in errors[0] and '--resume' in errors[0], errors[0]

    # The pair resumed goes on from the checkpoint and ends where one process ends.
    resumed = _finish(_start_cluster(command + ['--resume'], tmp_path, 1))
    for status, stderr in resumed:
        assert status == 0, stderr[-3000:]
    assert f'Resuming {tmp_path / "cluster" / "run"} from iteration {stopped_at}' in resumed[0][1]
    cluster_metrics = _metrics(str(checkpoint.parent / results.METRICS_FILE))
    one_metrics = _metrics(str(tmp_path / 'one' / 'run' / results.METRICS_FILE))
    assert cluster_metrics['iteration'] == one_metrics['iteration'] == [0, 5, 10, 15, 20, 25, 30, 35, 40]
    for key, values in one_metrics.items():
        np.testing.assert_allclose(cluster_metrics[key], values, rtol=1e-4, atol=1e-5, err_msg=key)
    summaries = [results.read_summary(str(folder)) for folder in (checkpoint.parent, tmp_path / 'one' / 'run')]
    np.testing.assert_allclose(summaries[0]['test_post_accuracy'], summaries[1]['test_post_accuracy'], atol=1e-5)
    # The worker wrote nothing: no results folder of its own, and at a clean exit it removed its
    # temporary one (TensorFlow's autograph leaves files there; the killed worker could not clean up).
    assert not os.path.exists(tmp_path / 'worker_results')
    assert [name for name in os.listdir(tmp_path / 'worker_tmp1') if name.startswith('fewshot-worker-')] == []
    assert [name for name in os.listdir(tmp_path / 'worker_tmp0') if name.startswith('fewshot-worker-')]
