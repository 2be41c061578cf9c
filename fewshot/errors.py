"""What a user can get wrong. A problem the user can fix is raised as one of these, with a
message that names the flag (or argument) or file and says what is expected:

    FlagError       a flag's value, a pair of flags that contradict each other, a flag the
                    command does not use
    DataError       an input file or folder: missing, unreadable, damaged, not what was expected
    OutputError     an output location that cannot be created or written
    RunError        a run folder's state or one of its files
    TrainingError   training cannot go on (for instance the weights became NaN)
    SetupError      this machine's TensorFlow cannot run the project as it is set up

A message names what the user gave through `named`: the library knows arguments (run_name), the
command layer spells them as its flags (--run_name) once a command runs (`name_arguments_as_flags`).

Every command runs its `main` through `fewshot.cli.run`, which prints such an error as one line,
`error: ...`, and exits with status 1 (SIGTERM: `error: terminated (SIGTERM)`, status 143, as a shell
reports it). Anything else is a bug and keeps its traceback.
"""


_AS_FLAGS = [False]  # Whether `named` spells an argument as a command's flag: set by `fewshot.cli.run`.


def named(argument):
    """How a message names the user's `argument`: 'run_name' to a Python caller, '--run_name' in a command."""
    return f'--{argument}' if _AS_FLAGS[0] else argument


def name_arguments_as_flags():
    """From now on `named` spells arguments as the command line's flags (a command is running)."""
    _AS_FLAGS[0] = True


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


def describe_os_error(error):
    """'path: reason' for an OSError, e.g. 'results/run/metrics.csv: No space left on device'."""
    where = ' -> '.join(str(name) for name in (error.filename, error.filename2) if name)
    return f'{where}: {error.strerror or error}' if where else str(error.strerror or error)
