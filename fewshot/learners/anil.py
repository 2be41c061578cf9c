"""ANIL, Almost No Inner Loop (Raghu, Raghu, Bengio & Vinyals, ICLR 2020).

ANIL is MAML whose inner loop adapts only the head; the body θ_b is meta-learned in the outer
loop alone. Since the body does not change during adaptation, the features of a task's support
and query sets are computed once, not once per inner step: that is ANIL's speed.

    θ'_h ← θ'_h − α ∇_h L_support(θ'_h; φ(x; θ_b)),   θ'_h = θ_h initially,
    L(θ_b, θ_h) = 1/T Σ_t L_query_t(θ'_{t,h}; φ(x; θ_b)).

anil.py at the top of the repository is its command.
"""

from fewshot import network
from fewshot.learners.maml import MAML, tensors


class ANIL(MAML):
    """MAML adapting only the head, over body features computed once per set (see the module docstring)."""

    def split(self, params, training):
        """The head adapts; the body is context (the network's groups, `network.LinearHead.groups`)."""
        del training
        groups = self.net.groups(params)
        return groups['head'], tensors(groups['body'])

    def represent(self, images, body):
        """The body's features [T, B, F] of images [T, B, 28, 28, 1] (batch norm on each task's batch)."""
        return self.net.features(network.tile(body, images.shape[0]), images)

    def forward(self, params, features, step, context):
        """Logits [T, B, N] of the head θ'_h on features [T, B, F]."""
        del step, context
        return self.net.head_outputs(params, features), None
