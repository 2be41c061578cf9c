"""BOIL, Body Only update in the Inner Loop (Oh, Yoo, Kim & Yun, ICLR 2021).

BOIL is MAML whose inner loop adapts only the body; the head θ_h is frozen during adaptation
and meta-learned in the outer loop alone. With a head that cannot move, a task is fitted by
changing its representation (the paper's "representation change" rather than reuse):

    θ'_b ← θ'_b − α ∇_b L_support(θ'_b, θ_h),   θ'_b = θ_b initially,
    L(θ_b, θ_h) = 1/T Σ_t L_query_t(θ'_{t,b}, θ_h).

boil.py at the top of the repository is its command.
"""

from fewshot import network
from fewshot.learners.maml import MAML, tensors


class BOIL(MAML):
    """MAML adapting only the body; the head is read, not adapted, by the inner loop."""

    def split(self, params, training):
        """The body adapts; the head is context (the network's groups, `network.LinearHead.groups`)."""
        del training
        groups = self.net.groups(params)
        return groups['body'], tensors(groups['head'])

    def forward(self, params, images, step, head):
        """Logits [T, B, N] of images [T, B, 28, 28, 1] under the adapted body and the shared head."""
        del step
        return self.net.forward({**params, **network.tile(head, images.shape[0])}, images), None
