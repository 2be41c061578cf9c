"""MAML++ (Antoniou, Edwards & Storkey, "How to train your MAML", ICLR 2019).

    python maml_plusplus.py                                # all six fixes, 5-way 5-shot Omniglot
    python maml_plusplus.py --msl=false --lslr=false       # an ablation: one flag per fix
    python maml_plusplus.py --eval_batch_norm transductive # evaluate with batch moments, as MAML does

The learner is `MAMLPlusPlus` (fewshot/learners/maml_plusplus.py, whose docstring gives the six
fixes and why evaluation's batch norm is 'support' by default). Each fix is a flag here, on by
default: --msl (--msl_iterations), --da (--da_iterations), --bnrs, --bnwb, --lslr, and
--cosine_annealing from --meta_lr to --min_meta_lr; --eval_batch_norm chooses evaluation's batch
norm. The other flags are MAML's (fewshot/cli/gradient.py).
"""

import dataclasses
import sys

import fewshot  # noqa: F401  First: it sets up TensorFlow's CPU backend, read as TensorFlow loads.
import keras
from absl import flags

from fewshot import cli
from fewshot.cli import commands, config, gradient, strategy
from fewshot.learners.maml_plusplus import (  # noqa: F401  (visible from maml_plusplus)
    BATCH_NORM_MODES, INNER_LR, PER_STEP, PER_STEP_FILE, RUNNING, Fixes, MAMLPlusPlus, cosine_meta_lr, msl_weights)

flags.adopt_module_key_flags(config)
flags.adopt_module_key_flags(strategy)  # --strategy and --cpu_replicas.
for _name in ('inner_lr', 'num_inner_steps', 'num_eval_inner_steps', 'meta_lr', 'backbone'):
    flags.declare_key_flag(_name)  # MAML's flags that mean the same here.
flags.DEFINE_boolean('msl', True, 'Multi-step loss (MSL).')
flags.DEFINE_integer('msl_iterations', 100, 'MSL: meta-iterations over which the step weights move '
                     'from uniform to the last step only; after them the loss is the last step\'s.',
                     lower_bound=1)
flags.DEFINE_boolean('da', True, 'Derivative-order annealing (DA); --da=false trains second order '
                     'throughout.')
flags.DEFINE_integer('da_iterations', 500, 'DA: first-order meta-iterations before switching to '
                     'second order (the paper: a third of training; here half, as second order '
                     'costs 2.6x first order on a CPU).', lower_bound=0)
flags.DEFINE_boolean('bnrs', True, 'Keep per-step batch-norm running statistics (BNRS).')
flags.DEFINE_enum('eval_batch_norm', 'support', ['support', 'running', 'transductive'],
                  'Batch norm at evaluation: the support set\'s moments at each step (non-transductive), '
                  'the per-step running statistics (non-transductive, needs --bnrs), or the moments of '
                  'each evaluated batch (transductive, as MAML).')
flags.DEFINE_boolean('bnwb', True, 'Per-step batch-norm weights and biases (BNWB).')
flags.DEFINE_boolean('lslr', True, 'Learned per-layer, per-step inner learning rates (LSLR), '
                     'initialised at --inner_lr.')
flags.DEFINE_boolean('cosine_annealing', True, 'Cosine annealing of the meta learning rate (CA) '
                     'over --num_iterations.')
flags.DEFINE_float('min_meta_lr', 1e-5, 'CA: the meta learning rate at the last iteration.',
                   lower_bound=0.0)
flags.register_multi_flags_validator(
    ['num_eval_inner_steps', 'num_inner_steps'],
    lambda f: f['num_eval_inner_steps'] <= f['num_inner_steps'],
    message='--num_eval_inner_steps must not exceed --num_inner_steps: MAML++ learns per-step '
            'learning rates and batch norm only for the steps it trains')
flags.register_multi_flags_validator(
    ['min_meta_lr', 'meta_lr', 'cosine_annealing'],
    lambda f: not f['cosine_annealing'] or f['min_meta_lr'] <= f['meta_lr'],
    message='--min_meta_lr must not exceed --meta_lr: cosine annealing takes the meta learning rate '
            'from --meta_lr down to --min_meta_lr')
flags.register_multi_flags_validator(
    ['eval_batch_norm', 'bnrs'], lambda f: f['eval_batch_norm'] != 'running' or f['bnrs'],
    message='--eval_batch_norm running needs the running statistics of --bnrs')
FLAGS = flags.FLAGS


def fixes_from_flags():
    """The fixes as the flags of the same names say."""
    return Fixes(**{field.name: FLAGS[field.name].value for field in dataclasses.fields(Fixes)})


def build_learner(net, first_order):
    """MAML++ as the flags say, meta-trained by Adam (at a cosine-annealed rate with CA)."""
    del first_order  # DA chooses the order, iteration by iteration.
    meta_lr = (cosine_meta_lr(FLAGS.meta_lr, FLAGS.min_meta_lr, FLAGS.num_iterations)
               if FLAGS.cosine_annealing else FLAGS.meta_lr)
    return MAMLPlusPlus(net, inner_lr=FLAGS.inner_lr, num_inner_steps=FLAGS.num_inner_steps,
                        meta_optimizer=keras.optimizers.Adam(meta_lr), fixes=fixes_from_flags())


def name_suffix():
    """'_no-msl_no-ca...' for every fix turned off, and the evaluation's batch norm unless 'support':
    maml++_5way5shot_5steps_no-da_eval-transductive_seed0."""
    fixes = fixes_from_flags()
    off = [name for name in ('msl', 'da', 'bnrs', 'bnwb', 'lslr') if not getattr(fixes, name)]
    off += [] if FLAGS.cosine_annealing else ['ca']
    suffix = ''.join(f'_no-{name}' for name in off)
    return suffix + (f'_eval-{fixes.eval_batch_norm}' if fixes.eval_batch_norm != 'support' else '')


def fixed_on_resume():
    """--num_iterations with cosine annealing, which spreads over them: a longer resumed run would change it."""
    return ('num_iterations',) if FLAGS.cosine_annealing else ()


COMMAND = commands.Command(
    'maml_plusplus', MAMLPlusPlus, 'MAML++', build_learner,
    learner_flags=('inner_lr', 'num_inner_steps', 'num_eval_inner_steps', 'meta_lr', 'backbone'),
    eval_inner_steps=gradient.eval_inner_steps, fixed_on_resume=fixed_on_resume, prefix='maml++',
    name_suffix=name_suffix, batch_norm=lambda: BATCH_NORM_MODES[FLAGS.eval_batch_norm])


def run():
    """The command, as `python maml_plusplus.py` and `fewshot maml_plusplus` run it."""
    cli.run(commands.main_for(COMMAND, sys.modules[__name__]))
