"""The submission zip: {Name}_{StudentNumber}_Assignment2.zip with the code, the report and the results.

    python report.py && python submit.py --name 송재현 --student_number 2020-12345

The zip holds one folder of the same name with
    the code        the project's files tracked by git (README.md and requirements.txt among them)
    the report      report.md and report.pdf (written by report.py)
    the results     of every run folder under --results_dir: final weights (model.keras,
                    per_step_parameters.npz), figures, hyperparameters.json, metrics.csv,
                    summary.json and the other tables a run writes
and leaves out datasets, caches, checkpoints, TensorBoard logs, virtual environments and
__pycache__. It prints the listing and the total size, then re-opens the zip and checks
every entry against its source. An existing zip is replaced only with --force.
"""

import hashlib
import os
import re
import subprocess
import zipfile

from absl import flags

from fewshot import config, errors, results  # config defines --results_dir

flags.declare_key_flag('results_dir')  # config's: the run folders to include.
flags.DEFINE_string('name', None, 'Your name, as it should appear in the zip\'s name (any script).')
flags.DEFINE_string('student_number', None, 'Your student number, e.g. 2020-12345.')
flags.DEFINE_string('report', 'report.md', 'The report written by report.py (its .pdf must be beside it).')
flags.DEFINE_string('zip_dir', '.', 'Where to write the zip.')
flags.DEFINE_boolean('force', False, 'Replace an existing zip of the same name.')
FLAGS = flags.FLAGS

# What a run folder contributes: final weights, figures and tables; never checkpoints or logs.
RESULT_SUFFIXES = ('.json', '.csv', '.md', '.png', '.pdf', '.svg', '.keras', '.npz')
EXCLUDED_FILES = {results.CHECKPOINT_FILE}
EXCLUDED_DIRS = {'tensorboard', '__pycache__', '.venv', 'data'}
FORBIDDEN_IN_NAMES = re.compile(r'[\\/:*?"<>|\x00-\x1f]')


def zip_name(name, student_number):
    """'{Name}_{StudentNumber}_Assignment2.zip'; FlagError naming the flag if a part is unusable."""
    for flag, value in (('--name', name), ('--student_number', student_number)):
        if not value.strip() or FORBIDDEN_IN_NAMES.search(value) or value.strip() != value:
            raise errors.FlagError(f'{flag} {value!r}: must be non-empty, without surrounding spaces and '
                             'without any of \\ / : * ? " < > |')
    return f'{name}_{student_number}_Assignment2.zip'


def code_files(repo):
    """The project's files tracked by git, relative to `repo`."""
    try:
        listed = subprocess.run(['git', 'ls-files', '-z'], cwd=repo, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        raise results.RunError(f'{repo} is not a git checkout (git ls-files failed); the code is what '
                               'git tracks') from None
    return sorted(path for path in listed.stdout.decode().split('\0') if path)


def result_files(results_dir):
    """The files of results_dir to hand in (see RESULT_SUFFIXES), relative to its parent."""
    if not os.path.isdir(results_dir):
        raise results.RunError(f'--results_dir {results_dir}: folder does not exist')
    chosen = []
    for folder, subfolders, files in os.walk(results_dir):
        subfolders[:] = sorted(d for d in subfolders if d not in EXCLUDED_DIRS)
        for file in sorted(files):
            if (file.endswith(RESULT_SUFFIXES) and file not in EXCLUDED_FILES
                    and '.tmp' not in file):
                chosen.append(os.path.join(folder, file))
    if not any(os.path.basename(path) == results.HYPERPARAMETERS_FILE for path in chosen):
        raise results.RunError(f'no run folders in {results_dir}; train and run report.py first')
    return chosen


def contents(repo, results_dir, report):
    """{path inside the zip (below its folder): source path} for everything handed in."""
    pdf = os.path.splitext(report)[0] + '.pdf'
    for path in (report, pdf):
        if not os.path.isfile(path):
            raise results.RunError(f'{path} does not exist; run python report.py first')
    entries = {path: os.path.join(repo, path) for path in code_files(repo)}
    entries = {inside: source for inside, source in entries.items() if os.path.isfile(source)}
    base = os.path.dirname(os.path.abspath(results_dir))
    for source in result_files(results_dir):
        entries[os.path.relpath(os.path.abspath(source), base).replace(os.sep, '/')] = source
    entries[os.path.basename(report)] = report
    entries[os.path.basename(pdf)] = pdf
    return entries


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def write_zip(path, folder, entries, force=False):
    """Writes the zip atomically and checks every entry against its source; returns the listing."""
    if os.path.exists(path) and not force:
        raise results.RunError(f'{path} already exists; pass --force to replace it')
    with results.replacing(path) as temporary:
        return _write_and_check(temporary, folder, entries)


def _write_and_check(temporary, folder, entries):
    """Writes the zip to `temporary`, re-opens it and compares every entry with its source."""
    with zipfile.ZipFile(temporary, 'w', zipfile.ZIP_DEFLATED) as archive:
        for inside, source in sorted(entries.items()):
            archive.write(source, f'{folder}/{inside}')
    with zipfile.ZipFile(temporary) as archive:  # Re-open what was written and check it.
        damaged = archive.testzip()
        if damaged:
            raise results.RunError(f'{temporary}: entry {damaged} is damaged')
        listing = [(info.filename, info.file_size) for info in archive.infolist()]
        expected = {f'{folder}/{inside}' for inside in entries}
        if {name for name, _ in listing} != expected:
            raise results.RunError(f'{temporary}: the entries differ from what was added')
        for inside, source in entries.items():
            with open(source, 'rb') as f:
                if _sha256(archive.read(f'{folder}/{inside}')) != _sha256(f.read()):
                    raise results.RunError(f'{temporary}: {inside} differs from {source}')
    return listing


def main(argv):
    del argv
    name = zip_name(FLAGS.name, FLAGS.student_number)
    results.check_writable(FLAGS.zip_dir, '--zip_dir')
    entries = contents(os.path.dirname(os.path.abspath(__file__)), FLAGS.results_dir, FLAGS.report)
    os.makedirs(FLAGS.zip_dir, exist_ok=True)
    path = os.path.join(FLAGS.zip_dir, name)
    listing = write_zip(path, name[:-len('.zip')], entries, FLAGS.force)
    for entry, size in listing:
        print(f'{size:>12,d}  {entry}')
    total = sum(size for _, size in listing)
    print(f'{len(listing)} files, {total / 1e6:.1f} MB uncompressed, {os.path.getsize(path) / 1e6:.1f} MB '
          f'zipped: {path} (every entry re-read and checked)')


if __name__ == '__main__':
    flags.mark_flags_as_required(['name', 'student_number'])  # Here, so importing submit requires nothing.
    errors.run(main)
