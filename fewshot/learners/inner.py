"""How an inner step moves a task's weights: the step rules of the gradient-based learners, an argument of
`MAML` (`inner_rule`), so that any rule goes with any adapted group (ANIL + Meta-SGD is
`MAML(net, adapted='head', inner_rule=LearnedRates('weight'))`).

    SGD()                   θ'_{s+1} = θ'_s − α g                       MAML, ANIL, BOIL, Proto-MAML
    LearnedRates('weight')  θ'_{s+1} = θ'_s − α ∘ g, α shaped as θ      Meta-SGD (Li et al. 2017)
    LearnedRates('layer')   one learned α_l per weight tensor l
    LearnedRates('step')    one learned α_{l,s} per tensor and step     MAML++'s LSLR (Antoniou et al. 2019)
    Adam(carried=True)      Adam with β1 = 0, its v carried across meta-iterations   Reptile (Nichol et al. 2018)

A rule holds no variables itself: `MAML` asks it for the learned rates (a group of θ, 'inner_lr') and
the state it carries across meta-iterations, and hands them back at every step, so one rule object can
serve several learners. Weights are dicts name -> [T, *shape] (T tasks); a step's `rates` are the
learned group as tensors (None when the rule learns none).
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from fewshot.learner import named_groups

RATES = 'inner_lr'  # The group of θ holding learned rates; checkpoints key them inner_lr/<weight>.


@dataclasses.dataclass(frozen=True)
class SGD:
    """θ'_{s+1} = θ'_s − α g, the same α at every step."""

    def learned_rates(self, weights, inner_lr, num_steps):
        """The rates θ learns besides the network, by weight name (None: this rule learns none)."""
        del weights, inner_lr, num_steps
        return None

    def carried_state(self, weights):
        """The state kept across meta-iterations (None: none)."""
        del weights
        return None

    def start(self, params, carried):
        """The rule's state at a task's first step (SGD keeps none)."""
        del params, carried
        return ()

    def step(self, params, grads, step, rates, state, inner_lr):
        """(θ'_{s+1}, the next state) from θ'_s and its gradient g, by name [T, ...]."""
        del step, rates
        return {name: params[name] - inner_lr * grads[name] for name in params}, state

    def measure(self, state):
        """What the carried state takes from a meta-batch's last inner state, as means over its tasks."""
        del state
        return {}

    def track(self, carried, measured, num_steps):
        """Moves the carried state after a meta-step of `num_steps` inner steps a task."""
        del carried, measured, num_steps

    def carried_variables(self, carried):
        """The carried state's variables by checkpoint key."""
        del carried
        return {}


RATE_SHAPES = ('weight', 'layer', 'step')


@dataclasses.dataclass(frozen=True)
class LearnedRates(SGD):
    """θ'_{s+1} = θ'_s − α ∘ g with α meta-learned, every rate starting at the learner's inner_lr:
    per='weight', one rate per weight (α shaped as θ, Meta-SGD); 'layer', one per weight tensor;
    'step', one per tensor and inner step (α_l [S], MAML++'s LSLR).

    variable_name: what the rate variables' names start with. The optimizer names its slots after them
    and checkpoints key the slots by those names, so each learner keeps the one its runs were written
    with (Meta-SGD 'meta_sgd_lr', MAML++ 'inner_lr').
    """
    per: str = 'weight'
    variable_name: str = 'inner_lr'

    def __post_init__(self):
        if self.per not in RATE_SHAPES:
            raise ValueError(f'per: {self.per!r} is not one of {", ".join(RATE_SHAPES)}')

    def learned_rates(self, weights, inner_lr, num_steps):
        shapes = {'weight': lambda value: value.shape, 'layer': lambda value: (), 'step': lambda value: (num_steps,)}
        return {name: keras.Variable(np.full(shapes[self.per](value), inner_lr, np.float32),
                                     name=f'{self.variable_name}_{name.replace("/", "_")}')
                for name, value in weights.items()}

    def step(self, params, grads, step, rates, state, inner_lr):
        del inner_lr
        if self.per == 'step':
            return {name: params[name] - rates[name][step] * grads[name] for name in params}, state
        return {name: params[name] - rates[name] * grads[name] for name in params}, state


ADAM_BETA2, ADAM_EPSILON = 0.999, 1e-8


@dataclasses.dataclass(frozen=True)
class Adam(SGD):
    """Adam with β1 = 0 (Reptile's inner optimizer): v ← β2 v + (1 − β2) g², θ' − α g / (√(v / (1 − β2^s)) + ϵ)
    at its step s, counted from 1.

    carried: True keeps the second-moment estimates v and their step count t across tasks and
    meta-iterations, as the Reptile authors' code does (its optimizer's slots are never reset): every task
    of a meta-batch starts from the carried v at step t + 1, and after the meta-step v becomes the mean over
    the tasks of where theirs ended, t + k (see fewshot/learners/reptile.py). False starts every task at
    v = 0, step 1.
    """
    carried: bool = True

    def carried_state(self, weights):
        if not self.carried:
            return None
        moments = {name: tf.Variable(tf.zeros_like(value), trainable=False) for name, value in weights.items()}
        return {'moments': moments, 'steps': tf.Variable(0.0, trainable=False)}

    def start(self, params, carried):
        """(v for every task's weights [T, ...], the steps taken before): zero and 0, or the carried ones."""
        if carried is None:
            return {name: tf.zeros_like(value) for name, value in params.items()}, 0.0
        return ({name: tf.broadcast_to(carried['moments'][name], value.shape) for name, value in params.items()},
                tf.convert_to_tensor(carried['steps']))

    def step(self, params, grads, step, rates, state, inner_lr):
        del rates
        moments, steps_before = state
        moments = {name: ADAM_BETA2 * moments[name] + (1 - ADAM_BETA2) * tf.square(grads[name]) for name in params}
        correction = 1 - ADAM_BETA2 ** (steps_before + step + 1)
        return ({name: params[name] - inner_lr * grads[name] / (tf.sqrt(moments[name] / correction) + ADAM_EPSILON)
                 for name in params}, (moments, steps_before))

    def measure(self, state):
        """The mean over the tasks of where their v ended."""
        moments, _ = state
        return {'inner_moments': {name: tf.reduce_mean(value, axis=0) for name, value in moments.items()}}

    def track(self, carried, measured, num_steps):
        """v ← the tasks' mean, t ← t + k."""
        for name, variable in carried['moments'].items():
            variable.assign(measured['inner_moments'][name])
        carried['steps'].assign_add(float(num_steps))

    def carried_variables(self, carried):
        """inner_adam/moments/<weight> and inner_adam/steps."""
        return {**named_groups({'inner_adam/moments': carried['moments']}), 'inner_adam/steps': carried['steps']}
