"""Reference results: runs under the papers' protocols, kept small in reference/, and their table.

    python reference.py --add results/fomaml_paper_5way1shot   # keep a finished run, rewrite the tables
    python reference.py                                        # rewrite the tables from reference/
    python reference.py --check                                # fail if a committed table is stale
    python reference.py --continue protonet_paper_5way1shot --minutes 60   # a full-protocol run, one sitting more
    python reference.py --evaluate fomaml_paper_5way1shot      # re-score a kept run's released weights
    python reference.py --how_soon protonet_paper_5way1shot    # meta-test it where it first reached the paper

A kept run is a folder reference/<run name>/ holding the run's small files (REFERENCE_FILES) and,
for runs kept since weights are released, its final weights (RELEASED_FILES: model.keras, and the
final checkpoint, which holds the same weights with whatever else the learner learned, e.g. MAML++'s
step sizes). The table, one row per kept run beside the paper's number from reference/papers.csv (by
algorithm, dataset, way and shot), is written from those folders and the protocols between two marker
lines of reference/README.md and of README.md, never by hand. A protocol on a dataset that is not on
this project's machines (any but DATA_HERE) and with no kept run is a row too, "not run", with the one
command that runs it where the data is.

--evaluate re-scores a kept run: it checks that model.keras holds the checkpoint's weights, resumes
the finished run from that checkpoint in a temporary folder with every flag the run recorded (so
no iteration is left to train) and compares the meta-test with the table's: the same number,
bit for bit, on the same kind of machine (another CPU may round convolutions differently).

A run in progress keeps its whole state in reference/running/<protocol>/ (RUNNING_FILES: its
checkpoint, metrics and hyperparameters, about 1.4 MB at 64 filters), so that any machine continues
it: --continue copies the state into --results_dir, resumes the protocol's command there at the
lowest priority (its own session, autogroup and nice 19: `nice` alone does not lower a process
below other sessions' here), stops it at the first checkpoint after --minutes, and copies the state
back (Ctrl-C stops the run too, and copies back its last checkpoint); a run that finishes is kept
(as --add) and its state removed. The run is given the paper's number (--keep_checkpoint_at), so that
the checkpoint of its first validation at or above it is kept with it (REACHED_FILES): how soon it got
there, to meta-test.

--how_soon meta-tests a kept full-protocol run where it first reached its paper's number: it runs the
protocol again, at the lowest priority, to the first validation at or above that number (in
--results_dir/<run>_how_soon, resumable), whose meta-test on the protocol's test tasks (the full run's:
the same --eval_seed) it keeps as reference/<run>/how_soon.json, with the validation there in both
runs, for the table's "how soon" column. A protocol whose schedule spans its iterations (SPANS_RUN:
Reptile's annealing, MAML++'s cosine) would train differently in a shorter run: its runs keep a
checkpoint there as they go instead (--keep_checkpoint_at).

One action at a time (none: rewrite the tables), and only the flags it uses (USED_BY): a pair of
actions, or a flag the action would ignore, is an error before anything runs. --add checks all
that can refuse it (the run, the name it is kept under, papers.csv, both READMEs and the table they
will hold) before it writes anything, copies the run into a temporary folder beside its place and
renames it there, then writes the tables; a failure on the way leaves reference/ and the READMEs as
they were.
"""

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile

from absl import flags

from fewshot import cli, datasets, errors, results
from fewshot.cli import config, replay, scripts  # noqa: F401  config defines --results_dir

flags.DEFINE_string('add', None, 'A finished run folder (e.g. results/fomaml_paper_5way1shot) to keep in '
                    '--reference_dir; then the tables are rewritten.')
flags.DEFINE_boolean('replace', False, 'With --add: replace a kept run of the same name.')
flags.DEFINE_boolean('check', False, 'Write nothing; exit with an error if a table differs from what the kept '
                     'runs give.')
flags.DEFINE_string('reference_dir', 'reference', 'The kept runs, papers.csv and README.md with the table.')
flags.DEFINE_string('readme', 'README.md', "The project's README, whose copy of the table is rewritten too.")
flags.DEFINE_string('continue', None, 'A protocol (protocols/<name>.flags) whose full run to start or continue from '
                    '--reference_dir/running/<name>/ for --minutes, at the lowest priority; its state is written back.')
flags.DEFINE_float('minutes', 60, 'With --continue: stop at the first checkpoint after this many minutes.',
                   lower_bound=0)
flags.DEFINE_string('protocols_dir', 'protocols', 'Where the protocols\' flag files are: the one --continue runs, '
                    'and those the tables show as not run (default for the tables: the protocols/ folder beside '
                    'reference.py).')
flags.DEFINE_string('evaluate', None, 'A kept run (a folder name in --reference_dir) whose released weights to '
                    're-score on its test tasks; exits with an error unless the meta-test is the table\'s exactly.')
flags.DEFINE_string('how_soon', None, 'A kept full-protocol run to meta-test where it first reached its paper\'s '
                    'number: its protocol is run again to that validation, at the lowest priority, in --results_dir, '
                    'and the meta-test kept as --reference_dir/<run>/how_soon.json (see the module docstring).')
flags.DEFINE_boolean('lowest_priority', True, 'Run what --continue and --how_soon start at the lowest priority '
                     '(its own autogroup at weight 19, and nice 19); --nolowest_priority: at this process\'s, on a '
                     'machine nothing else needs (the tests: their other worker would starve it).')
flags.declare_key_flag('results_dir')  # config's: where --continue and --how_soon run.
flags.declare_key_flag('data_dir')  # config's: passed on to the runs --continue and --evaluate start.
flags.declare_key_flag('cache_dir')
flags.declare_key_flag('dataset_dir')  # config's: where a named --dataset's files are, passed on likewise.
FLAGS = flags.FLAGS

REFERENCE_FILES = ('hyperparameters.json', 'summary.json', 'metrics.csv', 'val_accuracy.png')
HOW_SOON_FILE = 'how_soon.json'  # Written into a kept run's folder by --how_soon (not by the run: --add drops it).
RELEASED_FILES = (results.MODEL_FILE, results.CHECKPOINT_FILE)  # The final weights, kept when the run has them.
RUNNING = 'running'  # reference/running/<protocol>/: runs in progress, not rows of the table.
RUNNING_FILES = ('hyperparameters.json', 'metrics.csv', results.CHECKPOINT_FILE)
# The checkpoint of the first validation that reached the paper's number, and when (--keep_checkpoint_at,
# which --continue gives): kept with a run in progress and a kept run, where the run has them.
REACHED_FILES = (results.REACHED_FILE, results.REACHED_CHECKPOINT_FILE)
# Protocol prefix -> command.
COMMANDS = {'fomaml': 'maml.py', 'maml': 'maml.py', 'mamlpp': 'maml_plusplus.py', 'imaml': 'imaml.py',
            'reptile': 'reptile.py', 'protonet': 'protonet.py', 'relationnet': 'relationnet.py', 'anil': 'anil.py'}
# Protocol prefix -> the algorithm its command records at the order its files set (papers.csv's name for it).
ALGORITHMS = {'fomaml': 'FO-MAML', 'maml': 'MAML', 'mamlpp': 'MAML++', 'imaml': 'iMAML', 'reptile': 'Reptile',
              'protonet': 'ProtoNet', 'relationnet': 'RelationNet', 'anil': 'ANIL'}
# Protocol prefixes whose schedule spans the run's iterations: a shorter run trains differently.
SPANS_RUN = {'reptile': "Reptile's meta step size anneals over them", 'mamlpp': "MAML++'s cosine schedule spans them"}
PROTOCOLS_DIR = os.path.join(scripts.ROOT, 'protocols')  # The tables', from anywhere in a checkout.
DATA_HERE = frozenset({'omniglot'})  # --dataset values whose data this project's machines hold.
NOT_RUN = "not run: the data is not on this project's machines"
# --dataset -> its name in the table (any other value, e.g. folder:PATH, as it is).
PAPERS_FILE = 'papers.csv'
PAPER_COLUMNS = ('algorithm', 'dataset', 'n_way', 'k_shot', 'accuracy', 'ci95', 'iterations', 'source')
BEGIN = '<!-- reference results: written by python reference.py from reference/; do not edit -->'
END = '<!-- end of reference results -->'
FLAGFILE = re.compile(r'--flagfile[= ](\S+)')
LEFT_BY_ADD = re.compile(r'\.(.+)\.(adding|replaced)(\d+)')  # `add`'s temporary folders: .<run>.adding<pid>.
ACTIONS = ('add', 'check', 'continue', 'evaluate', 'how_soon')  # One at a time; none: rewrite the tables.
# The flags only some actions use -> those actions ('': none of them, the tables rewritten); given to
# another, a flag would be ignored.
USED_BY = {'replace': ('add',), 'minutes': ('continue',), 'protocols_dir': ('', 'add', 'check', 'continue', 'how_soon'),
           'results_dir': ('continue', 'how_soon'), 'lowest_priority': ('continue', 'how_soon'),
           'data_dir': ('continue', 'evaluate', 'how_soon'), 'cache_dir': ('continue', 'evaluate', 'how_soon'),
           'dataset_dir': ('continue', 'evaluate', 'how_soon'),
           'readme': ('', 'add', 'check', 'continue', 'how_soon')}


def chosen_action():
    """The action the command line asks for, one of ACTIONS or '' (rewrite the tables); FlagError,
    naming both flags, for two actions or for a flag the action would ignore."""
    given = [name for name in ACTIONS if (FLAGS[name].value if name == 'check' else FLAGS[name].value is not None)]
    if len(given) > 1:
        raise errors.FlagError(f'--{given[0]} and --{given[1]} contradict each other: reference.py does one of '
                               f'{", ".join(f"--{name}" for name in ACTIONS)} at a time (the other would be ignored)')
    action = given[0] if given else ''
    if action in ('add', 'continue', 'evaluate', 'how_soon') and not FLAGS[action].value:
        raise errors.FlagError(f'--{action} is empty: give it a ' +
                               {'add': 'finished run folder, e.g. --add=results/fomaml_paper_5way1shot',
                                'continue': 'protocol, e.g. --continue=protonet_paper_5way1shot',
                                'evaluate': 'kept run, e.g. --evaluate=fomaml_paper_5way1shot',
                                'how_soon': 'kept run, e.g. --how_soon=protonet_paper_5way1shot'}[action])
    for name, actions in USED_BY.items():
        if FLAGS[name].present and action not in actions:
            users = ' or '.join(f'--{user}' for user in actions if user)
            if action:
                raise errors.FlagError(f'--{name} with --{action}: --{action} would ignore it ('
                                       f'{"--evaluate writes no table" if name == "readme" else f"it is for {users}"})')
            raise errors.FlagError(f'--{name} without {users}: it would be ignored (it is for {users})')
    return action


def kept_target(reference_dir, name, replace, flag):
    """reference_dir/name, where the run `name` is to be kept; RunError if it may not go there."""
    target = os.path.join(reference_dir, name)
    if name == RUNNING:
        raise errors.RunError(f'{flag}: a run named {RUNNING} cannot be kept: {target} holds the runs in progress; '
                              'rename the run folder')
    if os.path.lexists(target):
        if not replace:
            raise errors.RunError(f'{flag}: {target} already exists; pass --replace to replace it')
        if not results.is_run_folder(target):
            raise errors.RunError(f'{flag}: {target} exists and is not a kept run (a folder with '
                                  f'{results.HYPERPARAMETERS_FILE}); it is left alone: move it away')
    return target


def addable(run_dir, reference_dir, replace):
    """Checks all that can refuse keeping the run folder `run_dir`: (its name, its hyperparameters, its
    summary, {file: content} of the files to keep), read now; RunError (FlagError) otherwise."""
    if not os.path.isdir(run_dir):
        raise errors.RunError(f'--add {run_dir}: ' + ('not a folder' if os.path.lexists(run_dir) else 'does not exist'))
    real = os.path.realpath(run_dir)
    name = os.path.basename(real)  # --add=. inside results/myrun keeps it as myrun.
    if real == os.path.realpath(reference_dir):
        raise errors.FlagError(f'--add {run_dir}: that is --reference_dir itself; give a finished run folder')
    if not results.is_run_name(name):
        raise errors.FlagError(f'--add {run_dir}: {real} has no folder name to keep it under; give a run folder')
    hyperparameters = results.read_hyperparameters(run_dir)
    summary = results.read_summary(run_dir)
    if summary is None:
        raise errors.RunError(f'--add {run_dir}: the run has not finished (no {results.SUMMARY_FILE}); '
                              'keep it once its meta-test is done')
    check_record(run_dir, hyperparameters)
    kept_target(reference_dir, name, replace, '--add')
    contents = {}
    for file in REFERENCE_FILES + RELEASED_FILES + REACHED_FILES:
        path = os.path.join(run_dir, file)
        if os.path.isfile(path):
            with open(path, 'rb') as f:
                contents[file] = f.read()
    released = [file for file in RELEASED_FILES if file in contents]
    if len(released) == 1:
        missing, = set(RELEASED_FILES) - set(released)
        raise errors.RunError(f'--add {run_dir}: it has {released[0]} but no {missing}; the released weights are '
                              'kept both or not at all')
    return name, hyperparameters, summary, contents


def add(run_dir, reference_dir, readmes, replace=False, protocols_dir=PROTOCOLS_DIR):
    """Keeps the finished run `run_dir` in reference_dir/<its folder's name>/ and rewrites the tables
    in `readmes`. Everything that can refuse is checked first; the run is copied into a temporary
    folder beside its place and renamed there (a kept run it replaces is moved aside until the
    tables are written), so that a failure on the way leaves reference_dir and the READMEs as they
    were. Returns the kept folder."""
    name, hyperparameters, summary, contents = addable(run_dir, reference_dir, replace)
    texts = tables(reference_dir, readmes, (name, hyperparameters, summary, results.MODEL_FILE in contents, run_dir),
                   protocols_dir)
    results.check_writable(reference_dir, '--reference_dir')
    for path in texts:  # A README is rewritten through a temporary file beside it.
        if not os.access(os.path.dirname(os.path.abspath(path)), os.W_OK | os.X_OK):
            raise errors.OutputError(f'{path}: its folder is not writable, and its table is rewritten there')
    target = os.path.join(reference_dir, name)
    new, old = (os.path.join(reference_dir, f'.{name}.{what}{os.getpid()}') for what in ('adding', 'replaced'))
    made = moved_aside = placed = False
    written = []
    try:
        os.mkdir(new)
        made = True
        for file, content in contents.items():
            results.atomic_write(os.path.join(new, file), lambda f, content=content: f.write(content))
        if os.path.lexists(target):
            os.rename(target, old)
            moved_aside = True
        os.rename(new, target)
        placed = True
        for path, (text, current) in texts.items():
            if text != current:
                results.atomic_write(path, lambda f, text=text: f.write(text.encode('utf-8')))
                written.append((path, current))
    except BaseException:  # A full disk, an interrupt: undo what was done, then report the failure.
        for path, text in written:
            _quietly(results.atomic_write, path, lambda f, text=text: f.write(text.encode('utf-8')))
        if made:
            _quietly(shutil.rmtree, target if placed else new)
        if moved_aside:
            _quietly(os.rename, old, target)
        raise
    if moved_aside:
        shutil.rmtree(old, ignore_errors=True)
    print(f'kept {run_dir} in {target}')
    for path, _ in written:
        print(f'rewrote the table in {path}')
    return target


def _quietly(step, *arguments):
    """step(*arguments), its OSError ignored: undoing, after the failure that is reported."""
    try:
        step(*arguments)
    except OSError:
        pass


def read_papers(reference_dir):
    """The papers' numbers by (algorithm, dataset, n_way, k_shot), dataset as --dataset names it: dicts
    with accuracy, ci95 (None if the paper gives none), iterations (None if no count is known) and source
    (never empty: every number has one)."""
    path = os.path.join(reference_dir, PAPERS_FILE)
    try:
        with open(path, newline='', encoding='utf-8') as f:
            rows = list(csv.DictReader(f))
    except OSError as error:
        raise errors.RunError(errors.describe_os_error(error)) from None
    papers = {}
    for line, row in enumerate(rows, start=2):
        try:
            key = (row['algorithm'], row['dataset'], int(row['n_way']), int(row['k_shot']))
            papers[key] = {'accuracy': float(row['accuracy']), 'ci95': float(row['ci95']) if row['ci95'] else None,
                           'iterations': int(row['iterations']) if row['iterations'] else None,
                           'source': row['source'].strip()}
            if not papers[key]['source'] or not row['algorithm'] or not row['dataset']:
                raise ValueError('a cell left empty')
        except (KeyError, TypeError, ValueError, AttributeError):
            raise errors.RunError(f'{path}, line {line}: expected the columns {", ".join(PAPER_COLUMNS)}, '
                                  'with numbers where numbers go and a source for each row') from None
    return papers


def kept_runs(reference_dir):
    """(name, hyperparameters, summary) of every kept run, by name."""
    runs = []
    for name in sorted(os.listdir(reference_dir)):
        path = os.path.join(reference_dir, name)
        left = LEFT_BY_ADD.fullmatch(name)
        if left and os.path.isdir(path):
            raise errors.RunError(f'{path}: a folder that a stopped reference.py --add left (process {left[3]}); '
                                  f'remove it (a ".replaced" one holds the kept run it replaced: if '
                                  f'{os.path.join(reference_dir, left[1])} is missing, rename it back to that)')
        if os.path.isdir(path) and name != RUNNING:
            summary = results.read_summary(path)
            if summary is None:
                raise errors.RunError(f'{path}: no {results.SUMMARY_FILE}; a kept run must be finished')
            hyperparameters = results.read_hyperparameters(path)
            check_record(path, hyperparameters)
            runs.append((name, hyperparameters, summary))
    return runs


def check_record(run_dir, hyperparameters):
    """RunError unless a row of the table can be made from the run's hyperparameters.json: a few-shot
    classification run (n_way and k_shot), with text where the row takes text."""
    path = os.path.join(run_dir, results.HYPERPARAMETERS_FILE)
    missing = [name for name in ('n_way', 'k_shot') if name not in hyperparameters['flags']]
    if missing:
        raise errors.RunError(f'{path}: no {" or ".join(missing)}; the table holds few-shot classification runs')
    versions = hyperparameters.get('versions', {})
    if not isinstance(versions, dict):
        raise errors.RunError(f'{path} is damaged: "versions" is not a JSON object')
    for key, value in (*hyperparameters.items(), *(('versions.' + key, value) for key, value in versions.items())):
        if key in ('algorithm', 'command', 'batch_norm', 'versions.machine') and not isinstance(value, str):
            raise errors.RunError(f'{path} is damaged: "{key}" is not text')


def recorded_command(hyperparameters):
    """The command the run recorded as a checkout runs it, 'maml.py --flags': its script named without its
    folder (--continue's child named it in full), and 'fewshot maml --flags' (what a tool's child records
    since commands are installed) as the script maml.py."""
    program, *arguments = hyperparameters.get('command', '?').split(' ')
    program = os.path.basename(program)
    if program == scripts.PROGRAM and arguments:
        program, *arguments = arguments
        program += '.py'
    return ' '.join([program, *arguments])


def protocol_of(hyperparameters):
    """The protocol a run was made under (its --flagfile's name without folder and .flags), or None."""
    protocol = FLAGFILE.search(recorded_command(hyperparameters))
    return os.path.splitext(os.path.basename(protocol[1]))[0] if protocol else None


def dataset_name(dataset):
    """How the table names the --dataset value `dataset`."""
    return datasets.DISPLAY_NAMES.get(dataset, dataset).replace('|', '\\|')


def paper_cells(paper):
    """The paper's number and source as the table shows them ('–' for both without a paper)."""
    if not paper:
        return '–', '–'
    interval = f" ± {paper['ci95']:.2f}" if paper['ci95'] is not None else ''
    return f"{paper['accuracy']:.2f}{interval}", paper['source']


def first_reaching(folder, paper):
    """The metrics row of the first validation of the run in `folder` at or above the paper's number; None."""
    rows = results.read_metrics(os.path.join(folder, results.METRICS_FILE), required=True)
    return next((row for row in rows if 100 * row['val_post_accuracy'] >= paper['accuracy']), None)


def how_soon(folder, summary, paper):
    """The table's "how soon" cell of a full-protocol run whose files are in `folder` (None: not read): the
    first validation at or above the paper's number, and the meta-test there (--how_soon's HOW_SOON_FILE)."""
    if not paper or paper['iterations'] is None or summary['iterations'] < paper['iterations'] or folder is None:
        return '–'
    first = first_reaching(folder, paper)
    if first is None:
        return f"not earlier: no validation reached {paper['accuracy']:.2f}"
    cell = f"validation at {int(first['iteration']):,}"
    path = os.path.join(folder, HOW_SOON_FILE)
    if not os.path.exists(path):
        return f'{cell} (a meta-test there: not yet run, `python reference.py --how_soon {os.path.basename(folder)}`)'
    there = results.read_json(path)
    share = there['iteration'] / summary['iterations']
    return (f"{cell}: meta-test there {100 * there['test_post_accuracy']:.2f} ± {100 * there['test_post_ci95']:.2f}, "
            f"{share:.0%} of the iterations")


def row(name, hyperparameters, summary, papers, weights, folder=None):
    """One line of the table (markdown) for a kept run; weights: the link to its model.keras, or None;
    folder: where its files are (for `how_soon`)."""
    flags_ = hyperparameters['flags']
    algorithm = hyperparameters.get('algorithm', '?')
    dataset = flags_.get('dataset', 'omniglot')
    setting = f"{flags_['n_way']}-way {flags_['k_shot']}-shot"
    ours = f"{100 * summary['test_post_accuracy']:.2f} ± {100 * summary['test_post_ci95']:.2f}"
    batch_norm = hyperparameters.get('batch_norm', '').split(' ')[0] or '?'
    paper = papers.get((algorithm, dataset, flags_['n_way'], flags_['k_shot']))
    command = recorded_command(hyperparameters)
    protocol = protocol_of(hyperparameters) or 'own flags'
    paper_text, source = paper_cells(paper)
    if paper:
        gap_text = difference(100 * summary['test_post_accuracy'], 100 * summary['test_post_ci95'], paper)
        if paper['iterations'] is None:
            iterations = f"{summary['iterations']:,} (the paper's count is not known)"
        else:
            full = summary['iterations'] >= paper['iterations']
            iterations = f"{summary['iterations']:,} of {paper['iterations']:,} ({'full' if full else 'shortened'})"
    else:
        gap_text = '–'
        iterations = f"{summary['iterations']:,}"
    hours = summary['training_seconds'] / 3600
    machine = hyperparameters.get('versions', {}).get('machine', '?')
    cells = [algorithm, dataset_name(dataset), setting, f'`{protocol}`', f'{ours} ({batch_norm})', paper_text, gap_text,
             iterations, how_soon(folder, summary, paper), f'{hours:.2f} h, {machine}',
             f'[model.keras]({weights})' if weights else '–', source,
             f'`python {command}`']
    return '| ' + ' | '.join(cells) + ' |'


def read_protocol(path):
    """The flags a protocol file sets, {name: value as text}, from its lines --name=value (comments and
    blank lines skipped); RunError if it cannot be read or a line is not a flag."""
    values = {}
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith('#'):
            continue
        name, equals, value = line.removeprefix('--').partition('=')
        if not line.startswith('--') or not equals or not name:
            raise errors.RunError(f'{path}, line {number}: not a flag --name=value ({line[:80]!r})')
        values[name] = value
    return values


def protocol_setting(path):
    """(dataset, n_way, k_shot) of the protocol file `path`, a flag it leaves out at its default;
    RunError if a way or shot is not a whole number."""
    values = read_protocol(path)
    setting = [values.get('dataset', FLAGS['dataset'].default)]
    for name in ('n_way', 'k_shot'):
        try:
            setting.append(int(values.get(name, FLAGS[name].default)))
        except ValueError:
            raise errors.RunError(f'{path}: --{name}={values[name]} is not a whole number') from None
    return tuple(setting)


def not_run_rows(protocols_dir, papers, kept_protocols):
    """The rows of the protocols in protocols_dir of a command this tool runs, on a dataset not on this
    project's machines (not DATA_HERE), that no kept run was made under: each 'not run', with the
    command that runs it where the data is."""
    if not os.path.isdir(protocols_dir):
        return []
    shown = 'protocols' if os.path.abspath(protocols_dir) == PROTOCOLS_DIR else protocols_dir
    lines = []
    for file in sorted(os.listdir(protocols_dir)):
        name, extension = os.path.splitext(file)
        prefix = name.split('_')[0]
        if extension != '.flags' or prefix not in COMMANDS or name in kept_protocols:
            continue
        dataset, n_way, k_shot = protocol_setting(os.path.join(protocols_dir, file))
        if dataset in DATA_HERE:
            continue
        algorithm = ALGORITHMS.get(prefix, '?')
        paper = papers.get((algorithm, dataset, n_way, k_shot))
        paper_text, source = paper_cells(paper)
        iterations = f"0 of {paper['iterations']:,}" if paper and paper['iterations'] is not None else '–'
        where = '/path/to/' + dataset.replace('_', '-')
        command = f'python {COMMANDS[prefix]} --flagfile={shown}/{file} --dataset_dir={where}'
        cells = [algorithm, dataset_name(dataset), f'{n_way}-way {k_shot}-shot', f'`{name}`', NOT_RUN, paper_text,
                 '–', iterations, '–', '–', '–', source, f'`{command}`']
        lines.append('| ' + ' | '.join(cells) + ' |')
    return lines


def difference(ours, ours_ci95, paper):
    """ours − paper in points, ± the half-width of its 95% interval: both intervals combined as
    independent (√(a² + b²)), or ours alone where the paper gives none; and whether it excludes 0."""
    gap = ours - paper['accuracy']
    both = paper['ci95'] is not None
    half = (ours_ci95 ** 2 + paper['ci95'] ** 2) ** 0.5 if both else ours_ci95
    verdict = 'below' if gap + half < 0 else 'above' if gap - half > 0 else 'no difference shown'
    return f"{gap:+.2f} ± {half:.2f} ({verdict}{'' if both else '; ours ± only: the paper gives no interval'})"


def table(reference_dir, where, added=None, protocols_dir=PROTOCOLS_DIR):
    """The markdown table of every kept run, then of every protocol in protocols_dir not run for want
    of its data (see `not_run_rows`), with its marker lines, for a file in the folder `where` (the links
    to the weights are relative to it).

    added: (name, hyperparameters, summary, whether it has model.keras[, the folder its files are in]) of a
    run about to be kept, in the place of a kept run of that name: the table as it will be, before
    anything is copied.
    """
    papers = read_papers(reference_dir)
    runs = {name: (hyperparameters, summary, os.path.isfile(os.path.join(reference_dir, name, results.MODEL_FILE)),
                   os.path.join(reference_dir, name))
            for name, hyperparameters, summary in kept_runs(reference_dir)}
    if added:
        runs[added[0]] = (*added[1:4], added[4] if len(added) > 4 else None)
    header = ('| algorithm | dataset | setting | protocol | ours: meta-test % ± 95% CI (batch norm) | paper | '
              'ours − paper, points ± 95% CI | iterations run, of the paper\'s | how soon: the first validation at '
              'the paper\'s number | training time, CPU | weights | paper\'s source | command |')
    lines = [BEGIN, header, '|' + '---|' * header.count(' | ') + '---|']
    for name in sorted(runs):
        hyperparameters, summary, released, folder = runs[name]
        model = os.path.join(reference_dir, name, results.MODEL_FILE)
        weights = os.path.relpath(model, where).replace(os.sep, '/') if released else None
        lines.append(row(name, hyperparameters, summary, papers, weights, folder))
    kept_protocols = {protocol_of(hyperparameters) for hyperparameters, _, _, _ in runs.values()}
    lines += not_run_rows(protocols_dir, papers, kept_protocols)
    return '\n'.join(lines + [END])


def read_text(path):
    """The text of the markdown file `path`; RunError if it cannot be read as UTF-8 text."""
    try:
        with open(path, encoding='utf-8') as f:
            return f.read()
    except OSError as error:
        raise errors.RunError(errors.describe_os_error(error)) from None
    except ValueError:  # Bytes that are not UTF-8.
        raise errors.RunError(f'{path}: not UTF-8 text') from None


def with_table(path, new_table, text=None):
    """The text of the markdown file `path` (or `text`, read from it) with the part between the marker
    lines replaced."""
    text = read_text(path) if text is None else text
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise errors.RunError(f'{path}: no table markers; the table goes between a line {BEGIN} and a line {END}')
    return text[:start] + new_table + text[end + len(END):]


def tables(reference_dir, readmes, added=None, protocols_dir=PROTOCOLS_DIR):
    """{path: (its text with the table the kept runs, `added` (see `table`) and the protocols give, its
    text now)} for each README of `readmes`; RunError if one cannot be read or has no markers, or the
    table cannot be made."""
    texts = {}
    for path in readmes:
        current = read_text(path)
        new_table = table(reference_dir, os.path.dirname(os.path.abspath(path)), added, protocols_dir)
        texts[path] = (with_table(path, new_table, current), current)
    return texts


def start_run(command):
    """Starts the run `command` in a session of its own (the terminal's Ctrl-C is not sent to it: the tool
    stops it), at the lowest priority unless --nolowest_priority."""
    return subprocess.Popen(command, preexec_fn=lowest_priority if FLAGS.lowest_priority else _default_sigint,
                            start_new_session=True, env=scripts.environment())


def _priority():
    """How start_run starts a run, as its log line says it."""
    return 'at the lowest priority' if FLAGS.lowest_priority else "at this process's priority (--nolowest_priority)"


def _default_sigint():
    """In the child: SIGINT, which stops it, at its default (a shell's background job inherits it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def lowest_priority():
    """In the child, before it runs: its own autogroup at the lowest weight, and nice 19; SIGINT at its
    default."""
    _default_sigint()
    try:
        with open('/proc/self/autogroup', 'w') as f:
            f.write('19')
    except OSError:
        pass  # No autogroups here: nice alone lowers it.
    os.nice(19)


def continue_run(name, minutes, reference_dir, results_dir, protocols_dir, readmes, data_dir=None, cache_dir=None,
                 dataset_dir=None, table_protocols_dir=PROTOCOLS_DIR):
    """One sitting of the full-protocol run `name` (see the module docstring); returns its iteration.
    What keeping the run when it finishes needs (the tables in `readmes`, its place in reference_dir)
    is checked before the sitting starts. data_dir, cache_dir, dataset_dir: passed on to the run if given;
    table_protocols_dir: the protocols the tables show (see `table`)."""
    flagfile = os.path.join(protocols_dir, f'{name}.flags')
    script = COMMANDS.get(name.split('_')[0])
    if not results.is_run_name(name) or not os.path.isfile(flagfile) or script is None:
        raise errors.FlagError(f'--continue {name}: no protocol {flagfile} of a command this tool runs '
                               f'({", ".join(f"{prefix}_*" for prefix in COMMANDS)})')
    tables(reference_dir, readmes, protocols_dir=table_protocols_dir)
    kept_target(reference_dir, name, True, f'--continue {name}')
    state, folder = os.path.join(reference_dir, RUNNING, name), os.path.join(results_dir, name)
    if os.path.isdir(state) and replay.checkpoint_iteration(state) > (replay.checkpoint_iteration(folder)
                                                              if os.path.isdir(folder) else -1):
        replay.copy_files(state, folder, RUNNING_FILES + REACHED_FILES)  # The committed state is further along.
    command = [*scripts.argv(script), f'--flagfile={flagfile}', f'--run_name={name}', f'--results_dir={results_dir}',
               '--progress=false']
    command += [f'--{flag}={value}' for flag, value in
                (('data_dir', data_dir), ('cache_dir', cache_dir), ('dataset_dir', dataset_dir)) if value]
    paper = read_papers(reference_dir).get((ALGORITHMS[name.split('_')[0]], *protocol_setting(flagfile)))
    if paper:  # How soon the run reaches the paper's number: its checkpoint there is kept.
        command.append(f'--keep_checkpoint_at={paper["accuracy"] / 100:g}')
    if os.path.isdir(folder):
        command.append('--resume')
    print(f'reference.py: {name} from iteration {replay.checkpoint_iteration(folder) if os.path.isdir(folder) else 0} '
          f'for {minutes:g} minutes {_priority()}: {" ".join(command)}', flush=True)
    child = start_run(command)
    checkpoint = os.path.join(folder, results.CHECKPOINT_FILE)
    try:
        stopped = sitting(child, time.time() + 60 * minutes, checkpoint)
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the child, in a session of its own, was not sent it.
        child.send_signal(signal.SIGINT)
        child.wait()
        if os.path.exists(checkpoint):  # Its last checkpoint, which the next sitting resumes from.
            replay.copy_files(folder, state, RUNNING_FILES + REACHED_FILES)
            print(f'reference.py: {name} interrupted; its state at iteration {replay.checkpoint_iteration(state)} '
                  f'is in {state}', file=sys.stderr, flush=True)
        raise
    if results.read_summary(folder) is not None:
        add(folder, reference_dir, readmes, replace=True, protocols_dir=table_protocols_dir)
        shutil.rmtree(state, ignore_errors=True)
        print(f'reference.py: {name} finished; kept in {reference_dir}/{name}')
        return results.read_summary(folder)['iterations']
    if not os.path.exists(checkpoint):
        raise errors.RunError(f'{name} stopped (exit status {child.returncode}) before its first checkpoint; '
                              'nothing to keep')
    replay.copy_files(folder, state, RUNNING_FILES + REACHED_FILES)
    iteration = replay.checkpoint_iteration(state)
    if not stopped:
        raise errors.RunError(f'{name} stopped by itself (exit status {child.returncode}; its message is above) '
                              f'at iteration {iteration}; its state is kept in {state}')
    print(f'reference.py: {name} at iteration {iteration}; its state is in {state} (commit it to continue '
          'elsewhere)')
    return iteration


def sitting(child, deadline, checkpoint):
    """Waits for the run `child` to end, or stops it (SIGINT) at its first checkpoint after `deadline`;
    returns whether it was stopped."""
    stamp = None
    while child.poll() is None:
        time.sleep(1)
        if time.time() >= deadline:
            if stamp is None:  # The checkpoint when time ran out: stop at the next one.
                stamp = os.path.getmtime(checkpoint) if os.path.exists(checkpoint) else 0
            if os.path.exists(checkpoint) and os.path.getmtime(checkpoint) > stamp:
                time.sleep(2)  # The checkpoint is renamed into place last: the row and state are whole.
                child.send_signal(signal.SIGINT)
                child.wait()
                return True
    return False


def check_released_weights(folder, name):
    """RunError unless the kept run `name` in `folder` has its weights, both files can be read, and
    model.keras holds the checkpoint's."""
    missing = [file for file in RELEASED_FILES if not os.path.isfile(os.path.join(folder, file))]
    if missing:
        raise errors.RunError(f'--evaluate {name}: {folder} has no {" or ".join(missing)}: its weights were not '
                              'released (runs kept before weights were kept have none)')
    import keras  # Here: the table's other uses need no TensorFlow.
    import numpy as np
    from fewshot import network  # noqa: F401  (its layers, which model.keras names)
    model_path, checkpoint_path = (os.path.join(folder, file) for file in (results.MODEL_FILE, results.CHECKPOINT_FILE))
    try:
        if not zipfile.is_zipfile(model_path):  # Keras would say 'File not found'.
            raise ValueError('not a zip archive, which a .keras file is')
        weights = {key: variable.numpy() for key, variable in
                   results.named_variables('model', keras.models.load_model(model_path)).items()}
    except Exception as error:  # A damaged or foreign file raises many types (ValueError, BadZipFile, KeyError, ...).
        raise errors.RunError(f'--evaluate {name}: {model_path} cannot be read ({one_line(error)})') from None
    try:
        with np.load(checkpoint_path) as checkpoint:
            arrays = {key: checkpoint[key] for key in checkpoint.files}
    except Exception as error:
        raise errors.RunError(f'--evaluate {name}: {checkpoint_path} cannot be read ({one_line(error)})') from None
    for key, values in weights.items():
        if key not in arrays or not np.array_equal(values, arrays[key]):
            raise errors.RunError(f'--evaluate {name}: {folder}: model.keras does not hold the checkpoint\'s weights '
                                  f'({key} differs or is missing); the folder was changed after it was kept')


def one_line(error, limit=300):
    """An exception's message on one line, at most `limit` characters, with its type."""
    text = ' '.join(str(error).split()) or 'no message'
    text = text if len(text) <= limit else text[:limit - 3] + '...'
    return f'{type(error).__name__}: {text}'


def evaluate_kept(name, reference_dir, data_dir=None, cache_dir=None, dataset_dir=None):
    """Re-scores the kept run `name` from its released weights (see the module docstring); RunError
    unless the meta-test is the kept one exactly. Returns the re-scored summary."""
    folder = os.path.join(reference_dir, name)
    if not results.is_run_name(name) or name == RUNNING or not os.path.isdir(folder):
        raise errors.FlagError(f'--evaluate {name}: no kept run {folder}')
    hyperparameters, kept = results.read_hyperparameters(folder), results.read_summary(folder)
    if kept is None:
        raise errors.RunError(f'--evaluate {name}: {folder} has no {results.SUMMARY_FILE}; a kept run is finished')
    check_record(folder, hyperparameters)
    check_released_weights(folder, name)
    with tempfile.TemporaryDirectory() as scratch:
        extra = [f'--{flag}={value}' for flag, value in
                 (('data_dir', data_dir), ('cache_dir', cache_dir), ('dataset_dir', dataset_dir)) if value]
        print(f'reference.py: re-scoring {name} on its {kept["test_tasks"]} test tasks', flush=True)
        if replay.resume_copy(folder, scratch, extra)[1] != 0:
            raise errors.RunError(f'--evaluate {name}: the re-scoring run failed (its message is above)')
        again = results.read_summary(os.path.join(scratch, name))
    keys = ('test_post_accuracy', 'test_post_ci95', 'test_pre_accuracy')
    shown = ', '.join(f'{key} {kept[key]!r} kept, {again[key]!r} now' for key in keys)
    if any(kept[key] != again[key] for key in keys):
        machine = hyperparameters.get('versions', {}).get('machine', '?')
        raise errors.RunError(f'--evaluate {name}: the meta-test differs from the kept one ({shown}); the run was '
                              f'made on {machine}, this is {results.machine()}')
    print(f'reference.py: {name} reproduced exactly: meta-test {100 * again["test_post_accuracy"]:.2f}% ± '
          f'{100 * again["test_post_ci95"]:.2f}% ({shown})')
    return again


def how_soon_run(name, reference_dir, results_dir, protocols_dir, data_dir=None, cache_dir=None, dataset_dir=None):
    """Meta-tests the kept full-protocol run `name` at its first validation reaching the paper's number (see the
    module docstring) and keeps the result in its HOW_SOON_FILE; returns what it keeps."""
    folder, flag = os.path.join(reference_dir, name), f'--how_soon {name}'
    if not results.is_run_name(name) or name == RUNNING or not os.path.isdir(folder):
        raise errors.FlagError(f'{flag}: no kept run {folder}')
    hyperparameters, summary = results.read_hyperparameters(folder), results.read_summary(folder)
    flags_, prefix = hyperparameters['flags'], name.split('_')[0]
    paper = read_papers(reference_dir).get((hyperparameters.get('algorithm'), flags_.get('dataset', 'omniglot'),
                                            flags_['n_way'], flags_['k_shot']))
    if summary is None or not paper or paper['iterations'] is None or summary['iterations'] < paper['iterations']:
        raise errors.RunError(f'{flag}: not a finished full-protocol row (papers.csv gives its number and iterations)')
    if prefix in SPANS_RUN:
        raise errors.FlagError(f'{flag}: {SPANS_RUN[prefix]}, so a shorter run trains differently; its runs keep '
                               'the checkpoint where they reach the paper as they go (--keep_checkpoint_at)')
    first = first_reaching(folder, paper)
    if first is None:
        raise errors.RunError(f"{flag}: no validation reached the paper's {paper['accuracy']:.2f}: not earlier")
    flagfile = os.path.join(protocols_dir, f'{protocol_of(hyperparameters)}.flags')
    if not os.path.isfile(flagfile) or prefix not in COMMANDS:
        raise errors.FlagError(f'{flag}: no protocol {flagfile} of a command this tool runs')
    iteration, run_name = int(first['iteration']), f'{name}_how_soon'
    command = [*scripts.argv(COMMANDS[prefix]), f'--flagfile={flagfile}', f'--run_name={run_name}',
               f'--results_dir={results_dir}', f'--num_iterations={iteration}', '--progress=false']
    command += [f'--{name_}={value}' for name_, value in
                (('data_dir', data_dir), ('cache_dir', cache_dir), ('dataset_dir', dataset_dir)) if value]
    if os.path.isdir(os.path.join(results_dir, run_name)):
        command.append('--resume')
    print(f'reference.py: {name} to iteration {iteration} {_priority()}: {" ".join(command)}', flush=True)
    child = start_run(command)
    try:
        child.wait()
    except KeyboardInterrupt:  # Its checkpoints stay in --results_dir: the next --how_soon resumes them.
        child.send_signal(signal.SIGINT)
        child.wait()
        raise
    rerun = os.path.join(results_dir, run_name)
    tested = results.read_summary(rerun) if child.returncode == 0 else None
    if tested is None:
        raise errors.RunError(f'{flag}: the run to iteration {iteration} failed (exit status {child.returncode}; '
                              'its message is above)')
    again = next(row for row in results.read_metrics(os.path.join(rerun, results.METRICS_FILE), required=True)
                 if row['iteration'] == first['iteration'])
    kept = {'iteration': iteration, 'paper_accuracy': paper['accuracy'],
            'test_post_accuracy': tested['test_post_accuracy'], 'test_post_ci95': tested['test_post_ci95'],
            'test_tasks': tested['test_tasks'], 'val_post_accuracy_full_run': first['val_post_accuracy'],
            'val_post_accuracy_this_run': again['val_post_accuracy'], 'machine': results.machine(),
            'training_seconds': tested['training_seconds'], 'command': ' '.join(command)}
    results.write_json(os.path.join(folder, HOW_SOON_FILE), kept)
    print(f"reference.py: {name} at iteration {iteration}: meta-test {100 * kept['test_post_accuracy']:.2f}% ± "
          f"{100 * kept['test_post_ci95']:.2f}% (validation there {100 * again['val_post_accuracy']:.2f}%, the full "
          f"run's {100 * first['val_post_accuracy']:.2f}%); kept in {folder}/{HOW_SOON_FILE}")
    return kept


def main(_):
    action = chosen_action()  # Before anything runs: one action, and no flag it would ignore.
    reference_dir, readmes = FLAGS.reference_dir, (os.path.join(FLAGS.reference_dir, 'README.md'), FLAGS.readme)
    if action == 'evaluate':
        evaluate_kept(FLAGS.evaluate, reference_dir, FLAGS.data_dir, FLAGS.cache_dir,
                      FLAGS.dataset_dir if FLAGS['dataset_dir'].present else None)
        return
    protocols_dir = FLAGS.protocols_dir if FLAGS['protocols_dir'].present else PROTOCOLS_DIR  # The tables'.
    if not os.path.isdir(protocols_dir):
        raise errors.FlagError(f'--protocols_dir {protocols_dir}: ' + ('not a folder' if os.path.lexists(protocols_dir)
                                                                      else 'does not exist'))
    given = {flag: FLAGS[flag].value for flag in ('data_dir', 'cache_dir', 'dataset_dir') if FLAGS[flag].present}
    if action == 'how_soon':
        how_soon_run(FLAGS.how_soon, reference_dir, FLAGS.results_dir, FLAGS.protocols_dir, **given)
    if action == 'continue':
        continue_run(FLAGS['continue'].value, FLAGS.minutes, reference_dir, FLAGS.results_dir, FLAGS.protocols_dir,
                     readmes, **given, table_protocols_dir=protocols_dir)
    elif action == 'add':
        add(FLAGS.add, reference_dir, readmes, FLAGS.replace, protocols_dir)
    texts = tables(reference_dir, readmes, protocols_dir=protocols_dir)  # Both checked before either is written.
    for path, (text, current) in texts.items():
        if action == 'check':
            if text != current:
                raise errors.RunError(f'{path}: its reference table differs from what {reference_dir}/ gives; '
                                      'run python reference.py and commit the result')
        elif text != current:
            results.atomic_write(path, lambda f, text=text: f.write(text.encode('utf-8')))
            print(f'rewrote the table in {path}')
    print(f'{len(kept_runs(reference_dir))} kept runs; the tables are up to date')


def run():
    """The command, as `python reference.py` and `fewshot reference` run it."""
    cli.run(main)
