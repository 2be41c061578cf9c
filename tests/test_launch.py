"""tests/launch.py, which the tests run command lines through, gives what `python` gives."""

import os
import subprocess
import sys

import launch
from conftest import REPO


def test_a_forked_command_line_ends_as_the_interpreter_would(tmp_path):
    """The same exit status, standard output and error lines as a new interpreter, for a command that
    refuses a flag, one that lists its flags, and one run as a module (`-m`) that names a missing folder."""
    lines = [[sys.executable, os.path.join(REPO, 'maml.py'), '--num_inner_steps=0'],
             [sys.executable, os.path.join(REPO, 'figures.py'), '--helpshort'],
             [sys.executable, '-m', 'fewshot', 'figures', f'--results_dir={tmp_path}/none']]
    for line in lines:
        assert launch._forkable(line, None, REPO)
        forked = launch.run(line, capture_output=True, text=True, cwd=REPO, timeout=300)
        started = subprocess.run(line, capture_output=True, text=True, cwd=REPO, timeout=300)
        assert (forked.returncode, forked.stdout) == (started.returncode, started.stdout)
        assert [text for text in forked.stderr.splitlines() if text.startswith(('error:', 'Traceback'))] == \
            [text for text in started.stderr.splitlines() if text.startswith(('error:', 'Traceback'))]
    assert forked.returncode == 1 and 'error: ' in forked.stderr


def test_what_a_fork_would_run_differently_starts_a_new_interpreter(tmp_path):
    """Another program, another script folder (it would import the fewshot beside it), a variable
    TensorFlow reads as it loads."""
    script = os.path.join(REPO, 'maml.py')
    assert not launch._forkable([sys.executable, '-c', 'pass'], None, REPO)
    assert not launch._forkable(['git', 'status'], None, REPO)
    assert not launch._forkable([sys.executable, str(tmp_path / 'maml.py')], None, REPO)
    assert not launch._forkable([sys.executable, '-m', 'fewshot'], None, str(tmp_path))
    assert not launch._forkable([sys.executable, script], {**os.environ, 'TF_ENABLE_ONEDNN_OPTS': '0'}, REPO)
    assert launch._forkable([sys.executable, 'maml.py'], {**os.environ, 'OMNIGLOT_DIR': str(tmp_path)}, REPO)
