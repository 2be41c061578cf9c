"""The command layer: everything that defines or reads a command-line flag. The rest of the package
reads none: a learner, a network, a task source or the training loop is built from arguments.

    config      flags every command shares (data, tasks, schedule, run folder)
    strategy    --strategy: the `distribution.Cluster` a command's meta-training runs on
    commands    Command, what a learner command says about itself (how its flags build its learner);
                run (a learner from the flags), find (a learner command by name or a script of
                one's own by its path, loaded as a plug-in); --backbone and --meta_lr
    experiment  one run from flags: checks -> data -> learner -> training -> meta-test -> run folder
    runs        for tools that train other commands: their flags, reuse and resume in child processes
    studies     a study's folder of learner runs and its table (sine.py, navigation.py)
    replay      a recorded run run again, its command with its flags (reference.py --evaluate)
    scripts     the commands themselves, one module each: `fewshot <command>` installed, the
                top-level scripts of a checkout

and `run`, through which every command's main runs: a user error (`fewshot.errors`), a flag-parsing
error or an operating-system error (disk full, no permission) is one line on stderr and exit status 1.
Ctrl-C is `error: interrupted`, status 1; SIGTERM is `error: terminated (SIGTERM)`, status 143 (128 + 15,
as a shell reports a process that SIGTERM ended). Both end the command through an exception, so that
what a failure cleans up (a half-written file, a run folder without a checkpoint) is cleaned up.
"""

import math
import os
import signal
import sys

from absl import app, flags

from fewshot.errors import FlagError, UserError, describe_os_error, name_arguments_as_flags


def run(main, takes_arguments=False):
    """absl's app.run(main), with user errors reported as one line and a non-zero exit status.

    takes_arguments: whether the command accepts arguments other than flags (folders, or
    flags after -- for another script); if not, any is an error.
    """
    name_arguments_as_flags()
    app.run(_reported(main), flags_parser=lambda argv: _parse_flags(argv, takes_arguments))


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread as Ctrl-C raises KeyboardInterrupt, which it is handled like."""


TERMINATED_STATUS = 128 + signal.SIGTERM


def _raise_terminated(signum, frame):
    """SIGTERM's handler while a command runs. By default SIGTERM ends the process on the spot, leaving
    what it was writing half-made (results.replacing's temporary file, a run folder without a
    checkpoint); as an exception it goes through their cleanup. A second SIGTERM ends it at once."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise Terminated()


def _reported(main):
    def reported_main(argv):
        signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            return main(argv)
        except UserError as error:
            sys.exit(f'error: {error}')
        except OSError as error:  # Found while working: a full disk, a file removed meanwhile, ...
            sys.exit(f'error: {describe_os_error(error)}')
        except Terminated:
            print('error: terminated (SIGTERM)', file=sys.stderr)
            sys.exit(TERMINATED_STATUS)
        except KeyboardInterrupt:
            sys.exit('error: interrupted')
    return reported_main


def _parse_flags(argv, takes_arguments):
    """Parses the command line; a bad flag, a stray argument or a flag this command does not use
    is reported as one line."""
    try:
        remaining = flags.FLAGS(argv)
        if len(remaining) > 1 and not takes_arguments:
            raise FlagError(f'unexpected arguments: {" ".join(remaining[1:])} (flags are written --name=value)')
        check_used_flags(argv[0])
        check_finite_flags()
    except flags.CantOpenFlagFileError as error:  # absl's message starts 'ERROR:: Unable to open flagfile'.
        sys.exit(f'error: --flagfile: cannot be opened ({str(error).partition("flagfile: ")[2] or error})')
    except UnicodeDecodeError:  # absl reads a flag file as text.
        sys.exit('error: --flagfile: not a text file of flags (one --name=value a line, as in protocols/)')
    except flags.UnrecognizedFlagError as error:  # absl's "Unknown command line flag 'x'" names no command.
        suggested = str(error).partition('Did you mean: ')[2].rstrip(' ?')  # absl keeps them only in the text
        tip = f' (did you mean --{suggested.replace(", ", " or --")}?)' if suggested else ' (see --help)'
        sys.exit(f'error: --{error.flagname} is not a flag of {os.path.basename(argv[0])}{tip}')
    except (flags.Error, FlagError) as error:
        sys.exit(f'error: {error}')
    return remaining


def check_finite_flags():
    """FlagError for a float flag given NaN or an infinity: no range check catches them (NaN compares
    false with everything), and they would run silently or fail deep inside."""
    for name in flags.FLAGS:
        flag = flags.FLAGS[name]
        if flag.present and flag.flag_type() == 'float' and flag.value is not None and not math.isfinite(flag.value):
            raise FlagError(f'--{flag.name} {flag.value}: must be a finite number')


def check_used_flags(main_module):
    """FlagError for a flag given on the command line that the command does not use.

    The flags a command uses are its key flags (those --help lists): its own, and the shared
    ones it adopts or declares. Others are defined only because the command imports a module
    that defines them (maml_plusplus.py imports maml.py, which defines --first_order), and
    would be silently ignored. absl's own flags (--flagfile, logging, --help) are always fine.
    """
    used = {flag.name for flag in flags.FLAGS.get_key_flags_for_module(main_module)}
    for name in flags.FLAGS:
        flag = flags.FLAGS[name]
        if not flag.present or flag.name in used:
            continue
        module = flags.FLAGS.find_module_defining_flag(flag.name) or ''
        if not module.startswith('absl'):
            raise FlagError(f'--{flag.name} is not a flag of {os.path.basename(main_module)}, '
                            'which would ignore it (see --help)')
