"""Meta-training on several replicas with TensorFlow's own distribution engine, synchronously.

A meta-batch of T tasks is cut into R contiguous shares of T/R tasks, replica r taking tasks
[r T/R, (r+1) T/R). Each replica computes its share's `meta_direction` d_r (a mean over its
tasks); one all-reduce sums (T/R) / T · d_r over the replicas, which is the mean over all T tasks,
and every replica takes that same meta-step on its copy of θ: the meta-step of one process.
Per-task metrics are gathered back in task order, so that validation and test tasks, split
the same way, score as in one process.

    Cluster()                 one process, one device: no tf.distribute at all
    Cluster(MirroredStrategy)  over this machine's devices (its GPUs, or logical CPU devices)
    Cluster(MultiWorkerMirroredStrategy)  one process per machine, the cluster read from TF_CONFIG
                              (`read_tf_config`); the chief (worker 0) writes the run folder

The commands choose one with --strategy (fewshot/cli/strategy.py).

Asynchronous training (a parameter server) is not offered: its stale meta-gradients would change
the algorithm.
"""

import contextlib
import hashlib
import json
import os
import socket

import numpy as np
import tensorflow as tf

from fewshot import data
from fewshot.errors import FlagError, TrainingError

# What a lost or unreachable process makes the collective operations raise.
LOST_PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError,
                    tf.errors.DeadlineExceededError)


def read_tf_config():
    """(the cluster {job: [host:port]}, this process's task type, index) from TF_CONFIG; FlagError
    if it is missing or not what TensorFlow expects."""
    text = os.environ.get('TF_CONFIG', '')
    example = ('e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
               '"task": {"type": "worker", "index": 0}}')
    if not text:
        raise FlagError(f'--strategy multi_worker: the TF_CONFIG environment variable is not set; give each '
                        f'process the cluster and its own place in it, {example}')
    try:
        parsed = json.loads(text)
        cluster, task = parsed['cluster'], parsed['task']
        task_type, index = task['type'], task['index']
        hosts = cluster[task_type]
        valid = (all(isinstance(h, list) and all(isinstance(a, str) for a in h) for h in cluster.values())
                 and isinstance(index, int) and 0 <= index < len(hosts) and set(cluster) <= {'chief', 'worker'})
    except (ValueError, KeyError, TypeError, AttributeError):
        valid = False
    if not valid or len(cluster.get('chief', [])) > 1:
        raise FlagError(f'TF_CONFIG is not a cluster description for --strategy multi_worker: {text[:200]!r}; '
                        f'expected a "cluster" of "worker" (and at most one "chief") addresses and this '
                        f'process\'s "task" in it, {example}')
    for address in (address for hosts in cluster.values() for address in hosts):
        host, _, port = address.rpartition(':')
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise FlagError(f'TF_CONFIG: {address!r} is not an address host:port with a port from 1 to 65535')
    check_port_free(cluster[task_type][index])
    return cluster, task_type, index


def check_port_free(address):
    """FlagError if this process's own address's port is taken on this machine: TensorFlow would fail
    deep inside its server, or wait for ever."""
    port = int(address.rpartition(':')[2])
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # A restarted run's old connections may linger.
        try:
            probe.bind(('', port))
        except OSError as error:
            raise FlagError(f'TF_CONFIG: this process\'s address {address} cannot be served: port {port} '
                            f'({error.strerror}); choose a free port') from None


class Cluster:
    """The processes and replicas meta-training one run, and what they must agree on.

    is_chief: this process writes the run folder (the only process, or the cluster's chief).
    num_replicas: R, the replicas a meta-batch is split across.
    """

    def __init__(self, strategy=None, is_chief=True, num_workers=1, name='default'):
        """strategy: a tf.distribute strategy, None for one process on one device; name: what the user
        chose it by (the command's --strategy)."""
        self.strategy = strategy
        self.name = name
        self.is_chief = is_chief
        self.num_workers = num_workers
        self.num_replicas = strategy.num_replicas_in_sync if strategy else 1

    def scope(self):
        """Where the learner must be built, so that its variables are replicated."""
        return self.strategy.scope() if self.strategy else contextlib.nullcontext()

    def check_meta_batch(self, meta_batch_size):
        """FlagError unless the replicas divide the meta-batch."""
        if meta_batch_size % self.num_replicas:
            raise FlagError(f'--meta_batch_size {meta_batch_size}: the {self.num_replicas} replicas of --strategy '
                            f'{self.name} must divide it, each adapting an equal share of its tasks; '
                            f'use a multiple of {self.num_replicas}')

    def broadcast(self, arrays):
        """The chief's values of `arrays` (a list of NumPy arrays or tensors whose shapes every process
        shares), on every process: a sum over the replicas in which all but the chief's give zeros."""
        if self.num_workers == 1:
            return [np.asarray(a) for a in arrays]
        values = [np.asarray(a) for a in arrays]
        # One dtype, so that the values travel packed in one all-reduce; float64 holds every float32
        # and every integer below 2^53 exactly. NumPy: each replica makes tensors on its own device.
        shared = [v.astype(np.float64) for v in values]
        per_replica = self.strategy.experimental_distribute_values_from_function(
            lambda context: shared if context.replica_id_in_sync_group == 0 else [np.zeros_like(v) for v in shared])
        summed = self.collective(_broadcast_sum, per_replica)
        return [s.numpy().astype(v.dtype) for s, v in zip(summed, values)]

    def broadcast_variables(self, variables):
        """Sets every process's `variables` (dict name -> variable) to the chief's values."""
        if self.num_workers > 1:
            for variable, value in zip(variables.values(), self.broadcast([v.numpy() for v in variables.values()])):
                variable.assign(value)

    def check_same(self, facts):
        """FlagError naming what differs if the processes were not started alike: `facts` (name -> a
        JSON-able value, e.g. the flags and the data checksum) are compared across processes."""
        if self.num_workers == 1:
            return
        names = sorted(facts)
        digests = np.array([[int(hashlib.sha256(json.dumps(facts[n], sort_keys=True).encode()).hexdigest()[:12], 16)
                             for n in names]], np.float64)  # 48 bits: exact in float64.
        per_replica = self.strategy.experimental_distribute_values_from_function(lambda context: digests)
        everyone = self.collective(_gather, per_replica).numpy()
        differ = [name for column, name in enumerate(names) if np.any(everyone[:, column] != everyone[0, column])]
        if differ:
            raise FlagError(f'the processes of the cluster were started with different {", ".join(differ)}; '
                            'start the same command on every machine (on --resume give each the flags the run '
                            'recorded, e.g. --precision)')

    def collective(self, function, *args):
        """`function(strategy, *args)`, compiled, run by every process; TrainingError if another process
        of the cluster is lost meanwhile."""
        try:
            return _compiled_call(function, self.strategy, *args)
        except LOST_PEER_ERRORS as error:
            raise lost_peer(error) from None


def lost_peer(error):
    """The TrainingError for a collective operation that failed because a process of the cluster stopped."""
    lines = [line.strip() for line in str(error.message or '').splitlines()]
    # TensorFlow's message is many lines; the one saying why is 'Collective ops is aborted by: <why>'.
    reason = next((line.partition('aborted by:')[2].strip() for line in lines if 'aborted by:' in line),
                  next((line for line in lines if line), ''))
    return TrainingError(f'a process of the cluster stopped or cannot be reached ({type(error).__name__}: '
                         f'{reason[:200]}); every process stops here. Restart them all with --resume to '
                         "continue from the last checkpoint in the chief's run folder")


@tf.function
def _compiled_call(function, strategy, *args):
    """`function(strategy, *args)` as one compiled function, traced once per function and argument shapes."""
    return function(strategy, *args)


def _broadcast_sum(strategy, per_replica):
    def replica_sum(values):  # tf.identity places each value on its replica's device, as all_reduce needs.
        return tf.distribute.get_replica_context().all_reduce('sum', [tf.identity(v) for v in values])
    summed = strategy.run(replica_sum, args=(per_replica,))
    return [strategy.experimental_local_results(s)[0] for s in summed]


def _gather(strategy, per_replica):
    return strategy.gather(per_replica, axis=0)


class Replicated:
    """A learner's compiled meta-step and evaluation across the replicas of `strategy` (see the
    module's docstring); `learner.Learner` uses it when it is built inside a strategy's scope."""

    def __init__(self, learner, strategy):
        self.learner = learner
        self.strategy = strategy
        self.num_replicas = strategy.num_replicas_in_sync
        self._train_step = tf.function(self.train_step)
        self._test_step = tf.function(self.test_step)

    def split(self, episodes):
        """Replica r's share of `episodes` (T tasks, a multiple of R): tasks [r T/R, (r+1) T/R)."""
        share = data.num_tasks(episodes) // self.num_replicas

        def replica_share(context):
            start = context.replica_id_in_sync_group * share
            return data.task_slice(episodes, start, start + share)
        return self.strategy.experimental_distribute_values_from_function(replica_share)

    def replica_direction(self, episodes, num_tasks, options):
        """In each replica: its share's direction and `measured`, weighted by its share of the
        `num_tasks` tasks and summed over the replicas (the mean over all tasks), and its per-task metrics."""
        direction, metrics, measured = self.learner.meta_direction(episodes, **options)
        weight = data.num_tasks(episodes) / num_tasks
        total = tf.distribute.get_replica_context().all_reduce(
            'sum', tf.nest.map_structure(lambda x: x * tf.cast(weight, x.dtype), (direction, measured)))
        return total, metrics

    def train_step(self, per_replica, num_tasks, **options):
        """The meta-step on a meta-batch split across the replicas; its per-task metrics [T]."""
        total, metrics = self.strategy.run(self.replica_direction, args=(per_replica, num_tasks, options))
        # After the all-reduce every replica holds the same total: any one's is the meta-step's.
        self.learner.update(*tf.nest.map_structure(lambda x: self.strategy.experimental_local_results(x)[0], total))
        return self.gather(metrics)

    def test_step(self, per_replica, num_steps):
        """Every replica adapts to its share of the tasks; the per-task metrics [T] in task order."""
        return self.gather(self.strategy.run(self.learner.test_step, args=(per_replica, num_steps)))

    def gather(self, metrics):
        return {name: self.strategy.gather(value, axis=0) for name, value in metrics.items()}

    def meta_train_step(self, episodes, options):
        """One meta-iteration on `episodes` (T tasks); per-task NumPy metrics."""
        num_tasks = data.num_tasks(episodes)
        return self._run(self._train_step, self.split(episodes), num_tasks, **options)

    def evaluate(self, episodes, num_steps):
        """Per-task NumPy metrics of the evaluation of `episodes`, of any number of tasks: the last
        task is repeated until the replicas divide them, and its copies' metrics are dropped."""
        num_tasks = data.num_tasks(episodes)
        padding = -num_tasks % self.num_replicas
        if padding:
            episodes = type(episodes)(*(tf.concat([x] + [x[-1:]] * padding, axis=0) for x in episodes))
        metrics = self._run(self._test_step, self.split(episodes), num_steps)
        return {name: value[:num_tasks] for name, value in metrics.items()}

    @staticmethod
    def _run(step, *args, **kwargs):
        try:
            return {name: value.numpy() for name, value in step(*args, **kwargs).items()}
        except LOST_PEER_ERRORS as error:
            raise lost_peer(error) from None
