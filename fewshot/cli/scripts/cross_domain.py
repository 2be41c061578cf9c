"""Cross-domain meta-testing: runs meta-trained on one dataset, meta-tested on other datasets' classes.

    python cross_domain.py reference/protonet_paper_5way1shot reference/reptile_paper_5way1shot \\
        --test_datasets=mnist,fashion_mnist,animal_mnist --shapes=5x1,5x5,10x1   # measure, keep, write the table
    python cross_domain.py                                   # rewrite docs/cross_domain.md from what is kept

Each run folder (finished, or in progress: it is scored at its checkpoint) is resumed in a scratch copy
with the flags it recorded plus --test_dataset, --test_n_way, --test_k_shot and --test_num_query
(fewshot/cli/replay.py), so the learner, its weights and the adaptation at test are the run's own; the tasks of
a dataset and shape are the same for every run (--queries per class whatever the run trained
with, --eval_seed + 1 and --num_test_tasks of the run, 600 for the papers' protocols), and the table is
refused if their checksums say otherwise. A shape another N than the run's is measured only for learners
without a head of N outputs; for the others the table says so. The results are kept in --keep_dir/<run>/
(one JSON file per dataset and shape, and run.json: what the run is) and the table between the marker lines
of --table is written from them alone.
"""

import os
import re
import subprocess
import tempfile

from absl import flags

from fewshot import cli, datasets, errors, results
from fewshot.cli import replay, scripts

flags.DEFINE_list('test_datasets', ['mnist', 'fashion_mnist', 'animal_mnist'],
                  'Named datasets to meta-test on (their files in their environment variables, e.g. MNIST_DIR).')
flags.DEFINE_list('shapes', ['5x1', '5x5', '10x1'], 'Task shapes to meta-test, NxK: N-way K-shot.')
flags.DEFINE_integer('queries', 15, 'Query examples per class of every test task, whatever the runs were trained '
                     'with: so that every run meets the same tasks of a shape.', lower_bound=1)
flags.DEFINE_string('keep_dir', os.path.join('docs', 'cross_domain'), 'Where the measured results are kept.')
flags.DEFINE_string('table', os.path.join('docs', 'cross_domain.md'), 'The page whose table is rewritten.')
flags.register_validator('test_datasets', lambda value: bool(value) and set(value) <= set(datasets.NAMES),
                         message=f'--test_datasets: named datasets among {", ".join(datasets.NAMES)}')
flags.register_validator('shapes', lambda value: bool(value) and all(re.fullmatch(r'[1-9]\d*x[1-9]\d*', s)
                                                                      for s in value),
                         message='--shapes: a list of NxK (N-way K-shot), e.g. 5x1,5x5,10x1')
FLAGS = flags.FLAGS

RUN_FILE = 'run.json'
BEGIN, END = '<!-- cross-domain table: written by python cross_domain.py; do not edit -->', '<!-- end of table -->'
NAMES = {'omniglot': 'Omniglot', 'mnist': 'MNIST', 'fashion_mnist': 'Fashion-MNIST', 'animal_mnist': 'Animal-MNIST'}
HEAD_ONLY = 'head of {} outputs'  # What a cell says when the learner cannot score another N.


def measure(folder, keep_dir):
    """Meta-tests the run in `folder` on every --test_datasets and --shapes; keeps the results in
    keep_dir/<run name>/."""
    name = os.path.basename(os.path.normpath(folder))
    hyperparameters = results.read_hyperparameters(folder)
    if hyperparameters is None or not os.path.isfile(os.path.join(folder, results.CHECKPOINT_FILE)):
        raise errors.FlagError(f'{folder}: not a run folder with a checkpoint (hyperparameters.json and '
                               f'{results.CHECKPOINT_FILE})')
    target = os.path.join(keep_dir, name)
    with tempfile.TemporaryDirectory() as scratch:
        for shape in FLAGS.shapes:
            n_way, k_shot = map(int, shape.split('x'))
            print(f'cross_domain.py: {name}, {n_way}-way {k_shot}-shot on {", ".join(FLAGS.test_datasets)}', flush=True)
            copy, status, output = replay.resume_copy(
                folder, scratch, [f'--test_dataset={",".join(FLAGS.test_datasets)}', f'--test_n_way={n_way}',
                                  f'--test_k_shot={k_shot}', f'--test_num_query={FLAGS.queries}'],
                quiet=True, with_summary=True)
            if status != 0 and 'error: --test_n_way' in output:
                continue  # A head of the run's N outputs: the table says so.
            if status != 0:
                raise errors.RunError(f'{folder}: meta-testing it failed: {output.strip().splitlines()[-1]}')
            replay.copy_files(copy, target, [f'meta_test_{dataset}_{n_way}way{k_shot}shot.json'
                                             for dataset in FLAGS.test_datasets])
        summary = results.read_summary(copy)
    flags_recorded = hyperparameters['flags']
    results.write_json(os.path.join(target, RUN_FILE), {
        'run': folder, 'algorithm': hyperparameters['algorithm'], 'dataset': flags_recorded.get('dataset', 'omniglot'),
        'n_way': flags_recorded['n_way'], 'k_shot': flags_recorded['k_shot'],
        'iterations': summary['iterations'], 'iterations_of_protocol': flags_recorded['num_iterations'],
        'test_post_accuracy': summary['test_post_accuracy'], 'test_post_ci95': summary['test_post_ci95'],
        'measured_on': results.machine(), 'code': _commit()})


def _commit():
    done = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True,
                          cwd=scripts.ROOT)
    return done.stdout.strip() or 'unknown'


def table(keep_dir):
    """The Markdown table of everything kept in keep_dir: a row per run and task shape."""
    runs = sorted(entry for entry in os.listdir(keep_dir) if os.path.isfile(os.path.join(keep_dir, entry, RUN_FILE)))
    tests = sorted({match.groups() for run in runs for file in os.listdir(os.path.join(keep_dir, run))
                    if (match := re.fullmatch(r'meta_test_(\w+?)_(\d+)way(\d+)shot\.json', file))},
                   key=lambda t: (list(datasets.NAMES).index(t[0]), int(t[1]), int(t[2])))
    test_sets = sorted({t[0] for t in tests}, key=list(datasets.NAMES).index)
    shapes = sorted({(int(t[1]), int(t[2])) for t in tests})
    _check_same_tasks(keep_dir, runs)
    lines = ['| learner (run) | meta-trained on | test tasks | in-domain test % ± 95% CI | '
             + ' | '.join(f'{NAMES.get(d, d)} %' for d in test_sets) + ' |',
             '|---|---|---|---|' + '---|' * len(test_sets)]
    for run in runs:
        about = results.read_json(os.path.join(keep_dir, run, RUN_FILE))
        trained = (f"{NAMES.get(about['dataset'], about['dataset'])} {about['n_way']}-way {about['k_shot']}-shot, "
                   f"{about['iterations']:,} of {about['iterations_of_protocol']:,} iterations")
        in_domain = f"{100 * about['test_post_accuracy']:.2f} ± {100 * about['test_post_ci95']:.2f}"
        for n_way, k_shot in shapes:
            cells = []
            for dataset in test_sets:
                path = os.path.join(keep_dir, run, f'meta_test_{dataset}_{n_way}way{k_shot}shot.json')
                if os.path.isfile(path):
                    result = results.read_json(path)
                    cells.append(f"{100 * result['test_post_accuracy']:.2f} ± {100 * result['test_post_ci95']:.2f}")
                else:
                    cells.append('–' if n_way == about['n_way'] else f"– ({HEAD_ONLY.format(about['n_way'])})")
            lines.append(f"| {about['algorithm']} (`{run}`) | {trained} | {n_way}-way {k_shot}-shot | {in_domain} | "
                         + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def _check_same_tasks(keep_dir, runs):
    """RunError unless every kept result of a dataset and shape was measured on the same tasks."""
    seen = {}
    for run in runs:
        for file in sorted(os.listdir(os.path.join(keep_dir, run))):
            if file.startswith('meta_test_'):
                checksum = results.read_json(os.path.join(keep_dir, run, file))['task_checksum']
                first = seen.setdefault(file, (run, checksum))
                if first[1] != checksum:
                    raise errors.RunError(f'{keep_dir}: {run} and {first[0]} were tested on different tasks ({file}); '
                                          'measure them again with the same --eval_seed, tasks and --queries')


def write_table(path, keep_dir):
    text = open(path).read() if os.path.isfile(path) else f'# Cross-domain meta-testing\n\n{BEGIN}\n{END}\n'
    if BEGIN not in text or END not in text:
        raise errors.FlagError(f'--table {path}: has no marker lines ({BEGIN} ... {END}) to write the table between')
    before, rest = text.split(BEGIN, 1)
    after = rest.split(END, 1)[1]
    new = f'{before}{BEGIN}\n{table(keep_dir)}\n{END}{after}'
    results.atomic_write(path, lambda f: f.write(new.encode()))
    print(f'cross_domain.py: wrote the table of {keep_dir} into {path}')


def main(argv):
    for folder in argv[1:]:
        measure(folder, FLAGS.keep_dir)
    if not os.path.isdir(FLAGS.keep_dir):
        raise errors.FlagError(f'--keep_dir {FLAGS.keep_dir}: nothing measured yet; name run folders to measure')
    write_table(FLAGS.table, FLAGS.keep_dir)


def run():
    """The command, as `python cross_domain.py` and `fewshot cross_domain` run it."""
    cli.run(main, takes_arguments=True)
