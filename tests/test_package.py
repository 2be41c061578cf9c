"""The project as a distribution: the package installs and imports from anywhere; the code passes the linter."""

import os
import re
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_package_installs_and_imports_from_outside_the_repository(tmp_path):
    # Built from pyproject.toml as `pip install .` builds it, into a folder of its own; the
    # dependencies are the test environment's (no download), and no build isolation either
    # (setuptools and wheel are in every Python 3.11 venv).
    # From a copy of what the distribution is made of, so that the build leaves nothing in the checkout.
    source, target, elsewhere = tmp_path / 'source', tmp_path / 'site', tmp_path / 'elsewhere'
    shutil.copytree(os.path.join(REPO, 'fewshot'), source / 'fewshot', ignore=shutil.ignore_patterns('__pycache__'))
    for name in ('pyproject.toml', 'README.md', 'LICENSE'):
        shutil.copy(os.path.join(REPO, name), source)
    elsewhere.mkdir()
    subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--no-build-isolation',
                    '--target', str(target), str(source)], check=True, cwd=elsewhere)
    probe = ('import fewshot, importlib.metadata as m; from fewshot import data, network, results; '
             'print(fewshot.__file__); print(m.version("fewshot")); print(m.metadata("fewshot")["License"])')
    environment = {**os.environ, 'PYTHONPATH': str(target)}
    out = subprocess.run([sys.executable, '-c', probe], check=True, cwd=elsewhere, env=environment,
                         capture_output=True, text=True).stdout.split('\n')
    assert os.path.dirname(out[0]) == str(target / 'fewshot')  # The installed copy, not the checkout.
    assert out[1] and out[2] == 'Apache-2.0'
    installed = {name for name in os.listdir(target / 'fewshot') if name.endswith('.py')}
    assert installed == {name for name in os.listdir(os.path.join(REPO, 'fewshot')) if name.endswith('.py')}


def test_the_code_passes_the_linter():
    # The rules are pyproject.toml's [tool.ruff]; the output names each finding's file and line.
    lint = subprocess.run([sys.executable, '-m', 'ruff', 'check', '--no-cache', REPO], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def _markdown_files():
    docs = [os.path.join(folder, name) for folder, _, names in os.walk(os.path.join(REPO, 'docs'))
            for name in names if name.endswith('.md')]
    return [os.path.join(REPO, 'README.md'), *docs]


def test_every_link_of_the_readme_and_docs_names_a_file_that_exists():
    broken = []
    for path in _markdown_files():
        with open(path, encoding='utf-8') as f:
            text = f.read()
        for target in re.findall(r'\]\(([^)#\s]+)(?:#[^)]*)?\)', text):
            if '://' not in target and not os.path.exists(os.path.join(os.path.dirname(path), target)):
                broken.append(f'{os.path.relpath(path, REPO)}: {target}')
    assert not broken


def test_ci_runs_the_test_command_the_readme_gives():
    with open(os.path.join(REPO, 'README.md'), encoding='utf-8') as f:
        blocks = re.findall(r'```bash\n(.*?)\n```', f.read(), re.S)
    main_job, tests = blocks[0].strip(), blocks[1].strip()
    assert main_job.endswith('maml.py --num_inner_steps 5') and tests.endswith('-m pytest tests')
    with open(os.path.join(REPO, '.ci', 'run'), encoding='utf-8') as f:
        assert tests in f.read().split('\n')
