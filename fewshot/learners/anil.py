"""ANIL, Almost No Inner Loop (Raghu, Raghu, Bengio & Vinyals, ICLR 2020).

ANIL is MAML whose inner loop adapts only the head; the body θ_b is meta-learned in the outer
loop alone. Since the body does not change during adaptation, the features of a task's support
and query sets are computed once, not once per inner step: that is ANIL's speed.

    θ'_h ← θ'_h − α ∇_h L_support(θ'_h; φ(x; θ_b)),   θ'_h = θ_h initially,
    L(θ_b, θ_h) = 1/T Σ_t L_query_t(θ'_{t,h}; φ(x; θ_b)).

anil.py at the top of the repository is its command.
"""

from fewshot.learners.maml import MAML


class ANIL(MAML):
    """MAML adapting only the head, over body features computed once per set (see the module docstring):
    `MAML(..., adapted='head')`."""

    def __init__(self, net, model=None, inner_lr=0.4, num_inner_steps=5, first_order=True, meta_optimizer=None,
                 **variant):
        """Arguments as for `MAML`, whose other variants (`inner_rule`, `head_start`) it takes too."""
        super().__init__(net, model, inner_lr, num_inner_steps, first_order, meta_optimizer, adapted='head', **variant)
