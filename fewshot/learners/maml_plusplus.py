"""MAML++ (Antoniou, Edwards & Storkey, "How to train your MAML", ICLR 2019).

MAML++ is MAML with six fixes, each on by default (`Fixes`):
  MSL   multi-step loss: the meta-loss weighs the query loss after every inner step,
        Σ_s v_s L_query(θ'_s); the weights move to the last step over `msl_iterations`.
  DA    derivative-order annealing: first order for `da_iterations` meta-iterations,
        second order after that.
  BNRS  per-step batch-norm running statistics, gathered from the support sets during
        meta-training (`eval_batch_norm='running'` evaluates with them; see below).
  BNWB  per-step batch-norm weights and biases, meta-learned (not adapted in the inner loop).
  LSLR  a learned inner learning rate per weight tensor and per step.
  CA    cosine annealing of the meta learning rate (`cosine_meta_lr`, the meta-optimizer's).

"Step s" indexes the task weights θ'_s after s inner updates (s = 0 … S); per-step
batch-norm weights and statistics exist for every s, learning rates for s < S.

Batch norm at evaluation (`eval_batch_norm`). Meta-training normalises every batch with
its own moments. At evaluation a query prediction should not depend on the other query
images (non-transductive), so the default normalises the query, at each step, with the
moments of the task's support set at that step ('support'; the support set is the task's
training data, so this uses nothing but it). The paper's per-step running statistics
('running') are the literal BNRS: but the inner loop adapts every task's network to
different feature statistics, which an average over tasks does not normalise, and
measured here they leave evaluation at chance level. 'transductive' normalises each
evaluated batch with its own moments, as MAML does.

maml_plusplus.py at the top of the repository is its command.
"""

import dataclasses
import os

import keras
import numpy as np
import tensorflow as tf

from fewshot import network, results
from fewshot.learner import model_for, named_groups
from fewshot.learners import inner
from fewshot.learners.maml import MAML, NETWORK, tensors

# The meta-parameters are named groups: {'network': the weights the inner loop adapts, by name;
# PER_STEP: batch norm's weights per step, bn1/gamma [S + 1, F] (BNWB); INNER_LR: the learned
# learning rates, conv1/kernel [S] (LSLR)}. Evaluating with RUNNING statistics, the context has them
# too: bn1/moving_mean [S + 1, F]. Checkpoints key them as <group>/<name> (`named_groups`).
PER_STEP, INNER_LR, RUNNING = 'per_step', inner.RATES, 'running'
STATISTICS_MOMENTUM = 0.9  # Running statistic ← 0.9 · itself + 0.1 · the meta-batch's moments.
PER_STEP_FILE = 'per_step_parameters.npz'


@dataclasses.dataclass(frozen=True)
class Fixes:
    """Which of MAML++'s fixes are on, and their schedules (see the flags of the same names)."""
    msl: bool = True
    msl_iterations: int = 100
    da: bool = True
    da_iterations: int = 500
    bnrs: bool = True
    eval_batch_norm: str = 'support'
    bnwb: bool = True
    lslr: bool = True


def msl_weights(iteration, num_steps, msl_iterations):
    """The MSL weights v_1 … v_S [S] of the query losses after steps 1 … S at a meta-iteration.

    At iteration 1 every step weighs 1/S; the weights of steps < S fall linearly to 0
    at iteration msl_iterations + 1, from where the loss is the last step's alone (as
    in MAML). They always sum to 1.
    """
    remaining = max(0.0, 1.0 - (iteration - 1) / msl_iterations)
    weights = np.full(num_steps, remaining / num_steps)
    weights[-1] = 1.0 - weights[:-1].sum()
    return weights


def cosine_meta_lr(meta_lr, min_meta_lr, num_iterations):
    """CA: β_i = β_min + (β − β_min) (1 + cos(π i / num_iterations)) / 2 at meta-iteration i."""
    return keras.optimizers.schedules.CosineDecay(meta_lr, max(num_iterations, 1),
                                                  alpha=min_meta_lr / meta_lr)


BATCH_NORM_MODES = {  # What hyperparameters.json and the report say of each --eval_batch_norm.
    'support': 'support-set moments at each inner step (non-transductive: a query prediction does '
               'not depend on the other query images)',
    'running': 'per-step running statistics of the meta-training support sets (non-transductive)',
    'transductive': 'transductive (statistics of the batch being normalised)',
}


class MAMLPlusPlus(MAML):
    """MAML with MAML++'s fixes (see the module docstring), over the same functional network.

    The meta-parameters θ (`self.params`) are named groups: the network's weights that the inner
    loop adapts ('network'), plus the per-step ones it does not: learning rates α_{l,s} (INNER_LR,
    LSLR) and batch-norm γ_s, β_s (PER_STEP, BNWB). `meta_objective` is a pure function of all of them.
    Per-step running statistics (BNRS) are state, not parameters: `track` averages the
    support-set moments of every training meta-batch into them.
    """

    def __init__(self, net, model=None, inner_lr=0.4, num_inner_steps=5, meta_optimizer=None, fixes=Fixes()):
        """
        Args:
          net, model, inner_lr, num_inner_steps, meta_optimizer: as for `MAML`
            (with LSLR, inner_lr is the initial value of every learned learning rate; for CA, a
            meta-optimizer whose learning rate is `cosine_meta_lr`).
          fixes: a `Fixes`.
        """
        self.fixes = fixes
        model = model_for(net, model)
        weights = network.parameters(model)
        steps = num_inner_steps + 1
        groups = {NETWORK: weights}
        if fixes.bnwb:  # Batch norm's weights leave the network's group, one copy per step.
            groups[PER_STEP] = {name: keras.Variable(np.tile(weights.pop(name).numpy(), [steps, 1]),
                                                     name=f'per_step_{name.replace("/", "_")}')
                                for name in network.batch_norm_parameters(model)}
        self.statistics = {}
        if fixes.bnrs:
            for name, variable in network.statistics(model).items():
                initial = np.tile(variable.numpy(), [steps, 1])  # Keras' initial mean 0, variance 1.
                self.statistics[name] = keras.Variable(initial, trainable=False,
                                                       name=f'running_{name.replace("/", "_")}')
        super().__init__(net, model, inner_lr, num_inner_steps, first_order=False, meta_optimizer=meta_optimizer,
                         inner_rule=inner.LearnedRates('step') if fixes.lslr else inner.SGD(), groups=groups)

    @property
    def batch_norm(self):
        """How batch norm normalises at evaluation, as hyperparameters.json and the report say it."""
        return BATCH_NORM_MODES[self.fixes.eval_batch_norm]

    # The inner loop ------------------------------------------------------------

    def forward(self, params, images, step, context, statistics=None):
        """Logits [T, B, N] under task weights θ'_step, with step `step`'s batch norm.

        context: the groups the inner loop reads (PER_STEP, INNER_LR, and RUNNING when evaluating
        with the running statistics).
        statistics: None, or moments [T, F] by name to normalise with (those of a support set).
        Returns (logits, the batch moments measured, or None when normalising with given ones).
        """
        num_tasks, context = images.shape[0], context or {}
        params = self.network_weights(params, step, context)
        if RUNNING in context:
            statistics = network.tile({name: value[step] for name, value in context[RUNNING].items()}, num_tasks)
        if statistics is not None:
            return self.net.forward(params, images, statistics), None
        return self.net.forward_with_moments(params, images)

    def network_weights(self, params, step, context):
        """The task weights θ'_step and step `step`'s batch-norm weights (BNWB), by name [T, ...]."""
        per_step = {name: value[step] for name, value in context.get(PER_STEP, {}).items()}
        return {**params, **network.tile(per_step, next(iter(params.values())).shape[0])}

    # The outer loop ------------------------------------------------------------

    def split(self, params, training):
        """The network's weights adapt; the per-step parameters, and the running statistics
        when evaluation uses them, are context."""
        weights, context = super().split(params, training)
        if self.batch_norm_mode(training) == 'running':
            context[RUNNING] = tensors(self.statistics)
        return weights, context

    def query_forward(self, params, images, step, context, trajectory, training):
        """Query logits [T, Q, N] under θ'_step; in `support` evaluation the query set is
        normalised with the support set's moments at that step."""
        support = (trajectory.support_moments[step] if self.batch_norm_mode(training) == 'support'
                   else None)
        return self.forward(params, images, step, context, support)[0]

    def query_loss(self, query_logits, labels, num_steps, msl_weights=None):
        """MSL: Σ_s v_s 1/T Σ_t L_query_t(θ'_{t,s}) over steps s = 1 … S, with weights v [S].

        Without weights (MSL off, or after --msl_iterations) the last step's loss, as MAML.
        Returns (meta-loss, query logits [T, Q, N] at θ'_S).
        """
        if msl_weights is None:
            return super().query_loss(query_logits, labels, num_steps)
        logits = [query_logits(step) for step in range(1, num_steps + 1)]
        losses = tf.stack([tf.reduce_mean(self.net.task_losses(step_logits, labels)) for step_logits in logits])
        return tf.reduce_sum(tf.cast(msl_weights, losses.dtype) * losses), logits[-1]

    def batch_norm_mode(self, training):
        """Batch norm's moments: the batch's own in training; at evaluation, --eval_batch_norm's."""
        return 'transductive' if training else self.fixes.eval_batch_norm

    def measure(self, trajectory):
        """BNRS's measurement: by statistic, the mean over tasks of the support moments at each
        step s, [S + 1, F]."""
        return {name: tf.stack([tf.reduce_mean(moments[name], axis=0) for moments in trajectory.support_moments])
                for name in self.statistics}

    def track(self, measured):
        """BNRS: running statistic[s] ← m · itself + (1 − m) · the measured mean moments at s."""
        for name, variable in self.statistics.items():
            variable.assign(STATISTICS_MOMENTUM * variable + (1 - STATISTICS_MOMENTUM) * measured[name])

    def schedule(self, iteration):
        """What DA and MSL ask for at meta-iteration `iteration` (1-based): (first_order, msl weights)."""
        first_order = self.fixes.da and iteration <= self.fixes.da_iterations
        weights = None
        if self.fixes.msl and iteration <= self.fixes.msl_iterations:
            weights = msl_weights(iteration, self.num_inner_steps, self.fixes.msl_iterations)
        return first_order, weights

    def train_step_options(self):
        """DA's derivative order and MSL's weights for the next meta-iteration.

        The iteration is the meta-optimizer's step count, which checkpoints keep, so a
        resumed run follows the same schedule.
        """
        first_order, weights = self.schedule(int(self.meta_optimizer.iterations.numpy()) + 1)
        return {'first_order': first_order,
                'msl_weights': None if weights is None else tf.constant(weights, tf.float32)}

    def carried_variables(self):
        """BNRS's running statistics (running/<statistic>), kept across meta-iterations."""
        return {**super().carried_variables(), **named_groups({RUNNING: self.statistics})}

    def learned_groups(self):
        """What MAML++ learns besides the network's weights, as named groups: PER_STEP, INNER_LR
        (those on) and RUNNING (BNRS's statistics, if on)."""
        groups = {group: named for group, named in self.params.items() if group != NETWORK}
        return {**groups, RUNNING: self.statistics} if self.statistics else groups

    # What a run keeps ----------------------------------------------------------

    def inner_learning_rates(self):
        """Rows {parameter, step, inner_lr} of the learned (or fixed) inner learning rates."""
        rows = []
        for name in self.params['network']:
            rates = (self.params[INNER_LR][name].numpy() if self.fixes.lslr
                     else np.full(self.num_inner_steps, self.inner_lr))
            rows += [{'parameter': name, 'step': step, 'inner_lr': float(rate)}
                     for step, rate in enumerate(rates)]
        return rows

    def summaries(self):
        return {**super().summaries(), **{f'inner_lr/{row["parameter"]}/step{row["step"]}': row['inner_lr']
                                          for row in self.inner_learning_rates()}}

    def save(self, folder):
        """Writes the learned inner learning rates (CSV: `folders.redraw` plots them) and every per-step
        array (npz)."""
        results.write_csv(os.path.join(folder, results.INNER_LR_FILE), self.inner_learning_rates())
        arrays = {name: value.numpy() for name, value in named_groups(self.learned_groups()).items()}
        if arrays:
            results.atomic_write(os.path.join(folder, PER_STEP_FILE), lambda f: np.savez(f, **arrays))
