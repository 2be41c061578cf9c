"""What a user can get wrong, and the one place that turns it into a line `error: ...`.

Every command runs its `main` through `errors.run`. A problem the user can fix is raised as
one of these, with a message that names the flag or file and says what is expected:

    FlagError       a flag's value, a pair of flags that contradict each other, a flag the
                    command does not use
    DataError       an input file or folder: missing, unreadable, damaged, not what was expected
    OutputError     an output location that cannot be created or written
    RunError        a run folder's state or one of its files
    TrainingError   training cannot go on (for instance the weights became NaN)
    SetupError      this machine's TensorFlow cannot run the project as it is set up

`run` prints such an error, a flag-parsing error or an operating-system error (disk full, no
permission) as one line on stderr and exits with status 1. Anything else is a bug and keeps
its traceback.
"""

import math
import os
import sys

from absl import app, flags


class UserError(Exception):
    """A problem the user can fix; the message says what is wrong and what to do."""


class FlagError(UserError, ValueError):
    """A flag's value, or a combination of flags, cannot be used."""


class DataError(UserError, ValueError):
    """A data folder, archive, file or cache is missing or unusable."""


class OutputError(UserError):
    """An output location cannot be created or written."""


class RunError(UserError):
    """A run folder cannot be used as asked, or one of its files is missing or damaged."""


class TrainingError(UserError):
    """Training cannot go on; the message says where it stopped and what is kept."""


class SetupError(UserError):
    """The installed TensorFlow, or its environment, cannot run this project."""


def run(main, takes_arguments=False):
    """absl's app.run(main), with user errors reported as one line and a non-zero exit status.

    takes_arguments: whether the command accepts arguments other than flags (folders, or
    flags after -- for another script); if not, any is an error.
    """
    app.run(_reported(main), flags_parser=lambda argv: _parse_flags(argv, takes_arguments))


def _reported(main):
    def reported_main(argv):
        try:
            return main(argv)
        except UserError as error:
            sys.exit(f'error: {error}')
        except OSError as error:  # Found while working: a full disk, a file removed meanwhile, ...
            sys.exit(f'error: {describe_os_error(error)}')
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


def describe_os_error(error):
    """'path: reason' for an OSError, e.g. 'results/run/metrics.csv: No space left on device'."""
    where = ' -> '.join(str(name) for name in (error.filename, error.filename2) if name)
    return f'{where}: {error.strerror or error}' if where else str(error.strerror or error)
