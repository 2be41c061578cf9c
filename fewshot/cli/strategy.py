"""--strategy: which `distribution.Cluster` a command's meta-training runs on (see fewshot/distribution.py)."""

import contextlib
import faulthandler
import signal
import subprocess
import sys
import threading

import tensorflow as tf
from absl import flags
from tensorflow.python.eager import context  # The cluster's key-value store has no public API.

from fewshot import distribution
from fewshot.cli import config
from fewshot.errors import SetupError

FLAGS = config.FLAGS  # config's flags first: the validators below read --tasks_per_chunk and --memory_budget_gb.

flags.DEFINE_enum('strategy', 'default', ['default', 'mirrored', 'multi_worker'],
                  "How to spread a meta-batch's tasks: 'default', one process on one device; 'mirrored', "
                  "tf.distribute.MirroredStrategy over this machine's GPUs (or --cpu_replicas CPU devices); "
                  "'multi_worker', tf.distribute.MultiWorkerMirroredStrategy, the same command on every "
                  'machine of the cluster that the TF_CONFIG environment variable describes (docs/cluster.md). '
                  '--meta_batch_size must be a multiple of the replicas.')
flags.DEFINE_integer('cpu_replicas', 0, "--strategy mirrored: split this machine's CPU into this many logical "
                     'devices, one replica each (mainly for testing; 0: the GPUs, or the one CPU).', lower_bound=0)
flags.register_multi_flags_validator(
    ['strategy', 'cpu_replicas'], lambda values: not values['cpu_replicas'] or values['strategy'] == 'mirrored',
    message='--cpu_replicas: only with --strategy mirrored (a worker of multi_worker is one replica per machine)')
flags.register_multi_flags_validator(
    ['strategy', 'tasks_per_chunk', 'memory_budget_gb'],
    lambda values: values['strategy'] == 'default' or not (values['tasks_per_chunk'] or values['memory_budget_gb']),
    message='--tasks_per_chunk, --memory_budget_gb: not yet with --strategy mirrored or multi_worker '
            '(add replicas instead: each holds only its share of the meta-batch)')
flags.DEFINE_integer('peer_timeout_seconds', 600,
                     '--strategy multi_worker: how long a process waits for the other processes of the cluster, '
                     'at the start (until every process TF_CONFIG names answers) and then at each collective '
                     'operation of training, validation and test (a process stopped, stuck or much slower); then '
                     'it stops with one error line. Raise it if a process may take longer to catch up, e.g. '
                     'the first download or preprocessing of the data on one machine.', lower_bound=1)
flags.register_multi_flags_validator(
    ['strategy', 'peer_timeout_seconds'],
    lambda values: values['strategy'] == 'multi_worker' or not FLAGS['peer_timeout_seconds'].present,
    message='--peer_timeout_seconds: only with --strategy multi_worker (the only strategy whose processes wait '
            'for each other)')
# Flags that may differ between the machines of a cluster: where files are, how progress shows, how
# long to wait for the others.
LOCAL_FLAGS = ('data_dir', 'dataset_dir', 'test_dataset_dir', 'cache_dir', 'results_dir', 'progress',
               'peer_timeout_seconds')
# The key of the cluster's coordination service under which TensorFlow's preemption notifier
# publishes the process that received a SIGTERM ('/job:worker/task:1').
_PREEMPTION_KEY = 'TF_DEFAULT_PREEMPTION_NOTICE_KEY'


def cluster_from_flags():
    """The `Cluster` of --strategy, made before TensorFlow runs anything (logical devices and a
    multi-worker cluster can be set up only then). FlagError for a bad TF_CONFIG; SetupError if the
    cluster's processes do not all answer within --peer_timeout_seconds."""
    if FLAGS.strategy == 'default':
        return distribution.Cluster()
    if FLAGS.strategy == 'mirrored':
        if FLAGS.cpu_replicas:
            cpu = tf.config.list_physical_devices('CPU')[0]
            try:
                tf.config.set_logical_device_configuration(
                    cpu, [tf.config.LogicalDeviceConfiguration()] * FLAGS.cpu_replicas)
            except RuntimeError:
                raise SetupError('--cpu_replicas: TensorFlow had started before the CPU could be split') from None
            devices = [device.name for device in tf.config.list_logical_devices('CPU')]
            return distribution.Cluster(tf.distribute.MirroredStrategy(devices), name='mirrored')
        return distribution.Cluster(tf.distribute.MirroredStrategy(), name='mirrored')
    cluster, task_type, index = distribution.read_tf_config()
    seconds = FLAGS.peer_timeout_seconds
    distribution.meet(cluster, task_type, index, seconds)  # Every process is there: TensorFlow's wait is short.
    others = ', '.join(address for hosts in cluster.values() for address in hosts
                       if address != cluster[task_type][index]) or 'none'
    sigterm_handler = signal.getsignal(signal.SIGTERM)
    with _exit_unless_done_within(
            seconds, f'error: --strategy multi_worker: TensorFlow did not connect this process to the others '
                     f'({others}) within {seconds} s (--peer_timeout_seconds) although all had answered; one may '
                     'have stopped meanwhile: start the command again on every machine'):
        # The timeout also bounds every collective operation afterwards: a stuck process
        # raises DeadlineExceededError in the others (`distribution.lost_peer`).
        strategy = tf.distribute.MultiWorkerMirroredStrategy(
            communication_options=tf.distribute.experimental.CommunicationOptions(timeout_seconds=seconds))
    _give_sigterm_back(sigterm_handler, f'/job:{task_type}/task:{index}')
    is_chief = task_type == 'chief' or (task_type == 'worker' and index == 0 and 'chief' not in cluster)
    num_workers = sum(len(hosts) for hosts in cluster.values())
    return distribution.Cluster(strategy, is_chief, num_workers, name='multi_worker')


# What the watchdog process of `_exit_unless_done_within` runs: it prints its argument if anything
# arrives on its standard input (faulthandler's report: the time is up), nothing at the end of it.
# SIGINT is ignored: Ctrl-C reaches it with the command, which it must outlive to print.
_WATCHDOG = ('import signal, sys\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\n'
             'if sys.stdin.buffer.read(1):\n    sys.stderr.write(sys.argv[1] + "\\n")\n')


@contextlib.contextmanager
def _exit_unless_done_within(seconds, message):
    """Ends the process, exit status 1, with `message` on stderr, if the block has not ended within `seconds`.

    Why not a Python thread: TensorFlow waits for the cluster's processes in C++ holding Python's lock,
    so no Python code runs until it returns (nor os._exit). faulthandler's timer is a thread of C code
    that needs no lock: when the time is up it writes the Python stacks to a file and calls _exit(1).
    That file is a pipe to a small watchdog process, which prints the one line instead.
    """
    watchdog = subprocess.Popen([sys.executable, '-I', '-S', '-c', _WATCHDOG, message], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL)
    faulthandler.dump_traceback_later(seconds, exit=True, file=watchdog.stdin)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        watchdog.stdin.close()  # The watchdog reads the end of its input, and ends without a word.
        watchdog.wait()


def _give_sigterm_back(handler, own_task):
    """Gives SIGTERM back to `handler` (the command's, which ends it cleanly: fewshot.cli.run) after
    MultiWorkerMirroredStrategy() has replaced it with TensorFlow's preemption notifier, which only
    records it. A SIGTERM the notifier recorded meanwhile is raised again, so the command ends as it
    would have."""
    if threading.current_thread() is not threading.main_thread() or handler is None:
        return  # Only the main thread sets handlers; None: not set from Python, nothing to give back.
    signal.signal(signal.SIGTERM, handler)
    # The notifier looks for a SIGTERM once a second, then publishes which process received it: after
    # a little more than a second, any SIGTERM received while TensorFlow connected the cluster is there.
    try:
        received = context.context().get_config_key_value(_PREEMPTION_KEY, 1100)
    except tf.errors.OpError:  # DeadlineExceededError: no process received one.
        return
    if received == own_task:
        signal.raise_signal(signal.SIGTERM)
