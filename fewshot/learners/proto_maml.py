"""Proto-MAML (Triantafillou et al., "Meta-Dataset", ICLR 2020): MAML whose head starts at the prototypes.

Every task's head is initialised from its support set, as the Prototypical Network's
equivalent linear layer: with c_k the mean body feature of class k's support images,

    W_k = 2 c_k,   b_k = −‖c_k‖²,

then the whole network (body and that head) is adapted like MAML. The meta-parameters are the
body's alone: the head is a function of them and of the support set. Second order differentiates
through that initialisation; first order treats the initial head as a constant, as it treats the
inner-loop gradients. The run's model.keras holds the body; its head is unused (every task makes
its own).

proto_maml.py at the top of the repository is its command.
"""

from fewshot.learners.maml import MAML


class ProtoMAML(MAML):
    """MAML with a head computed from each task's support prototypes (see the module docstring):
    `MAML(..., head_start='prototypes')`."""

    def __init__(self, net, model=None, inner_lr=0.4, num_inner_steps=5, first_order=True, meta_optimizer=None,
                 **variant):
        """Arguments as for `MAML`, whose other variants (`adapted`, `inner_rule`) it takes too; the
        meta-parameters are the body's weights alone."""
        super().__init__(net, model, inner_lr, num_inner_steps, first_order, meta_optimizer, head_start='prototypes',
                         **variant)
