"""Every command imports beside every other in one process (no two define the same flag), each has its
doorway at the top of the checkout, and every learner command describes itself, so compare.py and
benchmark.py find it by name."""

import glob
import os
import re
import subprocess
import sys

import launch
from fewshot.cli import scripts
from test_training import REPO

COMMANDS = list(scripts.NAMES)


def test_every_command_imports_beside_every_other_in_one_process():
    assert {'maml', 'compare', 'report', 'anil'} <= set(COMMANDS)
    # Each top-level script is a command's doorway, and `import maml` is the command's module itself.
    assert sorted(os.path.basename(path)[:-3] for path in glob.glob(os.path.join(REPO, '*.py'))) == COMMANDS
    script = (f'import {", ".join(COMMANDS)}\n'
              'from fewshot.cli import commands\n'
              f'learners = [name for name in {COMMANDS!r} if hasattr(sys.modules[name], "COMMAND")]\n'
              f'assert all(sys.modules[name].__name__ == "fewshot.cli.scripts." + name for name in {COMMANDS!r})\n'
              'print(",".join(commands.find(name, "--algorithms").name for name in learners))\n')
    result = subprocess.run([sys.executable, '-c', 'import sys\n' + script], capture_output=True, text=True,
                            cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    learners = result.stdout.strip().splitlines()[-1].split(',')
    # Every script that assigns COMMAND is found by its name (a new learner's too, with no edit here).
    assert learners == [name for name in COMMANDS if _assigns_command(name)]
    assert {'anil', 'maml', 'maml_plusplus', 'protonet', 'reptile'} <= set(learners)


def _assigns_command(name):
    with open(os.path.join(scripts.HERE, f'{name}.py'), encoding='utf-8') as f:
        return re.search(r'^COMMAND\s*[:=]', f.read(), re.MULTILINE) is not None


def test_a_learner_command_trains_on_a_folder_of_colour_images_and_resumes(tmp_path):
    """--dataset folder:PATH: RGB images of assorted sizes, resized; the network takes 16x16x3 images, the run
    records the folder's checksum, and it resumes (the data unchanged) to more iterations."""
    import keras

    from fewshot import network, results  # noqa: F401  network: registers the saved model's batch norm.
    from test_data import _write_image_folder
    _write_image_folder(tmp_path / 'images', [4] * 12, sizes=[20, 33], mode='RGB')

    def run(*flags):
        return launch.run([sys.executable, os.path.join(REPO, 'protonet.py'), f'--dataset=folder:{tmp_path}/images',
                           '--image_size=16', '--channels=3', '--num_train_classes=6', '--num_val_classes=3',
                           '--n_way=3', '--k_shot=1', '--num_query=2', '--meta_batch_size=2', '--num_filters=4',
                           '--val_interval=2', '--num_val_tasks=4', '--num_test_tasks=4', '--progress=false',
                           f'--results_dir={tmp_path}/results', '--run_name=folder', *flags],
                          capture_output=True, text=True, cwd=REPO, timeout=600)
    first = run('--num_iterations=2')
    assert first.returncode == 0, first.stderr[-2000:]
    folder = os.path.join(tmp_path, 'results', 'folder')
    recorded = results.read_hyperparameters(folder)
    assert recorded['flags']['dataset'] == f'folder:{tmp_path}/images'
    assert recorded['classes'] == {'train': 6, 'val': 3, 'test': 3}
    assert keras.models.load_model(os.path.join(folder, results.MODEL_FILE)).input_shape == (None, 16, 16, 3)
    resumed = run('--num_iterations=4', '--resume')
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert results.read_summary(folder)['iterations'] == 4
    too_few = run('--num_iterations=2', '--num_query=4', '--overwrite')
    assert too_few.stderr.strip().splitlines()[-1] == (f"error: class 'class_0' of {tmp_path}/images has 4 images; "
                                                      'a task takes 1 + 4 (k_shot + num_query) of each of its classes')
