"""What a run leaves in `results/<run_name>/`, written so that nothing is ever half-written.

    hyperparameters.json   every flag, seed, library versions, data checksum
    metrics.csv            one row per validation interval
    checkpoint.npz         latest state for --resume (weights, optimizer, iteration)
    tensorboard/           TensorBoard event files
    model.keras            final weights, loadable with keras.models.load_model
    summary.json           final validation and meta-test accuracy
    val_accuracy.png       the accuracy curves

Every file is written to a temporary name and renamed into place, so a run
killed at any moment leaves either the old or the new version of each file.
"""

import contextlib
import csv
import io
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import unicodedata
from importlib import metadata

import numpy as np
from absl import logging

from fewshot.errors import OutputError, RunError, TrainingError, named

METRICS_FILE = 'metrics.csv'
HYPERPARAMETERS_FILE = 'hyperparameters.json'
CHECKPOINT_FILE = 'checkpoint.npz'
SUMMARY_FILE = 'summary.json'
MODEL_FILE = 'model.keras'
# --keep_checkpoint_at: the checkpoint of the first validation that reached a score, and what it reached.
REACHED_CHECKPOINT_FILE = 'checkpoint_reached.npz'
REACHED_FILE = 'reached.json'
INNER_LR_FILE = 'inner_learning_rates.csv'  # MAML++: learned inner learning rates per tensor and step.
LEARNED_RATES_FILE = 'meta_sgd_learning_rates.npz'  # Meta-SGD: its learned rate of every weight, by tensor.
COMPARISON_TASKS_FILE = 'comparison_tasks.csv'  # Transfer vs FO-MAML, per meta-test task.
# The columns every metrics.csv has; train_<metric> columns follow, by learner.
def metrics_columns(score):
    """The columns every metrics.csv row has, for runs validated by `score` (one of SCORES)."""
    return 'iteration', 'seconds', f'val_pre_{score}', 'val_pre_ci95', f'val_post_{score}', 'val_post_ci95'


SCORES = ('accuracy', 'mse', 'return')  # Classification's, a regressor's mean squared error, a policy's return.
METRICS_COLUMNS = metrics_columns('accuracy')
# Flags that may change when a run is resumed. The data may move (other --data_dir), but
# its checksum must not change. run_name may too: the folder is the same whether its name
# was given (as stability.py does) or derived from the other flags. tasks_per_chunk and
# memory_budget_gb change only the memory a meta-step takes (and the order of a sum), e.g. on
# another machine; strategy and cpu_replicas only where its tasks are computed (a run outgrowing
# one machine continues on a cluster), and peer_timeout_seconds only how long its processes wait for
# each other. The --test_ flags choose an extra meta-test (another dataset's classes), not the run, and
# --keep_checkpoint_at an extra copy of a checkpoint.
RESUMABLE_CHANGES = frozenset({'resume', 'overwrite', 'num_iterations', 'progress', 'data_dir', 'dataset_dir',
                               'cache_dir', 'results_dir', 'run_name', 'tasks_per_chunk', 'memory_budget_gb',
                               'strategy', 'cpu_replicas', 'check_reuse', 'peer_timeout_seconds', 'test_dataset',
                               'test_dataset_dir', 'test_n_way', 'test_k_shot', 'test_num_query',
                               'keep_checkpoint_at'})


# What `replacing` names its temporary files: <name>.tmp<pid><extension>, beside the file they replace.
TEMPORARY_NAME = re.compile(r'.+\.tmp(\d+)(\.[^.]*)?')


def temporary_path(path):
    """The temporary name this process writes `path` under before renaming it into place."""
    root, extension = os.path.splitext(path)
    return f'{root}.tmp{os.getpid()}{extension}'


@contextlib.contextmanager
def replacing(path):
    """Yields a temporary path beside `path` (same extension) to write; renames it to `path` when
    the block ends, or removes it if the block fails, leaving `path` as it was.

    A process killed inside the block cannot remove its temporary file: `leftovers` finds it, and
    a run folder removes it when it is next used (`RunFolder.create`).
    """
    temporary = temporary_path(path)
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException as error:
        if os.path.lexists(temporary):
            os.remove(temporary)
        # A failed write() names no file ("No space left on device"): name the one being written.
        if isinstance(error, OSError) and error.filename in (None, temporary):
            raise OSError(error.errno, error.strerror, path) from None
        raise


def _process_is_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # Another user's process.
        return True
    return True


def leftovers(folder):
    """The temporary files of `replacing` in `folder` whose process has ended: what a process killed
    while writing left behind (a live process's own are still being written, and are not listed)."""
    found = []
    for name in os.listdir(folder):
        match = TEMPORARY_NAME.fullmatch(name)
        path = os.path.join(folder, name)
        if match and os.path.isfile(path) and not os.path.islink(path) and not _process_is_alive(int(match[1])):
            found.append(path)
    return found


def remove_leftovers(folder):
    """Removes `leftovers(folder)`; returns how many there were."""
    found = leftovers(folder)
    for path in found:
        os.remove(path)
    if found:
        logging.info('Removed %d temporary files a stopped process left in %s', len(found), folder)
    return len(found)


def atomic_write(path, write):
    """Calls write(file) on a temporary file next to `path`, then renames it to `path`."""
    with replacing(path) as temporary, open(temporary, 'wb') as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def check_writable(path, flag):
    """OutputError unless `path` is a writable folder or could be created as one; creates nothing.

    Too long a name is found here too: os.makedirs would make the folders above it first, and leave
    them behind empty when it fails.
    """
    existing = os.path.abspath(path)
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise OutputError(f'{flag} {path}: {existing} is a file, not a folder')
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f'{flag} {path}: {existing} is not writable')
    check_path_length(path, flag)


# Room kept below the system's path limit for what goes inside a folder (a run's files, tensorboard/...).
PATH_ROOM = 200


def check_path_length(path, flag):
    """OutputError if a component of `path` is longer than the file system allows, or the path leaves
    less than PATH_ROOM bytes below its limit for the files that go into it."""
    existing = os.path.abspath(path)
    while not os.path.isdir(existing):
        existing = os.path.dirname(existing)
    name_max, path_max = (os.pathconf(existing, name) for name in ('PC_NAME_MAX', 'PC_PATH_MAX'))
    encoded = os.fsencode(os.path.abspath(path))
    longest = max(encoded.split(b'/'), key=len)
    if len(longest) > name_max:
        raise OutputError(f'{flag} {path}: a name in it is {len(longest)} bytes long, more than the {name_max} '
                          'this file system allows')
    if len(encoded) > path_max - PATH_ROOM:
        raise OutputError(f'{flag} {path}: {len(encoded)} bytes long; the files inside it need a path shorter '
                          f'than {path_max - PATH_ROOM} bytes')


def run_name_problem(name):
    """Why `name` cannot name a run folder, None if it can: one path component, not '.' or '..', text a
    file name and a JSON file hold alike (UTF-8), without control characters (a newline), not blank
    and without spaces at either end (invisible in every listing)."""
    if not name or name in ('.', '..') or '/' in name or os.sep in name:
        return f'a run name is one folder name inside {named("results_dir")}, without / and not . or ..'
    try:
        name.encode('utf-8')
    except UnicodeEncodeError:  # Bytes that are not UTF-8 arrive as lone surrogates.
        return 'not valid UTF-8 text'
    if any(unicodedata.category(character) in ('Cc', 'Cf', 'Cs') for character in name):
        return 'it holds a control character (a newline, a tab, ...)'
    if name != name.strip():
        return 'blank, or it begins or ends with a space'
    return None


def is_run_name(name):
    """True if `name` can name a run folder (see `run_name_problem`)."""
    return run_name_problem(name) is None


def is_run_folder(path):
    """True if `path` is a folder (not a link) that a command of this project wrote a run into."""
    return (os.path.isdir(path) and not os.path.islink(path)
            and os.path.isfile(os.path.join(path, HYPERPARAMETERS_FILE)))


def write_json(path, value):
    atomic_write(path, lambda f: f.write(json.dumps(value, indent=2, sort_keys=True).encode()))


def machine():
    """The CPU model and core count, e.g. 'AMD EPYC, 2 CPU cores'."""
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    return f'{cpu}, {os.cpu_count()} CPU cores'


def code_version(repo=None):
    """The git commit of the code in `repo` (default: this package's folder), '+changes' if tracked files
    differ from it; None outside a git checkout (e.g. code unpacked from a submission zip)."""
    repo = os.path.dirname(os.path.abspath(__file__)) if repo is None else repo

    def git(*arguments):
        return subprocess.run(['git', *arguments], cwd=repo, capture_output=True, text=True,
                              check=True).stdout.strip()
    try:
        commit = git('rev-parse', 'HEAD')
        changed = git('status', '--porcelain', '--untracked-files=no')
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ('+changes' if changed else '')


def library_versions():
    """Versions of the code, of the libraries that decide the numbers of a run, and the machine."""
    versions = {'code': code_version(), 'python': sys.version.split()[0], 'platform': platform.platform(),
                'machine': machine()}
    for package in ('tensorflow', 'keras', 'numpy', 'tensorflow-datasets'):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def std_over_seeds(values, axis=0):
    """The sample standard deviation (n − 1) of per-seed values along `axis`, NaN for one seed: the one
    definition behind every '± std over seeds' a table or figure shows."""
    values = np.asarray(values, dtype=np.float64)
    if values.shape[axis] < 2:
        return np.full(np.delete(values.shape, axis), np.nan) if values.ndim > 1 else float('nan')
    spread = values.std(axis=axis, ddof=1)
    return float(spread) if np.ndim(spread) == 0 else spread


def confidence_interval(values):
    """Mean and 95% confidence half-width (normal approximation) of per-task values."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return float(values.mean()), float('nan')
    return float(values.mean()), float(1.96 * values.std(ddof=1) / np.sqrt(len(values)))


def write_csv(path, rows, columns=None):
    """Writes a list of dicts as CSV, atomically. Floats are written exactly (repr round-trips),
    NaN as an empty cell; `columns` defaults to the keys of the first row."""
    def cell(value):
        if isinstance(value, float):
            return '' if np.isnan(value) else repr(value)
        return value

    def write(f):
        text = io.StringIO()
        writer = csv.DictWriter(text, columns or list(rows[0]), extrasaction='ignore')
        writer.writeheader()
        for row in rows:
            writer.writerow({k: cell(v) for k, v in row.items()})
        f.write(text.getvalue().encode())
    atomic_write(path, write)


def read_json(path):
    """The value in a JSON file of a run folder; RunError naming the file if it is missing or damaged."""
    try:
        with open(path, encoding='utf-8') as f:
            return json.load(f)
    except FileNotFoundError:
        raise RunError(f'{path} does not exist') from None
    except OSError as error:
        raise RunError(f'{path} cannot be read ({error.strerror})') from None
    except ValueError as error:  # JSONDecodeError, or bytes that are not UTF-8.
        raise RunError(f'{path} is damaged: not valid JSON ({error})') from None


def _require(path, record, fields):
    """RunError naming the file unless `record` is a dict with a value of the given type for each field."""
    if not isinstance(record, dict):
        raise RunError(f'{path} is damaged: expected a JSON object')
    for name, kind in fields.items():
        value = record.get(name)
        if isinstance(value, bool) or not isinstance(value, kind):  # JSON's true is no number.
            raise RunError(f'{path} is damaged: no valid "{name}"')
    return record


def read_hyperparameters(run_dir):
    """The hyperparameters.json of a run folder; RunError if there is none or it is damaged."""
    path = os.path.join(run_dir, HYPERPARAMETERS_FILE)
    if not os.path.isfile(path):
        raise RunError(f'{run_dir}: no {HYPERPARAMETERS_FILE}, so it is not a run folder')
    hyperparameters = _require(path, read_json(path), {'flags': dict})
    recorded = hyperparameters['flags']
    # Few-shot runs have K, classification runs N too (a regression run has no N, navigation.py's neither).
    _require(path, recorded, {name: int for name in ('k_shot', 'n_way') if name in recorded})
    return hyperparameters


def read_summary(run_dir):
    """The summary.json of a finished run; None if the run has not finished, RunError if damaged."""
    path = os.path.join(run_dir, SUMMARY_FILE)
    if not os.path.exists(path):
        return None
    number = (int, float)
    return _require(path, read_json(path), {
        'iterations': int, 'training_seconds': number, 'val_post_accuracy': number, 'val_post_ci95': number,
        'test_post_accuracy': number, 'test_post_ci95': number, 'test_tasks': int})


def read_arrays(path):
    """{name: array} of a NumPy .npz file a run wrote (pickles refused); RunError naming it if it is
    damaged."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return {name: arrays[name] for name in arrays.files}
    except Exception as error:  # A foreign or damaged file raises many types.
        raise RunError(f'{path} cannot be read ({error})') from None


def read_metrics(path, required=False):
    """Rows of a metrics.csv as dicts of floats (NaN where empty).

    A run killed while writing by other means than ours may leave a damaged line: the
    rows before it are returned, with a warning. A missing file gives [] (RunError if
    `required`, also when no row is complete); a file without the `metrics_columns` of a score, RunError.
    """
    if not os.path.exists(path):
        if required:
            raise RunError(f'{path} does not exist (is this a run folder, and has it validated once?)')
        return []
    rows = []
    with _open_csv(path) as f:
        reader = csv.DictReader(f)
        columns = _columns(path, reader)
        score = next((score for score in SCORES if f'val_post_{score}' in columns), 'accuracy')
        missing = [column for column in metrics_columns(score) if column not in columns]
        if missing and (required or columns):
            raise RunError(f'{path} is damaged: no column {", ".join(missing)} in its first line')
        if missing:
            return []  # An empty file.
        for line, row in _rows(path, reader):
            try:
                parsed = {k: float(v) if v != '' else float('nan') for k, v in row.items()}
                parsed['iteration'] = int(parsed['iteration'])
            except (TypeError, ValueError):
                logging.warning('%s: line %d is incomplete or malformed; using the %d rows before it',
                                path, line, len(rows))
                break
            rows.append(parsed)
    if required and not rows:
        raise RunError(f'{path} has no complete row')
    return rows


def read_csv(path, columns=(), numbers=()):
    """The rows of a CSV file as dicts; numbers become floats (ints where whole), empty cells NaN.

    RunError naming the file if it is missing or unreadable, if a row lacks one of `columns`
    or `numbers`, or has something other than a number in one of `numbers`.
    """
    def value(text):
        if text == '':
            return float('nan')
        try:
            number = float(text)
        except ValueError:
            return text
        return int(number) if number.is_integer() and '.' not in text and 'e' not in text else number
    if not os.path.exists(path):
        raise RunError(f'{path} does not exist')
    with _open_csv(path) as f:
        reader = csv.DictReader(f)
        required = list(columns) + list(numbers)
        missing = [column for column in required if column not in _columns(path, reader)]
        if missing:
            raise RunError(f'{path} is damaged: no column {", ".join(missing)} in its first line')
        rows = [{k: value(v) for k, v in row.items()} for _, row in _rows(path, reader)]
    for line, row in enumerate(rows, start=2):
        if any(row.get(column) is None for column in required):
            raise RunError(f'{path} is damaged: line {line} is incomplete')
        bad = [column for column in numbers if not isinstance(row[column], (int, float))]
        if bad:
            raise RunError(f'{path} is damaged: line {line} has no number in column {", ".join(bad)}')
    return rows


def _open_csv(path):
    try:
        return open(path, newline='', encoding='utf-8')
    except OSError as error:
        raise RunError(f'{path} cannot be read ({error.strerror})') from None


def _columns(path, reader):
    """The column names of a csv.DictReader; RunError if its first line is not text."""
    try:
        return reader.fieldnames or []
    except (ValueError, csv.Error) as error:  # Bytes that are not UTF-8, a NUL byte, ...
        raise RunError(f'{path} is damaged: not a CSV text file ({error})') from None


def _rows(path, reader):
    """(line number, row) of a csv.DictReader; RunError naming the line where it is not text."""
    line = 1
    try:
        for line, row in enumerate(reader, start=2):
            yield line, row
    except (ValueError, csv.Error) as error:
        raise RunError(f'{path} is damaged near line {line + 1}: not CSV text ({error})') from None


class RunFolder:
    """One run's folder: creation rules, metrics, hyperparameters and checkpoints.

    A run folder is `results_dir/run_name`, where the name is one path component. An existing
    folder is continued only with `resume`, and replaced only with `overwrite`, and only if it
    is a run folder (has hyperparameters.json): a folder this project did not write is never
    deleted. Every rule is checked when the object is made, before the command does any work.
    """

    def __init__(self, results_dir, run_name, resume=False, overwrite=False, create=True,
                 resume_flag='resume', fixed_on_resume=()):
        """Checks that the folder can be used as asked (RunError, OutputError otherwise).

        create: make (or, with `overwrite`, replace) the folder now; False leaves that to
          `create()`, so that a command checks everything before it starts working.
        resume_flag: the argument that continues an existing folder (told the user by `errors.named`), or
          None if the command cannot continue one.
        fixed_on_resume: flags of RESUMABLE_CHANGES that this run must nevertheless keep (MAML++'s
          cosine schedule is spread over --num_iterations, so extending the run would change it), unless
          it is resumed with nothing left to train (--num_iterations at most its checkpoint's: only tested).
        """
        problem = run_name_problem(run_name)
        if problem:
            raise RunError(f'{named("run_name")} {ascii(run_name)}: {problem}')
        if resume and overwrite:
            raise RunError(f'{named("resume")} and {named("overwrite")} contradict each other: continue the run, '
                           'or replace it')
        self.path = os.path.join(results_dir, run_name)
        self.resume, self.overwrite = resume, overwrite
        self.resumable_changes = RESUMABLE_CHANGES - set(fixed_on_resume)
        exists = os.path.lexists(self.path)
        if exists and not os.path.isdir(self.path) or os.path.islink(self.path):
            raise RunError(f'{self.path} exists and is not a folder; choose another {named("run_name")}')
        if resume and not exists:
            raise RunError(f'{named("resume")}: {self.path} does not exist, so there is nothing to continue '
                           f'(leave out {named("resume")} to start it)')
        # A folder holding only what a killed process of this project left half-written is empty to us.
        empty = exists and set(os.listdir(self.path)) <= {os.path.basename(p) for p in leftovers(self.path)}
        # A folder this run makes (or replaces) holds nothing of the user's: `discard` may remove it.
        self.fresh = not exists or overwrite or empty
        if exists and not empty and not is_run_folder(self.path):
            raise RunError(f'{self.path} exists and is not a run folder (it has no {HYPERPARAMETERS_FILE}); '
                           f'it is left alone: choose another {named("run_name")}')
        if exists and not empty and not resume and not overwrite:
            how = f'pass {named("overwrite")} to replace it'
            if resume_flag:
                how = f'pass {named(resume_flag)} to continue it or {named("overwrite")} to replace it'
            raise RunError(f'{self.path} already exists; {how}')
        check_writable(self.path if exists else results_dir, named('results_dir'))
        check_path_length(self.path, named('run_name'))
        if resume and not empty:
            self.resume_point()  # Fails now, not after loading the data, if it cannot be resumed.
            self.check_entries()
        if create:
            self.create()

    def check_entries(self):
        """RunError unless what the run writes can be written: the run keeps only files in its folder,
        and its TensorBoard logs in the folder tensorboard/. A folder where a file goes (model.keras,
        a learner's learned rates, ...) would be found only when that file is written, after the
        meta-test, with the files written before it already replaced."""
        for name in sorted(os.listdir(self.path)):
            path = self.file(name)
            if name == 'tensorboard':
                if os.path.lexists(path) and not os.path.isdir(path):
                    raise RunError(f'{path} is not a folder, and the run writes its TensorBoard logs there: '
                                   'move it away')
            elif os.path.isdir(path):
                raise RunError(f'{path} is a folder, and a run folder holds only files (but tensorboard/): '
                               'the run would fail to write there after its meta-test; move it away')

    def create(self):
        """Makes the folder, or empties it of what stopped processes left half-written (`leftovers`);
        with --overwrite, first removes the run folder of the same name."""
        if self.overwrite and os.path.isdir(self.path):
            print(f'{named("overwrite")}: removing the previous run folder {self.path}', flush=True)
            shutil.rmtree(self.path)
        os.makedirs(self.path, exist_ok=True)
        remove_leftovers(self.path)

    @contextlib.contextmanager
    def started(self):
        """Makes the folder (`create`) for the work inside the `with`; if that work fails before the
        folder holds a checkpoint, a folder this run made is removed again: holding only the run's
        hyperparameters, it is nothing to resume, and it would stop the next run of the same name."""
        self.create()
        try:
            yield self
        except BaseException:  # KeyboardInterrupt too: a run stopped while it builds keeps nothing.
            if not os.path.exists(self.file(CHECKPOINT_FILE)):
                self.discard()
            raise

    def file(self, name):
        return os.path.join(self.path, name)

    def discard(self):
        """Removes the folder if this run made it (`fresh`); True if it did."""
        if self.fresh and os.path.isdir(self.path):
            shutil.rmtree(self.path)
            return True
        return False

    # Hyperparameters -------------------------------------------------------

    def recorded_flags(self):
        """On resume, the flags the run recorded by name; {} for a new run."""
        if not self.resume or not os.path.exists(self.file(HYPERPARAMETERS_FILE)):
            return {}
        return read_hyperparameters(self.path)['flags']

    def check_flags(self, flags, defaults=None):
        """On resume, RunError if the recorded flags differ from `flags` (other than the resumable changes).

        defaults: flag -> default value; a flag newer than the run (not recorded) must be at its default.
        """
        if not self.resume or not os.path.exists(self.file(HYPERPARAMETERS_FILE)):
            return
        recorded = {**(defaults or {}), **read_hyperparameters(self.path)['flags']}
        resumable = self.resumable_changes
        if resumable != RESUMABLE_CHANGES and flags.get('num_iterations', math.inf) <= self.resume_point()[0]:
            resumable = RESUMABLE_CHANGES  # Nothing left to train: what its schedule was spread over is unused.
        changed = sorted(name for name in set(recorded) | set(flags)
                         if name not in resumable and recorded.get(name) != flags.get(name))
        if changed:
            raise RunError(f'{self.path} was started with other settings ({", ".join(changed)}); '
                           f'resume it with the same flags or start a new {named("run_name")}')

    def check_algorithm(self, algorithm):
        """On resume, RunError unless the run was made by `algorithm`: a run folder belongs to the command
        and learner that made it (ANIL resuming a FO-MAML run would continue other weights silently)."""
        if not self.resume or not os.path.exists(self.file(HYPERPARAMETERS_FILE)):
            return
        recorded = read_hyperparameters(self.path).get('algorithm')
        if recorded != algorithm:
            raise RunError(f'{self.path} is a run of {recorded}, not of {algorithm}: a run folder is continued '
                           f'only by the command and learner that made it; choose another {named("run_name")}')

    def check_data(self, data_checksum):
        """On resume, RunError unless the run recorded the data checksum `data_checksum`."""
        if not self.resume or not os.path.exists(self.file(HYPERPARAMETERS_FILE)):
            return
        if read_hyperparameters(self.path).get('data_checksum') != data_checksum:
            raise RunError(f'{self.path} was started with other data (its checksum differs); '
                           f'resume it with the same data or start a new {named("run_name")}')

    def write_hyperparameters(self, flags, extra, defaults=None, versions=None):
        """Records the flags (and `extra` facts) or, on resume, checks they did not change (`check_flags`).

        versions: `library_versions()` as the run started, for a run that writes this file only at its
        end (default: now, as the file is written)."""
        path = self.file(HYPERPARAMETERS_FILE)
        if self.resume and os.path.exists(path):
            self.check_flags(flags, defaults)
            self.check_data(extra.get('data_checksum'))
            recorded = read_json(path)
            if recorded.get('task_checksums', extra.get('task_checksums')) != extra.get('task_checksums'):
                # Runs before evaluation task j depended on (seed, j) alone drew them by meta-batch.
                logging.warning('%s recorded other validation or test tasks than this version draws from the '
                                'same flags (an older version drew them by meta-batch); the metrics rows '
                                'from here on and the meta-test are on the tasks recorded now', self.path)
        write_json(path, {'flags': flags, **extra, 'versions': versions or library_versions()})

    # Metrics ---------------------------------------------------------------

    def read_metrics(self):
        return read_metrics(self.file(METRICS_FILE))

    def write_metrics(self, rows, columns):
        write_csv(self.file(METRICS_FILE), rows, columns)

    # Checkpoints -----------------------------------------------------------

    def save_checkpoint(self, variables, iteration):
        """Saves the values of `variables` (a dict name -> variable) and the iteration reached.

        TrainingError, and nothing written, if a value is not finite: a checkpoint is always
        a state training can continue from.
        """
        arrays = {name: np.asarray(variable.numpy()) for name, variable in variables.items()}
        bad = [name for name, array in arrays.items() if not _finite(array)]
        if bad:
            raise TrainingError(f'not saving a checkpoint at iteration {iteration}: {", ".join(bad)} '
                                'hold NaN or infinite values')
        atomic_write(self.file(CHECKPOINT_FILE),
                     lambda f: np.savez(f, iteration=iteration, **arrays))

    def _read_checkpoint(self):
        """(iteration, {name: array}) of the checkpoint, (0, None) if there is none; RunError if it is
        damaged or holds a non-finite value."""
        path = self.file(CHECKPOINT_FILE)
        if not os.path.exists(path):
            return 0, None
        try:
            with np.load(path) as checkpoint:
                arrays = {key: checkpoint[key] for key in checkpoint.files if key != 'iteration'}
                iteration = int(checkpoint['iteration'])
        except Exception as error:  # A foreign or damaged file raises many types.
            raise RunError(f'{path} cannot be read ({error}); start the run again with {named("overwrite")}') from None
        foreign = [key for key, array in arrays.items() if array.dtype.kind not in 'fiub']
        if foreign:
            raise RunError(f'{path} holds arrays that are not real numbers ({", ".join(foreign[:3])}: '
                           f'{arrays[foreign[0]].dtype}) and cannot be resumed; start the run again with '
                           f'{named("overwrite")}')
        bad = [key for key, array in arrays.items() if not _finite(array)]
        if bad:
            raise RunError(f'{path} holds NaN or infinite values ({len(bad)} of its arrays) and cannot be '
                           f'resumed; start the run again with {named("overwrite")}')
        return iteration, arrays

    def restore_checkpoint(self, variables):
        """Assigns the checkpointed values to `variables` (a dict name -> variable) by name; returns
        the iteration (0 if there is no checkpoint). RunError unless the checkpoint holds exactly
        these names with these shapes (`check_checkpoint`)."""
        iteration, arrays = self.check_checkpoint(variables)
        if arrays is not None:
            for name, variable in variables.items():
                variable.assign(arrays[name])
        return iteration

    def check_checkpoint(self, variables):
        """(iteration, {name of `variables`: array}) of the checkpoint, (0, None) if there is none;
        RunError unless it holds exactly the names of `variables` with their shapes and kinds. A command
        calls it before it writes anything, so that a refused --resume leaves the folder as it was.

        Checkpoints written before variables had names hold them as v0000, v0001, ... in the
        order of `variables`; they are mapped by position once (checked the same way), and the
        next checkpoint is written by name.
        """
        iteration, arrays = self._read_checkpoint()
        if arrays is None:
            return 0, None
        path = self.file(CHECKPOINT_FILE)
        positional = [f'v{i:04d}' for i in range(len(arrays))]
        if sorted(arrays) == positional:
            arrays = dict(zip(variables, (arrays[key] for key in positional)))
        if set(arrays) != set(variables):
            differ = sorted(set(arrays) ^ set(variables))
            raise RunError(f'{path} does not match this model: {len(differ)} variables are in only one of '
                           f'them ({", ".join(differ[:3])}{", ..." if len(differ) > 3 else ""})')
        for name, variable in variables.items():
            if tuple(variable.shape) != arrays[name].shape:
                raise RunError(f'{path} does not match this model ({name}: '
                               f'{arrays[name].shape} vs {tuple(variable.shape)})')
            dtype = np.dtype(getattr(variable.dtype, 'as_numpy_dtype', variable.dtype))  # tf.Variable or Keras'.
            if (arrays[name].dtype.kind == 'f') != (dtype.kind == 'f'):
                raise RunError(f'{path} does not match this model ({name}: {arrays[name].dtype} values for a '
                               f'{dtype} variable)')
        return iteration, arrays

    def resume_point(self):
        """(iteration, metrics rows up to it) where the run stands: the checkpoint says where.

        RunError if metrics.csv does not agree with it. Metrics are written before the
        checkpoint, so a run killed in between may have one row past the checkpoint, which
        is redone; a missing row for the checkpoint's iteration, or more rows past it, means
        the files were damaged or mixed up, and resuming would retrain or lose iterations.
        """
        iteration, _ = self._read_checkpoint()
        rows = self.read_metrics()
        done = [row['iteration'] for row in rows]
        checkpoint, metrics = self.file(CHECKPOINT_FILE), self.file(METRICS_FILE)
        if iteration and iteration not in done:
            last = f'its last row is iteration {done[-1]}' if done else 'it is missing or has no row'
            raise RunError(f'{checkpoint} is at iteration {iteration} but {metrics} has no row for it '
                           f'({last}); the run cannot be resumed consistently: restore {METRICS_FILE} '
                           f'or start the run again with {named("overwrite")}')
        later = [i for i in done if i > iteration]
        if len(later) > 1:
            raise RunError(f'{metrics} goes on to iteration {later[-1]} but {checkpoint} is at iteration '
                           f'{iteration}; the run cannot be resumed consistently: restore {CHECKPOINT_FILE} '
                           f'or start the run again with {named("overwrite")}')
        return iteration, [row for row in rows if row['iteration'] <= iteration]


def named_variables(prefix, owner):
    """{prefix/name: variable} for the variables of a Keras model or optimizer `owner`, `name` being
    the variable's path below the owner: the names a checkpoint keys them by. The owner's own name
    is left out because Keras numbers it per process (adam, adam_1, ...).

    prefix: what owns them, e.g. 'model' or 'optimizer'.
    """
    named = {f'{prefix}/{variable.path.removeprefix(owner.name + "/")}': variable for variable in owner.variables}
    if len(named) != len(owner.variables):
        raise ValueError(f'two {prefix} variables share a name; checkpoints could not tell them apart')
    return named


def _finite(array):
    return not np.issubdtype(array.dtype, np.floating) or bool(np.isfinite(array).all())
