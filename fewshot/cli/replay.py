"""Running a recorded run again: its command with the flags it recorded, in a scratch copy of its folder.

Tools that re-score a run (reference.py --evaluate, cross_domain.py) resume a copy of it with the flags
its hyperparameters.json holds, so that the learner, network and tasks are exactly the run's, and add
only what the re-scoring changes (e.g. --test_dataset): the run's own folder is never written.
"""

import os
import subprocess

from fewshot import errors, results
from fewshot.cli import scripts

# Recorded flags not passed on: where things are on the machine that made the run, and how it was run.
NOT_PASSED_ON = frozenset({'data_dir', 'cache_dir', 'dataset_dir', 'test_dataset_dir', 'results_dir', 'run_name',
                           'resume', 'overwrite', 'progress', 'check_reuse', 'peer_timeout_seconds'})


def flag_arguments(recorded):
    """Command-line arguments that set every recorded flag (hyperparameters.json's 'flags') as the run
    had it, except those of NOT_PASSED_ON and those left unset (None)."""
    def text(value):
        if isinstance(value, bool):
            return 'true' if value else 'false'
        return ','.join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return [f'--{name}={text(value)}' for name, value in sorted(recorded.items())
            if name not in NOT_PASSED_ON and value is not None]


def command(hyperparameters, folder):
    """The command line (`scripts.argv`) of the command the run in `folder` recorded: 'maml.py ...' in a
    checkout or 'fewshot maml ...' installed; RunError if it is not one of the package's."""
    words = hyperparameters.get('command', '?').split(' ')
    program = os.path.basename(words[0])
    name = words[1] if program == scripts.PROGRAM and len(words) > 1 else program.removesuffix('.py')
    if name not in scripts.NAMES or program not in (scripts.PROGRAM, f'{name}.py'):
        raise errors.RunError(f'{folder}: the command it recorded ({" ".join(words[:2])}) is not a command of '
                              'this project, so it cannot be re-run')
    return scripts.argv(name)


def checkpoint_iteration(folder):
    """The iteration of the run folder `folder`'s checkpoint (0 without one)."""
    if not os.path.exists(os.path.join(folder, results.CHECKPOINT_FILE)):
        return 0
    return results.RunFolder(os.path.dirname(folder), os.path.basename(folder), resume=True).resume_point()[0]


def copy_files(source, target, names):
    """Copies the files `names` that exist in `source` into `target` (made if needed), each atomically."""
    os.makedirs(target, exist_ok=True)
    for name in names:
        if os.path.isfile(os.path.join(source, name)):
            with open(os.path.join(source, name), 'rb') as f:
                content = f.read()
            results.atomic_write(os.path.join(target, name), lambda f: f.write(content))


def resume_copy(folder, scratch, extra_arguments=(), quiet=False, with_summary=False):
    """Resumes a copy of the run folder `folder` in `scratch` (a folder) at its checkpoint's iteration, with
    its recorded command and flags and `extra_arguments`; returns (the copy's path, the child's exit status,
    its output if `quiet`, else None: it went to this process's). with_summary: copy its summary.json too
    (a finished run resumed for a cross-domain test then keeps its own meta-test rather than repeating it)."""
    hyperparameters = results.read_hyperparameters(folder)
    name = os.path.basename(os.path.normpath(folder))
    copy = os.path.join(scratch, name)
    copy_files(folder, copy, (results.HYPERPARAMETERS_FILE, results.METRICS_FILE, results.CHECKPOINT_FILE)
               + ((results.SUMMARY_FILE,) if with_summary else ()))
    command_line = [*command(hyperparameters, folder), *flag_arguments(hyperparameters['flags']),
                    f'--results_dir={scratch}', f'--run_name={name}', '--resume', '--progress=false',
                    f'--num_iterations={checkpoint_iteration(copy)}', *extra_arguments]
    done = subprocess.run(command_line, capture_output=quiet, text=True, env=scripts.environment())
    return copy, done.returncode, (done.stdout + done.stderr) if quiet else None
