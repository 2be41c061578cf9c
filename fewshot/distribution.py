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
                              (`read_tf_config`) and met before TensorFlow connects it (`meet`);
                              the chief (worker 0) writes the run folder

The commands choose one with --strategy (fewshot/cli/strategy.py).

Asynchronous training (a parameter server) is not offered: its stale meta-gradients would change
the algorithm.
"""

import contextlib
import hashlib
import json
import os
import socket
import threading
import time

import numpy as np
import tensorflow as tf

from fewshot import data
from fewshot.errors import FlagError, SetupError, TrainingError, named

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
        raise FlagError(f'{named("strategy")} multi_worker: the TF_CONFIG environment variable is not set; give each '
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
        raise FlagError(f'TF_CONFIG is not a cluster description for {named("strategy")} multi_worker: {text[:200]!r}; '
                        f'expected a "cluster" of "worker" (and at most one "chief") addresses and this '
                        f'process\'s "task" in it, {example}')
    for job, hosts in cluster.items():
        if not hosts:  # TensorFlow crashes (a segmentation fault) on a job without tasks.
            raise FlagError(f'TF_CONFIG: "cluster" has an empty "{job}" list; list the address host:port of each '
                            f'{job} process, or leave "{job}" out')
    seen = set()
    for address in (address for hosts in cluster.values() for address in hosts):
        host, _, port = address.rpartition(':')
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise FlagError(f'TF_CONFIG: {address!r} is not an address host:port with a port from 1 to 65535')
        if address.lower() in seen:  # TensorFlow would wait for ever for the second process to connect.
            raise FlagError(f'TF_CONFIG: the address {address} is in "cluster" twice; every process needs an '
                            'address host:port of its own (on one machine, another port)')
        seen.add(address.lower())
    check_own_host(cluster[task_type][index])
    check_port_free(cluster[task_type][index])
    return cluster, task_type, index


def _host_port(address):
    """(host, port) of 'host:port', an IPv6 host without its brackets ('[::1]:2222')."""
    host, _, port = address.rpartition(':')
    return host.strip('[]'), int(port)


def check_own_host(address):
    """FlagError if the host of this process's own address is not a name this machine knows: the other
    processes reach this one through it, and TensorFlow would wait for ever (a temporary failure of
    the name service is left to `meet`'s timeout)."""
    host = _host_port(address)[0]
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        if error.errno != socket.EAI_AGAIN:
            raise FlagError(f'TF_CONFIG: this process\'s address {address}: the host {host!r} is unknown here '
                            f'({error.strerror}); give the name or IP address by which the other machines reach '
                            'this one') from None


def check_port_free(address):
    """FlagError if this process's own address's port is taken on this machine: TensorFlow would fail
    deep inside its server, or wait for ever."""
    port = _host_port(address)[1]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # A restarted run's old connections may linger.
        try:
            probe.bind(('', port))
        except OSError as error:
            raise FlagError(f'TF_CONFIG: this process\'s address {address} cannot be served: port {port} '
                            f'({error.strerror}); choose a free port') from None


def meet(cluster, task_type, index, timeout_seconds):
    """Returns once every process of the cluster answers at its TF_CONFIG address, this one too (its
    address must reach it); SetupError naming those that did not within `timeout_seconds` (the
    command's --peer_timeout_seconds), FlagError if one answers with another TF_CONFIG.

    Why, before TensorFlow: MultiWorkerMirroredStrategy() waits for the processes inside C++ with no
    timeout, holding Python's lock (no Python thread runs, no signal handler) and with a SIGTERM
    handler of its own that only logs it, so a process waiting there can be neither timed out nor
    stopped from Python. Here the wait is Python's: bounded, and SIGTERM or Ctrl-C end it. TensorFlow
    is started when all are there, and its own wait is then short.

    Each process listens on its own port (TensorFlow's server takes it over afterwards) and calls
    every address; on each call both sides send their TF_CONFIG, so that both know of each other
    (the one called records the caller once it has answered). A process that has heard from all may
    then stop listening: every other has heard from it.
    """
    meeting = _Meeting(cluster, task_type, index)
    tasks = {(job, i): address for job, hosts in cluster.items() for i, address in enumerate(hosts)}
    deadline = time.monotonic() + timeout_seconds
    with meeting.listening(_host_port(tasks[task_type, index])[1]):
        while True:
            meeting.check()
            missing = [task for task in tasks if task not in meeting.heard]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise _not_met(missing, tasks, (task_type, index), timeout_seconds)
            for task in missing:
                meeting.call(task, tasks[task])
            time.sleep(0.2)


def _not_met(missing, tasks, own, timeout_seconds):
    if own in missing:
        return SetupError(f'TF_CONFIG: this process\'s address {tasks[own]} did not reach it within '
                          f'{timeout_seconds:g} s ({named("peer_timeout_seconds")}); give the name or IP address '
                          'of this machine by which the other machines reach it')
    others = ', '.join(tasks[task] for task in missing)
    return SetupError(f'{named("strategy")} multi_worker: the cluster\'s other processes ({others}) '
                      f'did not answer within {timeout_seconds:g} s ({named("peer_timeout_seconds")}); start the same '
                      'command on every machine TF_CONFIG names, each with its own "task" index, and check that '
                      'their addresses reach them from this machine (host names, ports, firewalls)')


class _Meeting:
    """One process's side of `meet`: the processes it has heard from, its answers to the others' calls."""

    LINE_SECONDS = 10  # How long to wait for the other side's line on a connection made.
    PREFIX = b'{"fewshot_cluster": '  # How every line starts: what does not is not this command.

    def __init__(self, cluster, task_type, index):
        self.cluster = cluster
        self.own = (task_type, index)
        # 'process' tells this process's own answer from another's that claims its place.
        self.line = (json.dumps({'fewshot_cluster': cluster, 'task': [task_type, index],
                                 'process': os.urandom(8).hex()}) + '\n').encode()
        self.process = json.loads(self.line)['process']
        self.heard = set()  # (task type, index) of the processes met, this one's own through its address.
        self.problems = []  # FlagErrors found while answering, raised by `check`.

    @contextlib.contextmanager
    def listening(self, port):
        """Answers calls on `port` in a thread while the block runs; the port is free again after it."""
        try:  # IPv6 and IPv4, as TensorFlow's server listens.
            listener = socket.create_server(('', port), family=socket.AF_INET6, dualstack_ipv6=True)
        except (OSError, ValueError):  # No IPv6 here.
            listener = socket.create_server(('', port))
        listener.settimeout(0.2)  # How often the thread looks whether to stop.
        stop = threading.Event()
        thread = threading.Thread(target=self._answer, args=(listener, stop), daemon=True)
        thread.start()
        met = False
        try:
            yield
            met = True
        finally:
            stop.set()
            if met:  # A call being answered is finished: the caller counts on it. (On an error, no one does.)
                thread.join(self.LINE_SECONDS + 1)
            listener.close()

    def _answer(self, listener, stop):
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:  # The timeout, to look at `stop`.
                continue
            with connection:
                try:
                    caller = self._read(connection, stop.is_set)
                    if caller is None:
                        continue
                    problem = self._problem(caller, None, None)
                    connection.sendall(self.line)
                except OSError:
                    continue
            if problem:
                self.problems.append(problem)
            elif tuple(caller['task']) != self.own:
                self.heard.add(tuple(caller['task']))

    def call(self, task, address):
        """Calls `task` at `address`; it is heard if it answers. An address with nobody there yet, or
        something else than this command, is called again at the next round."""
        if task in self.heard:  # It called this process meanwhile.
            return
        try:
            with socket.create_connection(_host_port(address), timeout=1) as connection:
                connection.sendall(self.line)
                answer = self._read(connection, lambda: task in self.heard)
        except OSError:
            return
        if answer is not None:
            problem = self._problem(answer, task, address)
            if problem:
                raise problem
            self.heard.add(task)

    def check(self):
        if self.problems:
            raise self.problems[0]

    def _read(self, connection, give_up):
        """The other side's line as a dict; None if what is there is not this command (TensorFlow's
        server or client of a process that has met all, any other program), nothing comes within
        LINE_SECONDS, or give_up() becomes true meanwhile."""
        connection.settimeout(0.2)  # How often to look at give_up().
        deadline = time.monotonic() + self.LINE_SECONDS
        received = b''
        while not received.endswith(b'\n') and len(received) < 1 << 16:
            if give_up() or time.monotonic() > deadline or not self.PREFIX.startswith(received[:len(self.PREFIX)]):
                return None
            try:
                chunk = connection.recv(4096)
            except TimeoutError:
                continue
            if not chunk:
                break
            received += chunk
        try:
            other = json.loads(received)
        except ValueError:
            return None
        if not isinstance(other, dict) or not {'fewshot_cluster', 'task', 'process'} <= set(other):
            return None
        task = other['task']
        return other if isinstance(task, list) and len(task) == 2 and isinstance(task[1], int) else None

    def _problem(self, other, task, address):
        """The FlagError if `other` (the line of the process at `address`, expected to be `task`; for a
        caller, None) does not fit this process's TF_CONFIG, else None."""
        claimed = tuple(other['task'])
        if other['fewshot_cluster'] != self.cluster:
            where = f'at {address}' if address else 'calling this one'
            return FlagError(f'TF_CONFIG: the process {where} has another "cluster" '
                             f'({json.dumps(other["fewshot_cluster"])[:200]}); give every process the same "cluster" '
                             'and its own "task"')
        if claimed == self.own and other['process'] != self.process:
            return FlagError(f'TF_CONFIG: another process {f"(at {address}) " if address else ""}was also started '
                             f'as {_name(self.own)}; give each process its own "task" index, the place of its '
                             'address in "cluster"')
        if task is not None and claimed != task:
            return FlagError(f'TF_CONFIG: {address}, the address of {_name(task)}, reaches the process started as '
                             f'{_name(claimed)}{" (this one)" if claimed == self.own else ""}; every process needs '
                             'an address of its own, and its own "task" index, the place of that address in "cluster"')
        return None


def _name(task):
    return f'{task[0]} {task[1]}'


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
            raise FlagError(f'{named("meta_batch_size")} {meta_batch_size}: the {self.num_replicas} replicas of '
                            f'{named("strategy")} '
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
                            f'start the same command on every machine (on {named("resume")} give each the flags the '
                            f'run recorded, e.g. {named("precision")})')

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
    if isinstance(error, tf.errors.DeadlineExceededError):  # CommunicationOptions(timeout_seconds) ran out.
        reason = f'no answer within {named("peer_timeout_seconds")}'
    return TrainingError(f'a process of the cluster stopped or cannot be reached ({type(error).__name__}: '
                         f'{reason[:200]}); every process stops here. Restart them all with {named("resume")} to '
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
