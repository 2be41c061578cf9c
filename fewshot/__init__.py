"""The library under the commands: everything an algorithm or a tool shares.

    learners    the learners, one module each, built from keyword arguments (their list:
                help(fewshot.learners)); MAML's variants are its arguments (learners.inner: the
                inner step rules)
    learner     Learner, what every learner shares (θ, meta-optimizer, compiled steps, state);
                MetricLearner, a learner without an inner loop
    network     ConvNet and ResNet: a Keras model for storage, a pure forward over explicit weights;
                KerasNetwork, any Keras classifier under the learners; the network contract and its
                named groups of weights (body, head)
    data        Omniglot: reading, preprocessing, cache, character splits, the episode sampler
    mnist       MNIST for the initialization lab
    regression  the sine-wave tasks and the MLP regressor over explicit weights
    navigation  the 2D navigation environment, the Gaussian policy, policy-gradient surrogates
    training    the meta-training loop: validation, checkpoints, the finite-state guard, TensorBoard
    distribution  a meta-batch's tasks across the replicas of a tf.distribute strategy, the
                processes of a cluster kept in step (the chief writes the run folder)
    results     the run folder: atomic writes, readers that name damage, checkpoints by name
    plotting    figures drawn from a run folder's logs alone
    comparison  compare.py's table and figures from finished run folders (report.py reads them)
    errors      the kinds of user error
    machine, profiling  what the CPU offers; where a compiled meta-iteration spends its time
    cli         the command layer, the only part that defines or reads a flag: the shared flags,
                one run from flags (cli.experiment), learner commands (cli.commands), the error
                path (cli.run), the commands themselves (cli.scripts: `fewshot <command>`, and the
                top-level scripts of a checkout); see its docstring

The library (all but cli) never imports a command; cli imports one only through `cli.commands.find`,
which loads a learner command by name as a plug-in, and `cli.scripts`, which runs one.

Importing the package turns on TensorFlow's oneDNN CPU backend unless TF_ENABLE_ONEDNN_OPTS says
otherwise: only oneDNN has a CPU gradient for the grouped convolutions of the task-batched network,
and TensorFlow turns it on by itself only on CPUs with AVX-512 (not on an AVX2-only one). TensorFlow
reads the switch once, as it loads, so import this package before TensorFlow.
"""

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # Not at run time: the package is imported before TensorFlow (see above).
    import keras

__version__ = '0.1.0'  # pyproject.toml reads it from here.

os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')


def load_model(path: str | os.PathLike) -> 'keras.Model':
    """The Keras model a learner or a run saved (`save_model`, a run's model.keras), its batch norm as the
    learner normalised (fewshot's layer, which `keras.models.load_model` knows only once fewshot.network
    is imported)."""
    import keras  # Here, not above: the package is imported before TensorFlow (see above).
    from fewshot import network  # noqa: F401 (registers the batch norm with Keras)
    return keras.models.load_model(path)

