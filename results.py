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

import csv
import io
import json
import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata

import numpy as np
from absl import logging

METRICS_FILE = 'metrics.csv'
HYPERPARAMETERS_FILE = 'hyperparameters.json'
CHECKPOINT_FILE = 'checkpoint.npz'
SUMMARY_FILE = 'summary.json'
MODEL_FILE = 'model.keras'
INNER_LR_FILE = 'inner_learning_rates.csv'  # MAML++: learned inner learning rates per tensor and step.
COMPARISON_TASKS_FILE = 'comparison_tasks.csv'  # Transfer vs FO-MAML, per meta-test task.
# Flags that may change when a run is resumed. The data may move (other --data_dir), but
# its checksum must not change. run_name may too: the folder is the same whether its name
# was given (as stability.py does) or derived from the other flags.
RESUMABLE_CHANGES = frozenset({'resume', 'overwrite', 'num_iterations', 'progress',
                               'data_dir', 'cache_dir', 'results_dir', 'run_name'})


class RunError(RuntimeError):
    """A run folder cannot be used as asked; the message says why and what to do."""


def atomic_write(path, write):
    """Calls write(file) on a temporary file next to `path`, then renames it to `path`."""
    temporary = f'{path}.tmp{os.getpid()}'
    with open(temporary, 'wb') as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


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


def code_version(repo=os.path.dirname(os.path.abspath(__file__))):
    """The git commit of the code in `repo`, '+changes' if tracked files differ from it; None
    outside a git checkout (e.g. code unpacked from a submission zip)."""
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


def read_metrics(path, required=False):
    """Rows of a metrics.csv as dicts of floats (NaN where empty).

    A run killed while writing by other means than ours may leave a damaged line: the
    rows before it are returned, with a warning. A missing file gives [] (RunError if
    `required`, also when no row is complete).
    """
    if not os.path.exists(path):
        if required:
            raise RunError(f'{path} does not exist (is this a run folder, and has it validated once?)')
        return []
    rows = []
    with open(path, newline='') as f:
        for line, row in enumerate(csv.DictReader(f), start=2):
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


def read_hyperparameters(run_dir):
    """The hyperparameters.json of a run folder; RunError if it has none."""
    path = os.path.join(run_dir, HYPERPARAMETERS_FILE)
    if not os.path.exists(path):
        raise RunError(f'{run_dir}: no {HYPERPARAMETERS_FILE}, so it is not a run folder')
    with open(path) as f:
        return json.load(f)


def read_csv(path):
    """The rows of a CSV file as dicts; numbers become floats (ints where whole), empty cells NaN."""
    def value(text):
        if text == '':
            return float('nan')
        try:
            number = float(text)
        except ValueError:
            return text
        return int(number) if number.is_integer() and '.' not in text and 'e' not in text else number
    with open(path, newline='') as f:
        return [{k: value(v) for k, v in row.items()} for row in csv.DictReader(f)]


class RunFolder:
    """One run's folder: creation rules, metrics, hyperparameters and checkpoints."""

    def __init__(self, results_dir, run_name, resume=False, overwrite=False):
        """Creates or reopens `results_dir/run_name`.

        An existing folder is reopened only with `resume` and replaced only with
        `overwrite`; otherwise RunError.
        """
        self.path = os.path.join(results_dir, run_name)
        if os.path.exists(self.path) and not resume:
            if not overwrite:
                raise RunError(f'{self.path} already exists; pass --resume to continue it '
                               'or --overwrite to replace it')
            shutil.rmtree(self.path)
        try:
            os.makedirs(self.path, exist_ok=True)
            probe = os.path.join(self.path, f'.write-test{os.getpid()}')
            with open(probe, 'w'):
                pass
            os.remove(probe)
        except OSError as error:
            raise RunError(f'--results_dir {results_dir}: cannot write there ({error.strerror})') from None

    def file(self, name):
        return os.path.join(self.path, name)

    # Hyperparameters -------------------------------------------------------

    def write_hyperparameters(self, flags, extra):
        """Records the flags (and `extra` facts) or, on resume, checks they did not change."""
        path = self.file(HYPERPARAMETERS_FILE)
        if os.path.exists(path):
            with open(path) as f:
                previous = json.load(f)
            recorded = previous['flags']
            changed = sorted(name for name in set(recorded) | set(flags)
                             if name not in RESUMABLE_CHANGES and recorded.get(name) != flags.get(name))
            if previous.get('data_checksum') != extra.get('data_checksum'):
                changed.append('data (its checksum)')
            if changed:
                raise RunError(f'{self.path} was started with other settings ({", ".join(changed)}); '
                               'resume it with the same flags or start a new --run_name')
        write_json(path, {'flags': flags, **extra, 'versions': library_versions()})

    # Metrics ---------------------------------------------------------------

    def read_metrics(self):
        return read_metrics(self.file(METRICS_FILE))

    def write_metrics(self, rows, columns):
        write_csv(self.file(METRICS_FILE), rows, columns)

    # Checkpoints -----------------------------------------------------------

    def save_checkpoint(self, variables, iteration):
        """Saves the values of `variables` (a list) and the iteration reached."""
        arrays = {f'v{i:04d}': np.asarray(v.numpy()) for i, v in enumerate(variables)}
        atomic_write(self.file(CHECKPOINT_FILE),
                     lambda f: np.savez(f, iteration=iteration, **arrays))

    def restore_checkpoint(self, variables):
        """Assigns the checkpointed values to `variables`; returns the iteration (0 if none)."""
        path = self.file(CHECKPOINT_FILE)
        if not os.path.exists(path):
            return 0
        try:
            with np.load(path) as checkpoint:
                values = [checkpoint[f'v{i:04d}'] for i in range(len(variables))]
                iteration = int(checkpoint['iteration'])
        except Exception as error:  # A foreign or damaged file raises many types.
            raise RunError(f'{path} cannot be read ({error}); start a new run with --overwrite') from None
        for variable, value in zip(variables, values):
            if tuple(variable.shape) != value.shape:
                raise RunError(f'{path} does not match this model ({variable.name}: '
                               f'{value.shape} vs {tuple(variable.shape)})')
            variable.assign(value)
        return iteration
