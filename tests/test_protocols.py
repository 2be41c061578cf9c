"""The papers' protocols (protocols/*.flags), rotation as augmentation, and the reference-results table."""

import copy
import csv
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

import launch
from conftest import REPO
from fewshot import data, results
from fewshot.cli import experiment, replay
import maml  # noqa: F401 (defines MAML's flags)
import maml_plusplus  # noqa: F401 (defines MAML++'s flags)
import imaml  # noqa: F401 (defines iMAML's flags)
import reptile  # noqa: F401 (defines Reptile's flags)
import protonet  # noqa: F401 (defines the Prototypical Network's flags)
import relationnet  # noqa: F401 (defines the Relation Network's flags)
import reference

FLAGS = flags.FLAGS
PROTOCOLS = os.path.join(REPO, 'protocols')

# The papers' values, written out again (protocols/README.md says where each comes from).
MAML_PAPER = dict(meta_lr=0.001, num_iterations=60000, num_test_tasks=600, split='random', num_train_classes=1100,
                  num_val_classes=100, task_rotations='all', rotations=False, num_filters=64, max_pool=False,
                  val_interval=500)
FIVE_WAY = dict(n_way=5, meta_batch_size=32, inner_lr=0.4, num_inner_steps=1, num_eval_inner_steps=3)
TWENTY_WAY = dict(n_way=20, meta_batch_size=16, inner_lr=0.1, num_inner_steps=5, num_eval_inner_steps=5)
EXPECTED = {
    f'{order}_paper_{n_way}way{k_shot}shot.flags': {**MAML_PAPER, **(FIVE_WAY if n_way == 5 else TWENTY_WAY),
                                                   'k_shot': k_shot, 'num_query': k_shot,
                                                   'first_order': order == 'fomaml'}
    for order in ('maml', 'fomaml') for n_way in (5, 20) for k_shot in (1, 5)}
MAMLPP_PAPER = dict(
    num_query=1, meta_batch_size=8, inner_lr=0.1, num_inner_steps=5, num_eval_inner_steps=5, da=False, msl=True,
    msl_iterations=5000, bnrs=True, bnwb=True, lslr=True, cosine_annealing=True, meta_lr=0.001, min_meta_lr=1e-5,
    eval_batch_norm='transductive', num_filters=64, max_pool=True, split='random', num_train_classes=1151,
    num_val_classes=50, task_rotations='train', rotations=False, num_iterations=50000, num_test_tasks=600,
    val_interval=500)
EXPECTED.update({f'mamlpp_paper_{n_way}way{k_shot}shot.flags': {**MAMLPP_PAPER, 'n_way': n_way, 'k_shot': k_shot}
                 for n_way in (5, 20) for k_shot in (1, 5)})
EXPECTED.update({f'reptile_paper_5way{k_shot}shot.flags': dict(
    n_way=5, k_shot=k_shot, num_query=10 - k_shot, meta_batch_size=5, inner_optimizer='adam',
    inner_adam_state='carried', inner_lr=0.001, inner_batch_size=10, num_inner_steps=5, num_eval_inner_steps=50,
    meta_step_size=1.0, final_meta_step_size=0.0, num_filters=64, max_pool=False, split='random',
    num_train_classes=1150, num_val_classes=50, rotations=True,
    task_rotations='none', num_iterations=100000, val_interval=2500, num_test_tasks=600) for k_shot in (1, 5)})
EXPECTED['imaml_code_5way1shot.flags'] = dict(
    n_way=5, k_shot=1, num_query=1, meta_batch_size=32, inner_lr=0.1, num_inner_steps=16, num_eval_inner_steps=16,
    lam=2.0, cg_steps=5, regularization='pull_back', cg_damping=1.0, lam_damping=10.0, meta_lr=0.001, num_filters=64,
    max_pool=False, split='random', num_train_classes=1150, num_val_classes=50, task_rotations='all', rotations=False,
    num_iterations=20000, val_interval=500, num_test_tasks=600)
EXPECTED.update({f'protonet_paper_5way{k_shot}shot.flags': dict(
    n_way=5, k_shot=k_shot, train_n_way=60, num_query=5, meta_batch_size=1, meta_lr=0.001,
    meta_lr_halving_interval=2000, num_filters=64, max_pool=True, split='random', num_train_classes=1150,
    num_val_classes=50, task_rotations='all', rotations=False, num_iterations=30000, val_interval=500,
    num_test_tasks=600) for k_shot in (1, 5)})

EXPECTED.update({f'relationnet_paper_5way{k_shot}shot.flags': dict(
    n_way=5, k_shot=k_shot, num_query=20 - k_shot if k_shot == 1 else 15, meta_batch_size=1, meta_lr=0.001,
    meta_lr_halving_interval=100000, clip_norm=0.5, backbone='relationnet', num_filters=64, relation_blocks=2,
    relation_max_pool=True, max_pool=False, split='random', num_train_classes=1150, num_val_classes=50,
    task_rotations='all', task_rotations_per='task', rotations=False, num_iterations=1000000, val_interval=5000,
    num_test_tasks=600) for k_shot in (1, 5)})

# mini-ImageNet (the named source --dataset mini_imagenet: its own 64 / 16 / 20 split, 84x84x3 images).
MINI_IMAGENET = dict(dataset='mini_imagenet', n_way=5, num_test_tasks=600)
MAML_MINI_IMAGENET = dict(**MINI_IMAGENET, num_query=15, inner_lr=0.01, num_inner_steps=5, num_eval_inner_steps=10,
                          meta_lr=0.001, num_filters=32, max_pool=True, pool_padding='valid', flatten=True,
                          num_iterations=60000, val_interval=500)
EXPECTED.update({f'{prefix}_miniimagenet_5way{k_shot}shot.flags': dict(
    **MAML_MINI_IMAGENET, k_shot=k_shot, meta_batch_size=4 if k_shot == 1 else 2, first_order=first_order)
    for prefix, first_order in (('maml_paper', False), ('fomaml_paper', True), ('anil_maml', False))
    for k_shot in (1, 5)})
EXPECTED.update({f'protonet_paper_miniimagenet_5way{k_shot}shot.flags': dict(
    **MINI_IMAGENET, k_shot=k_shot, train_n_way=30 if k_shot == 1 else 20, num_query=15, meta_batch_size=1,
    meta_lr=0.001, meta_lr_halving_interval=2000, num_filters=64, max_pool=True, pool_padding='valid', flatten=True,
    num_iterations=30000, val_interval=500) for k_shot in (1, 5)})
EXPECTED.update({f'reptile_paper_miniimagenet_5way{k_shot}shot.flags': dict(
    **MINI_IMAGENET, k_shot=k_shot, num_query=15 - k_shot, meta_batch_size=5, inner_optimizer='adam',
    inner_adam_state='carried', inner_lr=0.001, inner_batch_size=10, num_inner_steps=8, num_eval_inner_steps=50,
    meta_step_size=1.0, final_meta_step_size=0.0, num_filters=32, max_pool=True, flatten=True, num_iterations=100000,
    val_interval=2500) for k_shot in (1, 5)})
EXPECTED.update({f'mamlpp_paper_miniimagenet_5way{k_shot}shot.flags': dict(
    **MINI_IMAGENET, k_shot=k_shot, num_query=15, meta_batch_size=2, inner_lr=0.01, num_inner_steps=5,
    num_eval_inner_steps=5, da=False, msl=True, msl_iterations=7500, bnrs=True, bnwb=True, lslr=True,
    cosine_annealing=True, meta_lr=0.001, min_meta_lr=0.001, eval_batch_norm='transductive', num_filters=48,
    max_pool=True, num_iterations=50000, val_interval=500) for k_shot in (1, 5)})
EXPECTED.update({f'relationnet_paper_miniimagenet_5way{k_shot}shot.flags': dict(
    **MINI_IMAGENET, k_shot=k_shot, num_query=15 if k_shot == 1 else 10, meta_batch_size=1, meta_lr=0.001,
    meta_lr_halving_interval=100000, clip_norm=0.5, backbone='relationnet', num_filters=64, relation_blocks=2,
    relation_max_pool=True, max_pool=False, num_iterations=500000, val_interval=5000) for k_shot in (1, 5)})


def _file_values(*argv):
    """The flags a command line with flag files sets, by name, each parsed by its flag (validators
    that tie flags of one command together are left to the commands: see the run test below)."""
    values = {}
    for argument in FLAGS.read_flags_from_files(list(argv), force_gnu=False):
        name, _, text = argument.removeprefix('--').partition('=')
        if not text and name not in FLAGS and name.startswith('no'):
            name, text = name[2:], 'false'
        flag = copy.deepcopy(FLAGS[name])
        flag.parse(text or 'true')
        values[name] = flag.value
    return values


def test_every_protocol_file_is_checked():
    assert sorted(os.path.basename(path) for path in glob.glob(os.path.join(PROTOCOLS, '*.flags'))) == sorted(EXPECTED)


def test_reference_py_can_continue_every_protocol():
    assert {name.split('_')[0] for name in EXPECTED} <= set(reference.COMMANDS)


# One process per command, each reading its protocol files as the command itself does: its flags and
# validators only (in this process every command's flags and validators are defined at once, e.g.
# MAML++'s --num_eval_inner_steps <= --num_inner_steps, which MAML's mini-ImageNet protocol breaks).
PARSE = """
import sys
from absl import flags
import {module}
for path in sys.argv[1:]:
    flags.FLAGS.unparse_flags()
    try:
        flags.FLAGS(['{module}.py', '--flagfile=' + path])
    except flags.Error as error:
        print('refused', path, ' '.join(str(error).split()))
    else:
        print('parsed', path)
"""


@pytest.mark.parametrize('script', sorted(set(reference.COMMANDS.values())))
def test_every_protocol_file_parses_with_its_command(script):
    """Each protocol file, read by the command reference.py --continue runs it with, every validator
    of that command applied. (The mini-ImageNet files name --dataset mini_imagenet: they parse once
    that named source is accepted.)"""
    names = sorted(name for name in EXPECTED if reference.COMMANDS[name.split('_')[0]] == script)
    paths = [os.path.join(PROTOCOLS, name) for name in names]
    result = subprocess.run([sys.executable, '-c', PARSE.format(module=script.removesuffix('.py')), *paths],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    outcomes = [line for line in result.stdout.splitlines() if line.startswith(('parsed ', 'refused '))]
    assert outcomes == [f'parsed {path}' for path in paths], '\n'.join(outcomes)


def test_every_protocol_has_the_papers_number_and_its_algorithm():
    """Each protocol's (algorithm, dataset, way, shot) has a row of papers.csv, under the name its
    command records at the order the file sets."""
    papers = reference.read_papers(os.path.join(REPO, 'reference'))
    for name in EXPECTED:
        prefix = name.split('_')[0]
        algorithm = reference.ALGORITHMS[prefix]
        if 'first_order' in EXPECTED[name]:  # maml.py and anil.py: 'FO-' at first order.
            assert algorithm.startswith('FO-') == EXPECTED[name]['first_order'], name
        path = os.path.join(PROTOCOLS, name)
        assert reference.protocol_setting(path) == (EXPECTED[name].get('dataset', 'omniglot'),
                                                    EXPECTED[name]['n_way'], EXPECTED[name]['k_shot']), name
        assert (algorithm, *reference.protocol_setting(path)) in papers, name


def test_the_table_shows_each_protocol_whose_data_is_not_here_as_not_run():
    """Every protocol on a dataset not on this project's machines, with no kept run, is a row of both
    committed tables: 'not run', the paper's number and the one command that runs it where the data is."""
    kept = {reference.protocol_of(hyperparameters) for _, hyperparameters, _ in
            reference.kept_runs(os.path.join(REPO, 'reference'))}
    away = sorted(name for name, values in EXPECTED.items()
                  if values.get('dataset', 'omniglot') not in reference.DATA_HERE)
    assert len(away) == 14 and not kept & {name.removesuffix('.flags') for name in away}
    papers = reference.read_papers(os.path.join(REPO, 'reference'))
    for readme in (os.path.join(REPO, 'README.md'), os.path.join(REPO, 'reference', 'README.md')):
        with open(readme, encoding='utf-8') as f:
            lines = f.read().splitlines()
        for name in away:
            protocol, values = name.removesuffix('.flags'), EXPECTED[name]
            rows = [line for line in lines if f'| `{protocol}` |' in line]
            assert len(rows) == 1, (readme, name)
            algorithm = reference.ALGORITHMS[name.split('_')[0]]
            paper = papers[(algorithm, values['dataset'], values['n_way'], values['k_shot'])]
            assert f'| {reference.NOT_RUN} | {paper["accuracy"]:.2f} ± {paper["ci95"]:.2f} |' in rows[0], rows[0]
            script = reference.COMMANDS[name.split('_')[0]]
            assert rows[0].endswith(f'| `python {script} --flagfile=protocols/{name} '
                                    '--dataset_dir=/path/to/mini-imagenet` |'), rows[0]


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_a_protocol_file_sets_the_papers_values_and_nothing_else(name):
    assert _file_values(f'--flagfile={os.path.join(PROTOCOLS, name)}') == EXPECTED[name]


def test_a_flag_after_the_file_overrides_it():
    with flagsaver.flagsaver():
        FLAGS.unparse_flags()
        FLAGS(['test', f'--flagfile={os.path.join(PROTOCOLS, "maml_paper_5way1shot.flags")}', '--num_iterations=2500',
               '--num_eval_inner_steps=1'])  # (--num_eval_inner_steps: MAML++'s validator is defined here too.)
        assert FLAGS.num_iterations == 2500 and FLAGS.inner_lr == 0.4 and FLAGS.task_rotations == 'all'


def _lettered(num_classes, per_class=20, size=12):
    """Images no rotation maps onto another: class c has a bar of length c + 2 in one corner, drawing d
    a dot at row d; [C, per_class, size, size]."""
    images = np.zeros((num_classes, per_class, size, size), np.float32)
    for c in range(num_classes):
        images[c, :, 0, :c % (size - 2) + 2] = 1
        images[c, :, 1 + np.arange(per_class) % (size - 2), 1 + c % 3] = 0.5
    return images


def _turns(rotate_per_task=False):
    """The quarter turns [40, 5] that rotation gave each class of 40 tasks, having checked that every
    image of a class, support and query, was turned alike and that nothing else changed."""
    images = _lettered(9)
    plain = data.sample_episodes(images, 5, 2, 3, 40, np.random.default_rng(7))
    turned = data.sample_episodes(images, 5, 2, 3, 40, np.random.default_rng(7), rotate=True,
                                  rotate_per_task=rotate_per_task)
    # The same classes and drawings; each class turned by one multiple of 90 degrees, support and query alike.
    for split in ('support', 'query'):
        assert np.array_equal(getattr(plain, f'{split}_labels'), getattr(turned, f'{split}_labels'))
    by_class = [np.concatenate([episodes.support_images[..., 0].reshape(40, 5, 2, 12, 12),
                                episodes.query_images[..., 0].reshape(40, 5, 3, 12, 12)], axis=2)
                for episodes in (plain, turned)]
    turns = np.full((40, 5), -1)
    for task in range(40):
        for label in range(5):
            before, after = by_class[0][task, label], by_class[1][task, label]
            matches = [k for k in range(4) if np.array_equal(np.rot90(before, k, axes=(1, 2)), after)]
            assert len(matches) == 1, (task, label)
            turns[task, label] = matches[0]
    return turns


def test_rotation_turns_every_image_of_a_class_of_a_task_alike():
    turns = _turns()
    # Drawn per class and per task, all four turns used.
    assert set(np.unique(turns)) == {0, 1, 2, 3}
    assert len({tuple(row) for row in turns}) > 30


def test_rotation_per_task_turns_every_class_of_a_task_alike():
    turns = _turns(rotate_per_task=True)
    assert np.all(turns == turns[:, :1])  # The Relation Network code's: one turn for the whole task,
    assert set(np.unique(turns)) == {0, 1, 2, 3}  # drawn anew per task.


def test_rotation_is_deterministic_for_a_seed_and_changes_nothing_else_when_off():
    images = _lettered(9)
    sampler = data.EpisodeSampler(images, 5, 1, 1, seed=3, rotate=True)
    first, again = sampler.sample(11, 8), sampler.sample(11, 8)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first.support_images, data.EpisodeSampler(images, 5, 1, 1, seed=3).sample(11, 8)
                              .support_images)
    # Without rotation the stream is what it was before rotation existed: the same draw as sample_episodes.
    plain = data.EpisodeSampler(images, 5, 1, 1, seed=3).sample(11, 8)
    direct = data.sample_episodes(images, 5, 1, 1, 8, np.random.default_rng([3, 11]))
    assert all(np.array_equal(a, b) for a, b in zip(plain, direct))


@pytest.mark.parametrize('mode, training_turns, evaluation_turns', [
    ('none', False, False), ('train', True, False), ('all', True, True)])
def test_which_tasks_turn(mode, training_turns, evaluation_turns):
    images = _lettered(12)
    splits = data.Splits(train=images, val=images, test=images)
    with flagsaver.flagsaver():
        FLAGS.unparse_flags()
        FLAGS(['test', '--n_way=5', '--k_shot=1', '--num_query=1', '--meta_batch_size=4', '--seed=0',
               '--eval_seed=0'])
        plain_training = experiment.episode_stream(splits).sample(1, 4)
        plain_evaluation = experiment.evaluation_batches(images, 'meta-test', 4, 1)[0]
        FLAGS.task_rotations = mode
        training = experiment.episode_stream(splits).sample(1, 4)
        evaluation = experiment.evaluation_batches(images, 'meta-test', 4, 1)[0]
    assert np.array_equal(training.query_images, plain_training.query_images) != training_turns
    assert np.array_equal(evaluation.query_images, plain_evaluation.query_images) != evaluation_turns


def test_the_gap_to_the_paper_carries_both_intervals():
    paper = {'accuracy': 98.3, 'ci95': 0.4}
    assert reference.difference(97.0, 0.3, paper) == '-1.30 ± 0.50 (below)'  # √(0.3² + 0.4²) = 0.5
    assert reference.difference(98.0, 0.3, paper) == '-0.30 ± 0.50 (no difference shown)'
    assert reference.difference(99.0, 0.3, paper) == '+0.70 ± 0.50 (above)'
    assert reference.difference(99.0, 0.3, {'accuracy': 99.47, 'ci95': None}) == \
        '-0.47 ± 0.30 (below; ours ± only: the paper gives no interval)'


def test_the_committed_tables_are_what_the_kept_runs_give():
    reference_dir = os.path.join(REPO, 'reference')
    for path in (os.path.join(reference_dir, 'README.md'), os.path.join(REPO, 'README.md')):
        table = reference.table(reference_dir, os.path.dirname(path))
        with open(path, encoding='utf-8') as f:
            assert reference.with_table(path, table) == f.read(), path
    kept = reference.kept_runs(reference_dir)
    for name, _, summary in kept:  # Each kept run's number is in the table as its summary.json says.
        assert f"{100 * summary['test_post_accuracy']:.2f} ± {100 * summary['test_post_ci95']:.2f}" in table, name
        files = set(os.listdir(os.path.join(reference_dir, name)))
        assert files <= set(reference.REFERENCE_FILES + reference.RELEASED_FILES + (reference.HOW_SOON_FILE,)), name
        assert len(files & set(reference.RELEASED_FILES)) in (0, len(reference.RELEASED_FILES)), name  # Both or none.
        if results.MODEL_FILE in files:  # Released weights are linked from the table, from either file.
            assert f'[model.keras]({name}/model.keras)' in reference.table(reference_dir, reference_dir), name
            assert f'[model.keras](reference/{name}/model.keras)' in table, name


def _command(script, *argv):
    return launch.run([sys.executable, os.path.join(REPO, script), *argv], capture_output=True, text=True,
                      cwd=REPO, timeout=600)


TINY = ['--num_filters=4', '--num_train_classes=9', '--num_val_classes=5', '--num_iterations=3', '--val_interval=2',
        '--num_val_tasks=4', '--num_test_tasks=4', '--progress=false']


@pytest.mark.parametrize('script, protocol', [('maml.py', 'fomaml_paper_5way1shot'),
                                              ('maml_plusplus.py', 'mamlpp_paper_5way1shot'),
                                              ('relationnet.py', 'relationnet_paper_5way1shot')])
def test_a_protocol_run_completes_and_is_kept_in_the_table(synthetic_dir, tmp_path, script, protocol):
    """A few iterations of a protocol on synthetic data, then reference.py keeps the run and writes its row."""
    out = str(tmp_path)
    name = f'tiny_{protocol}'  # Beside the committed run of the same protocol, not in its place.
    run = _command(script, f'--flagfile=protocols/{protocol}.flags', *TINY, f'--data_dir={synthetic_dir}',
                   f'--cache_dir={out}/cache', f'--results_dir={out}/results', f'--run_name={name}')
    assert run.returncode == 0, run.stderr[-2000:]
    with open(os.path.join(out, 'results', name, 'hyperparameters.json')) as f:
        recorded = json.load(f)['flags']
    overridden = {argument.removeprefix('--').partition('=')[0] for argument in TINY}
    assert {name: recorded[name] for name in EXPECTED[f'{protocol}.flags'] if name not in overridden} == \
        {name: value for name, value in EXPECTED[f'{protocol}.flags'].items() if name not in overridden}
    assert recorded['num_iterations'] == 3

    reference_dir = os.path.join(out, 'reference')
    shutil.copytree(os.path.join(REPO, 'reference'), reference_dir)
    shutil.copy(os.path.join(REPO, 'README.md'), os.path.join(out, 'README.md'))
    keep = ['--reference_dir', reference_dir, '--readme', os.path.join(out, 'README.md')]
    added = _command('reference.py', f'--add={out}/results/{name}', *keep)
    assert added.returncode == 0, added.stderr[-2000:]
    with open(os.path.join(reference_dir, 'README.md'), encoding='utf-8') as f:
        table = f.read()
    row = next(line for line in table.splitlines() if f'`{protocol}`' in line and name in line)
    assert f'3 of {EXPECTED[f"{protocol}.flags"]["num_iterations"]:,}' in row
    assert f'[model.keras]({name}/model.keras)' in row  # Its weights, linked from beside them ...
    with open(os.path.join(out, 'README.md'), encoding='utf-8') as f:  # ... and from the top of the repository.
        assert row.replace(f']({name}/', f'](reference/{name}/') in f.read()
    assert _command('reference.py', '--check', *keep).returncode == 0
    assert sorted(os.listdir(os.path.join(reference_dir, name))) == sorted(reference.REFERENCE_FILES
                                                                           + reference.RELEASED_FILES)
    again = _command('reference.py', f'--add={out}/results/{name}', *keep)
    assert again.returncode == 1 and 'pass --replace' in again.stderr


def _tiny_protocol(synthetic_dir, tmp_path, iterations):
    """(the protocols folder, the reference folder) of a copy of reference/ and README.md in tmp_path with
    one protocol, fomaml_tiny, of a tiny network trained `iterations` meta-iterations on synthetic_dir."""
    protocols, reference_dir = tmp_path / 'protocols', str(tmp_path / 'reference')
    protocols.mkdir()
    (protocols / 'fomaml_tiny.flags').write_text('\n'.join([
        '--n_way=3', '--k_shot=1', '--num_query=2', '--meta_batch_size=2', '--num_filters=4',
        '--num_train_classes=9', '--num_val_classes=5', '--num_val_tasks=4', '--num_test_tasks=4',
        f'--num_iterations={iterations}', '--val_interval=20', f'--data_dir={synthetic_dir}',
        f'--cache_dir={tmp_path}/cache']) + '\n')
    shutil.copytree(os.path.join(REPO, 'reference'), reference_dir)
    shutil.copy(os.path.join(REPO, 'README.md'), tmp_path / 'README.md')
    return protocols, reference_dir


def test_a_full_protocol_run_continues_sitting_after_sitting_from_its_committed_state(synthetic_dir, tmp_path):
    """reference.py --continue: a sitting stops at the first checkpoint after --minutes and writes the
    run's state to reference/running/<protocol>/; a later sitting on a machine without the run folder
    continues from that state; the sitting that finishes keeps the run as a row of the table."""
    protocols, reference_dir = _tiny_protocol(synthetic_dir, tmp_path, iterations=300)
    state = os.path.join(reference_dir, reference.RUNNING, 'fomaml_tiny')

    def sitting(minutes):
        result = _command('reference.py', '--continue=fomaml_tiny', f'--minutes={minutes}', '--nolowest_priority',
                          f'--protocols_dir={protocols}', f'--results_dir={tmp_path}/results',
                          f'--reference_dir={reference_dir}', f'--readme={tmp_path}/README.md')
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout

    sitting(0)
    first = replay.checkpoint_iteration(state)
    assert 0 <= first < 300 and sorted(os.listdir(state)) == sorted(reference.RUNNING_FILES)
    shutil.rmtree(tmp_path / 'results')  # Another machine: only the committed state is there.
    assert f'fomaml_tiny from iteration {first} ' in sitting(0)
    assert replay.checkpoint_iteration(state) > first
    rows = [row['iteration'] for row in results.read_metrics(os.path.join(state, 'metrics.csv'), required=True)]
    assert rows == list(range(0, rows[-1] + 1, 20))  # One row per validation, none lost or repeated.
    assert 'finished' in sitting(60)
    assert not os.path.exists(state)
    kept = {name: summary for name, _, summary in reference.kept_runs(reference_dir)}
    assert kept['fomaml_tiny']['iterations'] == 300
    assert 'fomaml_tiny' in open(tmp_path / 'README.md', encoding='utf-8').read()
    assert '[model.keras](reference/fomaml_tiny/model.keras)' in open(tmp_path / 'README.md', encoding='utf-8').read()

    # The released weights re-score to the kept number exactly, from the kept folder alone.
    shutil.rmtree(tmp_path / 'results')
    kept_folder = os.path.join(reference_dir, 'fomaml_tiny')
    assert set(reference.RELEASED_FILES) <= set(os.listdir(kept_folder))
    evaluate = ['reference.py', '--evaluate=fomaml_tiny', f'--reference_dir={reference_dir}',
                f'--data_dir={synthetic_dir}', f'--cache_dir={tmp_path}/cache']
    rescored = _command(*evaluate)
    assert rescored.returncode == 0, rescored.stderr[-2000:]
    assert 'fomaml_tiny reproduced exactly' in rescored.stdout
    summary_path = os.path.join(kept_folder, results.SUMMARY_FILE)
    summary = json.load(open(summary_path))
    summary['test_post_accuracy'] += 1e-9  # A table number the weights do not give is caught.
    results.write_json(summary_path, summary)
    differs = _command(*evaluate)
    assert differs.returncode == 1 and 'the meta-test differs from the kept one' in differs.stderr

    # How soon: given a paper number its validation first reached at iteration K, --how_soon runs the protocol
    # again to K, meta-tests there and keeps it for the table.
    rows = results.read_metrics(os.path.join(kept_folder, results.METRICS_FILE), required=True)
    reached = next(row for row in rows if row['val_post_accuracy'] > rows[0]['val_post_accuracy'])
    with open(os.path.join(reference_dir, 'papers.csv'), 'a', newline='') as f:
        csv.writer(f).writerow(['FO-MAML', 'omniglot', 3, 1, 100 * reached['val_post_accuracy'], '', 300, 'a test'])
    soon = _command('reference.py', '--how_soon=fomaml_tiny', '--nolowest_priority', f'--protocols_dir={protocols}',
                    f'--results_dir={tmp_path}/results', f'--reference_dir={reference_dir}',
                    f'--readme={tmp_path}/README.md')
    assert soon.returncode == 0, soon.stderr[-2000:]
    there = json.load(open(os.path.join(kept_folder, reference.HOW_SOON_FILE)))
    assert there['iteration'] == reached['iteration'] < 300
    assert there['val_post_accuracy_this_run'] == there['val_post_accuracy_full_run'] == reached['val_post_accuracy']
    tested = results.read_summary(os.path.join(tmp_path, 'results', 'fomaml_tiny_how_soon'))
    assert tested['iterations'] == reached['iteration'] and tested['test_post_accuracy'] == there['test_post_accuracy']
    assert f"validation at {int(reached['iteration']):,}: meta-test there {100 * there['test_post_accuracy']:.2f}" in \
        open(tmp_path / 'README.md', encoding='utf-8').read()


def _as_in_a_terminal():
    """In the child: Ctrl-C at its default, as for a command typed in a terminal (the tests may run as a
    shell's background job, whose children inherit it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_an_interrupted_sitting_stops_its_run_and_keeps_its_state(synthetic_dir, tmp_path):
    """Ctrl-C to reference.py --continue stops the run it started (in a session of its own, the run is
    not sent the terminal's Ctrl-C) and writes its last checkpoint to reference/running/<protocol>/."""
    protocols, reference_dir = _tiny_protocol(synthetic_dir, tmp_path, iterations=100000)
    tool = subprocess.Popen([sys.executable, os.path.join(REPO, 'reference.py'), '--continue=fomaml_tiny',
                             '--minutes=60', '--nolowest_priority', f'--protocols_dir={protocols}',
                             f'--results_dir={tmp_path}/results',
                             f'--reference_dir={reference_dir}', f'--readme={tmp_path}/README.md'],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_as_in_a_terminal)
    checkpoint = tmp_path / 'results' / 'fomaml_tiny' / results.CHECKPOINT_FILE
    deadline = time.time() + 300
    while not checkpoint.exists() and tool.poll() is None and time.time() < deadline:
        time.sleep(0.5)
    assert checkpoint.exists(), tool.communicate(timeout=60)
    tool.send_signal(signal.SIGINT)
    _, stderr = tool.communicate(timeout=120)
    assert tool.returncode == 1 and stderr.rstrip().endswith('error: interrupted'), stderr[-2000:]
    state = os.path.join(reference_dir, reference.RUNNING, 'fomaml_tiny')
    assert replay.checkpoint_iteration(state) == replay.checkpoint_iteration(str(checkpoint.parent))
    assert f'interrupted; its state at iteration {replay.checkpoint_iteration(state)} is in {state}' in stderr
    assert not _processes_naming(f'--results_dir={tmp_path}/results')  # Neither the tool nor the run goes on.


def test_a_sitting_s_run_starts_in_a_session_of_its_own_at_the_lowest_priority():
    """What --continue and --how_soon start (the tests above pass --nolowest_priority: there the other test
    worker would starve it): its own session, its autogroup at nice 19 where the kernel has autogroups."""
    child = subprocess.run([sys.executable, '-c', 'import os; print(os.getsid(0) == os.getpid(), os.nice(0)); '
                            'print(open("/proc/self/autogroup").read() if os.path.exists("/proc/self/autogroup") '
                            'else "nice 19")'], preexec_fn=reference.lowest_priority, start_new_session=True,
                           capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    assert child.stdout.splitlines()[0] == 'True 19' and child.stdout.split()[-1] == '19', child.stdout


def _processes_naming(text):
    """The ids of the processes whose command line holds `text`."""
    found = []
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open(f'/proc/{pid}/cmdline', 'rb') as f:
                if text.encode() in f.read():
                    found.append(int(pid))
        except OSError:  # Ended meanwhile.
            pass
    return found
