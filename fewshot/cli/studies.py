"""A study: several learners trained on one problem, each in its own run folder inside the study's
folder, then compared there (sine.py, navigation.py).

The study folder is results_dir/<study>; learner `name` runs in results_dir/<study>/<name> through
`experiment.run` with the usual run-folder rules (resume, overwrite, recorded flags), checked for
every learner before any trains.
"""

import math
import os

from absl import flags

from fewshot import errors, results
from fewshot.cli import config


flags.DEFINE_list('learners', [], "Learners to train and compare (the command's help lists them; default: all).")
flags.DEFINE_list('hidden', ['40', '40'], "Widths of the network's hidden layers.")
flags.register_validator('hidden', lambda widths: bool(widths) and all(w.isdigit() and int(w) > 0 for w in widths),
                         message='--hidden: a comma-separated list of positive layer widths, e.g. 40,40')
flags.DEFINE_integer('num_curve_steps', 10, 'Adaptation steps of the test curve (0, 1, ..., this many).', lower_bound=1)
flags.DEFINE_list('baseline_lrs', ['0.001', '0.003', '0.01', '0.03', '0.1', '0.3'],
                  "The baselines' fine-tuning step sizes, one chosen on the validation tasks.")
flags.DEFINE_integer('num_figure_tasks', 3, 'Test tasks drawn in the figure of adaptation.', lower_bound=1)
STUDY_FLAGS = ('learners', 'hidden', 'num_curve_steps', 'baseline_lrs', 'num_figure_tasks')


def _positive(text):
    try:
        return 0 < float(text) < math.inf  # NaN is neither.
    except ValueError:
        return False


flags.register_validator('baseline_lrs', lambda rates: bool(rates) and all(_positive(r) for r in rates),
                         message='--baseline_lrs: a comma-separated list of positive, finite step sizes')


def set_up(learners, defaults):
    """For a study command, before its flags are parsed: --learners is one or more of `learners`
    (all by default), and `defaults` (flag name -> value) replace the shared flags' defaults."""
    flags.FLAGS['learners'].help = f'Learners to train and compare, of {", ".join(learners)}.'
    for name, value in {'learners': list(learners), **defaults}.items():
        flags.FLAGS.set_default(name, value)


def study_folder(name, learners):
    """results_dir/name after checking --learners against `learners` and that every chosen learner's
    run folder in it can be used as --resume and --overwrite ask (`resumes`); nothing is made yet."""
    chosen = config.FLAGS.learners
    if not chosen or not set(chosen) <= set(learners):
        raise errors.FlagError(f'--learners: a comma-separated list of {", ".join(learners)}')
    twice = sorted({learner for learner in chosen if chosen.count(learner) > 1})
    if twice:
        raise errors.FlagError(f'--learners: {", ".join(twice)} listed twice; each learner is one run of the study')
    problem = results.run_name_problem(name)
    if problem:
        raise errors.FlagError(f'--run_name {ascii(name)}: {problem}')
    path = os.path.join(config.FLAGS.results_dir, name)
    if config.FLAGS.resume and not os.path.isdir(path):
        raise errors.RunError(f'--resume: {path} does not exist, so there is no study to continue '
                              '(leave out --resume to start it)')
    for learner in chosen:
        results.RunFolder(path, learner, resumes(path, learner), config.FLAGS.overwrite, create=False)
    return path  # Made with its first learner's run folder.


def resumes(study_dir, learner):
    """Whether the learner's run is continued: under --resume a study continues the learners it has
    and starts those it has not (a study stopped before its last learner started)."""
    return config.FLAGS.resume and os.path.lexists(os.path.join(study_dir, learner))


def summaries(study_dir, names):
    """Each learner's summary.json, by learner."""
    return {name: results.read_json(os.path.join(study_dir, name, results.SUMMARY_FILE)) for name in names}


def write_table(path, caption, header, rows):
    """A Markdown table: `caption`, then `header` (column names) and `rows` (lists of cells)."""
    lines = ['| ' + ' | '.join(header) + ' |', '|---' * len(header) + '|']
    lines += ['| ' + ' | '.join(str(cell) for cell in row) + ' |' for row in rows]
    results.atomic_write(path, lambda f: f.write((caption + '\n\n' + '\n'.join(lines) + '\n').encode()))
