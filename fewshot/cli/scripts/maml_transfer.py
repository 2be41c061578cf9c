"""Transfer learning baseline: pretrain a classifier, freeze it, replace the head, adapt per task.

    python maml_transfer.py                         # pretrain on all meta-train characters, then meta-test
    python maml_transfer.py --compare_with results/maml_fo_5way5shot_5steps_seed0,results/maml_fo_5way1shot_5steps_seed0

The network is MAML's, trained as an ordinary classifier over every meta-train
character. For a few-shot task, the convolutional layers are frozen (batch-norm
statistics included), the classification layer is replaced by a new N-way layer,
that layer is fitted on the support set with a few gradient steps, and the query
set scores it. During pretraining this is measured on the same meta-validation
tasks MAML uses. `--compare_with` scores trained FO-MAML runs and this model on the
same meta-test tasks.
"""

import os
import sys

import fewshot  # noqa: F401  First: it sets up TensorFlow's CPU backend, read as TensorFlow loads.
import keras
import numpy as np
from absl import flags

from fewshot import cli, data, errors, network, plotting, results, training
from fewshot.cli import config, experiment
from fewshot.learners import MAML
from fewshot.learners.transfer import Adaptation, PretrainedClassifier, transfer_learn

flags.adopt_module_key_flags(config)
flags.DEFINE_integer('epochs', 10, 'Pretraining epochs over all meta-train images '
                     '(--num_iterations is not used by this script).', lower_bound=1)
flags.DEFINE_integer('batch_size', 128, 'Pretraining minibatch size.', lower_bound=1)
flags.DEFINE_float('pretrain_lr', 1e-3, 'Pretraining Adam learning rate.', lower_bound=1e-12)
flags.DEFINE_integer('max_shift', 2, 'Pretraining augmentation: random shifts of up to this many '
                     'pixels (0: none). Rotations as new classes: --rotations.', lower_bound=0)
flags.DEFINE_integer('adapt_steps', 100, 'Gradient steps fitting the new head on a support set.',
                     lower_bound=0)
flags.DEFINE_float('adapt_lr', 0.01, 'Learning rate of those steps.', lower_bound=1e-12)
flags.DEFINE_enum('adapt_optimizer', 'adam', ['sgd', 'adam'], 'Optimizer of those steps.')
flags.DEFINE_enum('head_init', 'random', ['random', 'zero', 'prototype'],
                  'Initial new head: Glorot-uniform random, zeros, or class prototypes '
                  '(weights 2*mean support feature, bias -|mean|^2).')
flags.DEFINE_boolean('finetune_all', False, 'Adapt every weight on the support set, not only the '
                     'new head (batch-norm statistics stay frozen unless --batch_statistics).')
flags.DEFINE_boolean('batch_statistics', False, 'Normalise with the statistics of the task\'s own '
                     'batch (transductive) instead of the frozen pretraining statistics.')
flags.DEFINE_list('compare_with', [], 'FO-MAML run folders (with model.keras) to compare with on '
                  'the same meta-test tasks, each at its own N-way K-shot setting.')
FLAGS = flags.FLAGS


# What a compared run must have recorded: the task shape, the network, and how it adapts.
MAML_RUN_FLAGS = ('n_way', 'k_shot', 'num_query', 'num_filters', 'max_pool', 'inner_lr', 'num_inner_steps',
                  'num_eval_inner_steps', 'split', 'split_seed', 'num_train_classes', 'num_val_classes',
                  'eval_seed')


def check_maml_run(run_dir):
    """The flags of a finished FO-MAML run folder (maml.py); RunError if it is not one or its tasks differ."""
    if not os.path.isdir(run_dir):
        raise results.RunError(f'--compare_with {run_dir}: folder does not exist')
    hyperparameters = results.read_hyperparameters(run_dir)
    algorithm = hyperparameters.get('algorithm')
    if algorithm != 'FO-MAML':
        raise results.RunError(f'--compare_with {run_dir}: a run of {algorithm}; expected a finished '
                               'FO-MAML run of maml.py')
    if not os.path.isfile(os.path.join(run_dir, results.MODEL_FILE)):
        raise results.RunError(f'--compare_with {run_dir}: no {results.MODEL_FILE} (the run has not finished)')
    hyper = hyperparameters['flags']
    missing = [name for name in MAML_RUN_FLAGS if name not in hyper]
    if missing:
        raise results.RunError(f'{os.path.join(run_dir, results.HYPERPARAMETERS_FILE)} is damaged: '
                               f'no {", ".join(missing)} among its flags')
    for name in ('split', 'split_seed', 'num_train_classes', 'num_val_classes', 'eval_seed'):
        if hyper[name] != FLAGS[name].value:
            raise results.RunError(f'--compare_with {run_dir}: it used --{name}={hyper[name]}, this run '
                                   f'--{name}={FLAGS[name].value}; the tasks would not be the same')
    return hyper


def load_maml_run(run_dir):
    """The FO-MAML learner and the flags of a finished maml.py run folder (see `check_maml_run`)."""
    hyper = check_maml_run(run_dir)
    model_path = os.path.join(run_dir, results.MODEL_FILE)
    net = network.ConvNet(hyper['n_way'], hyper['num_filters'], max_pool=hyper['max_pool'],
                          precision=hyper.get('precision', 'float32'))  # Runs before --precision: float32.
    try:
        model = keras.models.load_model(model_path)
    except Exception as error:  # Keras raises many types for a damaged or foreign file.
        raise results.RunError(f'{model_path} cannot be loaded ({type(error).__name__})') from None
    if model.output_shape != (None, hyper['n_way']):
        raise results.RunError(f'{model_path} has {model.output_shape[-1]} outputs, its run {hyper["n_way"]} classes')
    learner = MAML(net, model, inner_lr=hyper['inner_lr'], num_inner_steps=hyper['num_inner_steps'], first_order=True,
                   meta_optimizer=keras.optimizers.Adam())
    return learner, hyper


def same_tasks_note(run_dir, checksum, num_tasks):
    """What the comparison's tasks are beside those `run_dir` was meta-tested on (by checksum)."""
    recorded = results.read_hyperparameters(run_dir).get('task_checksums', {}).get('test')
    if recorded == checksum:
        return (f'{run_dir}: re-scored on its own {num_tasks} meta-test tasks (checksum {checksum[:12]}), '
                'the tasks the transfer model is scored on')
    return (f'note: {run_dir} was meta-tested on other tasks than these {num_tasks} (another --num_test_tasks, '
            'or drawn by an older version); here FO-MAML and transfer are both scored on the same '
            f'{num_tasks} tasks (checksum {checksum[:12]}), so its number here differs from its summary.json')


def compare(transfer, splits, folder, maml_runs):
    """Scores each FO-MAML run and the transfer model on the same meta-test tasks; writes
    comparison.csv and comparison.png to `folder` and returns the table rows.

    maml_runs: {run folder: `load_maml_run(run folder)`}.
    """
    rows, per_task = [], {}
    for run_dir, (learner, hyper) in maml_runs.items():
        setting = f'{hyper["n_way"]}-way {hyper["k_shot"]}-shot'
        batches = experiment.evaluation_batches(splits.test, 'meta-test', FLAGS.num_test_tasks, 1,
                                                hyper['n_way'], hyper['k_shot'], hyper['num_query'])
        checksum = data.tasks_checksum(batches)
        print(same_tasks_note(run_dir, checksum, FLAGS.num_test_tasks), flush=True)
        maml_steps = hyper['num_eval_inner_steps'] or hyper['num_inner_steps']
        scores = {
            'FO-MAML': training.evaluate(learner, batches, maml_steps)['query_post_accuracy'],
            'transfer': np.concatenate([transfer_learn(transfer.net, transfer.model, b, hyper['n_way'],
                                                       transfer.adaptation)['query_post_accuracy']
                                        for b in batches]),
        }
        per_task[setting] = scores
        for method, accuracies in scores.items():
            mean, ci = results.confidence_interval(accuracies)
            rows.append({'setting': setting, 'method': method, 'test_accuracy': mean, 'ci95': ci,
                         'tasks': len(accuracies), 'tasks_checksum': checksum,
                         'run': run_dir if method == 'FO-MAML' else folder.path})
    results.write_csv(folder.file('comparison.csv'), rows)
    # Per-task accuracies too, so the figure can be redrawn without evaluating again.
    results.write_csv(folder.file(results.COMPARISON_TASKS_FILE), [
        {'setting': setting, 'method': method, 'task': task, 'accuracy': float(accuracy)}
        for setting, scores in per_task.items() for method, accuracies in scores.items()
        for task, accuracy in enumerate(accuracies)])
    plotting.plot_comparison(per_task, folder.file('comparison.png'))
    return rows


def main(argv):
    del argv
    if FLAGS.dataset != 'omniglot':  # Its pretraining reads Omniglot's arrays of 20 images a class.
        raise errors.FlagError('--dataset: maml_transfer.py pretrains on Omniglot only, for now')
    adaptation = Adaptation(FLAGS.adapt_steps, FLAGS.adapt_lr, FLAGS.adapt_optimizer, FLAGS.head_init,
                            FLAGS.finetune_all, FLAGS.batch_statistics, FLAGS.eval_seed)

    def stream(splits):
        return data.ImageStream(splits.train, FLAGS.batch_size, FLAGS.seed, FLAGS.max_shift)

    def build(splits, precision):
        return PretrainedClassifier(experiment.convnet(len(splits.train), precision=precision),
                                    keras.optimizers.Adam(FLAGS.pretrain_lr), adaptation, FLAGS.n_way)

    def schedule(splits):
        return training.Schedule(num_iterations=FLAGS.epochs * stream(splits).steps_per_epoch,
                                 meta_batch_size=FLAGS.batch_size, val_interval=FLAGS.val_interval,
                                 num_eval_inner_steps=FLAGS.adapt_steps)

    maml_runs = {run_dir: load_maml_run(run_dir) for run_dir in FLAGS.compare_with}  # Before pretraining.
    outcome = experiment.run(experiment.Run(
        algorithm='transfer', default_run_name=f'transfer_{FLAGS.n_way}way{FLAGS.k_shot}shot_seed{FLAGS.seed}',
        build=build, tasks=experiment.image_tasks(stream), flag_modules=[config, sys.modules[__name__]],
        num_eval_inner_steps=FLAGS.adapt_steps,
        extra={'batch_norm': 'batch statistics of each task (transductive)' if FLAGS.batch_statistics
               else 'frozen pretraining statistics (not transductive)',
               'accuracy_figure': {'train_column': 'train_accuracy', 'xlabel': 'pretraining step',
                                   'train_label': 'pretraining minibatch accuracy'}},
        schedule_for=schedule))
    if not FLAGS.compare_with:
        return
    for row in compare(outcome.learner, outcome.splits, outcome.folder, maml_runs):
        print(f'{row["setting"]:>14} {row["method"]:>8}: {row["test_accuracy"]:.2%} ± {row["ci95"]:.2%}')


def run():
    """The command, as `python maml_transfer.py` and `fewshot maml_transfer` run it."""
    cli.run(main)
