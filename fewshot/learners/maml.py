"""MAML and first-order MAML (Finn, Abbeel & Levine, "Model-Agnostic Meta-Learning for Fast
Adaptation of Deep Networks", ICML 2017): the core the family's learners extend.

    learner = MAML(network.ConvNet(n_way=5), inner_lr=0.4, num_inner_steps=5)   # FO-MAML
    learner.meta_train_step(episodes)        # one meta-step on a meta-batch of tasks
    learner.evaluate(episodes, num_steps=5)  # per-task accuracy before and after adaptation

maml.py at the top of the repository is its command (the flags, the run folder).
"""

from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from fewshot import network, results
from fewshot.learner import Learner, model_for, named_groups
from fewshot.learners import inner


class Trajectory(NamedTuple):
    """What the inner loop did for a meta-batch of T tasks, step by step.

    params: [θ'_0, ..., θ'_S], each a dict name -> [T, *shape]; θ'_0 is the start.
    support_score: [S + 1] tensors [T], the network's score of the support set at each θ'_s
        (its accuracy for a classifier; on the examples step s trained on, see `inner_batch`; at
        θ'_S on the whole support set).
    support_moments: [S + 1] batch-norm moments of the support set at each θ'_s (dicts
        name -> [T, F], see `network.ConvNet.forward_with_moments`), or None where the
        learner does not keep them.
    inner_state: the inner optimizer's state after the last step (`inner_update`'s; SGD: ()).
    """
    params: list
    support_score: list
    support_moments: list
    inner_state: object = ()


# Which of the network's weights the inner loop adapts (its named groups, `network.LinearHead.groups`).
ADAPTED = ('all', 'head', 'body')
# Where each task's head starts: θ's head (meta-learned), or its support set's prototypes (Proto-MAML).
HEAD_STARTS = ('meta-learned', 'prototypes')
NETWORK = 'network'  # θ's group of network weights, when θ has other groups (learned rates, ...).

# Second order keeps every inner step's activations for the meta-gradient: computed 8 tasks at a
# time it measured faster than the whole meta-batch of 32, in under half the memory (docs/speed).
SECOND_ORDER_TASKS_PER_CHUNK = 8


class MAML(Learner):
    """Model-Agnostic Meta-Learning over a functional network.

    The meta-parameters θ are the trainable weights of a Keras model. For every
    task t of a meta-batch the inner loop adapts a copy of them on the support set,

        θ'_t ← θ'_t − α ∇ L_support_t(θ'_t),   θ'_t = θ initially, `num_inner_steps` times,

    and the outer loop minimises the meta-objective  L(θ) = 1/T Σ_t L_query_t(θ'_t(θ))
    with the meta-optimizer. Second order differentiates through every inner
    step; first order (FO-MAML) treats the inner gradients as constants, so that
    ∂θ'_t/∂θ = I and the meta-gradient is the mean query gradient at θ'_t.

    All tasks of a meta-batch are adapted at once: weights carry a leading task
    axis T and `network.forward` keeps the tasks apart.

    The family's variants are arguments: which weights adapt (`adapted`: ANIL the head, BOIL the
    body), how a step moves them (`inner_rule`: Meta-SGD's learned rates, Reptile's Adam) and where a
    task's head starts (`head_start`: Proto-MAML's prototypes), in any combination:

        MAML(net, adapted='head', inner_rule=inner.LearnedRates('weight'))   # ANIL + Meta-SGD
        MAML(net, adapted='body', inner_rule=inner.LearnedRates('step'))     # BOIL, a rate per layer and step
        MAML(net, adapted='head', head_start='prototypes')                  # Proto-MAML over ANIL

    The named learners (anil.py, boil.py, meta_sgd.py, proto_maml.py) are such calls. What is not
    one (Reptile's minibatches and direction, iMAML's implicit gradient, MAML++'s per-step batch
    norm) overrides the hooks: `inner_batch` (what a step trains on), `forward` (which weights and
    statistics a step uses), `inner_loss` (what a step descends), `query_forward` (how the query set
    is scored), `query_loss` (the meta-loss), `meta_gradients` (the direction of the meta-step),
    `measure` and `track` (state kept across meta-steps) and `save` (what else a run keeps).
    """

    def __init__(self, net, model=None, inner_lr=0.4, num_inner_steps=5, first_order=True,
                 meta_optimizer=None, adapted='all', inner_rule=inner.SGD(), head_start='meta-learned', groups=None):
        """
        Args:
          net: a `network.ConvNet` (or another network with `forward` over explicit weights and
            `task_losses` and `task_scores`, e.g. `regression.MLP`).
          model: its Keras model, holding the meta-parameters θ (default: `net.keras_model()`).
          inner_lr: α, the inner-loop SGD learning rate.
          num_inner_steps: inner steps during meta-training.
          first_order: if True, FO-MAML; otherwise differentiate through the inner loop, by
            `SECOND_ORDER_TASKS_PER_CHUNK` tasks at a time (`tasks_per_chunk`).
          meta_optimizer: a Keras optimizer for θ (default: Adam at 1e-3, as the paper).
          adapted: the network's weights the inner loop adapts, one of `ADAPTED`: 'all' (MAML), 'head'
            (ANIL: the body's features are computed once per set) or 'body' (BOIL); the others are
            meta-learned in the outer loop alone.
          inner_rule: how an inner step moves them (fewshot/learners/inner.py): `inner.SGD()` (MAML),
            `inner.LearnedRates(per)` (Meta-SGD, MAML++'s LSLR, rates starting at `inner_lr`) or
            `inner.Adam(carried)`.
          head_start: one of `HEAD_STARTS`: 'meta-learned' (θ's head), or 'prototypes' (Proto-MAML: every
            task's head starts at its support set's prototypes, and θ holds the body alone).
          groups: θ as named groups, {NETWORK: the network's weights by name, other groups the inner loop
            reads: MAML++'s per-step batch norm} (default: {NETWORK: the model's trainable weights}).
        """
        _check_choice('adapted', adapted, ADAPTED)
        _check_choice('head_start', head_start, HEAD_STARTS)
        if head_start == 'prototypes' and adapted == 'body':
            raise ValueError("head_start='prototypes' makes a head for the inner loop to adapt: adapted must be "
                             "'all' or 'head', not 'body'")
        self.inner_lr = inner_lr
        self.num_inner_steps = num_inner_steps
        self.first_order = first_order
        self.adapted, self.inner_rule, self.head_start = adapted, inner_rule, head_start
        model = model_for(net, model)
        groups = dict(groups or {NETWORK: network.parameters(model)})
        adaptable = _part(net, groups[NETWORK], adapted)
        if head_start == 'prototypes':  # The head is made per task, not learned; rates are learned for it too.
            adaptable = _part(net, network.parameters(model), adapted)
            groups[NETWORK] = net.groups(groups[NETWORK])['body']
        rates = inner_rule.learned_rates(adaptable, inner_lr, num_inner_steps)
        if rates is not None:
            groups[inner.RATES] = rates
        self.carried = inner_rule.carried_state(adaptable)
        super().__init__(net, model, meta_optimizer, groups if len(groups) > 1 else groups[NETWORK])
        self._adapted_weights = tf.function(self.adapted_weights)
        if not first_order:
            self.tasks_per_chunk = SECOND_ORDER_TASKS_PER_CHUNK

    def inner_loop(self, params, images, labels, num_steps, first_order=None, context=None):
        """Adapts every task's weights on its support set.

        Args:
          params: dict name -> [T, *shape], the weights each task starts from.
          images: the support set as `represent` gives it: [T, N*K, 28, 28, 1] images for MAML;
            labels: [T, N*K] int32.
          num_steps: number of inner steps.
          first_order: overrides `self.first_order` (evaluation needs no second order).
          context: what `forward` and `inner_update` need besides the task weights, by group (`split`'s;
            None: nothing).
        Returns:
          A `Trajectory`; its params[-1] are the adapted weights.
        """
        first_order = self.first_order if first_order is None else first_order
        context = {} if context is None else context
        weights, scores, moments = [params], [], []
        state = self.inner_state(params)
        for step in range(num_steps):
            step_images, step_labels = self.inner_batch(images, labels, step)
            with tf.GradientTape() as tape:
                tape.watch(params)
                logits, step_moments = self.forward(params, step_images, step, context)
                loss = self.inner_loss(logits, step_labels, params, weights[0])
            scores.append(self.net.task_scores(logits, step_labels))
            moments.append(step_moments)
            grads = tape.gradient(loss, params)
            if first_order:
                grads = tf.nest.map_structure(tf.stop_gradient, grads)
            params, state = self.inner_update(params, grads, step, context, state)
            weights.append(params)
        logits, step_moments = self.forward(params, images, num_steps, context)
        scores.append(self.net.task_scores(logits, labels))
        moments.append(step_moments)
        return Trajectory(weights, scores, moments, state)

    def inner_loss(self, logits, labels, params, start):
        """What the inner loop descends: Σ_t L_support_t(θ'_t), from support logits [T, B, N].

        Summing over tasks gives each task's gradient in its own slice of T. params, start: the
        task weights θ'_t now and where the loop started (for a regulariser toward θ, as iMAML's).
        """
        del params, start
        return tf.reduce_sum(self.net.task_losses(logits, labels))

    def forward(self, params, images, step, context):
        """Logits [T, B, N] of images [T, B, 28, 28, 1] (adapting the head: their features [T, B, F],
        `represent`) under task weights θ'_step and the network's weights the context holds.

        The same network at every step, and no batch-norm moments kept: returns (logits, None).
        """
        if self.adapted == 'head':
            return self.net.head_outputs(params, images), None
        return self.net.forward(self.network_weights(params, step, context), images), None

    def inner_batch(self, images, labels, step):
        """What inner step `step` trains on, from the support set [T, N*K, ...] and its labels
        [T, N*K]: MAML's every step takes the whole set (Reptile's takes minibatches)."""
        del step
        return images, labels

    def inner_state(self, params):
        """The inner rule's state for task weights `params` at the first step (SGD keeps none)."""
        return self.inner_rule.start(params, self.carried)

    def inner_update(self, params, grads, step, context, state):
        """One step of the inner loop, (θ'_{s+1}, the rule's next state): `inner_rule`'s step, with the
        learned rates if it has them."""
        return self.inner_rule.step(params, grads, step, context.get(inner.RATES), state, self.inner_lr)

    def meta_objective(self, params, episodes, num_steps, first_order=None, training=True,
                       **loss_options):
        """L(θ) = 1/T Σ_t L_query_t(θ'_t): the query loss after adaptation (see `query_loss`).

        A pure function of `params` (dict name -> tensor, one set θ shared by all tasks).
        Args:
          episodes: a `data.Episodes` of T tasks (tensors).
          num_steps: inner steps for adaptation.
          first_order: overrides `self.first_order`.
          training: False when evaluating (variants may then normalise differently).
          loss_options: further arguments of `query_loss` (MAML++: the multi-step loss weights).
        Returns:
          (meta-loss scalar, dict of [T] tensors: query loss and score (accuracy) before and
          after adaptation, support score before and after adaptation, the `Trajectory`).
        """
        first_order = self.first_order if first_order is None else first_order
        start, context, query, trajectory = self.adapt_tasks(params, episodes, num_steps, first_order, training)

        def query_logits(step, step_weights, step_context):
            return self.query_forward(step_weights, query, step, step_context, trajectory, training)
        meta_loss, post_logits = self.query_loss(
            lambda step: query_logits(step, trajectory.params[step], context),
            episodes.query_labels, num_steps, **loss_options)
        # Before adaptation: metrics only, outside the objective.
        pre_logits = query_logits(0, *tf.nest.map_structure(tf.stop_gradient, (start, context)))
        metrics = self.metrics(pre_logits, post_logits, episodes.query_labels, trajectory)
        return meta_loss, metrics, trajectory

    def adapt_tasks(self, params, episodes, num_steps, first_order, training):
        """(θ'_0, the context, the query set as `represent` gives it, the `Trajectory`): every task
        of `episodes` adapted on its support set with `num_steps` inner steps from θ = `params`."""
        weights, context = self.split(params, training)
        support = self.represent(episodes.support_images, context)
        query = self.represent(episodes.query_images, context)
        start = self.initial_weights(weights, context, support, episodes.support_labels, first_order)
        trajectory = self.inner_loop(start, support, episodes.support_labels, num_steps, first_order, context)
        return start, context, query, trajectory

    def query_outputs(self, episodes, num_steps):
        """The query outputs [T, Q, ...] after 0, 1, ..., `num_steps` inner steps, a list of S + 1:
        one adaptation (first order, as in evaluation) scored at every step, θ untouched."""
        _, context, query, trajectory = self.adapt_tasks(self.params, episodes, num_steps, True, training=False)
        return [self.query_forward(trajectory.params[step], query, step, context, trajectory, False)
                for step in range(num_steps + 1)]

    def split(self, params, training):
        """(the weights the inner loop adapts, as `params` holds them (variables: `initial_weights` starts
        from them), the context it only reads, as tensors: θ's other groups by name and the network's
        weights that do not adapt as 'head' or 'body'), both dicts by name."""
        del training
        grouped = NETWORK in params
        weights = params[NETWORK] if grouped else params
        context = {group: tensors(named) for group, named in params.items() if group != NETWORK} if grouped else {}
        if self.adapted == 'all':
            return weights, context
        # With prototype heads θ holds the body alone: the head that adapts is made by `initial_weights`.
        groups = {'body': weights, 'head': {}} if self.head_start == 'prototypes' else self.net.groups(weights)
        fixed = 'body' if self.adapted == 'head' else 'head'
        return groups[self.adapted], {**context, fixed: tensors(groups[fixed])}

    def represent(self, images, context):
        """What the inner loop's `forward` is applied to, from images [T, B, 28, 28, 1]: the images
        themselves, or, adapting only the head, the body's features [T, B, F], computed once per set
        instead of at every inner step (ANIL's speed)."""
        if self.adapted != 'head':
            return images
        return self.net.features(network.tile(context['body'], images.shape[0]), images)

    def initial_weights(self, weights, context, support, labels, first_order):
        """θ'_0, where every task's inner loop starts: dict name -> [T, *shape].

        Every task starts at θ (`weights` tiled over the T tasks), with `head_start='prototypes'` its head
        at its support set's prototypes, W_k = 2 c_k, b_k = −‖c_k‖², c_k the mean feature of class k
        (`network.prototype_head`). support: `represent`ed support set [T, N*K, ...]; labels: [T, N*K];
        first_order: whether the meta-gradient may ignore how θ'_0 was made (the head is then a constant).
        """
        del context
        start = network.tile(weights, support.shape[0])
        if self.head_start != 'prototypes':
            return start
        features = support if self.adapted == 'head' else self.net.features(start, support)
        head = self.net.head_weights(*network.prototype_head(features, labels, self.net.n_way))
        if first_order:
            head = tf.nest.map_structure(tf.stop_gradient, head)
        return {**start, **head}

    def query_forward(self, params, images, step, context, trajectory, training):
        """Query logits [T, Q, N] under θ'_step.

        MAML scores the query set as it adapts on the support set: batch norm uses the
        moments of the query batch itself (transductive), in training and evaluation alike.
        """
        del trajectory, training
        return self.forward(params, images, step, context)[0]

    def query_loss(self, query_logits, labels, num_steps):
        """(meta-loss, query logits [T, Q, N] at θ'_S): the mean over tasks of L_query_t(θ'_{t,S}).

        query_logits: step s -> query logits [T, Q, N] under θ'_s.
        """
        logits = query_logits(num_steps)
        return tf.reduce_mean(self.net.task_losses(logits, labels)), logits

    @property
    def train_metrics(self):
        """What train_step reports, per task; the first is the meta-loss. Scores are named by the
        network (accuracy: query_post_accuracy; a regressor's mean squared error: query_post_mse)."""
        score = self.net.score_name
        return ('query_post_loss', f'query_post_{score}', 'query_pre_loss', f'query_pre_{score}',
                f'support_pre_{score}', f'support_post_{score}')

    def metrics(self, pre_logits, post_logits, query_labels, trajectory):
        """The per-task metrics [T] of `train_metrics` from query outputs before and after adaptation."""
        score = self.net.score_name
        return {
            'query_pre_loss': self.net.task_losses(pre_logits, query_labels),
            'query_post_loss': self.net.task_losses(post_logits, query_labels),
            f'query_pre_{score}': self.net.task_scores(pre_logits, query_labels),
            f'query_post_{score}': self.net.task_scores(post_logits, query_labels),
            f'support_pre_{score}': trajectory.support_score[0],
            f'support_post_{score}': trajectory.support_score[-1],
        }

    def outer_loop(self, episodes, num_steps, train, **options):
        """Evaluates the meta-objective on a meta-batch and, if `train`, takes one meta-step.

        The meta-gradient ∇θ L(θ) (`meta_direction`) is applied to θ by the meta-optimizer.
        Evaluation (train=False) adapts first order, since no meta-gradient is needed.
        options: further arguments of `meta_objective` (training only).
        Returns the per-task metrics of `meta_objective`.
        """
        if not train:
            _, metrics, trajectory = self.meta_objective(self.params, episodes, num_steps, first_order=True,
                                                         training=False)
            if not hasattr(self.net, 'features'):  # A network of the bare contract (the lab's SmallCNN).
                return metrics
            return {**metrics, 'support_feature_similarity':
                    self.feature_similarity(self.params, episodes.support_images, trajectory)}
        gradients, metrics, measured = self.meta_direction(episodes, num_steps, **options)
        self.update(gradients, measured)
        return metrics

    def meta_direction(self, episodes, num_steps=None, **options):
        """(the meta-step's direction, `meta_gradients`, by name; per-task metrics; `measure(trajectory)`)
        of a meta-batch adapted with `num_steps` inner steps (default `num_inner_steps`); θ untouched."""
        with tf.GradientTape() as tape:
            meta_loss, metrics, trajectory = self.meta_objective(
                self.params, episodes, self.num_inner_steps if num_steps is None else num_steps, **options)
        return self.meta_gradients(tape, meta_loss, trajectory, episodes), metrics, self.measure(trajectory)

    def meta_gradients(self, tape, meta_loss, trajectory, episodes):
        """The direction the meta-optimizer descends, by name like `self.params`: MAML's is the
        gradient of the meta-loss, ∇θ L(θ), through the inner loop or not (first order). A learner
        without a differentiable meta-loss computes its own from the trajectory (Reptile's θ − θ')
        and the meta-batch's `data.Episodes` (iMAML's implicit gradient)."""
        del trajectory, episodes
        return tape.gradient(meta_loss, self.params)

    def feature_similarity(self, params, images, trajectory):
        """How far adaptation moved the penultimate features (BOIL's "representation change"):
        per task [T], the mean over images [T, B, 28, 28, 1] of cos(φ(x; θ'_0), φ(x; θ'_S)).

        1 when the inner loop leaves the body alone (ANIL); lower the more it changes it.
        """
        _, context = self.split(params, training=False)
        before, after = (tf.math.l2_normalize(self.net.features(self.network_weights(trajectory.params[step], step,
                                                                                     context), images), -1)
                         for step in (0, len(trajectory.params) - 1))
        return tf.reduce_mean(tf.reduce_sum(before * after, -1), -1)

    def network_weights(self, params, step, context):
        """Every weight of the network by name, [T, ...], at inner step `step`: the task weights
        θ'_step and the network's weights the context holds (ANIL's body, BOIL's head), tiled."""
        del step
        fixed = {**context.get('body', {}), **context.get('head', {})}
        return {**network.tile(fixed, next(iter(params.values())).shape[0]), **params}

    def measure(self, trajectory):
        """What `track` keeps across meta-iterations from a training trajectory, as means over its
        tasks: what the inner rule carries (inner Adam's v), if it carries anything."""
        return {} if self.carried is None else self.inner_rule.measure(trajectory.inner_state)

    def track(self, measured):
        """Moves the inner rule's carried state after the meta-step."""
        if self.carried is not None:
            self.inner_rule.track(self.carried, measured, self.num_inner_steps)

    def state_variables(self):
        """By name: the model's weights, θ's other groups (<group>/<weight>: Meta-SGD's inner_lr/conv1/kernel),
        what is kept across meta-iterations (`carried_variables`) and the meta-optimizer's state."""
        groups = {group: named for group, named in self.params.items() if group != NETWORK} \
            if NETWORK in self.params else {}
        return {**results.named_variables('model', self.model), **named_groups(groups), **self.carried_variables(),
                **results.named_variables('optimizer', self.meta_optimizer)}

    def carried_variables(self):
        """State kept across meta-iterations by checkpoint key: the inner rule's (inner_adam/...)."""
        return {} if self.carried is None else self.inner_rule.carried_variables(self.carried)

    def train_step(self, episodes, **options):
        return self.outer_loop(episodes, self.num_inner_steps, train=True, **options)

    def test_step(self, episodes, num_steps):
        return self.outer_loop(episodes, num_steps, train=False)

    def evaluate(self, episodes, num_steps=None):
        """Adapts to each task with `num_steps` inner steps (default `num_inner_steps`) and scores
        its query set, without touching θ; per-task NumPy metrics."""
        return super().evaluate(episodes, self.num_inner_steps if num_steps is None else num_steps)

    def task_scores(self, episodes, num_steps, n_way):
        """The query logits [T, Q, N] after `num_steps` inner steps, as evaluation adapts (first order)."""
        del n_way  # The head's.
        _, context, query, trajectory = self.adapt_tasks(self.params, episodes, num_steps, True, training=False)
        return self.query_forward(trajectory.params[-1], query, num_steps, context, trajectory, False)

    def adapted_weights(self, episodes, num_steps):
        """Every weight of the network by name, [T, ...], after `num_steps` inner steps on each task's
        support set, as evaluation adapts."""
        _, context, _, trajectory = self.adapt_tasks(self.params, episodes, num_steps, True, training=False)
        return self.network_weights(trajectory.params[-1], num_steps, context)

    def adapt(self, support_images: np.ndarray, support_labels: np.ndarray,
              num_steps: int | None = None) -> keras.Model:
        """A copy of the Keras model with the weights adapted to one task's support set: `predict`'s
        logits for any batch of query images [B, H, W, C] -> [B, N] (batch norm normalises each batch by
        its own moments, as the learner scores a query set, in Keras' inference mode too). Arguments as
        `predict`'s; θ untouched. NotImplementedError for a learner whose query scores a Keras model
        cannot give (MAML++ normalising the query with the support set's moments)."""
        if not self.batch_norm.startswith('transductive'):
            raise NotImplementedError(f'{type(self).__name__}.adapt: its batch norm at evaluation is '
                                      f'{self.batch_norm}, which a Keras model cannot do on a query batch alone; '
                                      f'use predict()')
        episodes, _ = self.one_task(support_images, support_labels)
        adapted = self._adapted_weights(episodes, self.steps(num_steps))
        model = network.with_transductive_batch_norm(self.model)
        variables = network.parameters(model)
        for name, value in adapted.items():
            variables[name].assign(tf.cast(value[0], variables[name].dtype))
        return model


def tensors(params):
    """`params` (variables by name) as tensors: what the inner loop reads but does not adapt."""
    return {name: tf.convert_to_tensor(value) for name, value in params.items()}


def _part(net, weights, adapted):
    """The part of the network's `weights` (by name) that `adapted` names: all of them, or a named group."""
    return weights if adapted == 'all' else net.groups(weights)[adapted]


def _check_choice(argument, value, choices):
    if value not in choices:
        raise ValueError(f'{argument}: {value!r} is not one of {", ".join(map(repr, choices))}')
