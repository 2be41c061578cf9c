"""The learners, one module each, every one a `fewshot.learner.Learner` built from keyword
arguments alone (a network, and the algorithm's hyperparameters, with the papers' defaults):

    maml           MAML, first order or exact second order: the core the family extends
    anil, boil     ANIL (only the head adapts), BOIL (only the body)
    meta_sgd       Meta-SGD: a learned inner learning rate per weight
    proto_maml     Proto-MAML: the head starts at the support set's prototypes
    reptile        Reptile: θ moves toward the task-adapted weights
    imaml          iMAML: a regularised inner problem, the implicit meta-gradient by conjugate gradient
    maml_plusplus  MAML++: the six fixes of "How to train your MAML"
    protonet       Prototypical Networks: no inner loop, the nearest class mean
    relationnet    Relation Networks: a learned module scores (class, query) pairs
    policy_maml    MAML of a Gaussian policy by policy gradient (the paper's 2D navigation)
    transfer       the transfer baseline: a pretrained classifier, a new head fitted per task

    from fewshot import network
    from fewshot.learners import MAML
    learner = MAML(network.ConvNet(n_way=5), inner_lr=0.4, num_inner_steps=5)

The top-level scripts of the same names are their commands (flags, run folders).
"""

from fewshot.learners.anil import ANIL
from fewshot.learners.boil import BOIL
from fewshot.learners.imaml import IMAML
from fewshot.learners.maml import MAML
from fewshot.learners.maml_plusplus import Fixes, MAMLPlusPlus
from fewshot.learners.meta_sgd import MetaSGD
from fewshot.learners.proto_maml import ProtoMAML
from fewshot.learners.protonet import PrototypicalNetwork
from fewshot.learners.relationnet import RelationNetwork
from fewshot.learners.reptile import Reptile

__all__ = ['ANIL', 'BOIL', 'IMAML', 'MAML', 'Fixes', 'MAMLPlusPlus', 'MetaSGD', 'ProtoMAML', 'PrototypicalNetwork',
           'RelationNetwork', 'Reptile']
