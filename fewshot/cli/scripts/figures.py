"""Redraws every figure of run folders from their logs alone: no retraining, no TensorFlow.

    python figures.py                                         # every run folder under results/
    python figures.py results/maml++_5way5shot_5steps_seed0   # one run folder
    python figures.py --format pdf                            # vector figures (pdf or svg) beside the PNGs

What is drawn, from which file of a folder:
    val_accuracy            metrics.csv and hyperparameters.json (every run; for a transfer run,
                            its pretraining curve)
    inner_learning_rates    inner_learning_rates.csv (MAML++)
    comparison              comparison_tasks.csv (a transfer run compared with FO-MAML)
    val_fo-maml_*, val_maml++_*, val_overlay_*   runs.csv of a stability.py output folder and the
                            metrics.csv of the runs it lists (FO-MAML vs MAML++)
    val_<group>, val_time_<group>, feature_change   compare.csv of a compare.py output folder and
                            the run folders it lists
A metrics.csv cut short by a killed run is drawn up to its last complete row, with a warning.
Without folders it redraws every run folder under --results_dir, those the tools keep in
<tool>/runs/ and the learners' folders of a sine.py or navigation.py study included. What it does
not redraw it names, with the command that does: the MNIST lab's figure (initialization_lab.py
--redraw) and a study's own figures, which need its learners' models (sine.py or navigation.py
--resume).
"""

import os

from absl import flags

from fewshot import cli, results
from fewshot.cli import config  # noqa: F401  config defines --results_dir
from fewshot.folders import (draw, find_folders, is_compare_folder, is_lab_folder, is_run_folder, is_stability_folder,
                             read_logs, study_command)

flags.declare_key_flag('results_dir')  # config's: where to look when no folder is given.
flags.DEFINE_enum('format', 'png', ['png', 'pdf', 'svg'], 'File format of the figures.')
FLAGS = flags.FLAGS


def main(argv):
    folders = argv[1:]
    if not folders:
        folders = find_folders(FLAGS.results_dir)
        if not folders:
            raise results.RunError(f'no run folders under {FLAGS.results_dir} (a run folder has '
                                   f'{results.HYPERPARAMETERS_FILE}); train something first')
    for folder in folders:
        if not os.path.isdir(folder):
            raise results.RunError(f'{folder}: folder does not exist')
    drawable = []
    for folder in folders:
        if is_lab_folder(folder):
            print(f'{folder}: the MNIST lab; redraw it with python initialization_lab.py --redraw')
        elif study_command(folder):
            print(f'{folder}: a {study_command(folder)} study; its own figures need its learners\' models: '
                  f'python {study_command(folder)} --run_name {os.path.basename(os.path.normpath(folder))} '
                  '--resume (with its flags) redraws them; its learners\' run figures are redrawn here')
        elif is_stability_folder(folder) or is_compare_folder(folder) or is_run_folder(folder):
            drawable.append(folder)
        else:
            print(f'{folder}: skipped: not a run, stability, comparison or study folder')
    # Every folder's logs are read first: a damaged one stops the command before anything is drawn.
    logs = {folder: read_logs(folder) for folder in drawable}
    for folder, folder_logs in logs.items():
        for path in draw(folder, folder_logs, f'.{FLAGS.format}'):
            print(path)


def run():
    """The command, as `python figures.py` and `fewshot figures` run it."""
    cli.run(main, takes_arguments=True)
