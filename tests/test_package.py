"""The project as a distribution: the package installs and imports from anywhere; the code passes the linter."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
    """The package built from pyproject.toml as `pip install .` builds it, into a folder of its own
    (put on PYTHONPATH); the dependencies are the test environment's (no download), and no build
    isolation either (setuptools and wheel are in every Python 3.11 venv). Built from a copy of what
    the distribution is made of, so that the build leaves nothing in the checkout."""
    root = tmp_path_factory.mktemp('package')
    source, target = root / 'source', root / 'site'
    shutil.copytree(os.path.join(REPO, 'fewshot'), source / 'fewshot', ignore=shutil.ignore_patterns('__pycache__'))
    for name in ('pyproject.toml', 'README.md', 'LICENSE'):
        shutil.copy(os.path.join(REPO, name), source)
    subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--no-build-isolation',
                    '--target', str(target), str(source)], check=True, cwd=root)
    return target


def _outside(installed, folder, *command):
    """Runs python `command` in `folder` (outside the checkout) with the installed package."""
    return subprocess.run([sys.executable, *command], cwd=folder, env={**os.environ, 'PYTHONPATH': str(installed)},
                          capture_output=True, text=True)


def test_the_package_installs_and_imports_from_outside_the_repository(installed, tmp_path):
    probe = ('import fewshot, importlib.metadata as m; from fewshot import data, network, results; '
             'from fewshot.learners import MAML; '
             'print(fewshot.__file__); print(m.version("fewshot")); print(m.metadata("fewshot")["License"]); '
             'print(fewshot.__version__)')
    run = _outside(installed, tmp_path, '-c', probe)
    assert run.returncode == 0, run.stderr
    out = run.stdout.split('\n')
    assert os.path.dirname(out[0]) == str(installed / 'fewshot')  # The installed copy, not the checkout.
    assert out[1] and out[2] == 'Apache-2.0' and out[3] == out[1]  # fewshot.__version__ is the distribution's.
    assert _modules(installed / 'fewshot') == _modules(os.path.join(REPO, 'fewshot'))  # Subpackages too.


def _write_classes(folder, num_classes, per_class):
    """Classes of images a few-shot learner can tell apart: each a random pattern of 4x4 blocks, its
    images noisy copies at assorted sizes, PNG and JPEG."""
    rng = np.random.default_rng(0)
    for index in range(num_classes):
        os.makedirs(folder / f'class_{index:02d}')
        pattern = np.kron(rng.random((7, 7)) < 0.4, np.ones((4, 4)))
        for j in range(per_class):
            noisy = np.clip(pattern + rng.normal(0, 0.15, pattern.shape), 0, 1)
            image = Image.fromarray((255 * noisy).astype(np.uint8)).resize([(28, 28), (40, 40), (56, 70)][j % 3])
            image.save(folder / f'class_{index:02d}' / f'{j}.{"png" if j % 2 else "jpg"}')


def test_the_installed_fewshot_command_runs_every_command_from_outside_the_repository(installed, tmp_path):
    """`pip install` puts `fewshot` on the PATH: it lists the commands, and `fewshot <command>` is the
    command: it trains into a run folder and resumes it, says what is wrong with a flag in one line, and
    runs other commands in child processes (compare has its learner check the flags it passes on)."""
    program = installed / 'bin' / 'fewshot'
    listed = _outside(installed, tmp_path, str(program))
    assert listed.returncode == 0, listed.stderr[-3000:]
    assert {'maml', 'protonet', 'compare', 'reference'} <= {line.split()[0] for line in listed.stdout.splitlines()[2:]}
    _write_classes(tmp_path / 'images', num_classes=12, per_class=4)
    common = [f'--dataset=folder:{tmp_path / "images"}', '--image_size=16', '--num_filters=4', '--n_way=2',
              '--num_train_classes=6', '--num_val_classes=3', '--k_shot=1', '--num_query=1', '--meta_batch_size=2',
              '--val_interval=2', '--num_val_tasks=2', '--num_test_tasks=2', '--progress=false',
              f'--results_dir={tmp_path / "runs"}', '--run_name=mine']
    trained = _outside(installed, tmp_path, str(program), 'protonet', *common, '--num_iterations=2')
    assert trained.returncode == 0, trained.stderr[-3000:]
    resumed = _outside(installed, tmp_path, str(program), 'protonet', *common, '--num_iterations=4', '--resume')
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    with open(tmp_path / 'runs' / 'mine' / 'hyperparameters.json', encoding='utf-8') as f:
        assert json.load(f)['command'].startswith('fewshot protonet ')
    rows = (tmp_path / 'runs' / 'mine' / 'metrics.csv').read_text().splitlines()
    assert [row.split(',')[0] for row in rows[1:]] == ['0', '2', '4']  # Validated at 0 and 2, then resumed to 4.
    mistaken = _outside(installed, tmp_path, str(program), 'protonet', '--n_way=1')
    assert mistaken.returncode == 1 and mistaken.stderr.strip().splitlines()[-1].startswith('error: flag --n_way=1: ')
    passed_on = _outside(installed, tmp_path, str(program), 'compare', '--algorithms=protonet', '--settings=2way1shot',
                         f'--results_dir={tmp_path / "runs"}', '--', '--no_such_flag=1')
    assert passed_on.returncode == 1 and passed_on.stderr.strip().splitlines()[-1].startswith(
        'error: after --, for protonet.py: --no_such_flag is not a flag of fewshot protonet'), passed_on.stderr[-2000:]


def test_the_readme_python_example_runs_from_outside_the_repository_and_learns(installed, tmp_path):
    with open(os.path.join(REPO, 'README.md'), encoding='utf-8') as f:
        example = re.search(r'## Use from Python\n.*?```python\n(.*?)\n```', f.read(), re.S).group(1)
    _write_classes(tmp_path / 'my_images', num_classes=30, per_class=6)
    (tmp_path / 'example.py').write_text(example, encoding='utf-8')
    run = _outside(installed, tmp_path, 'example.py')
    assert run.returncode == 0, run.stderr[-3000:]
    post, pre = map(float, re.search(r'test accuracy ([\d.]+)% \(before adapting ([\d.]+)%\)', run.stdout).groups())
    assert post > pre + 30, run.stdout  # Chance is 20%: the classes of the test split were never seen.
    assert re.search(r'one new task: \d+% of its queries right', run.stdout), run.stdout
    loaded = _outside(installed, tmp_path, '-c', 'import fewshot\nfewshot.load_model("maml.keras")')
    assert loaded.returncode == 0, loaded.stderr[-3000:]


def _modules(folder):
    return {os.path.relpath(os.path.join(where, name), folder) for where, _, names in os.walk(folder)
            for name in names if name.endswith('.py')}


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


def test_the_api_reference_is_what_the_code_says(tmp_path):
    """docs/api.md is generated from the docstrings (api_reference.py): it cannot drift from the code."""
    check = subprocess.run([sys.executable, os.path.join(REPO, 'api_reference.py'), '--verify'], capture_output=True,
                           text=True, cwd=tmp_path)
    assert check.returncode == 0, check.stderr[-2000:]
    drifted = tmp_path / 'api.md'
    with open(os.path.join(REPO, 'docs', 'api.md'), encoding='utf-8') as f:
        drifted.write_text(f.read().replace('Meta-SGD', 'Meta-SGD (an old docstring)', 1), encoding='utf-8')
    check = subprocess.run([sys.executable, os.path.join(REPO, 'api_reference.py'), '--verify',
                            f'--api_file={drifted}'], capture_output=True, text=True, cwd=tmp_path)
    assert check.returncode == 1 and check.stderr.strip().splitlines()[-1] == \
        f'error: {drifted} is not what the code says: run python api_reference.py'


def test_ci_runs_the_test_command_the_readme_gives():
    with open(os.path.join(REPO, 'README.md'), encoding='utf-8') as f:
        blocks = re.findall(r'```bash\n(.*?)\n```', f.read(), re.S)
    main_job, tests = blocks[0].strip(), blocks[1].strip()
    assert main_job.endswith('maml.py --num_inner_steps 5') and tests.endswith('-m pytest tests')
    with open(os.path.join(REPO, '.ci', 'run'), encoding='utf-8') as f:
        assert tests in f.read().split('\n')


def test_the_library_defines_and_reads_no_flag_and_imports_no_command():
    # Every module of the package but the command layer (fewshot.cli), imported in a fresh process.
    # (fewshot/__main__.py, `python -m fewshot`, is the `fewshot` command: it runs fewshot.cli.scripts.)
    files = {os.path.join('fewshot', path): 'fewshot.' + path[:-3].replace(os.sep, '.')
             for path in _modules(os.path.join(REPO, 'fewshot'))
             if not path.startswith('cli' + os.sep) and path != '__main__.py'}
    library = sorted(name.removesuffix('.__init__') for name in files.values())
    probe = (f'import importlib, sys; from absl import flags\n'
             f'for name in {library!r}: importlib.import_module(name)\n'
             f'print(sorted(name for name in flags.FLAGS if flags.FLAGS.find_module_defining_flag(name)\n'
             f'             .startswith(("fewshot", "__main__"))))\n'
             f'print(sorted(name for name in sys.modules if name.startswith("fewshot.cli")))')
    out = subprocess.run([sys.executable, '-c', probe], check=True, cwd=REPO, capture_output=True,
                         text=True).stdout.split('\n')
    assert len(library) > 20 and out[:2] == ['[]', '[]']
    commands = {name[:-3] for name in os.listdir(REPO) if name.endswith('.py')}
    for path, module in files.items():
        with open(os.path.join(REPO, path), encoding='utf-8') as f:
            text = f.read()
        imported = set(re.findall(r'^\s*(?:import|from)\s+(\w+)', text, re.MULTILINE))
        assert not imported & commands, module
        assert not re.search(r'\bFLAGS\b|absl import .*\bflags\b', text), module


def test_no_command_imports_another_command():
    """The commands stand side by side (fewshot/cli/scripts/): what several share (flags, learners, the
    readers of run folders) is in fewshot/cli/, fewshot/learners/ or the library, so no command, nor the
    command layer, imports a command (`commands.find` loads one by name, as a plugin), and a top-level
    script imports only its own."""
    scripts = os.path.join('fewshot', 'cli', 'scripts')
    commands = {name[:-3] for name in os.listdir(os.path.join(REPO, scripts)) if not name.startswith('_')}
    layer = [os.path.join(folder, name) for folder in (os.path.join('fewshot', 'cli'), scripts)
             for name in os.listdir(os.path.join(REPO, folder)) if name.endswith('.py')]
    assert len(commands) > 20 and len(layer) > 30
    for path in sorted(layer):
        with open(os.path.join(REPO, path), encoding='utf-8') as f:
            text = f.read()
        imported = set(re.findall(r'^\s*(?:import|from)\s+(\w+)', text, re.MULTILINE))
        imported |= set(re.findall(r'^\s*(?:import|from)\s+fewshot\.cli\.scripts(?:\.(\w+)| import (\w+))', text,
                                   re.MULTILINE))
        imported = {name for names in imported for name in ([names] if isinstance(names, str) else names)}
        assert not imported & commands, f'{path} imports {sorted(imported & commands)}'
    for command in commands:
        with open(os.path.join(REPO, f'{command}.py'), encoding='utf-8') as f:
            assert f.read().endswith(f'scripts.enter(__name__, {command!r})\n'), command
