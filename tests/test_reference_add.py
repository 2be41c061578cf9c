"""reference.py --add keeps a run under its own folder's name, wherever it is called from, and a
failure at any point leaves reference/ and the READMEs as they were (issue 41).

The run kept here is a copy of a committed kept run (reference/fomaml_paper_5way1shot: a finished
run's files, with its released weights), so no training is needed.
"""

import errno
import hashlib
import os
import shutil
import sys

import pytest

import launch
from conftest import REPO
from fewshot import results
import reference

KEPT = 'fomaml_paper_5way1shot'  # A committed kept run with model.keras and checkpoint.npz.


def _contents(folder):
    """Every file and folder below `folder` -> a digest of its content (None for a folder)."""
    seen = {}
    for root, folders, files in os.walk(folder):
        for name in folders:
            seen[os.path.relpath(os.path.join(root, name), folder)] = None
        for name in files:
            with open(os.path.join(root, name), 'rb') as f:
                seen[os.path.relpath(os.path.join(root, name), folder)] = hashlib.sha256(f.read()).hexdigest()
    return seen


@pytest.fixture
def sandbox(tmp_path):
    """tmp_path with a copy of reference/ (without the runs in progress) and README.md, and a finished
    run in results/myrun."""
    shutil.copytree(os.path.join(REPO, 'reference'), tmp_path / 'reference',
                    ignore=lambda folder, names: [reference.RUNNING] if folder.endswith('reference') else [])
    shutil.copy(os.path.join(REPO, 'README.md'), tmp_path / 'README.md')
    run = tmp_path / 'results' / 'myrun'
    shutil.copytree(os.path.join(REPO, 'reference', KEPT), run)
    assert set(reference.RELEASED_FILES) <= set(os.listdir(run))
    return tmp_path


def _reference(cwd, *arguments, sandbox):
    return launch.run([sys.executable, os.path.join(REPO, 'reference.py'), *arguments,
                       f'--reference_dir={sandbox}/reference', f'--readme={sandbox}/README.md'],
                      capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.mark.parametrize('replace', [False, True])
def test_add_dot_inside_a_run_folder_keeps_it_under_the_folder_name(sandbox, replace):
    """--add=. from inside results/myrun kept the run's files in reference/ itself (with --replace;
    without, it refused: reference/. already exists)."""
    before = _contents(sandbox / 'reference')
    run = sandbox / 'results' / 'myrun'
    for _ in range(2 if replace else 1):  # With --replace, keeping it again replaces it in place.
        added = _reference(run, '--add=.', *(['--replace'] if replace else []), sandbox=sandbox)
        assert added.returncode == 0, added.stderr[-2000:]
    after = _contents(sandbox / 'reference')
    kept = {path: digest for path, digest in after.items() if path.split(os.sep)[0] == 'myrun'}
    assert kept == {'myrun': None, **{os.path.join('myrun', path): digest
                                      for path, digest in _contents(run).items()}}
    rest = {path: digest for path, digest in after.items() if path.split(os.sep)[0] != 'myrun'}
    assert rest.keys() == before.keys()  # Nothing spread over reference/, no temporary folder left.
    assert {path for path in rest if rest[path] != before[path]} == {'README.md'}  # Its new row.
    with open(sandbox / 'reference' / 'README.md', encoding='utf-8') as f:
        assert '[model.keras](myrun/model.keras)' in f.read()
    with open(sandbox / 'README.md', encoding='utf-8') as f:
        assert '[model.keras](reference/myrun/model.keras)' in f.read()
    assert _reference(REPO, '--check', sandbox=sandbox).returncode == 0


def test_add_dot_inside_the_reference_folder_is_refused(sandbox):
    before = _contents(sandbox)
    refused = _reference(sandbox / 'reference', '--add=.', '--replace', sandbox=sandbox)
    assert refused.returncode == 1 and 'Traceback' not in refused.stderr, refused.stderr[-2000:]
    assert refused.stderr.strip().splitlines()[-1].startswith('error: --add .: that is --reference_dir itself')
    assert _contents(sandbox) == before


def _atomic_writes_failing_at(monkeypatch, failing):
    """results.atomic_write raising a full disk at its `failing`-th call (1: the first), after writing
    half the file; returns the list of the paths it was called with."""
    calls, atomic_write = [], results.atomic_write

    def write(path, content):
        calls.append(path)
        if len(calls) == failing:
            def half(f):
                content(f)
                f.truncate(f.tell() // 2)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return atomic_write(path, half)
        return atomic_write(path, content)
    monkeypatch.setattr(results, 'atomic_write', write)
    return calls


@pytest.mark.parametrize('replace', [False, True])
def test_a_failure_at_any_write_leaves_reference_and_the_readmes_as_they_were(sandbox, monkeypatch, replace):
    """The run's files, then the two READMEs: whichever write fails (a full disk), nothing is left half
    made: no kept folder or a half of one, a replaced kept run back as it was, both tables as before."""
    run, kept = str(sandbox / 'results' / 'myrun'), sandbox / 'reference' / 'myrun'
    readmes = (str(sandbox / 'reference' / 'README.md'), str(sandbox / 'README.md'))
    if replace:  # A kept run of the same name, older: fewer files, another summary.
        os.makedirs(kept)
        for name in (results.HYPERPARAMETERS_FILE, results.SUMMARY_FILE, results.METRICS_FILE):
            shutil.copy(os.path.join(REPO, 'reference', 'maml_paper_5way1shot', name), kept)
        assert _reference(REPO, sandbox=sandbox).returncode == 0
    before = {'reference': _contents(sandbox / 'reference'), 'README.md': _contents(sandbox)['README.md']}
    writes = len(reference.addable(run, str(sandbox / 'reference'), replace)[3]) + len(readmes)
    for failing in range(1, writes + 1):
        calls = _atomic_writes_failing_at(monkeypatch, failing)
        with pytest.raises(OSError, match='No space left on device'):
            reference.add(run, str(sandbox / 'reference'), readmes, replace)
        assert len(calls) >= failing, calls  # (More: the undoing rewrote a README.)
        assert {'reference': _contents(sandbox / 'reference'), 'README.md': _contents(sandbox)['README.md']} == \
            before, f'write {failing} ({calls[-1]}) failed and left a change'
    monkeypatch.undo()
    reference.add(run, str(sandbox / 'reference'), readmes, replace)  # Then, with room on the disk, it is kept.
    assert _contents(kept) == _contents(run)
    assert _reference(REPO, '--check', sandbox=sandbox).returncode == 0


def test_the_table_shows_a_recorded_command_as_a_checkout_runs_it():
    """A tool's child records 'fewshot maml ...' (installed commands), --continue's child the script's whole
    path; the table's command cell (after `python `) and the protocol read from it are the same for all."""
    for recorded in ('fewshot maml --flagfile=protocols/x.flags --resume',
                     '/home/kim/fewshot/maml.py --flagfile=protocols/x.flags --resume',
                     'maml.py --flagfile=protocols/x.flags --resume'):
        assert reference.recorded_command({'command': recorded}) == 'maml.py --flagfile=protocols/x.flags --resume'
        assert reference.protocol_of({'command': recorded}) == 'x'
