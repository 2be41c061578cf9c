"""Variants as arguments of the one gradient-based learner (fewshot/learners/maml.py, inner.py): which
weights adapt, how a step moves them and where a task's head starts combine in one line each, and each
combination keeps what the named learners keep: second order matches float64 finite differences, what the
inner loop must not touch stays bit-identical, a checkpoint holds every variable, the loss falls. That the
named learners are unchanged by becoming such lines is pinned by test_named_learners.py."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from fewshot import data, network
from fewshot.learners import ANIL, BOIL, MAML, MetaSGD, ProtoMAML, inner
from test_contract import _every_variable, _key, assert_second_order_matches_finite_differences
from test_maml import _episodes

# One line each: the compositions that were subclass clashes before (issue 43).
VARIANTS = {
    'ANIL + Meta-SGD': lambda net, **kw: MAML(net, adapted='head', inner_rule=inner.LearnedRates('weight'), **kw),
    'BOIL + a rate per layer and step': lambda net, **kw: MAML(net, adapted='body',
                                                                inner_rule=inner.LearnedRates('step'), **kw),
    'Proto-MAML over ANIL': lambda net, **kw: MAML(net, adapted='head', head_start='prototypes', **kw),
    'ANIL + inner Adam, carried': lambda net, **kw: MAML(net, adapted='head', inner_rule=inner.Adam(carried=True),
                                                          **kw),
}


def _variant(name, first_order=False, seed=0):
    keras.utils.set_random_seed(seed)
    return VARIANTS[name](network.ConvNet(n_way=2, num_filters=4), inner_lr=0.4, num_inner_steps=2,
                          first_order=first_order, meta_optimizer=keras.optimizers.SGD(0.1))


@pytest.mark.parametrize('name', [name for name in VARIANTS if 'Adam' not in name])
def test_a_variant_s_second_order_meta_gradient_matches_float64_finite_differences(name):
    """Through the learned rates and the prototype head too: every group of θ is in the directions."""
    assert_second_order_matches_finite_differences(_variant(name))


@pytest.mark.parametrize('name', VARIANTS)
def test_a_variant_adapts_only_its_group_keeps_every_variable_and_learns(name):
    learner = _variant(name, first_order=True)
    episodes = data.Episodes(*(np.array(x) for x in _episodes(3)))
    tensors = data.Episodes(*(tf.constant(x) for x in episodes))
    weights, context = learner.split(learner.params, training=True)
    fixed = {key: value.numpy().copy() for key, value in {**context.get('body', {}),
                                                            **context.get('head', {})}.items()}
    support = learner.represent(tensors.support_images, context)
    start = learner.initial_weights(weights, context, support, tensors.support_labels, True)
    adapted = learner.inner_loop(start, support, tensors.support_labels, 2, True, context).params[-1]
    head = {'head/kernel', 'head/bias'}
    assert set(adapted) == {'all': set(network.parameters(learner.model)), 'head': head,
                            'body': set(network.parameters(learner.model)) - head}[learner.adapted]
    assert not set(adapted) & set(fixed)
    for key, value in {**context.get('body', {}), **context.get('head', {})}.items():
        np.testing.assert_array_equal(value, fixed[key], err_msg=f'the inner loop changed {key}')
    rates = learner.params.get(inner.RATES, {}) if 'network' in learner.params else {}
    assert set(rates) in (set(), set(adapted))  # Rates are learned for what adapts, and only for it.

    losses = [learner.meta_train_step(episodes)['query_post_loss'].mean() for _ in range(6)]
    assert losses[-1] < losses[0], losses
    held = {_key(variable) for variable in learner.state_variables().values()}
    missing = [key for key, variable in _every_variable(vars(learner)).items() if key not in held]
    assert not missing, 'state_variables leaves out a variable'


def test_the_named_learners_are_maml_with_their_arguments():
    """Bit for bit: ANIL is MAML adapting the head, BOIL the body, Meta-SGD MAML with a rate per weight,
    Proto-MAML MAML with prototype heads; and a named learner takes the others' arguments (ANIL + Meta-SGD)."""
    episodes = data.Episodes(*(np.array(x) for x in _episodes(2)))

    def stepped(build):
        keras.utils.set_random_seed(0)
        learner = build(network.ConvNet(n_way=2, num_filters=4), num_inner_steps=2, first_order=True,
                        meta_optimizer=keras.optimizers.SGD(0.1))
        learner.meta_train_step(episodes)
        return [variable.numpy() for variable in tf.nest.flatten(learner.params)]
    pairs = [(ANIL, lambda net, **kw: MAML(net, adapted='head', **kw)),
             (BOIL, lambda net, **kw: MAML(net, adapted='body', **kw)),
             (lambda net, **kw: MetaSGD(net, **kw), lambda net, **kw: MAML(
                 net, inner_rule=inner.LearnedRates('weight', variable_name='meta_sgd_lr'), **kw)),
             (ProtoMAML, lambda net, **kw: MAML(net, head_start='prototypes', **kw)),
             (lambda net, **kw: ANIL(net, inner_rule=inner.LearnedRates('weight'), **kw), VARIANTS['ANIL + Meta-SGD'])]
    for named, composed in pairs:
        for a, b in zip(stepped(named), stepped(composed), strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('arguments, message', [
    ({'adapted': 'neck'}, "adapted: 'neck' is not one of 'all', 'head', 'body'"),
    ({'head_start': 'zeros'}, "head_start: 'zeros' is not one of"),
    ({'adapted': 'body', 'head_start': 'prototypes'}, "adapted must be 'all' or 'head'"),
])
def test_a_variant_that_does_not_exist_is_refused_naming_the_argument(arguments, message):
    with pytest.raises(ValueError, match=message):
        MAML(network.ConvNet(n_way=2, num_filters=4), **arguments)
    with pytest.raises(ValueError, match="per: 'neuron' is not one of weight, layer, step"):
        inner.LearnedRates('neuron')
