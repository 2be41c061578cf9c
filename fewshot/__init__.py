"""The library under the commands: everything an algorithm or a tool shares.

    config      flags every command shares (data, tasks, schedule, run folder)
    errors      the kinds of user error, and `errors.run`, through which every command's main runs
    data        Omniglot: reading, preprocessing, cache, character splits, the episode sampler
    mnist       MNIST for the initialization lab
    regression  the sine-wave tasks and the MLP regressor over explicit weights
    navigation  the 2D navigation environment, the Gaussian policy, policy-gradient surrogates
    network     ConvNet and ResNet: a Keras model for storage, a pure forward over explicit weights
    learner     Learner, what every learner shares (theta, meta-optimizer, compiled steps, state);
                MetricLearner, a learner without an inner loop; --backbone and --meta_lr
    commands    Command, what a learner script says about itself; run (a learner from the flags),
                find (a learner script by name, the one place the package loads a command)
    training    the meta-training loop: validation, checkpoints, the finite-state guard, TensorBoard
    distribution  --strategy: a meta-batch's tasks across the replicas of a tf.distribute strategy,
                the processes of a cluster kept in step (the chief writes the run folder)
    experiment  one run from flags: data -> learner -> training -> meta-test -> run folder
    results     the run folder: atomic writes, readers that name damage, checkpoints by name
    plotting    figures drawn from a run folder's logs alone
    runs        for tools that train other commands: their flags, reuse and resume in child processes
    comparison  compare.py's table and figures from finished run folders (report.py reads them)
    studies     a study's folder of learner runs and its table (sine.py, navigation.py)

The package never imports a command (the top-level scripts) but through `commands.find`, which loads
a learner script by name as a plug-in; commands import the package.

Importing the package turns on TensorFlow's oneDNN CPU backend unless TF_ENABLE_ONEDNN_OPTS says
otherwise: only oneDNN has a CPU gradient for the grouped convolutions of the task-batched network,
and TensorFlow turns it on by itself only on CPUs with AVX-512 (not on an AVX2-only one). TensorFlow
reads the switch once, as it loads, so a command imports this package before TensorFlow.
"""

import os

os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')
