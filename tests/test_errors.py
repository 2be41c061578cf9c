"""Every command against bad input: one line `error: ...` naming the flag or file, no traceback,
and nothing the user had is changed, deleted or left half-made.

The matrix runs each command of the project as a user would (its command line: tests/launch.py)
in a sandbox folder holding the user's files, and compares the sandbox before and after. Most cases
must fail in the command's first seconds, which is what keeps the matrix fast. Then the three bugs
that lost data or lied, as their own regression tests.
"""

import gzip
import os
import re
import shutil
import stat
import sys
import zipfile

import numpy as np
import pytest

from fewshot import data, results
import launch
from conftest import write_synthetic_archives

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ['--num_filters=4', '--n_way=3', '--k_shot=1', '--num_query=2', '--meta_batch_size=2',
        '--num_val_classes=4', '--num_train_classes=10', '--num_val_tasks=4', '--num_test_tasks=4',
        '--num_inner_steps=1', '--progress=false']
# Root reads and writes anything; permission cases drop the capabilities that allow it.
WITHOUT_ROOT_OVERRIDES = ['setpriv', '--inh-caps=-dac_override,-dac_read_search',
                          '--bounding-set=-dac_override,-dac_read_search']


# The shared, read-only material: data, its cache, a finished run ------------------------------

@pytest.fixture(scope='module')
def world(tmp_path_factory):
    """Synthetic Omniglot, its cache, a tiny finished FO-MAML run, MNIST IDX files: cases read
    from them and never write to them."""
    folder = str(tmp_path_factory.mktemp('world'))
    omniglot = write_synthetic_archives(os.path.join(folder, 'omniglot'))
    cache = os.path.join(folder, 'cache')
    data.load_omniglot(omniglot, cache)
    run = launch.run([sys.executable, os.path.join(REPO, 'maml.py'), f'--data_dir={omniglot}',
                      f'--cache_dir={cache}', f'--results_dir={folder}/runs', '--run_name=fo_maml',
                      '--num_iterations=4', '--val_interval=2', *TINY],
                     capture_output=True, text=True, cwd=REPO, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    mnist = os.path.join(folder, 'mnist')
    os.makedirs(mnist)
    for split, count in (('train', 40), ('t10k', 20)):
        _write_idx(os.path.join(mnist, f'{split}-images-idx3-ubyte.gz'), np.zeros((count, 28, 28)))
        _write_idx(os.path.join(mnist, f'{split}-labels-idx1-ubyte.gz'), np.arange(count) % 10)
    return {'omniglot': omniglot, 'cache': cache, 'run': os.path.join(folder, 'runs', 'fo_maml'), 'mnist': mnist}


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b''.join(int(d).to_bytes(4, 'big') for d in array.shape)
    with gzip.open(path, 'wb') as f:
        f.write(header + array.astype(np.uint8).tobytes())


# Ways to spoil a file ------------------------------------------------------------------------

def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        f.write(text)


def _copy_run(world, sandbox, name='run', algorithm=None):
    """A copy of the finished FO-MAML run in sandbox/results/<name>, optionally claiming another algorithm."""
    folder = os.path.join(sandbox, 'results', name)
    shutil.copytree(world['run'], folder)
    if algorithm:
        path = os.path.join(folder, results.HYPERPARAMETERS_FILE)
        results.write_json(path, {**results.read_json(path), 'algorithm': algorithm})
    return folder


def _damaged_deflate_archives(world, sandbox):
    """The synthetic archives, recompressed with deflate, the background archive's bytes flipped
    in the middle of a member's compressed stream."""
    folder = os.path.join(sandbox, 'omniglot')
    os.makedirs(folder)
    for archive in data.ARCHIVES:
        with zipfile.ZipFile(os.path.join(world['omniglot'], archive + '.zip')) as source, \
                zipfile.ZipFile(os.path.join(folder, archive + '.zip'), 'w', zipfile.ZIP_DEFLATED) as target:
            for name in source.namelist():
                target.writestr(name, source.read(name))
    path = os.path.join(folder, 'images_background.zip')
    with zipfile.ZipFile(path) as archive:
        member = archive.infolist()[len(archive.infolist()) // 2]
    with open(path, 'r+b') as f:
        f.seek(member.header_offset + 30 + len(member.filename) + member.compress_size // 2)
        f.write(b'\xff' * 16)
    return folder


def _unreadable_archives(world, sandbox):
    folder = os.path.join(sandbox, 'omniglot')
    shutil.copytree(world['omniglot'], folder)
    os.chmod(os.path.join(folder, 'images_background.zip'), 0)
    return folder


def _cache_path_taken_by_a_folder(world, sandbox):
    key = data.source_checksum(world['omniglot'])[:20]
    os.makedirs(os.path.join(sandbox, 'cache', f'omniglot28-archives-{key}.npz'))


def _mismatched_mnist(world, sandbox):
    folder = os.path.join(sandbox, 'mnist')
    shutil.copytree(world['mnist'], folder)
    shutil.copy(os.path.join(folder, 't10k-labels-idx1-ubyte.gz'), os.path.join(folder, 'train-labels-idx1-ubyte.gz'))
    return folder


def _truncated_mnist(world, sandbox):
    folder = os.path.join(sandbox, 'mnist')
    shutil.copytree(world['mnist'], folder)
    path = os.path.join(folder, 'train-images-idx3-ubyte.gz')
    with open(path, 'rb') as f:
        content = f.read()
    with open(path, 'wb') as f:
        f.write(content[:len(content) // 2])
    return folder


def _nan_checkpoint(folder):
    path = os.path.join(folder, results.CHECKPOINT_FILE)
    with np.load(path) as checkpoint:
        arrays = {key: checkpoint[key] for key in checkpoint.files}
    arrays['model/conv1/kernel'] = arrays['model/conv1/kernel'] * np.nan
    np.savez(path, **arrays)


def _retype_checkpoint(folder, dtype):
    path = os.path.join(folder, results.CHECKPOINT_FILE)
    with np.load(path) as checkpoint:
        arrays = {key: checkpoint[key] for key in checkpoint.files}
    arrays['model/conv1/kernel'] = arrays['model/conv1/kernel'].astype(dtype)
    np.savez(path, **arrays)


def _tensorboard_file(folder):
    shutil.rmtree(os.path.join(folder, 'tensorboard'))
    _write(os.path.join(folder, 'tensorboard'), 'not a folder')


def _not_a_zip(world, sandbox):
    folder = shutil.copytree(world['omniglot'], os.path.join(sandbox, 'omniglot'))
    _write(os.path.join(folder, 'images_evaluation.zip'), 'PK\x03\x04 cut short')
    return folder


def _lab_folder(sandbox, per_seed_text):
    folder = os.path.join(sandbox, 'results', 'initialization_lab')
    os.makedirs(folder)
    results.write_json(os.path.join(folder, results.HYPERPARAMETERS_FILE), {'flags': {'n_way': 2, 'k_shot': 5}})
    _write(os.path.join(folder, 'per_seed.json'), per_seed_text)


def _rename_checkpoint_array(folder, old, new):
    """The run's checkpoint with one array under another name: a checkpoint of another model."""
    path = os.path.join(folder, results.CHECKPOINT_FILE)
    with np.load(path) as checkpoint:
        arrays = {key: checkpoint[key] for key in checkpoint.files}
    arrays[new] = arrays.pop(old)
    np.savez(path, **arrays)


def _file_replaced_by_folder(folder, name):
    os.remove(os.path.join(folder, name))
    os.makedirs(os.path.join(folder, name, 'inside'))


def _image_folder(world, sandbox):
    """3 classes of 2 small images each in sandbox/images."""
    from PIL import Image
    for name in ('a', 'b', 'c'):
        os.makedirs(os.path.join(sandbox, 'images', name))
        for index in range(2):
            Image.new('L', (10, 10), 255).save(os.path.join(sandbox, 'images', name, f'{index}.png'))


def _reference_folder(sandbox, papers=None):
    """A copy of the repository's reference/ and README.md in the sandbox, papers.csv replaced if given."""
    shutil.copytree(os.path.join(REPO, 'reference'), os.path.join(sandbox, 'reference'))
    shutil.copy(os.path.join(REPO, 'README.md'), os.path.join(sandbox, 'README.md'))
    if papers is not None:
        _write(os.path.join(sandbox, 'reference', 'papers.csv'), papers)


def _stability_folder(sandbox, runs_csv):
    _write(os.path.join(sandbox, 'results', 'stability', 'runs.csv'), runs_csv)


def _reference_kept_run(world, sandbox, damage=None):
    """reference/ with the finished run kept as reference/run (its kept files), `damage(folder)` applied."""
    _reference_folder(sandbox)
    folder = os.path.join(sandbox, 'reference', 'run')
    os.makedirs(folder)
    for name in (results.HYPERPARAMETERS_FILE, results.SUMMARY_FILE, results.METRICS_FILE, 'val_accuracy.png',
                 results.MODEL_FILE, results.CHECKPOINT_FILE):
        if os.path.isfile(os.path.join(world['run'], name)):
            shutil.copy(os.path.join(world['run'], name), folder)
    if damage:
        damage(folder)


def _reference_truncated(path):
    with open(path, 'rb') as f:
        content = f.read()
    with open(path, 'wb') as f:
        f.write(content[:len(content) // 2])


def _reference_object_array(folder):
    """A checkpoint whose kernel is an array of Python objects (pickled): np.load refuses to read it."""
    path = os.path.join(folder, results.CHECKPOINT_FILE)
    with np.load(path) as checkpoint:
        arrays = {key: checkpoint[key] for key in checkpoint.files}
    arrays['model/conv1/kernel'] = np.array([None, 'kernel'], dtype=object)
    np.savez(path, **arrays)


def _reference_foreign_zip(folder):
    """model.keras a zip archive, but not Keras's (no config.json)."""
    with zipfile.ZipFile(os.path.join(folder, results.MODEL_FILE), 'w') as archive:
        archive.writestr('notes.txt', 'not a model')


def _reference_run_without_n_way(world, sandbox):
    """reference/, and a finished run whose hyperparameters have no n_way (as a regression run's)."""
    _reference_folder(sandbox)
    path = os.path.join(_copy_run(world, sandbox), results.HYPERPARAMETERS_FILE)
    recorded = results.read_json(path)
    del recorded['flags']['n_way']
    results.write_json(path, recorded)


# The matrix ----------------------------------------------------------------------------------
# (command, flags, what must be in the error line (regex), how to prepare the sandbox, options).
# In flags, {omniglot}, {cache}, {mnist} are the shared data; {sandbox} the case's own folder.
# A preparation may return a folder that replaces {omniglot} or {mnist}.

MAML = ['--data_dir={omniglot}', '--cache_dir={cache}', '--results_dir={sandbox}/results', *TINY]
NO_INNER_LOOP = [flag for flag in MAML if not flag.startswith('--num_inner_steps')]
TRANSFER = [*NO_INNER_LOOP, '--epochs=1', '--batch_size=50', '--adapt_steps=2']
LAB = ['--mnist_dir={mnist}', '--cache_dir={cache}', '--results_dir={sandbox}/results', '--num_seeds=1',
       '--scratch_epochs=1', '--finetune_epochs=1', '--maml_iterations=1', '--large_query=5']
RESULTS = ['--results_dir={sandbox}/results']
RESUME = [*MAML, '--run_name=run', '--resume', '--val_interval=2']  # As the copied run was trained.
REFERENCE = ['--reference_dir={sandbox}/reference', '--readme={sandbox}/README.md']

CASES = {
    # Flag values and pairs.
    'maml: negative learning rate': ('maml.py', [*MAML, '--inner_lr=-0.1'], r'--inner_lr', None),
    'maml: negative seed': ('maml.py', [*MAML, '--seed=-1'], r'--seed', None),
    'maml: seed beyond numpy': ('maml.py', [*MAML, '--seed=4294967296'], r'--seed', None),
    'maml: stray argument': ('maml.py', [*MAML, 'five'], r'unexpected arguments: five', None),
    'maml: float16': ('maml.py', [*MAML, '--precision=float16'], r'--precision=float16: value should be one of', None),
    'maml: chunk above the meta-batch': ('maml.py', [*MAML, '--tasks_per_chunk=3'],
                                         r'--tasks_per_chunk: at most --meta_batch_size', None),
    'maml: memory budget below the process': ('maml.py', [*MAML, '--memory_budget_gb=0.01'],
                                              r'--memory_budget_gb 0.01: this process already holds', None),
    'maml: chunk and memory budget': ('maml.py', [*MAML, '--tasks_per_chunk=1', '--memory_budget_gb=4'],
                                      r'--tasks_per_chunk and --memory_budget_gb: give one of them', None),
    'maml: zero tasks per chunk': ('maml.py', [*MAML, '--tasks_per_chunk=0'], r'--tasks_per_chunk=0: 0 is not', None),
    'maml++: negative chunk': ('maml_plusplus.py', [*MAML, '--tasks_per_chunk=-1'], r'--tasks_per_chunk', None),
    'maml: --resume with --overwrite': ('maml.py', [*RESUME, '--overwrite'],
                                        r'--resume and --overwrite', lambda w, s: _copy_run(w, s)),
    'maml: n_way above the classes': ('maml.py', [*MAML, '--n_way=50'], r'--n_way 50 exceeds', None),
    'maml++: --first_order is ignored': ('maml_plusplus.py', [*MAML, '--first_order'],
                                         r'--first_order is not a flag of maml_plusplus.py', None),
    'maml++: min above max meta lr': ('maml_plusplus.py', [*MAML, '--min_meta_lr=0.1'], r'--min_meta_lr', None),
    'maml++: eval steps above training steps': ('maml_plusplus.py', [*MAML, '--num_eval_inner_steps=3'],
                                                r'--num_eval_inner_steps', None),
    'transfer: an unused MAML flag': ('maml_transfer.py', [*TRANSFER, '--inner_lr=0.1'],
                                      r'--inner_lr is not a flag of maml_transfer.py', None),
    'transfer: a learner flag it does not use': ('maml_transfer.py', [*TRANSFER, '--backbone=resnet'],
                                                 r'--backbone is not a flag of maml_transfer.py', None),
    'transfer: zero epochs': ('maml_transfer.py', [*TRANSFER, '--epochs=0'], r'--epochs', None),
    'stability: seeds not numbers': ('stability.py', [*RESULTS, '--seeds=a,b'], r'--seeds', None),
    'stability: negative seed': ('stability.py', [*RESULTS, '--seeds=-1'], r'--seeds', None),
    'stability: bad setting': ('stability.py', [*RESULTS, '--settings=5way'], r'--settings', None),
    'stability: reserved flag with one dash': ('stability.py', [*RESULTS, '--', '-seed=3'],
                                               r'--seed cannot follow --', None),
    'stability: a flag the scripts refuse': ('stability.py', [*RESULTS, '--', '--meta_batch_size=0'],
                                             r'for maml.py: flag --meta_batch_size', None),
    'compare: bad setting': ('compare.py', [*RESULTS, '--settings=5way'], r'--settings', None),
    'compare: unknown learner': ('compare.py', [*RESULTS, '--algorithms=maml,siamese'],
                                 r"--algorithms: 'siamese' is not a learner command", None),
    'compare: unknown backbone': ('compare.py', [*RESULTS, '--backbones=vgg'], r'--backbones', None),
    'compare: reserved flag after --': ('compare.py', [*RESULTS, '--', '--backbone=resnet'],
                                        r'--backbone cannot follow --', None),
    'compare: a flag the learners refuse': ('compare.py', [*RESULTS, '--algorithms=anil', '--', '--meta_batch_size=0'],
                                            r'for anil.py: flag --meta_batch_size', None),
    'compare: negative budget': ('compare.py', [*RESULTS, '--budget_minutes=-1'], r'--budget_minutes', None),
    'maml: residual network with max-pooling': ('maml.py', [*MAML, '--backbone=resnet', '--max_pool'],
                                                r'--max_pool', None),
    'figures: unknown format': ('figures.py', [*RESULTS, '--format=gif'], r'--format', None),
    'submit: name with a slash': ('submit.py', ['--name=a/b', '--student_number=1'], r'--name', None),
    'submit: no student number': ('submit.py', ['--name=a'], r'--student_number', None),
    'benchmark: unknown order': ('benchmark.py', ['--orders=third'], r'--orders', None),
    'benchmark: unknown algorithm': ('benchmark.py', ['--algorithms=siamese'], r'--algorithms', None),
    'benchmark: zero repeats': ('benchmark.py', ['--repeats=0'], r'--repeats', None),
    'benchmark: peer at another setting': ('benchmark.py', ['--peer=python3', '--meta_batch_size=4'],
                                           r'--peer: .* drop --meta_batch_size', None),
    'benchmark: peer script missing': ('benchmark.py', ['--peer=python3', '--peer_script={sandbox}/none.py'],
                                       r'--peer_script: .*none.py does not exist', None),
    'meta_sgd: zero learning rate': ('meta_sgd.py', [*MAML, '--inner_lr=0'], r'--inner_lr', None),
    'anil: a MAML++ flag': ('anil.py', [*MAML, '--msl'], r'--msl is not a flag of anil.py', None),
    'reptile: an order it does not have': ('reptile.py', [*RESULTS, '--first_order=false'],
                                           r'--first_order is not a flag of reptile.py', None),
    'reptile: Adam meta learning rate': ('reptile.py', [*RESULTS, '--meta_lr=0.1'],
                                         r'--meta_lr is not a flag of reptile.py', None),
    'reptile: negative inner batch': ('reptile.py', [*RESULTS, '--inner_batch_size=-1'], r'--inner_batch_size', None),
    'reptile: ε schedule that grows': ('reptile.py', [*RESULTS, '--meta_step_size=0.1', '--final_meta_step_size=5'],
                                       r'--final_meta_step_size: at most --meta_step_size', None),
    'protonet: one-way training tasks': ('protonet.py', [*RESULTS, '--train_n_way=1'],
                                         r'--train_n_way: 0 .* or at least 2', None),
    # Non-finite floats: no range check catches NaN, and an infinity ran or failed deep inside.
    'maml: NaN memory budget': ('maml.py', [*MAML, '--memory_budget_gb=nan'],
                                r'--memory_budget_gb nan: must be a finite number', None),
    'maml: infinite memory budget': ('maml.py', [*MAML, '--memory_budget_gb=inf'],
                                     r'--memory_budget_gb inf: must be a finite number', None),
    'maml: NaN time budget': ('maml.py', [*MAML, '--time_budget_minutes=nan'],
                              r'--time_budget_minutes nan: must be a finite number', None),
    'reptile: NaN step size': ('reptile.py', [*RESULTS, '--meta_step_size=nan'],
                               r'--meta_step_size nan: must be a finite number', None),
    'maml: one test task': ('maml.py', [*MAML, '--num_test_tasks=1'], r'--num_test_tasks', None),
    'relationnet: a ProtoNet flag': ('relationnet.py', [*RESULTS, '--train_n_way=20'],
                                     r'--train_n_way is not a flag of relationnet.py', None),
    'relationnet: more pooled blocks than the maps allow': (
        'relationnet.py', [*RESULTS, '--relation_blocks=2', '--relation_max_pool'],
        r'--relation_blocks 2 --relation_max_pool: pooling would take the 2x2 feature maps of --backbone conv4 '
        r'below 1x1', None),
    'relationnet: a non-positive clip norm': ('relationnet.py', [*RESULTS, '--clip_norm=0'], r'--clip_norm', None),
    'relationnet: images too small for its embedding': (
        'relationnet.py', [*RESULTS, '--backbone=relationnet', '--dataset=folder:x', '--image_size=8'],
        r'--image_size: too small for --backbone relationnet', None),
    'maml: rotations per task without rotations': ('maml.py', [*MAML, '--task_rotations_per=task'],
                                                   r'--task_rotations_per task: .* give --task_rotations', None),
    'maml: max-pooling in the relation embedding': ('maml.py', [*MAML, '--backbone=relationnet', '--max_pool'],
                                                    r'--max_pool: only with --backbone conv4', None),
    'imaml: an order it does not have': ('imaml.py', [*RESULTS, '--first_order'],
                                         r'--first_order is not a flag of imaml.py', None),
    'imaml: zero lambda': ('imaml.py', [*RESULTS, '--lam=0'], r'--lam', None),
    'imaml: no conjugate-gradient step': ('imaml.py', [*RESULTS, '--cg_steps=0'], r'--cg_steps', None),
    'protonet: an inner-loop flag': ('protonet.py', [*RESULTS, '--num_inner_steps=2'],
                                     r'--num_inner_steps is not a flag of protonet.py', None),
    'protonet: negative training ways': ('protonet.py', [*RESULTS, '--train_n_way=-1'], r'--train_n_way', None),
    'protonet: more training ways than classes': ('protonet.py', [*NO_INNER_LOOP, '--train_n_way=50'],
                                                  r'--train_n_way 50 exceeds the \d+ classes of the meta-train', None),
    'lab: --resume it does not have': ('initialization_lab.py', [*LAB, '--resume'],
                                       r'--resume is not a flag of initialization_lab.py', None),
    'lab: zero seeds': ('initialization_lab.py', [*LAB, '--num_seeds=0'], r'--num_seeds', None),

    # The run folder's state.
    'maml: run name ..': ('maml.py', [*MAML, '--run_name=..', '--overwrite'], r'--run_name', None),
    'maml: run name with a slash': ('maml.py', [*MAML, '--run_name=../user', '--overwrite'], r'--run_name',
                                    lambda w, s: _write(f'{s}/user/notes.txt', 'mine')),
    'maml: overwrite a folder that is no run': (
        'maml.py', [*MAML, '--run_name=mine', '--overwrite'], r'results/mine exists and is not a run folder',
        lambda w, s: _write(f'{s}/results/mine/notes.txt', 'mine')),
    'maml: existing run without --resume': ('maml.py', [*MAML, '--run_name=run'], r'run already exists',
                                            lambda w, s: _copy_run(w, s)),
    'boil: run name ..': ('boil.py', [*MAML, '--run_name=..', '--overwrite'], r'--run_name', None),
    'proto_maml: --resume of nothing': ('proto_maml.py', [*MAML, '--run_name=nothing', '--resume'],
                                        r'--resume: .*nothing does not exist', None),
    'maml: --resume of nothing': ('maml.py', [*MAML, '--run_name=nothing', '--resume'],
                                  r'--resume: .*nothing does not exist', None),
    # A run folder belongs to the command and learner that made it (an older version let ANIL continue a
    # FO-MAML run, BOIL an ANIL run, MAML a BOIL run).
    'anil: resume a FO-MAML run': ('anil.py', RESUME, r'is a run of FO-MAML, not of FO-ANIL',
                                   lambda w, s: _copy_run(w, s)),
    'boil: resume an ANIL run': ('boil.py', RESUME, r'is a run of FO-ANIL, not of FO-BOIL',
                                 lambda w, s: _copy_run(w, s, algorithm='FO-ANIL')),
    'maml: resume a BOIL run': ('maml.py', RESUME, r'is a run of FO-BOIL, not of FO-MAML',
                                lambda w, s: _copy_run(w, s, algorithm='FO-BOIL')),
    'maml: resume with other settings': ('maml.py', [*RESUME, '--inner_lr=0.1'],
                                         r'other settings \(inner_lr', lambda w, s: _copy_run(w, s)),
    # A run older than a flag is checked against what it was trained with, not the flag's default
    # (iMAML's and Reptile's defaults changed to their authors' code's on 2026-12-05).
    'imaml: resume a run older than --regularization': (
        'imaml.py', RESUME, r'other settings \(cg_damping, .*lam_damping, .*regularization\)',
        lambda w, s: _copy_run(w, s, algorithm='iMAML')),
    'reptile: resume a run older than --inner_adam_state': (
        'reptile.py', RESUME, r'other settings \(.*inner_adam_state',
        lambda w, s: _copy_run(w, s, algorithm='Reptile')),
    'lab: existing folder': ('initialization_lab.py', LAB, r'initialization_lab already exists; pass --overwrite',
                             lambda w, s: _lab_folder(s, '{}')),

    # The run folder's files.
    'maml: resume, damaged hyperparameters.json': (
        'maml.py', RESUME, r'hyperparameters.json is damaged',
        lambda w, s: _write(f'{_copy_run(w, s)}/hyperparameters.json', '{"flags": ')),
    'maml: resume, damaged checkpoint': (
        'maml.py', RESUME, r'checkpoint.npz cannot be read',
        lambda w, s: _write(f'{_copy_run(w, s)}/checkpoint.npz', 'PK')),
    'maml: resume, checkpoint of strings': ('maml.py', RESUME, r'holds arrays that are not real numbers',
                                            lambda w, s: _retype_checkpoint(_copy_run(w, s), 'U8')),
    'maml: resume, complex checkpoint': ('maml.py', RESUME, r'holds arrays that are not real numbers',
                                         lambda w, s: _retype_checkpoint(_copy_run(w, s), np.complex64)),
    'maml: resume, tensorboard is a file': ('maml.py', RESUME, r'tensorboard is not a folder',
                                            lambda w, s: _tensorboard_file(_copy_run(w, s))),
    'maml: resume, NaN checkpoint': ('maml.py', RESUME,
                                     r'checkpoint.npz holds NaN or infinite values',
                                     lambda w, s: _nan_checkpoint(_copy_run(w, s))),
    'maml: resume, metrics.csv missing': ('maml.py', RESUME,
                                          r'checkpoint.npz is at iteration 4 but .*metrics.csv has no row',
                                          lambda w, s: os.remove(f'{_copy_run(w, s)}/metrics.csv')),
    'transfer: compare with a transfer run': (
        'maml_transfer.py', [*TRANSFER, '--compare_with={sandbox}/results/run'], r'run: a run of transfer',
        lambda w, s: _copy_run(w, s, algorithm='transfer')),
    'transfer: compare with a MAML++ run': (
        'maml_transfer.py', [*TRANSFER, '--compare_with={sandbox}/results/run'], r'run: a run of MAML\+\+',
        lambda w, s: _copy_run(w, s, algorithm='MAML++')),
    'transfer: compare with a damaged run': (
        'maml_transfer.py', [*TRANSFER, '--compare_with={sandbox}/results/run'], r'hyperparameters.json is damaged',
        lambda w, s: _write(f'{_copy_run(w, s)}/hyperparameters.json', '[]')),
    'transfer: compare with a damaged model': (
        'maml_transfer.py', [*TRANSFER, '--compare_with={sandbox}/results/run'], r'model.keras cannot be loaded',
        lambda w, s: _write(f'{_copy_run(w, s)}/model.keras', 'not a model')),
    'stability: damaged summary.json': (
        'stability.py', [*RESULTS, '--output_dir={sandbox}/results/stability', '--train=false', '--seeds=0',
                         '--settings=5way5shot', '--num_iterations=4'],
        r'summary.json is damaged',
        lambda w, s: [_write(f'{_copy_run(w, s, "stability/runs/" + name)}/summary.json', '{"iterations": 4}')
                      for name in ('maml_fo_5way5shot_5steps_seed0',
                                   'maml++_5way5shot_5steps_eval-transductive_seed0')]),
    'figures: damaged metrics.csv': ('figures.py', ['{sandbox}/results/run'], r'metrics.csv is damaged',
                                     lambda w, s: _write(f'{_copy_run(w, s)}/metrics.csv', '\x00\x01garbage')),
    'figures: damaged hyperparameters.json': (
        'figures.py', RESULTS, r'hyperparameters.json is damaged',
        lambda w, s: _write(f'{_copy_run(w, s)}/hyperparameters.json', 'nonsense')),
    'figures: damaged inner_learning_rates.csv': (
        'figures.py', RESULTS, r'inner_learning_rates.csv is damaged',
        lambda w, s: _write(f'{_copy_run(w, s)}/inner_learning_rates.csv', 'parameter,step\nconv1,0\n')),
    'figures: damaged runs.csv': ('figures.py', RESULTS, r'runs.csv is damaged',
                                  lambda w, s: _stability_folder(s, 'method,seed\nMAML,0\n')),
    'report: damaged summary.json': (
        'report.py', [*RESULTS, '--output={sandbox}/report.md'], r'summary.json is damaged',
        lambda w, s: _write(f'{_copy_run(w, s)}/summary.json', '{"iterations": "many"}')),
    'report: damaged stability.csv': (
        'report.py', [*RESULTS, '--output={sandbox}/report.md'], r'stability.csv is damaged',
        lambda w, s: [_copy_run(w, s), _stability_folder(s, 'method\n'),
                      _write(f'{s}/results/stability/stability.csv', 'setting,method\n5-way,MAML\n')]),
    'report: no runs': ('report.py', [*RESULTS, '--output={sandbox}/report.md'],
                        r'--results_dir .*results: folder does not exist', None),
    'submit: no report': ('submit.py', ['--name=a', '--student_number=1', *RESULTS, '--report={sandbox}/report.md',
                                        '--zip_dir={sandbox}'], r'report.md does not exist',
                          lambda w, s: _copy_run(w, s)),
    'lab: damaged per_seed.json': ('initialization_lab.py', [*LAB, '--redraw'], r'per_seed.json is damaged',
                                   lambda w, s: _lab_folder(s, '{"per_seed": [')),

    # Protocols and reference results.
    'maml: binary flag file': ('maml.py', [*MAML, '--flagfile={sandbox}/paper.flags'],
                               r'--flagfile: not a text file of flags',
                               lambda w, s: open(os.path.join(s, 'paper.flags'), 'wb').write(b'\xff\xfe\x00\x81PK')),
    'maml: missing flag file': ('maml.py', [*MAML, '--flagfile={sandbox}/paper.flags'],
                                r'--flagfile: cannot be opened .*paper.flags', None),
    'reference: an unfinished run': ('reference.py', [*REFERENCE, '--add={sandbox}/results/run'],
                                     r'--add .*run: the run has not finished',
                                     lambda w, s: [_reference_folder(s), os.remove(f'{_copy_run(w, s)}/summary.json')]),
    'reference: a run kept twice': ('reference.py', [*REFERENCE, '--add={sandbox}/results/run'],
                                    r'reference/run already exists; pass --replace',
                                    lambda w, s: [_reference_folder(s), _copy_run(w, s),
                                                  shutil.copytree(f'{s}/results/run', f'{s}/reference/run')]),
    'reference: a stale table': ('reference.py', [*REFERENCE, '--check'], r'its reference table differs',
                                 lambda w, s: [_reference_folder(s), _copy_run(w, s),
                                               shutil.copytree(f'{s}/results/run', f'{s}/reference/run')]),
    'reference: damaged papers.csv': ('reference.py', REFERENCE, r'papers.csv, line 2: expected the columns',
                                      lambda w, s: _reference_folder(s, 'algorithm,n_way\nMAML,five\n')),

    # Input data.
    'maml: no such data folder': ('maml.py', [*MAML, '--data_dir=/nonexistent/omniglot'],
                                  r'/nonexistent/omniglot: folder does not exist', None),
    'maml: damaged deflate stream': ('maml.py', MAML, r'images_background.zip: not a valid zip archive, or damaged',
                                     _damaged_deflate_archives),
    'maml: archive that is no zip': ('maml.py', MAML, r'images_evaluation.zip: not a valid zip archive',
                                     _not_a_zip),
    'maml: archive without read permission': ('maml.py', MAML, r'images_background.zip: cannot be read',
                                              _unreadable_archives, {'permissions': True}),
    'lab: no such MNIST folder': ('initialization_lab.py', [*LAB, '--mnist_dir=/nonexistent/mnist'],
                                  r'/nonexistent/mnist: folder does not exist', None),
    'lab: MNIST files that do not belong together': ('initialization_lab.py', LAB, r'do not belong together',
                                                     _mismatched_mnist),
    'lab: truncated MNIST file': ('initialization_lab.py', LAB, r'train-images-idx3-ubyte.gz: cannot be read',
                                  _truncated_mnist),

    # Output locations.
    'maml: results under a file': ('maml.py', [*MAML, '--results_dir={sandbox}/notes.txt/results'],
                                   r'--results_dir .*notes.txt is a file', lambda w, s: _write(f'{s}/notes.txt', '')),
    'maml: results not writable': ('maml.py', MAML, r'--results_dir .* is not writable',
                                   lambda w, s: os.makedirs(f'{s}/results', mode=0o555), {'permissions': True}),
    'maml: cache under a file': ('maml.py', [*MAML, '--cache_dir={sandbox}/notes.txt/cache'],
                                 r'--cache_dir .*notes.txt is a file', lambda w, s: _write(f'{s}/notes.txt', '')),
    'maml: cache path is a folder': ('maml.py', [*MAML, '--cache_dir={sandbox}/cache'],
                                     r'--cache_dir .* is a folder, where the cache file goes',
                                     _cache_path_taken_by_a_folder),
    'compare: output under a file': ('compare.py', [*RESULTS, '--output_dir={sandbox}/notes.txt/out'],
                                     r'--output_dir .*notes.txt is a file', lambda w, s: _write(f'{s}/notes.txt', '')),
    'stability: output under a file': ('stability.py', [*RESULTS, '--output_dir={sandbox}/notes.txt/out'],
                                       r'--output_dir .*notes.txt is a file',
                                       lambda w, s: _write(f'{s}/notes.txt', '')),
    'report: output under a file': ('report.py', [*RESULTS, '--output={sandbox}/notes.txt/report.md'],
                                    r'--output .*notes.txt is a file',
                                    lambda w, s: [_copy_run(w, s), _write(f'{s}/notes.txt', '')]),
    'submit: zip folder under a file': ('submit.py',
                                        ['--name=a', '--student_number=1', '--zip_dir={sandbox}/notes.txt/z'],
                                        r'--zip_dir .*notes.txt is a file', lambda w, s: _write(f'{s}/notes.txt', '')),

    # Sine-wave regression.
    'sine: unknown learner': ('sine.py', ['--learners=maml,nope', '--results_dir={sandbox}'],
                              r'--learners: a comma-separated list of maml, fomaml', None),
    'sine: hidden widths': ('sine.py', ['--hidden=40,x', '--results_dir={sandbox}'], r'--hidden: a comma-separated',
                            None),
    'sine: study exists': ('sine.py', ['--learners=anil,maml', '--results_dir={sandbox}'],
                           r'sine_k10_seed0/maml already exists; pass --resume',
                           lambda w, s: shutil.copytree(w['run'], f'{s}/sine_k10_seed0/maml')),

    # 2D navigation.
    'navigation: unknown learner': ('navigation.py', ['--learners=maml,nope', '--results_dir={sandbox}'],
                                    r'--learners: a comma-separated list of maml, pretrained, random', None),
    'navigation: unknown estimator': ('navigation.py', ['--meta_gradient=dice', '--results_dir={sandbox}'],
                                      r'--meta_gradient=dice: value should be one of <lvc\|unbiased\|', None),

    # Distribution (tf.distribute). TINY's meta-batch is 2 tasks.
    'maml: replicas do not divide the meta-batch': ('maml.py', [*MAML, '--strategy=mirrored', '--cpu_replicas=3'],
                                                    r'--meta_batch_size 2: the 3 replicas of --strategy mirrored '
                                                    r'must divide it', None),
    'maml: multi_worker without TF_CONFIG': ('maml.py', [*MAML, '--strategy=multi_worker'],
                                             r'--strategy multi_worker: the TF_CONFIG environment variable is not '
                                             r'set', None, {'env': {'TF_CONFIG': ''}}),
    'maml: TF_CONFIG address without a port': ('maml.py', [*MAML, '--strategy=multi_worker'],
                                                r"TF_CONFIG: 'localhost' is not an address host:port", None,
                                                {'env': {'TF_CONFIG': '{"cluster": {"worker": ["localhost"]}, '
                                                                      '"task": {"type": "worker", "index": 0}}'}}),
    'maml: TF_CONFIG port out of range': ('maml.py', [*MAML, '--strategy=multi_worker'],
                                          r'TF_CONFIG: .localhost:70000. is not an address host:port with a port '
                                          r'from 1 to 65535', None,
                                          {'env': {'TF_CONFIG': '{"cluster": {"worker": ["localhost:70000"]}, '
                                                                '"task": {"type": "worker", "index": 0}}'}}),
    'maml: TF_CONFIG with two chiefs': ('maml.py', [*MAML, '--strategy=multi_worker'],
                                        r'TF_CONFIG is not a cluster description', None,
                                        {'env': {'TF_CONFIG': '{"cluster": {"chief": ["localhost:2001", '
                                                              '"localhost:2002"], "worker": ["localhost:2003"]}, '
                                                              '"task": {"type": "chief", "index": 0}}'}}),
    'protonet: malformed TF_CONFIG': ('protonet.py', [*NO_INNER_LOOP, '--strategy=multi_worker'],
                                      r'TF_CONFIG is not a cluster description for --strategy multi_worker: '
                                      r'.*\[1\]', None,
                                      {'env': {'TF_CONFIG': '{"cluster": [1]'}}),

    # The environment.
    'maml: oneDNN off': ('maml.py', MAML, r'TF_ENABLE_ONEDNN_OPTS=0', None, {'env': {'TF_ENABLE_ONEDNN_OPTS': '0'}}),
    'benchmark: oneDNN off': ('benchmark.py', ['--repeats=1'], r'TF_ENABLE_ONEDNN_OPTS=0', None,
                              {'env': {'TF_ENABLE_ONEDNN_OPTS': '0'}}),

    # Issue 41: refusals that wrote first, checks made only after the work, and the remaining tracebacks.
    'maml: resume, checkpoint of another model': (
        'maml.py', RESUME, r'checkpoint.npz does not match this model',
        lambda w, s: _rename_checkpoint_array(_copy_run(w, s), 'model/conv1/kernel', 'model/conv9/kernel')),
    'maml: resume, model.keras is a folder': (
        'maml.py', RESUME, r'model.keras is a folder, and a run folder holds only files',
        lambda w, s: _file_replaced_by_folder(_copy_run(w, s), 'model.keras')),
    'sine: a learner listed twice': ('sine.py', ['--learners=maml,reptile,maml', '--results_dir={sandbox}'],
                                     r'--learners: maml listed twice', None),
    'sine: an infinite baseline step size': ('sine.py', ['--baseline_lrs=0.1,inf', '--results_dir={sandbox}'],
                                             r'--baseline_lrs: a comma-separated list of positive, finite', None),
    'lab: --large_query above the test images': ('initialization_lab.py', LAB,
                                                 r'--large_query 5: the MNIST test set has only 2 images', None),
    'compare: a tool as a learner': ('compare.py', [*RESULTS, '--algorithms=maml,compare'],
                                     r"--algorithms: 'compare' is not a learner command", None),
    'maml: run name of invalid UTF-8': ('maml.py', [*MAML, '--run_name=a\udcffb'], r'--run_name .*not valid UTF-8',
                                        None),
    'maml: run name with a newline': ('maml.py', [*MAML, '--run_name=a\nb'], r'--run_name .*control character', None),
    'maml: run name of spaces': ('maml.py', [*MAML, '--run_name=   '], r'--run_name .*blank', None),
    'sine: study name with a newline': ('sine.py', ['--run_name=a\nb', '--results_dir={sandbox}'],
                                        r'--run_name .*control character', None),
    'maml: validation tasks beyond memory': ('maml.py', [*MAML, '--num_val_tasks=1000000000000'],
                                             r'--num_val_tasks 1000000000000: .* GB of memory, and this machine has',
                                             None),
    'sine: test tasks beyond memory': ('sine.py', ['--num_test_tasks=1000000000000', '--results_dir={sandbox}'],
                                       r'--num_test_tasks 1000000000000: .* GB of memory', None),
    'maml: images beyond memory': ('maml.py', [*MAML, '--dataset=folder:{sandbox}/images', '--image_size=100000',
                                               '--n_way=2', '--num_train_classes=1', '--num_val_classes=1',
                                               '--num_query=1'],
                                   r'--image_size 100000: 6 images would take', _image_folder),
    'reptile: Adam state with SGD': ('reptile.py', [*RESULTS, '--inner_optimizer=sgd', '--inner_adam_state=fresh'],
                                     r'--inner_adam_state: only with --inner_optimizer=adam', None),
    'maml: results path with too long a name': ('maml.py', [*MAML, '--results_dir={sandbox}/deep/' + 'a' * 300],
                                                r'--results_dir .*: a name in it is 300 bytes long', None),
    'sine: resume a study that does not exist': ('sine.py', ['--resume', '--results_dir={sandbox}'],
                                                 r'--resume: .*sine_k10_seed0 does not exist', None),

    # reference.py: whole-action checks (issue 41)
    'reference: --add with a README without table markers': (
        'reference.py', [*REFERENCE, '--add={sandbox}/results/run'], r'README.md: no table markers',
        lambda w, s: [_reference_folder(s), _copy_run(w, s), _write(f'{s}/README.md', '# A project\n')]),
    'reference: --add without reference/README.md': (
        'reference.py', [*REFERENCE, '--add={sandbox}/results/run'], r'reference/README.md: No such file',
        lambda w, s: [_reference_folder(s), _copy_run(w, s), os.remove(f'{s}/reference/README.md')]),
    'reference: --add with a README that is not text': (
        'reference.py', [*REFERENCE, '--add={sandbox}/results/run'], r'README.md: not UTF-8 text',
        lambda w, s: [_reference_folder(s), _copy_run(w, s), open(f'{s}/README.md', 'wb').write(b'\xff\xfe\x00')]),
    'reference: --add of a run named running': (
        'reference.py', [*REFERENCE, '--add={sandbox}/results/running', '--replace'],
        r'a run named running cannot be kept', lambda w, s: [_reference_folder(s), _copy_run(w, s, 'running')]),
    'reference: --add of a run without n_way': (
        'reference.py', [*REFERENCE, '--add={sandbox}/results/run'], r'hyperparameters.json: no n_way',
        _reference_run_without_n_way),
    'reference: --add of a run with an unreadable file': (
        'reference.py', [*REFERENCE, '--add={sandbox}/results/run'], r'results/run/model.keras: Permission denied',
        lambda w, s: [_reference_folder(s), os.chmod(f'{_copy_run(w, s)}/model.keras', 0)], {'permissions': True}),
    'reference: --continue with --evaluate': (
        'reference.py', ['--reference_dir={sandbox}/reference', '--continue=fomaml_paper_5way1shot',
                         '--evaluate=nothing_kept'], r'--continue and --evaluate contradict each other',
        lambda w, s: _reference_folder(s)),
    'reference: --evaluate with --add': (
        'reference.py', ['--reference_dir={sandbox}/reference', '--add={sandbox}/results/run',
                         '--evaluate=nothing_kept'],
        r'--add and --evaluate contradict each other', lambda w, s: [_reference_folder(s), _copy_run(w, s)]),
    'reference: --check with --continue': (
        'reference.py', [*REFERENCE, '--check', '--continue=no_such_protocol'],
        r'--check and --continue contradict each other', lambda w, s: _reference_folder(s)),
    'reference: --replace without --add': ('reference.py', [*REFERENCE, '--replace'], r'--replace without --add',
                                           lambda w, s: _reference_folder(s)),
    'reference: --minutes with --add': (
        'reference.py', [*REFERENCE, '--add={sandbox}/results/run', '--minutes=5'], r'--minutes with --add',
        lambda w, s: [_reference_folder(s), _copy_run(w, s)]),
    'reference: --evaluate on a model.keras that is no zip': (
        'reference.py', ['--reference_dir={sandbox}/reference', '--evaluate=run'],
        r'--evaluate run: .*reference/run/model.keras cannot be read \(',
        lambda w, s: _reference_kept_run(w, s, lambda folder: _write(f'{folder}/model.keras', 'not a zip'))),
    'reference: --evaluate on a model.keras that is a zip of something else': (
        'reference.py', ['--reference_dir={sandbox}/reference', '--evaluate=run'],
        r'--evaluate run: .*reference/run/model.keras cannot be read \(',
        lambda w, s: _reference_kept_run(w, s, _reference_foreign_zip)),
    'reference: --evaluate on a truncated checkpoint.npz': (
        'reference.py', ['--reference_dir={sandbox}/reference', '--evaluate=run'],
        r'--evaluate run: .*reference/run/checkpoint.npz cannot be read \(',
        lambda w, s: _reference_kept_run(w, s, lambda folder: _reference_truncated(f'{folder}/checkpoint.npz'))),
    'reference: --evaluate on a checkpoint.npz with an object array': (
        'reference.py', ['--reference_dir={sandbox}/reference', '--evaluate=run'],
        r'--evaluate run: .*reference/run/checkpoint.npz cannot be read \(',
        lambda w, s: _reference_kept_run(w, s, _reference_object_array)),
}


def _snapshot(folder):
    """Every file and folder below `folder` with its size, modification time and permissions."""
    seen = {}
    for root, folders, files in os.walk(folder):
        for name in folders + files:
            path = os.path.join(root, name)
            info = os.lstat(path)
            seen[os.path.relpath(path, folder)] = (info.st_size if name in files else None, info.st_mtime_ns,
                                                   stat.S_IMODE(info.st_mode))
    return seen


def _error_lines(stderr):
    return [line for line in stderr.splitlines() if line.startswith('error:')]


def run_command(script, arguments, world, sandbox, permissions=False, env=None):
    """Runs a command of the project as a user would; with `permissions`, file permissions apply
    even when the tests run as root."""
    values = {'omniglot': world['omniglot'], 'cache': world['cache'], 'mnist': world['mnist'], 'sandbox': sandbox}
    prefix = []
    if permissions and os.geteuid() == 0:
        if not shutil.which('setpriv'):
            pytest.fail("running as root: the permission cases need setpriv (util-linux) to drop root's overrides")
        prefix = WITHOUT_ROOT_OVERRIDES
    return launch.run([*prefix, sys.executable, os.path.join(REPO, script),
                       *[argument.format(**values) for argument in arguments]],
                      capture_output=True, text=True, cwd=REPO, timeout=300, env={**os.environ, **(env or {})})


@pytest.mark.parametrize('case', list(CASES))
def test_bad_input_gets_one_error_line_and_changes_nothing(case, world, tmp_path):
    script, arguments, message, prepare, *options = CASES[case]
    options = options[0] if options else {}
    sandbox = str(tmp_path)
    replaced = prepare(world, sandbox) if prepare else None
    if isinstance(replaced, str):  # The case's own copy of the data.
        world = {**world, 'mnist' if 'mnist' in replaced else 'omniglot': replaced}
    before = _snapshot(sandbox)
    result = run_command(script, arguments, world, sandbox, options.get('permissions', False), options.get('env'))
    assert result.returncode != 0, f'{case}: exit status 0\n{result.stderr[-2000:]}'
    assert 'Traceback' not in result.stderr, result.stderr[-3000:]
    errors = _error_lines(result.stderr)
    assert len(errors) == 1, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1] == errors[0], 'the error is not the last line'
    assert re.search(message, errors[0]), errors[0]
    assert _snapshot(sandbox) == before, 'the command changed, removed or left files'


# The three bugs that lost work or lied --------------------------------------------------------

def test_run_name_cannot_escape_the_results_folder_and_overwrite_removes_only_run_folders(world, tmp_path):
    """Bug 1: --run_name .. --overwrite deleted the project; ../mydata deleted a folder that was no run."""
    sandbox = str(tmp_path)
    _copy_run(world, sandbox, 'kept')
    _write(f'{sandbox}/mydata/precious.txt', 'mine')
    _write(f'{sandbox}/results/notes/precious.txt', 'mine')
    for name in ('..', '.', '../mydata', 'notes'):
        result = run_command('maml.py', [*MAML, f'--run_name={name}', '--overwrite', '--num_iterations=1'],
                             world, sandbox)
        assert result.returncode != 0, f'--run_name {name} --overwrite was accepted'
        assert _error_lines(result.stderr), result.stderr[-2000:]
        assert open(f'{sandbox}/mydata/precious.txt').read() == 'mine'
        assert open(f'{sandbox}/results/notes/precious.txt').read() == 'mine'
        assert os.path.isfile(f'{sandbox}/results/kept/{results.MODEL_FILE}')
    replaced = run_command('maml.py', [*MAML, '--run_name=kept', '--overwrite', '--num_iterations=1'],
                           world, sandbox)
    assert replaced.returncode == 0, replaced.stderr[-2000:]
    assert f'removing the previous run folder {sandbox}/results/kept' in replaced.stdout
    assert results.read_summary(f'{sandbox}/results/kept')['iterations'] == 1


@pytest.mark.parametrize('script, flags', [
    ('maml.py', ['--inner_lr=1e30']),
    ('maml.py', ['--meta_lr=1e30']),
    ('maml_plusplus.py', ['--meta_lr=1e10', '--cosine_annealing=false']),
])
def test_non_finite_weights_stop_the_run_and_are_never_saved(world, tmp_path, script, flags):
    """Bug 2: NaN weights gave a finite loss, so the run finished at chance and saved NaN files."""
    result = run_command(script, [*MAML, '--run_name=diverged', '--num_iterations=6', '--val_interval=2', *flags],
                         world, str(tmp_path))
    assert result.returncode != 0, 'the diverged run finished'
    stopped = re.search(r'NaN or infinite at iteration (\d+); stopped there', result.stderr)
    assert stopped, result.stderr[-2000:]
    folder = tmp_path / 'results' / 'diverged'
    if int(stopped[1]) <= 2:  # Before the first checkpoint past the initial weights: nothing is kept.
        assert 'the new run folder' in result.stderr and 'was removed' in result.stderr
        assert not folder.exists()
        return
    assert not (folder / results.MODEL_FILE).exists() and not (folder / results.SUMMARY_FILE).exists()
    with np.load(folder / results.CHECKPOINT_FILE) as checkpoint:
        assert all(np.isfinite(checkpoint[key]).all() for key in checkpoint.files)


@pytest.mark.parametrize('damage', ['missing', 'empty'])
def test_resume_without_the_metrics_of_the_checkpoint_is_refused(world, tmp_path, damage):
    """Bug 3: resuming with no metrics.csv re-validated the trained weights as iteration 0 and
    rewrote the checkpoint as iteration 0, so the next resume retrained on trained weights."""
    folder = _copy_run(world, str(tmp_path))
    metrics = os.path.join(folder, results.METRICS_FILE)
    os.remove(metrics) if damage == 'missing' else _write(metrics, '')
    checkpoint = open(os.path.join(folder, results.CHECKPOINT_FILE), 'rb').read()
    result = run_command('maml.py', [*RESUME, '--num_iterations=6'],
                         world, str(tmp_path))
    assert result.returncode != 0, 'the run resumed'
    assert re.search(r'checkpoint.npz is at iteration 4 but .*metrics.csv has no row', result.stderr), \
        result.stderr[-2000:]
    assert open(os.path.join(folder, results.CHECKPOINT_FILE), 'rb').read() == checkpoint


def test_a_tf_config_port_in_use_is_one_error_line(world, tmp_path):
    """TensorFlow failed deep inside its server (a traceback) when this process's port was taken."""
    import json
    import socket
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = {'cluster': {'worker': [f'localhost:{port}']}, 'task': {'type': 'worker', 'index': 0}}
        result = run_command('maml.py', [*MAML, '--strategy=multi_worker'], world, str(tmp_path),
                             env={'TF_CONFIG': json.dumps(config)})
    assert result.returncode != 0 and 'Traceback' not in result.stderr, result.stderr[-2000:]
    assert _error_lines(result.stderr) == [result.stderr.strip().splitlines()[-1]]
    assert f'port {port}' in result.stderr and 'choose a free port' in result.stderr


def test_a_checkpoint_with_integer_weights_is_refused(world, tmp_path):
    """Integer arrays where the model has float weights were restored silently (rounded weights)."""
    import keras
    folder = _copy_run(world, str(tmp_path))
    with np.load(os.path.join(folder, results.CHECKPOINT_FILE)) as checkpoint:  # The model's variables.
        variables = {key: keras.Variable(np.zeros_like(checkpoint[key])) for key in checkpoint.files
                     if key != 'iteration'}
    _retype_checkpoint(folder, np.int32)
    run = results.RunFolder(os.path.dirname(folder), os.path.basename(folder), resume=True)
    with pytest.raises(results.RunError, match=r'model/conv1/kernel: int32 values for a float32 variable'):
        run.restore_checkpoint(variables)
