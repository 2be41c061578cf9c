"""MAML with one learned inner learning rate per layer: between MAML's one α and Meta-SGD's α per
weight, MAML++'s LSLR without its rates per step (Antoniou, Edwards & Storkey, ICLR 2019, section 4).

    θ'_{s+1} = θ'_s − α_l ∇_l L_support(θ'_s)   for every weight tensor l,   α_l = inner_lr initially,

and (θ, α) are meta-learned together, first order by default.

layerwise_lr.py at the top of the repository is its command.
"""

from fewshot.learners import inner
from fewshot.learners.maml import MAML


class LayerwiseLR(MAML):
    """MAML with a learned rate per weight tensor: `MAML(..., inner_rule=inner.LearnedRates('layer'))`."""

    def __init__(self, net, model=None, inner_lr=0.4, num_inner_steps=5, first_order=True, meta_optimizer=None,
                 **variant):
        """Arguments as for `MAML`, whose other variants (`adapted`, `head_start`) it takes too."""
        super().__init__(net, model, inner_lr, num_inner_steps, first_order, meta_optimizer,
                         inner_rule=inner.LearnedRates('layer'), **variant)
