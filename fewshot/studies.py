"""A study: several learners trained on one problem, each in its own run folder inside the study's
folder, then compared there (sine.py, navigation.py).

The study folder is results_dir/<study>; learner `name` runs in results_dir/<study>/<name> with the
usual run-folder rules (resume, overwrite, recorded flags), checked for every learner before any
trains.
"""

import os
import sys

from fewshot import config, errors, results


def _positive(text):
    try:
        return float(text) > 0
    except ValueError:
        return False


def positive_numbers(texts):
    """True if `texts` (a list flag's values) is a non-empty list of positive numbers."""
    return bool(texts) and all(_positive(text) for text in texts)


def study_folder(name, learners, resume, overwrite):
    """results_dir/name after checking that every learner's run folder in it can be used as asked."""
    if not results.is_run_name(name):
        raise errors.FlagError(f'--run_name {name!r}: one folder name inside --results_dir, without / and '
                               'not . or ..')
    path = os.path.join(config.FLAGS.results_dir, name)
    for learner in learners:
        results.RunFolder(path, learner, resume, overwrite, create=False)
    os.makedirs(path, exist_ok=True)
    return path


def open_run(study_dir, name, command_module, facts, fixed_on_resume=()):
    """The run folder of learner `name`, created (or resumed), its flags and `facts` recorded.

    The flags recorded are the command's (`command_module`'s key flags) but --learners: which
    learners a study holds may grow, and each run is one of them."""
    flags = config.FLAGS
    folder = results.RunFolder(study_dir, name, flags.resume, flags.overwrite, create=False,
                               fixed_on_resume=fixed_on_resume)
    values, defaults = config.flag_values([command_module]), config.flag_values([command_module], 'default')
    for recorded in (values, defaults):
        recorded.pop('learners')
    folder.check_flags(values, defaults)
    folder.create()
    folder.write_hyperparameters(values, {**facts, 'seed': flags.seed, 'command': ' '.join(sys.argv)}, defaults)
    return folder


def summaries(study_dir, names):
    """Each learner's summary.json, by learner."""
    return {name: results.read_json(os.path.join(study_dir, name, results.SUMMARY_FILE)) for name in names}


def write_table(path, caption, header, rows):
    """A Markdown table: `caption`, then `header` (column names) and `rows` (lists of cells)."""
    lines = ['| ' + ' | '.join(header) + ' |', '|---' * len(header) + '|']
    lines += ['| ' + ' | '.join(str(cell) for cell in row) + ' |' for row in rows]
    results.atomic_write(path, lambda f: f.write((caption + '\n\n' + '\n'.join(lines) + '\n').encode()))
