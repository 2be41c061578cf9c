"""BOIL, Body Only update in the Inner Loop (Oh, Yoo, Kim & Yun, ICLR 2021).

BOIL is MAML whose inner loop adapts only the body; the head θ_h is frozen during adaptation
and meta-learned in the outer loop alone. With a head that cannot move, a task is fitted by
changing its representation (the paper's "representation change" rather than reuse):

    θ'_b ← θ'_b − α ∇_b L_support(θ'_b, θ_h),   θ'_b = θ_b initially,
    L(θ_b, θ_h) = 1/T Σ_t L_query_t(θ'_{t,b}, θ_h).

boil.py at the top of the repository is its command.
"""

from fewshot.learners.maml import MAML


class BOIL(MAML):
    """MAML adapting only the body; the head is read, not adapted, by the inner loop:
    `MAML(..., adapted='body')`."""

    def __init__(self, net, model=None, inner_lr=0.4, num_inner_steps=5, first_order=True, meta_optimizer=None,
                 **variant):
        """Arguments as for `MAML`, whose other variant (`inner_rule`) it takes too."""
        super().__init__(net, model, inner_lr, num_inner_steps, first_order, meta_optimizer, adapted='body', **variant)
