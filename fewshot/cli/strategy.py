"""--strategy: which `distribution.Cluster` a command's meta-training runs on (see fewshot/distribution.py)."""

import tensorflow as tf
from absl import flags

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
# Flags that may differ between the machines of a cluster: where files are, and how progress shows.
LOCAL_FLAGS = ('data_dir', 'cache_dir', 'results_dir', 'progress')


def cluster_from_flags():
    """The `Cluster` of --strategy, made before TensorFlow runs anything (logical devices and a
    multi-worker cluster can be set up only then). FlagError for a bad TF_CONFIG."""
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
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    is_chief = task_type == 'chief' or (task_type == 'worker' and index == 0 and 'chief' not in cluster)
    num_workers = sum(len(hosts) for hosts in cluster.values())
    return distribution.Cluster(strategy, is_chief, num_workers, name='multi_worker')
