"""`Learner.fit`, meta-training from Python Keras-style: Keras callbacks told of every meta-iteration and
validation, a History, the run folder a command writes, resumed exactly; wrong arguments and a run
folder of other settings are one error each, before anything is traced or written."""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import conftest  # noqa: F401 (first: the repository on the path, fewshot's TensorFlow CPU backend set up)

import keras
import numpy as np
import pytest

from fewshot import data, network, results  # noqa: E402
from fewshot.errors import RunError  # noqa: E402
from fewshot.learners import MAML, PrototypicalNetwork  # noqa: E402

N_WAY = 3


def _sources(seed=0):
    """(training task source, validation meta-batch): 3-way 1-shot tasks of classes that are noisy copies
    of a random pattern each, the validation classes never trained on."""
    rng = np.random.default_rng(0)
    patterns = np.kron(rng.random((30, 7, 7)) < 0.4, np.ones((4, 4)))[:, None]  # [C, 1, 28, 28]
    images = np.clip(patterns + rng.normal(0, 0.2, (30, 6, 28, 28)), 0, 1).astype(np.float32)
    train = data.EpisodeSampler(images[:20], n_way=N_WAY, k_shot=1, num_query=2, seed=seed)
    validation = data.EpisodeSampler(images[20:], n_way=N_WAY, k_shot=1, num_query=2, seed=1)
    return train, validation.sample(0, 20)


def _maml(first_order=True):
    keras.utils.set_random_seed(0)
    return MAML(network.ConvNet(n_way=N_WAY, num_filters=4), inner_lr=0.4, num_inner_steps=1,
                first_order=first_order, meta_optimizer=keras.optimizers.Adam(3e-3))


def _state(learner):
    return {name: np.array(variable.numpy()) for name, variable in learner.state_variables().items()}


def test_fit_tells_keras_callbacks_writes_the_run_folder_and_the_learner_improves(tmp_path):
    train, validation = _sources()
    learner = _maml()
    batches = []
    history = learner.fit(train, validation, num_iterations=30, meta_batch_size=4, val_interval=10,
                          run_dir=tmp_path / 'run', progress=False,
                          callbacks=[keras.callbacks.CSVLogger(str(tmp_path / 'log.csv')),
                                     keras.callbacks.LambdaCallback(on_batch_end=lambda i, logs: batches.append(i))])
    assert batches == list(range(1, 31))
    accuracies = history.history['val_post_accuracy']
    assert len(accuracies) == 3 and history.epoch == [1, 2, 3]  # Row 0 is the validation before training.
    rows = results.read_metrics(str(tmp_path / 'run' / results.METRICS_FILE))
    assert [row['iteration'] for row in rows] == [0, 10, 20, 30]
    assert accuracies == [row['val_post_accuracy'] for row in rows[1:]]
    assert accuracies[-1] > rows[0]['val_post_accuracy'] + 0.2  # From about chance (1/3).
    logged = (tmp_path / 'log.csv').read_text().splitlines()
    assert len(logged) == 4 and 'val_post_accuracy' in logged[0]
    for name in (results.HYPERPARAMETERS_FILE, results.CHECKPOINT_FILE, results.MODEL_FILE, 'tensorboard'):
        assert (tmp_path / 'run' / name).exists(), name
    with open(tmp_path / 'run' / results.HYPERPARAMETERS_FILE, encoding='utf-8') as f:
        recorded = json.load(f)
    assert recorded['algorithm'] == 'MAML' and recorded['flags']['learner.inner_lr'] == 0.4


def test_fit_resumes_its_run_folder_exactly(tmp_path):
    train, validation = _sources()
    straight = _maml()
    straight.fit(train, validation, num_iterations=6, meta_batch_size=4, val_interval=3, run_dir=tmp_path / 'a',
                 progress=False)
    stopped = _maml()
    stopped.fit(train, validation, num_iterations=3, meta_batch_size=4, val_interval=3, run_dir=tmp_path / 'b',
                progress=False)
    resumed = _maml()  # A new process would start so: new weights, the run folder's checkpoint restores θ.
    history = resumed.fit(train, validation, num_iterations=6, meta_batch_size=4, val_interval=3,
                          run_dir=tmp_path / 'b', resume=True, progress=False)
    assert len(history.history['val_post_accuracy']) == 1  # This call's validation only.
    expected = _state(straight)
    for name, value in _state(resumed).items():
        np.testing.assert_array_equal(value, expected[name], err_msg=name)
    rows = [results.read_metrics(str(tmp_path / run / results.METRICS_FILE)) for run in ('a', 'b')]
    assert [{k: repr(v) for k, v in row.items() if k != 'seconds'} for row in rows[0]] == \
        [{k: repr(v) for k, v in row.items() if k != 'seconds'} for row in rows[1]]  # repr: NaN equals NaN.


def test_a_callback_stops_training_at_a_validation_and_the_next_call_trains_again(tmp_path):
    train, validation = _sources()
    learner = _maml()

    class StopAtFirst(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = True
    history = learner.fit(train, validation, num_iterations=9, meta_batch_size=2, val_interval=3,
                          run_dir=tmp_path / 'run', callbacks=[StopAtFirst()], progress=False)
    assert history.epoch == [1]
    assert results.RunFolder(str(tmp_path), 'run', resume=True, create=False).resume_point()[0] == 3
    history = learner.fit(train, validation, num_iterations=9, meta_batch_size=2, val_interval=3,
                          run_dir=tmp_path / 'run', resume=True, progress=False)
    assert history.epoch == [2, 3]


def test_a_run_folder_of_other_settings_or_another_learner_is_refused(tmp_path):
    train, validation = _sources()
    _maml().fit(train, validation, num_iterations=2, meta_batch_size=2, val_interval=2, run_dir=tmp_path / 'run',
                progress=False)
    with pytest.raises(RunError, match='already exists; pass resume to continue it or overwrite to replace it'):
        _maml().fit(train, validation, num_iterations=4, meta_batch_size=2, val_interval=2, run_dir=tmp_path / 'run')
    other_tasks, _ = _sources(seed=5)
    for mistaken, what in ((dict(tasks=other_tasks), 'training_tasks'), (dict(meta_batch_size=3), 'meta_batch_size'),
                           (dict(learner=_maml(first_order=False)), 'learner.first_order')):
        arguments = dict(tasks=train, validation_tasks=validation, num_iterations=4, meta_batch_size=2,
                         val_interval=2, run_dir=tmp_path / 'run', resume=True, progress=False)
        learner = mistaken.pop('learner', _maml())
        with pytest.raises(RunError, match=f'was started with other settings \\(.*{what}'):
            learner.fit(**{**arguments, **mistaken})
    protonet = PrototypicalNetwork(network.ConvNet(n_way=N_WAY, num_filters=4))
    with pytest.raises(RunError, match='is a run of MAML, not of PrototypicalNetwork'):
        protonet.fit(train, validation, num_iterations=4, meta_batch_size=2, val_interval=2, run_dir=tmp_path / 'run',
                     resume=True)


@pytest.mark.parametrize('mistaken,message', [
    (dict(num_iterations=0), 'num_iterations: a whole number, 1 or more, expected; got 0'),
    (dict(meta_batch_size=2.5), 'meta_batch_size: a whole number, 1 or more, expected; got 2.5'),
    (dict(num_eval_steps=-1), 'num_eval_steps: a whole number, 0 or more, expected; got -1'),
    (dict(tasks=np.zeros(3)), 'tasks: a task source, sample'),
    (dict(validation_tasks=np.zeros(3)), 'validation_tasks: a meta-batch'),
    (dict(callbacks=keras.callbacks.CSVLogger('x.csv')), 'callbacks: a list of Keras callbacks'),
    (dict(callbacks=['log.csv']), 'callbacks: a list of Keras callbacks'),
    (dict(run_dir=3), 'run_dir: a folder path expected'),
])
def test_a_wrong_argument_is_one_error_naming_it_before_anything_is_traced_or_written(mistaken, message, tmp_path):
    train, validation = _sources()
    learner = _maml()
    arguments = dict(tasks=train, validation_tasks=validation, num_iterations=4, run_dir=tmp_path / 'run')
    with pytest.raises(ValueError) as raised:
        learner.fit(**{**arguments, **mistaken})
    assert str(raised.value).startswith(message)
    assert learner._train_step.experimental_get_tracing_count() == 0 and not os.listdir(tmp_path)


def test_validation_tasks_that_do_not_fit_the_network_are_named(tmp_path):
    train, _ = _sources()
    rgb = data.Episodes(*(np.repeat(part, 3, -1) if part.ndim == 5 else part
                          for part in _sources()[1]))
    with pytest.raises(ValueError, match='episodes.support_images: a meta-batch'):
        _maml().fit(train, rgb, num_iterations=2, run_dir=tmp_path / 'run')
    assert not os.listdir(tmp_path)
