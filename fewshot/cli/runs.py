"""Runs of other commands, trained in child processes by the tools that compare them
(stability.py, compare.py): a finished run is reused, a stopped one resumed.

A child is a command (one of the package's, as `scripts.argv` runs it, or a learner script of one's own
given by its path), run with the same Python and the same `fewshot` package as the tool, given its flags
explicitly; its run folder's name says what trained in it, so flags that name the folder are the tool's
own and may not be passed on after `--`. A tool keeps its runs in a folder of its own
(<results_dir>/<tool>/runs/), never in the folders a user's own runs go to, and reuses a
finished run only if the child, asked with --check_reuse, confirms that it was trained by the
same command with the same flags.
"""

import os
import re
import subprocess

from absl import flags

from fewshot import errors, results
from fewshot.cli import scripts

# The flags of the tools that run several learners, defined once (each tool declares those it uses
# and may set its own default in its __main__).
flags.DEFINE_list('algorithms', ['maml', 'anil', 'boil', 'meta_sgd', 'proto_maml'],
                  'Learner commands: those that define a commands.Command (maml, anil, boil, '
                  'meta_sgd, proto_maml, ...), or the path of such a script of your own (mine/cosine.py).')
flags.DEFINE_list('settings', ['5way5shot', '5way1shot'], 'Task settings as <N>way<K>shot.')
flags.DEFINE_boolean('train', True, 'Train missing runs and resume stopped ones; --train=false only '
                     'tabulates and draws, and names any run that is not finished.')
flags.DEFINE_string('output_dir', '', "Where the tables and figures go (default: a folder of the tool's "
                    'name under --results_dir).')


def parse_setting(setting, flag='--settings'):
    """'5way1shot' -> (5, 1); FlagError naming `flag` otherwise."""
    match = re.fullmatch(r'(\d+)way(\d+)shot', setting)
    if not match or int(match[1]) < 2 or int(match[2]) < 1:
        raise errors.FlagError(f'{flag}: {setting!r} is not of the form <N>way<K>shot with N >= 2 '
                               'and K >= 1, e.g. 5way1shot')
    return int(match[1]), int(match[2])


def check_passed_flags(passed, reserved, children, tool):
    """FlagError naming the first flag of `passed` (what followed `--`) that is in `reserved` (also
    as -flag or --no<flag>), then any flag one of `children` (the commands the tool runs) would refuse:
    they check them themselves with absl's --only_check_args, so a bad flag fails now and not after
    hours of training.

    tool: the command passing the flags on, for the message.
    """
    for argument in passed:
        if not argument.startswith('-') or re.fullmatch(r'-[\d.e+-]*', argument):
            continue  # A flag's value, maybe a negative number.
        name = argument.lstrip('-').split('=')[0]
        if name.startswith('no') and name[2:] in reserved:
            name = name[2:]
        if name in reserved:
            raise errors.FlagError(f'--{name} cannot follow --: {tool} sets it for every run or names '
                                   f'the run folders after it (its own flags: python {tool} --help)')
    if not passed:
        return
    for script in children:
        checked = subprocess.run([*scripts.argv(script), '--only_check_args', *passed],
                                 capture_output=True, text=True, env=scripts.environment())
        if checked.returncode != 0:
            reason = [line for line in checked.stderr.splitlines() if line.startswith('error: ')]
            raise errors.FlagError(f'after --, for {os.path.basename(script)}: '
                                   f'{reason[-1][len("error: "):] if reason else checked.stderr.strip()[-300:]}')


def tool_folder(results_dir, tool, run_name):
    """Where the tool `tool` (e.g. 'compare') keeps its run `run_name`: <results_dir>/<tool>/runs/<run_name>."""
    return os.path.join(results_dir, tool, 'runs', run_name)


def missing_runs_error(folders, tool):
    """The RunError for runs a tool needs but does not have finished; it names a run an older version kept
    directly under the results folder, where it is no longer looked for."""
    older = [os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(folder))), os.path.basename(folder))
             for folder in folders]
    moved = [f'{old} -> {new}' for old, new in zip(older, folders) if results.read_summary(old) is not None]
    hint = (f'; runs an older version kept elsewhere are reused only where {tool} keeps them now: move '
            f'{", ".join(moved)}' if moved else '')
    return results.RunError(f'unfinished or missing runs: {", ".join(folders)}; run python {tool} (with --train) '
                            f'to train them{hint}')


def finished(folder, num_iterations=None, algorithm=None, flag_values=None):
    """True if `folder` holds a finished run; RunError if it finished other than `num_iterations`
    iterations (None: any number) or is not a run of what was asked (`check_run_is`)."""
    summary = results.read_summary(folder)
    if summary is None:
        return False
    check_run_is(folder, algorithm, flag_values or {})
    if num_iterations is not None and summary['iterations'] != num_iterations:
        raise results.RunError(f'{folder} finished {summary["iterations"]} iterations, not {num_iterations}; '
                               'move it away or choose another --results_dir')
    return True


def check_run_is(folder, algorithm, flag_values):
    """RunError unless the run in `folder` is one of `algorithm` (None: any) and recorded each of
    `flag_values` (flag -> value) as given: a tool finds runs by folder name, and a run copied or
    moved there from elsewhere would otherwise be shown as the one asked for. A flag the run did
    not record (older than it) is not compared."""
    hyperparameters = results.read_hyperparameters(folder)
    recorded = hyperparameters['flags']
    differ = [f'{name} {recorded[name]!r}, not {value!r}' for name, value in flag_values.items()
              if name in recorded and recorded[name] != value]
    if algorithm is not None and hyperparameters.get('algorithm') != algorithm:
        differ.insert(0, f'a run of {hyperparameters.get("algorithm")}, not of {algorithm}')
    if differ:
        raise results.RunError(f'{folder} is not the run asked for ({"; ".join(differ)}): it was copied or moved '
                               'there; move it away or choose another --results_dir')


def reusable(script, folder, arguments, what, tool, num_iterations=None, algorithm=None, flag_values=None):
    """True, saying so, if `folder` holds a finished run of `script` trained with `arguments` (and
    `num_iterations`, `algorithm` and `flag_values` as `finished` checks them); False if it holds no
    finished run; RunError naming what differs otherwise (another learner, another value of a flag
    that changes what is computed).

    The child itself judges, as it would on --resume (`experiment.run`'s --check_reuse), so every
    flag counts, defaults included, not only those passed here.
    """
    if not finished(folder, num_iterations, algorithm, flag_values):
        return False
    checked = subprocess.run(_command(script, folder, arguments) + ['--resume', '--check_reuse'],
                             capture_output=True, text=True, env=scripts.environment())
    if checked.returncode != 0:
        reason = [line for line in checked.stderr.splitlines() if line.startswith('error: ')]
        raise results.RunError(f'{folder} cannot be reused for {what}: '
                               f'{reason[-1][len("error: "):] if reason else checked.stderr.strip()[-300:]}')
    print(f'{tool}: reusing {folder} ({what}: finished, the same command and flags)', flush=True)
    return True


def _command(script, folder, arguments):
    return [*scripts.argv(script), *arguments,
            f'--results_dir={os.path.dirname(folder) or "."}', f'--run_name={os.path.basename(folder)}']


def train(script, folder, arguments, what, tool):
    """Runs (or, if `folder` exists, resumes) `script` into `folder` in a child process.

    arguments: the child's flags, but for --results_dir, --run_name and --resume.
    what: the run in words, for messages; tool: the command training it.
    """
    command = _command(script, folder, arguments)
    if os.path.exists(folder):
        command.append('--resume')
    print(f'{tool}: training {what} -> {folder}', flush=True)
    status = subprocess.run(command, env=scripts.environment()).returncode
    if status != 0:
        raise results.RunError(f'training {what} stopped (exit status {status}); its message is above, '
                               f'and python {tool} resumes it')
