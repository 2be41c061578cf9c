"""The submission zip: {Name}_{StudentNumber}_Assignment2.zip with the code, the report and the results.

    python report.py --name 송재현 --student_number 2020-12345
    python submit.py --name 송재현 --student_number 2020-12345

The zip holds one folder of the same name with
    the code        the assignment's commands (HANDIN_COMMANDS and the commands they import), the
                    fewshot/ package they need, README.md, requirements.txt and LICENSE; not the
                    project's tests, reference runs, docs or CI
    the report      report.md and report.pdf (written by report.py)
    the results     of every run folder under --results_dir: final weights (model.keras,
                    per_step_parameters.npz), figures, hyperparameters.json, metrics.csv,
                    summary.json and the other tables a run writes
and leaves out datasets, caches, checkpoints, TensorBoard logs, virtual environments and
__pycache__. In a git checkout it names every file git does not track that it leaves out; it
works outside one too. No file in the zip carries an absolute path of this machine: in the
results' text files (.json, .csv, .md) a path inside the project becomes relative to it and any
other absolute path keeps only its last part (…/omniglot). It prints the listing and the total
size, then re-opens the zip and checks every entry against what was meant to go in. An existing
zip is replaced only with --force.
"""

import ast
import hashlib
import os
import re
import subprocess
import zipfile

from absl import flags

from fewshot import cli, errors, results
from fewshot.cli import config, handin, scripts  # noqa: F401  They define --results_dir, --name and --student_number.

for _name in ('results_dir', 'name', 'student_number'):
    flags.declare_key_flag(_name)  # config's run folders to include; the name and number the report shows too.
flags.DEFINE_string('report', 'report.md', 'The report written by report.py (its .pdf must be beside it).')
flags.DEFINE_string('zip_dir', '.', 'Where to write the zip.')
flags.DEFINE_boolean('force', False, 'Replace an existing zip of the same name.')
FLAGS = flags.FLAGS

# The assignment's commands; the zip holds them, the commands they import, and the package.
HANDIN_COMMANDS = ('maml.py', 'maml_plusplus.py', 'maml_transfer.py', 'stability.py', 'initialization_lab.py',
                   'figures.py', 'report.py', 'submit.py')
PROJECT_FILES = ('README.md', 'requirements.txt', 'LICENSE')
PACKAGE = 'fewshot'
TEXT_SUFFIXES = ('.json', '.csv', '.md')  # Results files whose text may hold this machine's paths.
# An absolute path: / not inside a word, a relative path or a URL, then at least one character of a name.
ABSOLUTE_PATH = re.compile(r'(?<![\w/:.~-])/[^\s"\',;|()<>\[\]]+|\b[A-Za-z]:\\\\[^\s"\',;|()<>]+')
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


def imported_commands(repo, script):
    """The commands at the top of `repo` that `script` imports (import maml, from maml import ...)."""
    with open(os.path.join(repo, script), encoding='utf-8') as f:
        tree = ast.parse(f.read(), script)
    names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    names += [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module]
    return {f'{name}.py' for name in names if os.path.isfile(os.path.join(repo, f'{name}.py'))}


def code_files(repo):
    """The hand-in's code, relative to `repo`: HANDIN_COMMANDS, every command they import (transitively),
    the package's Python files and PROJECT_FILES that exist. Needs no git."""
    commands, pending = set(), [script for script in HANDIN_COMMANDS if os.path.isfile(os.path.join(repo, script))]
    while pending:
        script = pending.pop()
        if script not in commands:
            commands.add(script)
            pending += imported_commands(repo, script)
    package = [os.path.relpath(os.path.join(folder, file), repo).replace(os.sep, '/')
               for folder, subfolders, files in os.walk(os.path.join(repo, PACKAGE))
               for file in files if file.endswith('.py') and '__pycache__' not in folder]
    project = {name for name in PROJECT_FILES if os.path.isfile(os.path.join(repo, name))}
    return sorted(commands | set(package) | project)


def untracked_left_out(repo, entries):
    """The files of the git checkout `repo` that git does not track and the zip leaves out (None outside
    a git checkout)."""
    try:
        listed = subprocess.run(['git', 'ls-files', '-z', '--others', '--exclude-standard'], cwd=repo,
                                capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return sorted(path for path in listed.stdout.decode().split('\0') if path and path not in entries)


def without_machine_paths(text, bases):
    """`text` with every absolute path made relative to the first of `bases` (absolute folders: the
    project's, the results folder's parent) it lies in, else cut to …/<its last part>: a hand-in carries
    no path of the student's machine."""
    def replace(match):
        path = match.group(0)
        for base in bases:
            inside = os.path.relpath(path, base) if os.path.isabs(path) else '..'
            if not inside.startswith('..'):
                return inside.replace(os.sep, '/')
        return '…/' + re.split(r'[\\/]', path.rstrip('/\\'))[-1]
    return ABSOLUTE_PATH.sub(replace, text)


def entry_bytes(inside, source, bases):
    """What the zip holds for `source`: its bytes, or, for a results text file, its text without this
    machine's paths (`without_machine_paths`)."""
    with open(source, 'rb') as f:
        content = f.read()
    if inside.endswith(TEXT_SUFFIXES) and inside not in PROJECT_FILES:
        return without_machine_paths(content.decode('utf-8', errors='replace'), bases).encode()
    return content


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


def contents(repo, results_dir, report_path):
    """{path inside the zip (below its folder): source path} for everything handed in."""
    pdf = os.path.splitext(report_path)[0] + '.pdf'
    for path in (report_path, pdf):
        if not os.path.isfile(path):
            raise results.RunError(f'{path} does not exist; run python report.py first')
    entries = {path: os.path.join(repo, path) for path in code_files(repo)}
    entries = {inside: source for inside, source in entries.items() if os.path.isfile(source)}
    base = os.path.dirname(os.path.abspath(results_dir))
    for source in result_files(results_dir):
        entries[os.path.relpath(os.path.abspath(source), base).replace(os.sep, '/')] = source
    entries[os.path.basename(report_path)] = report_path
    entries[os.path.basename(pdf)] = pdf
    return entries


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def write_zip(path, folder, entries, force=False, bases=()):
    """Writes the zip atomically and checks every entry against what was meant to go in (`entry_bytes`,
    bases: the folders paths are made relative to); returns the listing."""
    if os.path.exists(path) and not force:
        raise results.RunError(f'{path} already exists; pass --force to replace it')
    with results.replacing(path) as temporary:
        return _write_and_check(temporary, folder, entries, [os.path.abspath(base) for base in bases])


def _write_and_check(temporary, folder, entries, bases):
    """Writes the zip to `temporary`, re-opens it and compares every entry with what was meant to go in."""
    meant = {inside: entry_bytes(inside, source, bases) for inside, source in entries.items()}
    with zipfile.ZipFile(temporary, 'w', zipfile.ZIP_DEFLATED) as archive:
        for inside, source in sorted(entries.items()):
            info = zipfile.ZipInfo.from_file(source, f'{folder}/{inside}')
            archive.writestr(info, meant[inside], compress_type=zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(temporary) as archive:  # Re-open what was written and check it.
        damaged = archive.testzip()
        if damaged:
            raise results.RunError(f'{temporary}: entry {damaged} is damaged')
        listing = [(info.filename, info.file_size) for info in archive.infolist()]
        expected = {f'{folder}/{inside}' for inside in entries}
        if {name for name, _ in listing} != expected:
            raise results.RunError(f'{temporary}: the entries differ from what was added')
        for inside, source in entries.items():
            if _sha256(archive.read(f'{folder}/{inside}')) != _sha256(meant[inside]):
                raise results.RunError(f'{temporary}: {inside} differs from {source}')
    return listing


def main(argv):
    del argv
    name = zip_name(FLAGS.name, FLAGS.student_number)
    results.check_writable(FLAGS.zip_dir, '--zip_dir')
    repo = scripts.ROOT
    entries = contents(repo, FLAGS.results_dir, FLAGS.report)
    os.makedirs(FLAGS.zip_dir, exist_ok=True)
    path = os.path.join(FLAGS.zip_dir, name)
    listing = write_zip(path, name[:-len('.zip')], entries, FLAGS.force,
                        bases=(repo, os.path.dirname(os.path.abspath(FLAGS.results_dir))))
    for entry, size in listing:
        print(f'{size:>12,d}  {entry}')
    left_out = untracked_left_out(repo, entries)
    if left_out is None:
        print(f'{repo} is not a git checkout: the zip holds the hand-in\'s files as listed; nothing else was looked at')
    elif left_out:
        print(f'left out, not tracked by git and not part of the hand-in: {", ".join(left_out)}')
    total = sum(size for _, size in listing)
    print(f'{len(listing)} files, {total / 1e6:.1f} MB uncompressed, {os.path.getsize(path) / 1e6:.1f} MB '
          f'zipped: {path} (every entry re-read and checked)')


def run():
    """The command, as `python submit.py` and `fewshot submit` run it."""
    flags.mark_flags_as_required(['name', 'student_number'])  # Here, so importing submit requires nothing.
    cli.run(main)
