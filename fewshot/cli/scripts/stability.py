"""MAML vs MAML++ training stability: the same seeds, tasks and iterations for both.

    python stability.py                                    # seeds 0,1,2 at 5-way 5-shot and 5-way 1-shot
    python stability.py --settings 5way5shot --seeds 0,1,2,3
    python stability.py --train=false                      # redraw and re-tabulate from finished runs
    python stability.py -- --meta_batch_size=16            # flags after -- go to both scripts
                                                           # (not those that name the run folders)

For every setting and seed it runs `maml.py` and `maml_plusplus.py` at their defaults
(each in its own run folder under <results_dir>/stability/runs/, named as the scripts name
them, apart from the runs a user starts by hand); a finished run is reused only if its script
confirms it was trained with the same flags, and a stopped one is resumed, so the command can
be stopped and started again. Then it writes to --output_dir (default <results_dir>/stability), per setting:
    val_maml_<setting>.png      MAML's validation accuracy over training, every seed
    val_maml++_<setting>.png    the same for MAML++
    val_overlay_<setting>.png   both methods, mean ± std over seeds
and, for all settings, stability.csv / stability.md (one row per method and setting)
and runs.csv (one row per run).

Stability figures, from the post-adaptation validation accuracy of each run:
    final val std      standard deviation across seeds of the final validation accuracy
    mean |change|      mean absolute change between consecutive validations (mean over seeds),
                       over the whole run and over its second half
    largest drop       the largest fall between consecutive validations (over all seeds)
    meta-test          mean over seeds of the final meta-test accuracy (600 tasks each, with
                       the mean of the seeds' 95% confidence half-widths) and its std over seeds
"""

import os

from absl import flags

from fewshot import cli, errors, results
from fewshot.cli import config, runs
from fewshot.stability import RUNS_FILE, draw, load_runs, markdown_table, stability_figures

METHODS = {  # method -> (script, run-folder name as the script derives it from its flags)
    'FO-MAML': ('maml.py', 'maml_fo_{setting}_5steps_seed{seed}'),
    'MAML++': ('maml_plusplus.py', 'maml++_{setting}_5steps{evaluation}_seed{seed}'),
}

# Flags stability.py sets for every run, or that the scripts derive the run folder's name
# from: after -- they would train something other than what the folder's name says.
RESERVED_FLAGS = frozenset({'seed', 'n_way', 'k_shot', 'num_iterations', 'results_dir', 'run_name',
                            'resume', 'overwrite', 'num_inner_steps', 'first_order',
                            'msl', 'da', 'bnrs', 'bnwb', 'lslr', 'eval_batch_norm'})

flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds; every method trains once per seed and setting.')
flags.DEFINE_enum('maml_plusplus_eval_batch_norm', 'transductive', ['transductive', 'support', 'running'],
                  "MAML++'s batch norm at validation and test (maml_plusplus.py --eval_batch_norm). The default, "
                  "'transductive', is how FO-MAML (maml.py) always evaluates, so the two are compared alike; "
                  "'support' and 'running' are MAML++'s non-transductive modes, and the table then says the "
                  'two were evaluated differently.')
for _name in ('settings', 'train', 'output_dir'):
    flags.declare_key_flag(_name)  # The tools' flags (fewshot/cli/runs.py): the assignment's setting and a harder one.
for _name in ('num_iterations', 'results_dir'):
    flags.declare_key_flag(_name)  # config's: iterations of every run, where the run folders are.
FLAGS = flags.FLAGS


def parse_seeds(seeds):
    """['0', '1'] -> [0, 1]; FlagError naming the flag unless each is a seed the scripts accept."""
    try:
        parsed = [int(seed) for seed in seeds]
    except ValueError:
        raise errors.FlagError(f'--seeds: {",".join(seeds)} is not a list of whole numbers') from None
    if not parsed or not all(0 <= seed <= config.MAX_SEED for seed in parsed):
        raise errors.FlagError(f'--seeds: {",".join(seeds)}: each must be between 0 and {config.MAX_SEED}')
    return parsed


def check_script_flags(script_flags):
    """FlagError for a flag after -- that stability.py reserves or that a script would refuse."""
    runs.check_passed_flags(script_flags, RESERVED_FLAGS, [script for script, _ in METHODS.values()],
                            'stability.py')


def run_folder(results_dir, method, setting, seed, eval_batch_norm='transductive'):
    evaluation = '' if eval_batch_norm == 'support' else f'_eval-{eval_batch_norm}'  # As maml_plusplus.py names it.
    return runs.tool_folder(results_dir, 'stability',
                            METHODS[method][1].format(setting=setting, seed=seed, evaluation=evaluation))


def identity(method, setting, seed, eval_batch_norm):
    """(algorithm, {flag: value}) that the run of `method` at `setting` and `seed` must have recorded:
    what its folder is named after (`runs.check_run_is`)."""
    n_way, k_shot = runs.parse_setting(setting)
    flag_values = {'n_way': n_way, 'k_shot': k_shot, 'seed': seed}
    if method == 'MAML++':
        flag_values['eval_batch_norm'] = eval_batch_norm
    return method, flag_values


def train(method, setting, seed, script_flags=()):
    """Reuses (if trained with these flags), resumes or runs one method's script for one setting and
    seed, in a child process.

    script_flags: further flags for the script, none of RESERVED_FLAGS (`check_script_flags`).
    """
    n_way, k_shot = runs.parse_setting(setting)
    evaluation = FLAGS.maml_plusplus_eval_batch_norm
    script, folder = METHODS[method][0], run_folder(FLAGS.results_dir, method, setting, seed, evaluation)
    arguments = [f'--seed={seed}', f'--n_way={n_way}', f'--k_shot={k_shot}',
                 f'--num_iterations={FLAGS.num_iterations}', *script_flags]
    if method == 'MAML++':
        arguments.append(f'--eval_batch_norm={evaluation}')
    what = f'{method} {setting} seed {seed}'
    if not runs.reusable(script, folder, arguments, what, 'stability.py', FLAGS.num_iterations,
                         *identity(method, setting, seed, evaluation)):
        runs.train(script, folder, arguments, what, 'stability.py')


def compare(results_dir, output_dir, settings, seeds, eval_batch_norm='transductive'):
    """Draws the figures and writes the tables from finished runs; returns the table rows.

    RunError naming every run that is missing or unfinished.
    """
    folders = {(method, setting, seed): run_folder(results_dir, method, setting, seed, eval_batch_norm)
               for setting in settings for method in METHODS for seed in seeds}
    missing = [folder for (method, setting, seed), folder in folders.items()
               if not runs.finished(folder, None, *identity(method, setting, seed, eval_batch_norm))]
    if missing:
        raise runs.missing_runs_error(missing, 'stability.py')
    loaded = load_runs(folders)
    os.makedirs(output_dir, exist_ok=True)
    draw(loaded, output_dir)
    table = [{'setting': setting, 'method': method,
              **stability_figures({seed: loaded[method, setting, seed] for seed in seeds})}
             for setting in settings for method in METHODS]
    per_run = [{'setting': setting, 'method': method, 'seed': seed, 'final_val': run['val'][-1],
                'test': run['test'], 'test_ci95': run['test_ci95'], 'training_minutes': run['seconds'] / 60,
                'folder': folders[method, setting, seed]} for (method, setting, seed), run in loaded.items()]
    results.write_csv(os.path.join(output_dir, 'stability.csv'), table)
    results.write_csv(os.path.join(output_dir, RUNS_FILE), per_run)
    results.atomic_write(os.path.join(output_dir, 'stability.md'),
                         lambda f: f.write(markdown_table(table).encode()))
    return table


def main(argv):
    script_flags = argv[1:]  # What followed "--".
    for setting in FLAGS.settings:
        runs.parse_setting(setting)
    seeds = parse_seeds(FLAGS.seeds)
    output_dir = FLAGS.output_dir or os.path.join(FLAGS.results_dir, 'stability')
    results.check_writable(output_dir, '--output_dir')
    if FLAGS.train:
        check_script_flags(script_flags)
        results.check_writable(FLAGS.results_dir, '--results_dir')
        for setting in FLAGS.settings:
            for seed in seeds:
                for method in METHODS:
                    train(method, setting, seed, script_flags)
    elif script_flags:
        raise errors.FlagError(f'flags after -- ({" ".join(script_flags)}) are for training; '
                               'with --train=false nothing is trained')
    table = compare(FLAGS.results_dir, output_dir, FLAGS.settings, seeds, FLAGS.maml_plusplus_eval_batch_norm)
    print(markdown_table(table))
    print(f'figures and tables in {output_dir}')


def run():
    """The command, as `python stability.py` and `fewshot stability` run it."""
    cli.run(main, takes_arguments=True)
