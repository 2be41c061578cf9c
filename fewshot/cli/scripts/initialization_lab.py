"""The MNIST "initialization matters" lab: how a 2-way few-shot classifier should start.

    python initialization_lab.py                 # every method over 10 seeds -> results/initialization_lab/

Five tasks of two digits: A = {0, 1}, B = {2, 3}, C = {4, 5}, D = {6, 7}, E = {8, 9}.
Each method ends with a 2-way classifier scored on the query set of its target task:
  1   from scratch on task A's train set (15 per class);
  2A  random initialisation, fine-tuned on task A's support set (5 per class);
  2B  the method-1 model, head replaced, fine-tuned on task B's support set (target B);
  2C  a 10-digit classifier pretrained on all of MNIST's training set, head replaced,
      fine-tuned on task A's support set;
  3   FO-MAML meta-trained on pairs of the digits outside A, adapted on A's support set.
The 20-image query set makes one run's numbers noisy, so every method runs over
--num_seeds seeds (which examples, and the new heads' initialisation) and the table
gives mean ± std; a second table scores the same models on --large_query held-out
test images per class, where differences are real. The pretrained classifier and the
meta-trained MAML initialisation are trained once and shared by the seeds.
"""

import hashlib
import os
import sys
import time

import fewshot  # noqa: F401  First: it sets up TensorFlow's CPU backend, read as TensorFlow loads.
import keras
import matplotlib
import numpy as np
import tensorflow as tf
from absl import flags, logging
from tqdm import tqdm

from fewshot import cli, data, errors, mnist, network, plotting, results
from fewshot.cli import config, experiment
from fewshot.learners import MAML

TASKS = {'A': (0, 1), 'B': (2, 3), 'C': (4, 5), 'D': (6, 7), 'E': (8, 9)}
METHODS = {'1': 'scratch on A (train set)', '2A': 'random init, fine-tuned on A',
           '2B': 'method-1 model, fine-tuned on B', '2C': 'pretrained on MNIST, fine-tuned on A',
           '3': 'FO-MAML init, adapted on A'}

flags.DEFINE_string('mnist_dir', os.environ.get('MNIST_DIR', ''), 'Folder with the original MNIST IDX '
                    'files (*-ubyte.gz). Defaults to $MNIST_DIR; if empty, tensorflow-datasets downloads MNIST.')
flags.DEFINE_integer('num_seeds', 10, 'Seeds per method.', lower_bound=1)
flags.DEFINE_integer('scratch_epochs', 50, 'Epochs of method 1 (training from scratch on 30 images).', lower_bound=1)
flags.DEFINE_integer('finetune_epochs', 50, 'Epochs of fine-tuning on a 10-image support set '
                     '(methods 2A, 2B, 2C).', lower_bound=1)
flags.DEFINE_float('train_lr', 1e-3, 'Adam learning rate of training from scratch, fine-tuning '
                   'and pretraining.', lower_bound=1e-12)
flags.DEFINE_integer('pretrain_epochs', 1, 'Epochs of the 10-digit classifier (method 2C).', lower_bound=1)
flags.DEFINE_integer('maml_iterations', 1000, 'FO-MAML meta-iterations (method 3); its meta-validation flattens by '
                     'about 1000 (docs/initialization_lab.md).', lower_bound=1)
flags.DEFINE_integer('maml_meta_batch_size', 16, 'FO-MAML tasks per meta-iteration.', lower_bound=1)
flags.DEFINE_float('maml_inner_lr', 0.01, 'FO-MAML inner learning rate (training and adaptation); '
                   'this network has no batch norm, and 0.02 or more made meta-training collapse here.',
                   lower_bound=1e-12)
flags.DEFINE_integer('maml_inner_steps', 5, 'FO-MAML inner steps during meta-training.', lower_bound=1)
flags.DEFINE_integer('maml_adapt_steps', 10, 'FO-MAML adaptation steps on the target support set.',
                     lower_bound=1)
flags.DEFINE_integer('maml_val_interval', 100, 'FO-MAML meta-iterations between meta-validations (method 3): '
                     '2-way 5-shot tasks of held-out test images of the digits it meta-trains on, never task A.',
                     lower_bound=1)
flags.DEFINE_integer('maml_val_tasks', 200, 'Fixed meta-validation tasks of method 3.', lower_bound=2)
flags.DEFINE_boolean('redraw', False, 'Only redraw the figure and summary.md of an existing lab folder '
                     'from its per_seed.json (no training).')
flags.DEFINE_integer('large_query', 500, 'Held-out test images per class for the larger query set.',
                     lower_bound=1)
for shared in ('results_dir', 'run_name', 'overwrite', 'cache_dir'):
    flags.declare_key_flag(shared)  # Shared flags this script uses, listed in its --help.
FLAGS = flags.FLAGS


def scores(labels, predictions, n_classes=2):
    """Accuracy and macro-averaged precision, recall and F1."""
    precision, recall, f1 = [], [], []
    for c in range(n_classes):
        tp = np.sum((predictions == c) & (labels == c))
        p = tp / max(np.sum(predictions == c), 1)
        r = tp / max(np.sum(labels == c), 1)
        precision.append(p)
        recall.append(r)
        f1.append(2 * p * r / (p + r) if p + r else 0.0)
    return {'accuracy': float(np.mean(predictions == labels)), 'precision': float(np.mean(precision)),
            'recall': float(np.mean(recall)), 'f1': float(np.mean(f1))}


def with_new_head(model, n_way, seed):
    """A copy of `model` whose last layer is a new, randomly initialised `n_way` layer."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input(model.input_shape[1:]), *copy.layers[:-1],
                             keras.layers.Dense(n_way, name='head')])


def compile_classifier(model):
    """Adam at --train_lr on the cross-entropy of logits: how every model of the lab is trained."""
    model.compile(keras.optimizers.Adam(FLAGS.train_lr),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=['accuracy'])


def fit(model, train, query, epochs):
    """Trains `model` full-batch; returns its learning curve: per-epoch training loss and query accuracy."""
    compile_classifier(model)
    history = model.fit(*train, epochs=epochs, batch_size=len(train[0]), verbose=0,
                        validation_data=query, shuffle=True)
    return {'loss': history.history['loss'], 'query_accuracy': history.history['val_accuracy']}


def predict(model, images):
    return np.argmax(model.predict(images, verbose=0, batch_size=512), axis=-1)


def pretrained_classifier(dataset):
    """Method 2C's 10-digit classifier, trained on the whole MNIST training set."""
    keras.utils.set_random_seed(0)
    model = network.SmallCNN(10).keras_model()
    images, labels = dataset
    compile_classifier(model)
    model.fit(images[..., None].astype(np.float32) / 255.0, labels, epochs=FLAGS.pretrain_epochs,
              batch_size=128, verbose=0)
    return model


def by_class(dataset, digits):
    """The images of each of `digits` [D, M, 28, 28] in [0, 1], M the fewest any of them has."""
    images, labels = dataset
    per_class = min(np.sum(labels == d) for d in digits)
    return np.stack([images[labels == d][:per_class] for d in digits]).astype(np.float32) / 255.0


def maml_validation_tasks(test_set, digits):
    """Method 3's fixed meta-validation tasks: 2-way 5-shot tasks of `digits`' held-out test images."""
    sampler = data.EpisodeSampler(by_class(test_set, digits), 2, 5, 10, seed=1, split_name='meta-validation digits')
    return experiment.fixed_batches(sampler, FLAGS.maml_val_tasks, '--maml_val_tasks', batch_size=50)


def meta_trained_maml(train_set, validation, digits):
    """Method 3's FO-MAML learner, meta-trained on 2-way tasks over `digits`, and its meta-validation
    curve {'iteration': [...], 'accuracy': [...]}: the query accuracy after --maml_adapt_steps steps on
    the tasks `validation` (`maml_validation_tasks`), every --maml_val_interval iterations (so that one
    sees whether --maml_iterations is enough)."""
    keras.utils.set_random_seed(0)
    net = network.SmallCNN(2)
    learner = MAML(net, inner_lr=FLAGS.maml_inner_lr, num_inner_steps=FLAGS.maml_inner_steps, first_order=True,
                   meta_optimizer=keras.optimizers.Adam(FLAGS.train_lr))
    sampler = data.EpisodeSampler(by_class(train_set, digits), 2, 5, 10, seed=0, split_name='meta-train digits')
    curve = {'iteration': [], 'accuracy': []}

    def validate(iteration):
        accuracy = np.concatenate([learner.evaluate(batch, FLAGS.maml_adapt_steps)['query_post_accuracy']
                                   for batch in validation])
        curve['iteration'].append(iteration)
        curve['accuracy'].append(float(np.mean(accuracy)))

    validate(0)
    for iteration in tqdm(range(FLAGS.maml_iterations), desc='FO-MAML meta-training', unit='it'):
        learner.meta_train_step(sampler.sample(iteration, FLAGS.maml_meta_batch_size))
        if (iteration + 1) % FLAGS.maml_val_interval == 0 or iteration + 1 == FLAGS.maml_iterations:
            validate(iteration + 1)
    return learner, curve


def maml_adapt(learner, support, query_sets):
    """Adapts the meta-learned weights on `support`; returns the learning curve on the first query
    set and the predictions on every query set."""
    params = network.tile(learner.params, 1)
    x, y = (tf.constant(v[None]) for v in support)
    curve = {'loss': [], 'query_accuracy': []}

    def query_logits(images):
        return learner.net.forward(params, tf.constant(images[None]))[0]
    for _ in range(FLAGS.maml_adapt_steps):
        params = learner.inner_loop(params, x, y, 1, first_order=True).params[-1]
        logits = learner.net.forward(params, x)
        curve['loss'].append(float(network.task_losses(logits, y)[0]))
        curve['query_accuracy'].append(float(np.mean(
            np.argmax(query_logits(query_sets[0][0]), -1) == query_sets[0][1])))
    return curve, [np.argmax(query_logits(images), -1) for images, _ in query_sets]


def run_seed(seed, train_set, test_set, pretrained, learner):
    """Every method at one seed: {method: (learning curve, scores on the small and large query sets)}."""
    tasks = {name: mnist.create_task_datasets(train_set, digits, seed=seed) for name, digits in TASKS.items()}
    large = {name: mnist.create_task_datasets(test_set, digits, 0, 0, FLAGS.large_query, seed)['query']
             for name, digits in (('A', TASKS['A']), ('B', TASKS['B']))}
    outcome = {}

    def record(method, model, curve, target):
        queries = (tasks[target]['query'], large[target])
        outcome[method] = (curve, [scores(y, predict(model, x)) for x, y in queries])

    keras.utils.set_random_seed(seed)
    scratch = network.SmallCNN(2).keras_model()
    record('1', scratch, fit(scratch, tasks['A']['train'], tasks['A']['query'], FLAGS.scratch_epochs), 'A')
    keras.utils.set_random_seed(seed)
    random_init = network.SmallCNN(2).keras_model()
    record('2A', random_init, fit(random_init, tasks['A']['support'], tasks['A']['query'],
                                  FLAGS.finetune_epochs), 'A')
    transferred = with_new_head(scratch, 2, seed)
    record('2B', transferred, fit(transferred, tasks['B']['support'], tasks['B']['query'],
                                  FLAGS.finetune_epochs), 'B')
    pre = with_new_head(pretrained, 2, seed)
    record('2C', pre, fit(pre, tasks['A']['support'], tasks['A']['query'], FLAGS.finetune_epochs), 'A')
    curve, predictions = maml_adapt(learner, tasks['A']['support'], (tasks['A']['query'], large['A']))
    outcome['3'] = (curve, [scores(query[1], p) for query, p in zip((tasks['A']['query'], large['A']),
                                                                        predictions)])
    return outcome


def table(per_seed, which):
    """Markdown table of mean ± std over seeds; `which` 0 = the 20-image query set, 1 = the large one."""
    lines = ['| method | accuracy | precision | recall | F1 |', '|---|---|---|---|---|']
    for method, label in METHODS.items():
        cells = []
        for metric in ('accuracy', 'precision', 'recall', 'f1'):
            values = [seed[method][1][which][metric] for seed in per_seed]
            cells.append(f'{np.mean(values):.3f} ± {np.std(values):.3f}')
        lines.append(f'| {method}: {label} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def plot_curves(per_seed, path):
    """Training loss (median and interquartile range over seeds, log scale) and 20-image query
    accuracy (mean ± std, clipped to [0, 1]) against epoch, or adaptation step for MAML."""
    figure, (loss_axes, accuracy_axes) = plotting.plt.subplots(1, 2, figsize=(12, 4.5), dpi=120)
    for method, label in METHODS.items():
        losses = np.array([seed[method][0]['loss'] for seed in per_seed])
        accuracies = np.array([seed[method][0]['query_accuracy'] for seed in per_seed])
        epochs = np.arange(1, losses.shape[1] + 1)
        low, median, high = np.percentile(losses, [25, 50, 75], axis=0)
        line, = loss_axes.plot(epochs, median, label=f'{method}: {label}')
        loss_axes.fill_between(epochs, low, high, color=line.get_color(), alpha=0.15)
        mean, std = accuracies.mean(0), accuracies.std(0)
        accuracy_axes.plot(epochs, mean, color=line.get_color(), label=f'{method}: {label}')
        accuracy_axes.fill_between(epochs, np.clip(mean - std, 0, 1), np.clip(mean + std, 0, 1),
                                   color=line.get_color(), alpha=0.15)
    loss_axes.set(xlabel='epoch (adaptation step for method 3)', ylabel='training loss', yscale='log',
                  title=f'training loss, median and quartiles over {len(per_seed)} seeds')
    accuracy_axes.set(xlabel='epoch (adaptation step for method 3)', ylabel='query accuracy', ylim=(0.4, 1.0),
                      title=f'20-image query accuracy, mean ± std over {len(per_seed)} seeds')
    accuracy_axes.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    for axes in (loss_axes, accuracy_axes):
        axes.grid(alpha=0.3)
    accuracy_axes.legend(fontsize=8, loc='lower right')
    plotting._save(figure, path)


def meta_training_note(curve):
    """What method 3's meta-validation curve says about its training length, in words."""
    if not curve:
        return 'Its meta-training was not validated (a lab of an older version).'
    iterations, accuracy = curve['iteration'], curve['accuracy']
    last = [a for i, a in zip(iterations, accuracy) if i >= iterations[-1] / 2]  # The second half.
    return (f'Meta-trained {iterations[-1]:,} iterations: meta-validation accuracy (2-way 5-shot tasks of '
            f'held-out images of digits 2-9, `maml_validation.png`) {accuracy[0]:.1%} at the start, '
            f'{accuracy[-1]:.1%} at the end, between {min(last):.1%} and {max(last):.1%} over the second half.')


def summary(per_seed, seconds, large_query, maml_validation=None):
    """The lab's write-up: both tables, and each question answered with the measured numbers."""
    def values(method):
        return [seed[method][1][1]['accuracy'] for seed in per_seed]

    def accuracy(method):
        return f'{np.mean(values(method)):.1%} ± {np.std(values(method)):.1%}'

    def versus(method, other):
        difference = np.mean(values(method)) - np.mean(values(other))
        noise = np.std(values(method)) + np.std(values(other))
        return (f'{100 * difference:+.1f} points against method {other} ({accuracy(other)}), '
                f'{"more" if abs(difference) > noise else "less"} than their summed standard deviations')
    return f'''# The "initialization matters" lab

{len(per_seed)} seeds per method; {seconds:.0f} s on this machine. Curves: `learning_curves.png`.

## Query set of 20 images (10 per class)

{table(per_seed, 0)}

## Held-out query set of {large_query} test images per class

{table(per_seed, 1)}

## What the numbers show (accuracy on the large query set, mean ± std over seeds)

1. Training from scratch on task A's 30 training images (method 1): {accuracy('1')}.
2. A random initialisation fine-tuned on A's 10 support images (2A): {accuracy('2A')},
   {versus('2A', '1')}.
3. The method-1 model, head replaced, fine-tuned on task B's support set (2B, scored on B):
   {accuracy('2B')}, {versus('2B', '2A')} (a random start with the same amount of data, on A).
4. A 10-digit classifier pretrained on all of MNIST, head replaced, fine-tuned on A (2C):
   {accuracy('2C')}, {versus('2C', '2A')}. Its features were learnt on every digit, 0 and 1 included.
5. Closing question, an initialisation made for fast fine-tuning: FO-MAML meta-trained only on
   digits 2-9 and adapted on A's 10 support images (3): {accuracy('3')}, {versus('3', '2A')}.
   {meta_training_note(maml_validation)}

The 20-image table shows why one run proves little: compare its standard deviations with the large table's.
'''


def main(argv):
    del argv

    def write_outputs(folder, record):
        plot_curves(record['per_seed'], folder.file('learning_curves.png'))
        if 'maml_validation' in record:  # Labs of older versions did not validate method 3.
            curve = record['maml_validation']
            plotting.plot_curves({'FO-MAML (method 3)': (curve['iteration'], curve['accuracy'])},
                                 folder.file('maml_validation.png'), 'Method 3: meta-validation on digits 2-9 '
                                 '(held-out images)', 'meta-iteration')
        text = summary(record['per_seed'], record['seconds'], record['large_query'], record.get('maml_validation'))
        results.atomic_write(folder.file('summary.md'), lambda f: f.write(text.encode()))
        print(text)

    name = FLAGS.run_name or 'initialization_lab'
    if FLAGS.redraw:
        folder = results.RunFolder(FLAGS.results_dir, name, resume=True)
        return write_outputs(folder, read_record(folder.file('per_seed.json')))
    # The folder is checked now and written only when the lab has finished: a lab stopped
    # half-way (it cannot be resumed) leaves nothing behind.
    folder = results.RunFolder(FLAGS.results_dir, name, overwrite=FLAGS.overwrite, create=False,
                               resume_flag=None)
    network.check_grouped_convolutions()
    start, versions = time.perf_counter(), results.library_versions()  # The code that runs, as it starts.
    dataset = mnist.load_mnist(FLAGS.mnist_dir or None, FLAGS.cache_dir)
    train_set = (dataset.train_images, dataset.train_labels)
    test_set = (dataset.test_images, dataset.test_labels)
    check_large_query(dataset.test_labels)
    digits = [d for d in range(10) if d not in TASKS['A']]
    validation = maml_validation_tasks(test_set, digits)
    logging.info('Pretraining the 10-digit classifier of method 2C')
    pretrained = pretrained_classifier(train_set)
    logging.info('Meta-training FO-MAML on the digits outside task A (method 3)')
    learner, maml_curve = meta_trained_maml(train_set, validation, digits)
    per_seed = [run_seed(seed, train_set, test_set, pretrained, learner)
                for seed in tqdm(range(FLAGS.num_seeds), desc='seeds (every method)', unit='seed')]
    # Everything the figure and summary need, so they can be redrawn without training.
    record = {'per_seed': per_seed, 'seconds': time.perf_counter() - start,
              'large_query': FLAGS.large_query, 'maml_validation': maml_curve}
    folder.create()
    folder.write_hyperparameters(config.flag_values([sys.modules[__name__]]), {
        'data_checksum': hashlib.sha256(dataset.train_images.tobytes()).hexdigest()}, versions=versions)
    results.write_json(folder.file('per_seed.json'), record)
    write_outputs(folder, record)


def check_large_query(test_labels):
    """FlagError unless the test set has --large_query images of each digit of tasks A and B: found
    before any training, not after every method has trained."""
    counts = {digit: int(np.sum(test_labels == digit)) for digit in TASKS['A'] + TASKS['B']}
    digit = min(counts, key=counts.get)
    if FLAGS.large_query > counts[digit]:
        raise errors.FlagError(f'--large_query {FLAGS.large_query}: the MNIST test set has only {counts[digit]} '
                               f'images of digit {digit}; at most that many')


def read_record(path):
    """The lab's per_seed.json; RunError naming it if it is missing or damaged."""
    record = results.read_json(path)
    if not isinstance(record, dict) or not {'per_seed', 'seconds', 'large_query'} <= set(record):
        raise results.RunError(f'{path} is damaged: expected per_seed, seconds and large_query')
    return record


def run():
    """The command, as `python initialization_lab.py` and `fewshot initialization_lab` run it."""
    cli.run(main)
