"""MAML++ (Antoniou, Edwards & Storkey, "How to train your MAML", ICLR 2019).

    python maml_plusplus.py                                # all six fixes, 5-way 5-shot Omniglot
    python maml_plusplus.py --msl=false --lslr=false       # an ablation: one flag per fix
    python maml_plusplus.py --eval_batch_norm transductive # evaluate with batch moments, as MAML does

MAML++ is MAML (maml.py) with six fixes, each on by default:
  MSL   multi-step loss: the meta-loss weighs the query loss after every inner step,
        Σ_s v_s L_query(θ'_s); the weights move to the last step over --msl_iterations.
  DA    derivative-order annealing: first order for --da_iterations meta-iterations,
        second order after that.
  BNRS  per-step batch-norm running statistics, gathered from the support sets during
        meta-training (--eval_batch_norm running evaluates with them; see below).
  BNWB  per-step batch-norm weights and biases, meta-learned (not adapted in the inner loop).
  LSLR  a learned inner learning rate per weight tensor and per step.
  CA    cosine annealing of the meta learning rate from --meta_lr to --min_meta_lr.

"Step s" indexes the task weights θ'_s after s inner updates (s = 0 … S); per-step
batch-norm weights and statistics exist for every s, learning rates for s < S.

Batch norm at evaluation (--eval_batch_norm). Meta-training normalises every batch with
its own moments. At evaluation a query prediction should not depend on the other query
images (non-transductive), so the default normalises the query, at each step, with the
moments of the task's support set at that step ('support'; the support set is the task's
training data, so this uses nothing but it). The paper's per-step running statistics
('running') are the literal BNRS: but the inner loop adapts every task's network to
different feature statistics, which an average over tasks does not normalise, and
measured here they leave evaluation at chance level. 'transductive' normalises each
evaluated batch with its own moments, as MAML does.
"""

import dataclasses
import os
import sys

import fewshot  # noqa: F401  First: it sets up TensorFlow's CPU backend, read as TensorFlow loads.
import keras
import numpy as np
import tensorflow as tf
from absl import flags

from fewshot import config, distribution, errors, experiment, network, plotting, results
import maml

flags.adopt_module_key_flags(config)
flags.adopt_module_key_flags(distribution)  # --strategy and --cpu_replicas.
for _name in ('inner_lr', 'num_inner_steps', 'num_eval_inner_steps', 'meta_lr'):
    flags.declare_key_flag(_name)  # MAML's flags that mean the same here.
flags.DEFINE_boolean('msl', True, 'Multi-step loss (MSL).')
flags.DEFINE_integer('msl_iterations', 100, 'MSL: meta-iterations over which the step weights move '
                     'from uniform to the last step only; after them the loss is the last step\'s.',
                     lower_bound=1)
flags.DEFINE_boolean('da', True, 'Derivative-order annealing (DA); --da=false trains second order '
                     'throughout.')
flags.DEFINE_integer('da_iterations', 500, 'DA: first-order meta-iterations before switching to '
                     'second order (the paper: a third of training; here half, as second order '
                     'costs 2.6x first order on a CPU).', lower_bound=0)
flags.DEFINE_boolean('bnrs', True, 'Keep per-step batch-norm running statistics (BNRS).')
flags.DEFINE_enum('eval_batch_norm', 'support', ['support', 'running', 'transductive'],
                  'Batch norm at evaluation: the support set\'s moments at each step (non-transductive), '
                  'the per-step running statistics (non-transductive, needs --bnrs), or the moments of '
                  'each evaluated batch (transductive, as MAML).')
flags.DEFINE_boolean('bnwb', True, 'Per-step batch-norm weights and biases (BNWB).')
flags.DEFINE_boolean('lslr', True, 'Learned per-layer, per-step inner learning rates (LSLR), '
                     'initialised at --inner_lr.')
flags.DEFINE_boolean('cosine_annealing', True, 'Cosine annealing of the meta learning rate (CA) '
                     'over --num_iterations.')
flags.DEFINE_float('min_meta_lr', 1e-5, 'CA: the meta learning rate at the last iteration.',
                   lower_bound=0.0)
flags.register_multi_flags_validator(
    ['num_eval_inner_steps', 'num_inner_steps'],
    lambda f: f['num_eval_inner_steps'] <= f['num_inner_steps'],
    message='--num_eval_inner_steps must not exceed --num_inner_steps: MAML++ learns per-step '
            'learning rates and batch norm only for the steps it trains')
flags.register_multi_flags_validator(
    ['min_meta_lr', 'meta_lr', 'cosine_annealing'],
    lambda f: not f['cosine_annealing'] or f['min_meta_lr'] <= f['meta_lr'],
    message='--min_meta_lr must not exceed --meta_lr: cosine annealing takes the meta learning rate '
            'from --meta_lr down to --min_meta_lr')
flags.register_multi_flags_validator(
    ['eval_batch_norm', 'bnrs'], lambda f: f['eval_batch_norm'] != 'running' or f['bnrs'],
    message='--eval_batch_norm running needs the running statistics of --bnrs')
FLAGS = flags.FLAGS

PER_STEP = 'per_step/'    # Names of per-step batch-norm weights: per_step/bn1/gamma [S + 1, F].
INNER_LR = 'inner_lr/'    # Names of learned learning rates: inner_lr/conv1/kernel [S].
RUNNING = 'running/'      # Running statistics in an evaluation context: running/bn1/moving_mean.
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


class MAMLPlusPlus(maml.MAML):
    """MAML with MAML++'s fixes (see the module docstring), over the same functional network.

    The meta-parameters θ (`self.params`) are the network's weights that the inner loop
    adapts, plus the per-step ones it does not: learning rates α_{l,s} (LSLR) and
    batch-norm γ_s, β_s (BNWB). `meta_objective` is a pure function of all of them.
    Per-step running statistics (BNRS) are state, not parameters: `track` averages the
    support-set moments of every training meta-batch into them.
    """

    def __init__(self, net, model, inner_lr, num_inner_steps, meta_optimizer, fixes=Fixes()):
        """
        Args:
          net, model, inner_lr, num_inner_steps, meta_optimizer: as for `maml.MAML`
            (with LSLR, inner_lr is the initial value of every learned learning rate).
          fixes: a `Fixes`.
        """
        self.fixes = fixes
        params = network.parameters(model)
        steps = num_inner_steps + 1
        if fixes.bnwb:
            for name in [name for name in params if name.startswith('bn')]:
                shared = params.pop(name)
                params[PER_STEP + name] = keras.Variable(np.tile(shared.numpy(), [steps, 1]),
                                                         name=f'per_step_{name.replace("/", "_")}')
        if fixes.lslr:
            for name in [name for name in params if not name.startswith(PER_STEP)]:
                params[INNER_LR + name] = keras.Variable(np.full(num_inner_steps, inner_lr, np.float32),
                                                         name=f'inner_lr_{name.replace("/", "_")}')
        self.statistics = {}
        if fixes.bnrs:
            for name, variable in network.statistics(model).items():
                initial = np.tile(variable.numpy(), [steps, 1])  # Keras' initial mean 0, variance 1.
                self.statistics[name] = keras.Variable(initial, trainable=False,
                                                       name=f'running_{name.replace("/", "_")}')
        super().__init__(net, model, inner_lr, num_inner_steps, first_order=False,
                         meta_optimizer=meta_optimizer, params=params)

    # The inner loop ------------------------------------------------------------

    def forward(self, params, images, step, context, statistics=None):
        """Logits [T, B, N] under task weights θ'_step, with step `step`'s batch norm.

        context: the per-step meta-parameters, and the running statistics (names under
        RUNNING) when evaluating with them.
        statistics: None, or moments [T, F] by name to normalise with (those of a support set).
        Returns (logits, the batch moments measured, or None when normalising with given ones).
        """
        num_tasks, context = images.shape[0], context or {}
        params = self.network_weights(params, step, context)
        running = {name[len(RUNNING):]: value[step] for name, value in context.items()
                   if name.startswith(RUNNING)}
        if running:
            statistics = network.tile(running, num_tasks)
        if statistics is not None:
            return self.net.forward(params, images, statistics), None
        return self.net.forward_with_moments(params, images)

    def network_weights(self, params, step, context):
        """The task weights θ'_step and step `step`'s batch-norm weights (BNWB), by name [T, ...]."""
        per_step = {name[len(PER_STEP):]: value[step] for name, value in context.items()
                    if name.startswith(PER_STEP)}
        return {**params, **network.tile(per_step, next(iter(params.values())).shape[0])}

    def inner_update(self, params, grads, step, context, state):
        """θ'_{s+1} = θ'_s − α_{l,s} g for every weight tensor l (LSLR), else − α g."""
        if not self.fixes.lslr:
            return super().inner_update(params, grads, step, context, state)
        return {name: params[name] - context[INNER_LR + name][step] * grads[name] for name in params}, state

    # The outer loop ------------------------------------------------------------

    def split(self, params, training):
        """The network's weights adapt; the per-step parameters, and the running statistics
        when evaluation uses them, are context."""
        weights, context = self.partition(params, lambda name: not name.startswith((PER_STEP, INNER_LR)))
        if self.batch_norm_mode(training) == 'running':
            context.update({RUNNING + name: tf.convert_to_tensor(value)
                            for name, value in self.statistics.items()})
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

    def state_variables(self):
        """By name: the model's weights, the per-step parameters and statistics, the optimizer's state."""
        return {**results.named_variables('model', self.model),
                **{name: value for name, value in self.params.items() if name.startswith((PER_STEP, INNER_LR))},
                **{RUNNING + name: value for name, value in self.statistics.items()},
                **results.named_variables('optimizer', self.meta_optimizer)}

    # What a run keeps ----------------------------------------------------------

    def inner_learning_rates(self):
        """Rows {parameter, step, inner_lr} of the learned (or fixed) inner learning rates."""
        rows = []
        for name in self.params:
            if name.startswith((PER_STEP, INNER_LR)):
                continue
            rates = (self.params[INNER_LR + name].numpy() if self.fixes.lslr
                     else np.full(self.num_inner_steps, self.inner_lr))
            rows += [{'parameter': name, 'step': step, 'inner_lr': float(rate)}
                     for step, rate in enumerate(rates)]
        return rows

    def summaries(self):
        return {**super().summaries(), **{f'inner_lr/{row["parameter"]}/step{row["step"]}': row['inner_lr']
                                          for row in self.inner_learning_rates()}}

    def save(self, folder):
        """Writes the learned inner learning rates (CSV and plot) and every per-step array (npz)."""
        rows = self.inner_learning_rates()
        results.write_csv(os.path.join(folder, results.INNER_LR_FILE), rows)
        plotting.plot_inner_learning_rates(rows, os.path.join(folder, 'inner_learning_rates.png'))
        arrays = {name: value.numpy() for name, value in self.params.items()
                  if name.startswith((PER_STEP, INNER_LR))}
        arrays.update({RUNNING + name: value.numpy() for name, value in self.statistics.items()})
        if arrays:
            results.atomic_write(os.path.join(folder, PER_STEP_FILE), lambda f: np.savez(f, **arrays))


def fixes_from_flags():
    """The fixes as the flags of the same names say."""
    return Fixes(**{field.name: FLAGS[field.name].value for field in dataclasses.fields(Fixes)})


def run_name(fixes):
    """'maml++_5way5shot_5steps_seed0', with a suffix for every fix turned off."""
    off = [name for name in ('msl', 'da', 'bnrs', 'bnwb', 'lslr') if not getattr(fixes, name)]
    off += [] if FLAGS.cosine_annealing else ['ca']
    suffix = ''.join(f'_no-{name}' for name in off)
    if fixes.eval_batch_norm != 'support':
        suffix += f'_eval-{fixes.eval_batch_norm}'
    return (f'maml++_{FLAGS.n_way}way{FLAGS.k_shot}shot_{FLAGS.num_inner_steps}steps'
            f'{suffix}_seed{FLAGS.seed}')


BATCH_NORM_MODES = {  # What hyperparameters.json and the report say of each --eval_batch_norm.
    'support': 'support-set moments at each inner step (non-transductive: a query prediction does '
               'not depend on the other query images)',
    'running': 'per-step running statistics of the meta-training support sets (non-transductive)',
    'transductive': 'transductive (statistics of the batch being normalised)',
}


def main(argv):
    del argv
    fixes = fixes_from_flags()

    def build(splits):
        meta_lr = (cosine_meta_lr(FLAGS.meta_lr, FLAGS.min_meta_lr, FLAGS.num_iterations)
                   if FLAGS.cosine_annealing else FLAGS.meta_lr)
        net = experiment.convnet()
        learner = MAMLPlusPlus(net, net.keras_model(), FLAGS.inner_lr, FLAGS.num_inner_steps,
                               keras.optimizers.Adam(meta_lr), fixes)
        return learner

    outcome = experiment.run(
        algorithm='MAML++', default_run_name=run_name(fixes), build=build,
        flag_modules=[sys.modules[__name__]],
        num_eval_inner_steps=FLAGS.num_eval_inner_steps or FLAGS.num_inner_steps,
        extra={'batch_norm': BATCH_NORM_MODES[fixes.eval_batch_norm]},
        # Cosine annealing spreads over --num_iterations: a longer resumed run would change it.
        fixed_on_resume=('num_iterations',) if FLAGS.cosine_annealing else ())
    outcome.learner.save(outcome.folder.path)


if __name__ == '__main__':
    errors.run(main)
