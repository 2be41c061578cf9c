"""Learners side by side: the same seed, tasks and budget for every learner.

    python compare.py                                      # maml,anil,boil,meta_sgd,proto_maml at 5way1shot,5way5shot
    python compare.py --algorithms maml,boil --settings 5way5shot --backbones conv4,resnet
    python compare.py --budget_minutes 10                  # equal training time instead of equal iterations
    python compare.py --train=false                        # redraw and re-tabulate from finished runs
    python compare.py -- --meta_batch_size=16              # flags after -- go to every learner

Each algorithm is a learner command (anil is anil.py; a new learner's script is
comparable as soon as it defines its `commands.Command`). For every backbone, setting and algorithm
it trains that command with --seed in a folder of its own, <results_dir>/compare/runs/, under the
name the command itself would choose (anil_fo_5way5shot_5steps_seed0, ...; with --budget_minutes M,
..._budgetMmin), so it never takes the folder of a run started by hand. A finished run is reused
only if its command confirms it was trained with the same flags (it says "reusing ..."; a run
trained otherwise is one error line naming the flag), and a stopped one is resumed, so the command
can be stopped and started again. Every run is validated and meta-tested on the same fixed tasks
(--eval_seed), which is checked by the tasks' checksums. Equal iterations (--num_iterations) is the default; with
--budget_minutes every run trains until its training time passes the budget (at the next
validation), --num_iterations being the most it trains. Wall-clock budgets depend on the machine
and its load: compare only runs trained on one machine, one at a time.

The table, the figures and what they show are described in fewshot/comparison.py; they go to
--output_dir (default <results_dir>/compare), where report.py finds them.
"""

import os

from absl import flags

from fewshot import cli, comparison, errors, network, results
from fewshot.cli import commands, gradient, runs  # noqa: F401  gradient: --first_order, passed to the learners with one

flags.DEFINE_list('backbones', ['conv4'], 'Networks to train every learner with (maml.py --backbone).')
flags.DEFINE_float('budget_minutes', 0, 'Equal training time instead of equal iterations: every run trains '
                   'for this many minutes (0: every run trains --num_iterations).', lower_bound=0)
for _name in ('algorithms', 'settings', 'train', 'output_dir'):
    flags.declare_key_flag(_name)  # The tools' flags (fewshot/cli/runs.py).
for _name in ('seed', 'num_iterations', 'results_dir', 'first_order'):
    flags.declare_key_flag(_name)  # The same for every run.
FLAGS = flags.FLAGS

# Flags compare.py sets for every run, or that run folders are named after: after -- they
# would train something other than what the folder's name says.
RESERVED_FLAGS = frozenset({'seed', 'n_way', 'k_shot', 'num_iterations', 'results_dir', 'run_name', 'resume',
                            'overwrite', 'num_inner_steps', 'first_order', 'backbone', 'time_budget_minutes'})


class PlannedRun:
    """One learner at one setting and backbone: its command, its flags and its run folder."""

    def __init__(self, command, setting, backbone):
        self.command, self.setting, self.backbone = command, setting, backbone
        n_way, k_shot = runs.parse_setting(setting)
        name = command.run_name(n_way, k_shot, FLAGS.seed, backbone, FLAGS.first_order)
        if FLAGS.budget_minutes:
            name += f'_budget{FLAGS.budget_minutes:g}min'
        self.folder = runs.tool_folder(FLAGS.results_dir, 'compare', name)
        self.arguments = [f'--seed={FLAGS.seed}', f'--n_way={n_way}', f'--k_shot={k_shot}',
                          f'--num_iterations={FLAGS.num_iterations}', f'--backbone={backbone}',
                          f'--time_budget_minutes={FLAGS.budget_minutes}']
        if command.takes('first_order'):
            self.arguments.append(f'--first_order={FLAGS.first_order}')

    def finished(self):
        """True if the run finished (as many iterations as asked, unless under a time budget); RunError if
        its folder holds another run (`runs.check_run_is`)."""
        return runs.finished(self.folder, self.num_iterations(), *self.identity())

    def identity(self):
        """(algorithm, {flag: value}) that the run must have recorded: what its folder is named after."""
        n_way, k_shot = runs.parse_setting(self.setting)
        flag_values = {'n_way': n_way, 'k_shot': k_shot, 'seed': FLAGS.seed, 'backbone': self.backbone,
                       'time_budget_minutes': FLAGS.budget_minutes}
        if self.command.takes('num_inner_steps'):
            flag_values['num_inner_steps'] = self.command.default('num_inner_steps')
        return self.command.algorithm_name(FLAGS.first_order), flag_values

    def num_iterations(self):
        return None if FLAGS.budget_minutes else FLAGS.num_iterations

    def what(self):
        return f'{self.command.name} {self.setting} {self.backbone}'

    def train(self, passed_flags):
        """Reuses the finished run if it was trained with these flags (RunError if otherwise), or trains it."""
        arguments, script = [*self.arguments, *passed_flags], self.command.script
        if not runs.reusable(script, self.folder, arguments, self.what(), 'compare.py', self.num_iterations(),
                             *self.identity()):
            runs.train(script, self.folder, arguments, self.what(), 'compare.py')


def plan():
    """Every run of the comparison, backbone by backbone, setting by setting."""
    learners = [commands.find(name, '--algorithms') for name in FLAGS.algorithms]
    if not learners:
        raise errors.FlagError('--algorithms: name at least one learner, e.g. maml,anil')
    for backbone in FLAGS.backbones:
        if backbone not in network.BACKBONES:
            raise errors.FlagError(f'--backbones: {backbone!r} is not one of {", ".join(network.BACKBONES)}')
    return [PlannedRun(command, setting, backbone) for backbone in FLAGS.backbones
            for setting in FLAGS.settings for command in learners]


def main(argv):
    passed_flags = argv[1:]  # What followed "--".
    planned = plan()
    output_dir = FLAGS.output_dir or os.path.join(FLAGS.results_dir, 'compare')
    results.check_writable(output_dir, '--output_dir')
    if FLAGS.train:
        runs.check_passed_flags(passed_flags, RESERVED_FLAGS, sorted({run.command.script for run in planned}),
                                'compare.py')
        results.check_writable(FLAGS.results_dir, '--results_dir')
        for run in planned:
            run.train(passed_flags)
    elif passed_flags:
        raise errors.FlagError(f'flags after -- ({" ".join(passed_flags)}) are for training; '
                               'with --train=false nothing is trained')
    missing = [run.folder for run in planned if not run.finished()]
    if missing:
        raise runs.missing_runs_error(missing, 'compare.py')
    rows = comparison.write([comparison.load_run(run.folder) for run in planned], output_dir)
    print(comparison.markdown_table(rows))
    print(f'table and figures in {output_dir}')


def run():
    """The command, as `python compare.py` and `fewshot compare` run it."""
    FLAGS.set_default('settings', ['5way1shot', '5way5shot'])
    cli.run(main, takes_arguments=True)
