"""reference/papers.csv (the papers' numbers, by algorithm, dataset, way and shot, each with its source)
and the rows of the reference table it gives: kept runs beside their own dataset's number, and the
protocols whose data is not on this project's machines as rows "not run" (issue 42).

No training here: the kept run is a committed one's files, changed to what a mini-ImageNet run records.
"""

import copy
import csv
import os
import re
import shutil
import sys

import pytest

import launch
from conftest import REPO
from fewshot import datasets, errors, results
import reference

REFERENCE = os.path.join(REPO, 'reference')


def _papers_rows():
    with open(os.path.join(REFERENCE, reference.PAPERS_FILE), newline='', encoding='utf-8') as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_every_row_of_papers_csv_has_its_numbers_and_a_source():
    columns, rows = _papers_rows()
    assert tuple(columns) == reference.PAPER_COLUMNS
    keys = [(row['algorithm'], row['dataset'], int(row['n_way']), int(row['k_shot'])) for row in rows]
    assert len(set(keys)) == len(keys), 'a setting twice: one row would hide the other'
    for row in rows:
        assert row['source'].strip(), row  # Every number has a source.
        assert row['dataset'] in datasets.DISPLAY_NAMES, row  # As --dataset names it.
        assert 0 < float(row['accuracy']) <= 100 and (not row['ci95'] or 0 < float(row['ci95']) < 10), row
        assert not row['iterations'] or int(row['iterations']) > 0, row
    papers = reference.read_papers(REFERENCE)
    assert len(papers) == len(rows)
    # The same algorithm and shape on two datasets are two rows, told apart by the dataset.
    assert papers[('MAML', 'omniglot', 5, 1)]['accuracy'] == 98.7
    assert papers[('MAML', 'mini_imagenet', 5, 1)]['accuracy'] == 48.7


def _mini_imagenet_run(name='maml_paper_miniimagenet_5way1shot'):
    """(hyperparameters, summary) of a committed kept run, changed to what a run of the MAML paper's
    mini-ImageNet 5-way 1-shot protocol records."""
    kept = os.path.join(REFERENCE, 'fomaml_paper_5way1shot')
    hyperparameters = copy.deepcopy(results.read_hyperparameters(kept))
    hyperparameters['algorithm'] = 'MAML'
    hyperparameters['command'] = (f'/somewhere/maml.py --flagfile=protocols/{name}.flags '
                                  f'--dataset_dir=/data/mini-imagenet --run_name={name}')
    hyperparameters['flags'].update(dataset='mini_imagenet', n_way=5, k_shot=1, first_order=False)
    summary = dict(results.read_summary(kept), test_post_accuracy=0.4712, test_post_ci95=0.0175, iterations=60000)
    return hyperparameters, summary


def test_a_kept_mini_imagenet_run_is_compared_with_the_mini_imagenet_number_and_takes_the_not_run_rows_place():
    name = 'maml_paper_miniimagenet_5way1shot'
    before = reference.table(REFERENCE, REFERENCE)
    assert sum(f'| `{name}` | {reference.NOT_RUN} |' in line for line in before.splitlines()) == 1
    hyperparameters, summary = _mini_imagenet_run(name)
    after = reference.table(REFERENCE, REFERENCE, added=(name, hyperparameters, summary, False))
    rows = [line for line in after.splitlines() if f'| `{name}` |' in line]
    assert len(rows) == 1 and reference.NOT_RUN not in rows[0]
    assert rows[0].startswith(f'| MAML | mini-ImageNet | 5-way 1-shot | `{name}` | 47.12 ± 1.75 (')
    # Against the paper's mini-ImageNet 48.70 ± 1.84, not its Omniglot 98.70: -1.58 ± √(1.75² + 1.84²).
    assert '| 48.70 ± 1.84 | -1.58 ± 2.54 (no difference shown) | 60,000 of 60,000 (full) |' in rows[0]
    assert 'Finn et al. 2017, Table 1 (MiniImagenet)' in rows[0]
    # Every other row is as it was.
    assert [line for line in before.splitlines() if f'`{name}`' not in line] == \
        [line for line in after.splitlines() if f'`{name}`' not in line]


def test_protocols_on_the_data_here_are_not_rows_until_run(tmp_path):
    """An Omniglot protocol without a kept run is no row (its data is here: it is simply not run yet);
    one on a dataset elsewhere is, with '–' where papers.csv has no number for it."""
    protocols = tmp_path / 'protocols'
    protocols.mkdir()
    (protocols / 'maml_unrun_5way1shot.flags').write_text('# On Omniglot.\n--n_way=5\n--k_shot=1\n')
    (protocols / 'protonet_tiered_5way5shot.flags').write_text('--dataset=tiered_imagenet\n--n_way=5\n--k_shot=5\n')
    (protocols / 'notes.txt').write_text('not a protocol\n')
    (protocols / 'unknown_miniimagenet.flags').write_text('--dataset=mini_imagenet\n')  # No command of this tool.
    rows = reference.not_run_rows(str(protocols), reference.read_papers(REFERENCE), set())
    assert rows == [f'| ProtoNet | tiered-ImageNet | 5-way 5-shot | `protonet_tiered_5way5shot` | {reference.NOT_RUN} '
                    '| – | – | – | – | – | – | – | `python protonet.py --flagfile=' + str(protocols) +
                    '/protonet_tiered_5way5shot.flags --dataset_dir=/path/to/tiered-imagenet` |']


@pytest.mark.parametrize('text, message', [
    ('--dataset=mini_imagenet\nn_way=5\n', r'line 2: not a flag --name=value'),
    ('--dataset=mini_imagenet\n--k_shot=five\n', r'--k_shot=five is not a whole number'),
])
def test_a_damaged_protocol_file_is_named(tmp_path, text, message):
    protocols = tmp_path / 'protocols'
    protocols.mkdir()
    (protocols / 'maml_damaged.flags').write_text(text)
    with pytest.raises(errors.RunError, match=message):
        reference.not_run_rows(str(protocols), {}, set())


@pytest.fixture
def sandbox(tmp_path):
    """tmp_path with a copy of reference/ (without the runs in progress) and README.md."""
    shutil.copytree(REFERENCE, tmp_path / 'reference',
                    ignore=lambda folder, names: [reference.RUNNING] if folder == REFERENCE else [])
    shutil.copy(os.path.join(REPO, 'README.md'), tmp_path / 'README.md')
    return tmp_path


def _reference(sandbox, *arguments):
    return launch.run([sys.executable, os.path.join(REPO, 'reference.py'), *arguments,
                       f'--reference_dir={sandbox}/reference', f'--readme={sandbox}/README.md'],
                      capture_output=True, text=True, cwd=sandbox, timeout=120)


def test_the_committed_tables_check_from_any_folder(sandbox):
    """The protocols the tables show are those beside reference.py, wherever it runs from."""
    checked = _reference(sandbox, '--check')
    assert checked.returncode == 0, checked.stderr[-2000:]


@pytest.mark.parametrize('damage, message', [
    (lambda s: (s / 'reference' / 'papers.csv').write_text(
        'algorithm,dataset,n_way,k_shot,accuracy,ci95,iterations,source\nMAML,mini_imagenet,5,1,48.7,1.84,60000,\n'),
     'error: .*papers.csv, line 2: expected the columns algorithm, dataset, .* and a source for each row'),
    (lambda s: (s / 'reference' / 'papers.csv').write_text(
        'algorithm,n_way,k_shot,accuracy,ci95,iterations,source\nMAML,5,1,98.7,0.4,60000,"Finn et al. 2017"\n'),
     'error: .*papers.csv, line 2: expected the columns algorithm, dataset, '),
])
def test_a_papers_csv_without_a_source_or_a_dataset_is_one_error_line(sandbox, damage, message):
    damage(sandbox)
    before = (sandbox / 'README.md').read_text(encoding='utf-8')
    refused = _reference(sandbox)
    assert refused.returncode == 1 and 'Traceback' not in refused.stderr, refused.stderr[-2000:]
    assert re.match(message, refused.stderr.strip().splitlines()[-1]), refused.stderr[-2000:]
    assert (sandbox / 'README.md').read_text(encoding='utf-8') == before  # Nothing written.


def test_a_protocols_dir_that_is_not_there_is_one_error_line(sandbox):
    refused = _reference(sandbox, f'--protocols_dir={sandbox}/no_such_folder')
    assert refused.returncode == 1 and 'Traceback' not in refused.stderr, refused.stderr[-2000:]
    assert refused.stderr.strip().splitlines()[-1] == \
        f'error: --protocols_dir {sandbox}/no_such_folder: does not exist'


def test_how_soon_is_the_first_validation_at_the_papers_number_of_a_full_protocol_run(tmp_path):
    """The table's "how soon" cell, from the run's metrics.csv: the first validation at or above the
    paper's number; 'not earlier' if none reached it; nothing for a shortened run."""
    results.write_csv(str(tmp_path / results.METRICS_FILE),
                      [{'iteration': i, 'seconds': i, 'val_pre_accuracy': 0.2, 'val_pre_ci95': 0.0,
                        'val_post_accuracy': accuracy, 'val_post_ci95': 0.01}
                       for i, accuracy in ((0, 0.5), (500, 0.985), (1000, 0.991), (1500, 0.987))],
                      results.METRICS_COLUMNS)
    paper = {'accuracy': 98.7, 'ci95': 0.4, 'iterations': 1500, 'source': 'a paper'}
    assert reference.how_soon(str(tmp_path), {'iterations': 1500}, paper) == \
        f'validation at 1,000 (a meta-test there: not yet run, `python reference.py --how_soon {tmp_path.name}`)'
    # Once --how_soon has meta-tested there: its number, and how far into the run that was.
    results.write_json(str(tmp_path / reference.HOW_SOON_FILE), {'iteration': 1000, 'test_post_accuracy': 0.9875,
                                                                 'test_post_ci95': 0.0042})
    assert reference.how_soon(str(tmp_path), {'iterations': 1500}, paper) == \
        'validation at 1,000: meta-test there 98.75 ± 0.42, 67% of the iterations'
    assert reference.how_soon(str(tmp_path), {'iterations': 1500}, dict(paper, accuracy=99.5)) == \
        'not earlier: no validation reached 99.50'
    assert reference.how_soon(str(tmp_path), {'iterations': 1000}, paper) == '–'  # Shortened: not a full row.
