"""The hand-in report, report.md and report.pdf, written from the run folders alone.

    python report.py                                   # from every run folder under results/
    python report.py --runs results/a,results/b        # from these run folders only

Every number in the report is read from a run folder (summary.json, metrics.csv,
hyperparameters.json, comparison.csv, the stability tables); the prose around the
numbers is a template whose comparisons follow the measured values. Runs the
assignment expects but that are not found are listed as missing. The report goes
to --output (default report.md, beside results/), its PDF beside it; figures are
referenced by their path relative to the report.
"""

import datetime
import logging
import os
import platform
import re

import matplotlib
from absl import flags
from fpdf import FPDF
from fpdf.fonts import FontFace

from fewshot import cli, comparison, errors, folders, results, stability
from fewshot.cli import config, handin  # noqa: F401  config defines --results_dir

flags.declare_key_flag('results_dir')  # config's: where to look for run folders.
flags.DEFINE_list('runs', [], 'Run folders to report on (default: every run folder under --results_dir).')
flags.DEFINE_string('output', 'report.md',
                    'The Markdown report to write; the PDF is written beside it (.pdf).')
flags.adopt_module_key_flags(handin)  # --name and --student_number.
FLAGS = flags.FLAGS
logging.getLogger('fontTools').setLevel(logging.WARNING)  # Its font subsetting logs every table.

MAIN_SETTING = '5-way 5-shot'
# What the assignment asks for: (algorithm, setting) -> how to produce it if missing.
EXPECTED = {
    ('FO-MAML', MAIN_SETTING): 'python maml.py --num_inner_steps 5',
    ('MAML++', MAIN_SETTING): 'python maml_plusplus.py',
    ('transfer', MAIN_SETTING): 'python maml_transfer.py --compare_with <the FO-MAML run folder>',
}
# Flags that say where things are or how a run was shown, not what it computed.
# Flags that do not shape what is computed (chunking changes only memory and the order of a sum).
HOUSEKEEPING_FLAGS = {'cache_dir', 'data_dir', 'overwrite', 'progress', 'results_dir', 'resume', 'run_name',
                      'tasks_per_chunk', 'memory_budget_gb'}


# Reading the runs ------------------------------------------------------------------

def load_run(folder):
    """What the report needs of one run folder: hyperparameters, metrics, summary."""
    hyperparameters = results.read_hyperparameters(folder)
    summary = results.read_summary(folder)
    flags_ = hyperparameters['flags']
    return {'folder': folder, 'name': os.path.basename(os.path.normpath(folder)),
            'algorithm': hyperparameters.get('algorithm', '?'),
            'setting': f'{flags_["n_way"]}-way {flags_["k_shot"]}-shot', 'seed': hyperparameters.get('seed'),
            'flags': flags_, 'hyperparameters': hyperparameters, 'summary': summary,
            'metrics': results.read_metrics(os.path.join(folder, results.METRICS_FILE), required=True)}


def find_runs(results_dir, chosen=()):
    """The runs to report on (the `chosen` folders, else those under results_dir) and the stability
    folder (or None). The MNIST lab is not part of it."""
    # The user's own runs: not those the tools keep in <tool>/runs/, studies, comparisons or the lab.
    found = [folder for folder in list(chosen) or folders.find_folders(results_dir)
             if chosen or os.path.dirname(os.path.normpath(folder)) == os.path.normpath(results_dir)]
    found = [folder for folder in found if folders.is_run_folder(folder) or folders.is_stability_folder(folder)]
    found = [folder for folder in found if not folders.is_lab_folder(folder)]
    runs = [load_run(folder) for folder in found if not folders.is_stability_folder(folder)]
    if not runs and not os.path.isdir(os.path.join(results_dir, 'compare')):
        raise results.RunError(f'no run folders found under {results_dir} (a run folder has '
                               f'{results.HYPERPARAMETERS_FILE}); run maml.py first')
    stability_dirs = [folder for folder in found if folders.is_stability_folder(folder)]
    default = os.path.join(results_dir, 'stability')
    if not stability_dirs and not chosen and folders.is_stability_folder(default):
        stability_dirs = [default]
    return runs, (stability_dirs[0] if stability_dirs else None)


def how_to_make(runs, algorithm, setting=MAIN_SETTING):
    """The command that makes the expected run of `algorithm` at `setting` (EXPECTED's); the transfer run's
    names the FO-MAML run it compares with, the one found or, if none is, the one to make first."""
    if algorithm != 'transfer':
        return EXPECTED[algorithm, setting]
    maml = main_run(runs, 'FO-MAML', setting)
    if maml is None:
        return f'{EXPECTED["FO-MAML", setting]}, then python maml_transfer.py --compare_with <its run folder>'
    return f'python maml_transfer.py --compare_with {maml["folder"]}'


def main_run(runs, algorithm, setting=MAIN_SETTING):
    """The finished run of `algorithm` at `setting` with the lowest seed, or None."""
    candidates = [run for run in runs if run['algorithm'] == algorithm and run['setting'] == setting
                  and run['summary'] is not None]
    return min(candidates, key=lambda run: (run['seed'], run['name'])) if candidates else None


# Formatting ------------------------------------------------------------------------

def pct(value):
    """0.0123 -> '1.23%'; '—' for NaN (the spread of a single seed)."""
    return '—' if value != value else f'{100 * value:.2f}%'


def points(value):
    """A difference or spread of accuracies, in percentage points: 0.0123 -> '1.23 points'; '—' for NaN."""
    return '—' if value != value else f'{100 * value:.2f} points'


DRAFT = 'Draft analysis, generated by report.py from the numbers above (read it, check it, rewrite it): '


def accuracy(mean, ci):
    return f'{pct(mean)} ± {pct(ci)}'


def minutes(seconds):
    return f'{seconds / 60:.1f} min'


def relative(path, start):
    return os.path.relpath(path, start).replace(os.sep, '/')


# The report as blocks: ('heading', level, text) | ('paragraph', text) | ('table', header, rows)
# | ('image', path, caption) -------------------------------------------------------------

def runs_table(runs):
    header = ['run folder', 'algorithm', 'setting', 'seed', 'iterations', 'training time',
              'final validation acc.', 'meta-test acc.', 'test tasks', 'evaluation batch norm']
    rows = []
    for run in runs:
        summary = run['summary']
        if summary is None:
            rows.append([run['name'], run['algorithm'], run['setting'], str(run['seed']),
                         str(run['metrics'][-1]['iteration']), 'unfinished', '', '', '', ''])
            continue
        rows.append([run['name'], run['algorithm'], run['setting'], str(run['seed']), str(summary['iterations']),
                     minutes(summary['training_seconds']),
                     accuracy(summary['val_post_accuracy'], summary['val_post_ci95']),
                     accuracy(summary['test_post_accuracy'], summary['test_post_ci95']), str(summary['test_tasks']),
                     run['hyperparameters'].get('batch_norm', 'not recorded')])
    return ('table', header, rows)


def hyperparameter_table(runs):
    """Every flag that shaped the computation, one column per run."""
    names = sorted(set().union(*(run['flags'] for run in runs)) - HOUSEKEEPING_FLAGS)
    rows = [[name] + [str(run['flags'].get(name, '–')) for run in runs] for name in names]
    return ('table', ['flag'] + [run['name'] for run in runs], rows)


def run_sentence(run):
    summary = run['summary']
    bar = 'above' if summary['val_post_accuracy'] >= 0.8 else 'below'
    algorithm = run['algorithm'][0].upper() + run['algorithm'][1:]  # 'transfer' opens a sentence.
    return (f'{algorithm} ({run["setting"]}, seed {run["seed"]}) reached '
            f'{accuracy(summary["val_post_accuracy"], summary["val_post_ci95"])} post-adaptation '
            f'validation accuracy after {summary["iterations"]} iterations ({bar} the 80% bar) and '
            f'{accuracy(summary["test_post_accuracy"], summary["test_post_ci95"])} on '
            f'{summary["test_tasks"]} meta-test tasks, in {minutes(summary["training_seconds"])} '
            f'of training. Evaluation batch norm: {run["hyperparameters"].get("batch_norm", "not recorded")}.')


def maml_section(runs, start):
    blocks = [('heading', 2, '1. First-order MAML (maml.py)')]
    maml_runs = [run for run in runs if run['algorithm'] in ('FO-MAML', 'MAML') and run['summary']]
    if not maml_runs:
        return blocks + [('paragraph', f'Missing: no finished FO-MAML run ({EXPECTED["FO-MAML", MAIN_SETTING]}).')]
    for run in sorted(maml_runs, key=lambda r: (r['setting'] != MAIN_SETTING, r['setting'], r['seed'])):
        blocks += [('paragraph', run_sentence(run)),
                   ('image', relative(os.path.join(run['folder'], 'val_accuracy.png'), start),
                    f'{run["name"]}: validation accuracy over meta-training (95% CI band).')]
    return blocks


def stability_paragraph(table, setting):
    rows = {row['method']: row for row in table if row['setting'] == setting}
    maml, plus = rows.get('FO-MAML', rows.get('MAML')), rows.get('MAML++')  # Older tables called FO-MAML 'MAML'.
    if maml is None or plus is None or len(rows) != 2:
        return None
    steadier = [name for name, a, b in (
        ('std across seeds of the final validation accuracy', maml['final_val_std'], plus['final_val_std']),
        ('mean absolute change between validations', maml['mean_abs_change'], plus['mean_abs_change']),
        ('largest drop', maml['largest_drop'], plus['largest_drop'])) if b < a]
    verdict = ('more stable by all three figures' if len(steadier) == 3 else
               'not more stable by any of the three figures' if not steadier else
               f'more stable by {len(steadier)} of the three figures ({"; ".join(steadier)})')
    return (DRAFT + f'{setting}, {maml["seeds"]} seeds each: the final validation accuracy varied across seeds '
            f'with a standard deviation (n − 1) of {points(maml["final_val_std"])} for {maml["method"]} and '
            f'{points(plus["final_val_std"])} for MAML++; the mean absolute change between consecutive '
            f'validations was {points(maml["mean_abs_change"])} vs {points(plus["mean_abs_change"])} '
            f'({points(maml["mean_abs_change_second_half"])} vs {points(plus["mean_abs_change_second_half"])} '
            f'over the second half of training); the largest drop was {points(maml["largest_drop"])} vs '
            f'{points(plus["largest_drop"])}. MAML++ was {verdict}. ' + accuracy_sentence(maml, plus))


def evaluation_caveat(maml, plus):
    """A warning when the two methods' accuracies were measured with different batch norm, else ''."""
    if maml['batch_norm'] == plus['batch_norm']:
        return ''
    return (f' The two were not evaluated alike: batch norm used {maml["batch_norm"]} '
            f'for {maml.get("method", "MAML")} and '
            f'{plus["batch_norm"]} for MAML++, so their accuracies differ by that too.')


def accuracy_sentence(maml, plus):
    """Whether MAML++ was more accurate on meta-test, against the noise of a single run's estimate."""
    difference = plus['test_mean'] - maml['test_mean']
    margin = max(maml['test_ci95_mean'], plus['test_ci95_mean'])
    numbers = (f'{pct(plus["test_mean"])} vs {pct(maml["test_mean"])} (mean over seeds), a difference of '
               f'{100 * difference:+.2f} points')
    if abs(difference) < margin:
        sentence = (f'On meta-test the two were about as accurate: {numbers}, within the 95% confidence '
                    f'half-width of a single run ({points(margin)}).')
    else:
        sentence = (f'On meta-test MAML++ was {"more" if difference > 0 else "less"} accurate: {numbers}, '
                    f'more than the 95% confidence half-width of a single run ({points(margin)}).')
    return sentence + evaluation_caveat(maml, plus)


def maml_plusplus_section(runs, stability_dir, start):
    blocks = [('heading', 2, '2. MAML++ (maml_plusplus.py) and training stability')]
    run = main_run(runs, 'MAML++')
    if run is None:
        blocks.append(('paragraph', f'Missing: no finished MAML++ run at {MAIN_SETTING} '
                                    f'({EXPECTED["MAML++", MAIN_SETTING]}).'))
    else:
        flags_ = run['flags']
        fixes = [name for name, on in (('multi-step loss', flags_.get('msl')),
                                       ('derivative-order annealing', flags_.get('da')),
                                       ('per-step BN statistics', flags_.get('bnrs')),
                                       ('per-step BN weights', flags_.get('bnwb')),
                                       ('learned per-step inner learning rates', flags_.get('lslr')),
                                       ('cosine meta learning rate', flags_.get('cosine_annealing'))) if on]
        blocks += [('paragraph', run_sentence(run) + f' Fixes on: {", ".join(fixes) or "none"}.'),
                   ('image', relative(os.path.join(run['folder'], 'val_accuracy.png'), start),
                    f'{run["name"]}: validation accuracy over meta-training.')]
        if os.path.exists(os.path.join(run['folder'], 'inner_learning_rates.png')):
            blocks.append(('image', relative(os.path.join(run['folder'], 'inner_learning_rates.png'), start),
                           'Learned inner learning rate of every weight tensor at every inner step.'))
    if stability_dir is None:
        return blocks + [('paragraph', 'Missing: the MAML vs MAML++ stability comparison '
                                       '(python stability.py).')]
    table = results.read_csv(os.path.join(stability_dir, 'stability.csv'), columns=('setting', 'method', 'batch_norm'),
                             numbers=stability.TABLE_NUMBERS)
    blocks.append(('table', ['setting', 'method', 'seeds', 'final val acc (mean ± std)',
                             'mean abs change (all / 2nd half)', 'largest drop',
                             'meta-test acc (mean of seeds; std)', 'evaluation batch norm'],
                   [[row['setting'], row['method'], str(row['seeds']),
                     f'{pct(row["final_val_mean"])} ± {pct(row["final_val_std"])}',
                     f'{pct(row["mean_abs_change"])} / {pct(row["mean_abs_change_second_half"])}',
                     pct(row['largest_drop']), f'{pct(row["test_mean"])}; std {pct(row["test_std"])}',
                     row['batch_norm']] for row in table]))
    for setting in dict.fromkeys(row['setting'] for row in table):
        paragraph = stability_paragraph(table, setting)
        if paragraph:
            blocks.append(('paragraph', paragraph))
        methods = [row['method'] for row in table if row['setting'] == setting]
        for name, caption in ((f'val_overlay_{setting}.png', 'mean ± std over seeds (sample std, n − 1)'),
                              *((f'val_{method.lower()}_{setting}.png', f'{method}, every seed')
                                for method in methods)):
            blocks.append(('image', relative(os.path.join(stability_dir, name), start),
                           f'{setting}: validation accuracy, {caption}.'))
    return blocks


def shots(setting):
    """'5-way 1-shot' -> '1'."""
    return re.search(r'(\d+)-shot', setting)[1]


def transfer_paragraph(rows):
    """Why one method beats the other, following the measured numbers of each setting."""
    sentences = []
    for setting in dict.fromkeys(row['setting'] for row in rows):
        scores = {row['method']: row for row in rows if row['setting'] == setting}
        if set(scores) != {'FO-MAML', 'transfer'}:
            continue
        maml, transfer = scores['FO-MAML'], scores['transfer']
        gap = transfer['test_accuracy'] - maml['test_accuracy']
        overlap = abs(gap) <= maml['ci95'] + transfer['ci95']
        better = 'transfer learning' if gap > 0 else 'FO-MAML'
        sentences.append(
            f'At {setting}, transfer learning scored {accuracy(transfer["test_accuracy"], transfer["ci95"])} and '
            f'FO-MAML {accuracy(maml["test_accuracy"], maml["ci95"])} on the same {maml["tasks"]} meta-test tasks: '
            f'{better} is ahead by {points(abs(gap))}'
            + (' (the 95% intervals overlap, so the difference is within noise).' if overlap else '.'))
        if gap > 0:
            sentences.append(
                f'With {shots(setting)} examples per class a new linear head fits the support set well, and '
                'the pretrained network, trained with full supervision over every meta-train character, '
                'gives features that already separate unseen characters; MAML spends its capacity on an '
                'initialisation for a few gradient steps instead.')
        else:
            sentences.append(
                f'At {setting} a new head fitted on so few examples is under-determined, while MAML\'s '
                'initialisation was meta-trained for exactly this: adapting every layer from a handful of '
                'examples in a few steps.')
    return DRAFT + ' '.join(sentences) if sentences else ''


def transfer_section(runs, start):
    blocks = [('heading', 2, '3. Transfer learning vs FO-MAML (maml_transfer.py)')]
    run = main_run(runs, 'transfer')
    if run is None:
        return blocks + [('paragraph', f'Missing: no finished transfer run ({how_to_make(runs, "transfer")}).')]
    blocks += [('paragraph', run_sentence(run).replace('iterations', 'pretraining steps')),
               ('image', relative(os.path.join(run['folder'], 'val_accuracy.png'), start),
                f'{run["name"]}: pretraining curve, scored by transfer on the validation tasks.')]
    comparison = os.path.join(run['folder'], 'comparison.csv')
    if not os.path.exists(comparison):
        return blocks + [('paragraph', 'Missing: the comparison with FO-MAML '
                                       f'({how_to_make(runs, "transfer")}).')]
    rows = results.read_csv(comparison, columns=('setting', 'method', 'run'),
                            numbers=('test_accuracy', 'ci95', 'tasks'))
    blocks += [('table', ['setting', 'method', 'meta-test accuracy ± 95% CI', 'tasks', 'run'],
                [[row['setting'], row['method'], accuracy(row['test_accuracy'], row['ci95']), str(row['tasks']),
                  os.path.basename(str(row['run']))] for row in rows]),
               ('paragraph', transfer_paragraph(rows)),
               ('image', relative(os.path.join(run['folder'], 'comparison.png'), start),
                'Per-task meta-test accuracy, transfer vs FO-MAML, on the same tasks.')]
    return blocks


def family_section(compare_dir, start):
    """The learners side by side, from compare.py's table and figures."""
    table = comparison.read_table(compare_dir)
    blocks = [('heading', 2, '4. The learners side by side (compare.py)'),
              ('paragraph', 'Every learner trained with the same seed and budget and was meta-tested on the '
                            'same tasks. Seconds per iteration are wall-clock time of the training loop '
                            '(validation included) divided by the iterations; the support-feature similarity is '
                            'the mean cosine similarity of the penultimate features of the meta-test support '
                            'images before and after adaptation (1: adaptation leaves the features alone).'),
              ('table', ['setting', 'backbone', 'algorithm', 'inner steps', 'iterations', 'meta-test acc. ± 95% CI',
                         's / iteration', 'training', 'peak memory', 'feature similarity'],
               [[row['setting'], row['backbone'], row['algorithm'], comparison.number(row['inner_steps'], '.0f'),
                 f'{row["iterations"]:.0f}', accuracy(row['test_accuracy'], row['test_ci95']),
                 f'{row["seconds_per_iteration"]:.3f}', minutes(60 * row['training_minutes']),
                 f'{row["peak_memory_gb"]:.2f} GB', comparison.number(row['feature_similarity'], '.3f')]
                for row in table])]
    for group in dict.fromkeys(row['group'] for row in table):
        members = [row for row in table if row['group'] == group]
        best = max(members, key=lambda row: row['test_accuracy'])
        tied = [row['algorithm'] for row in members if row is not best
                and best['test_accuracy'] - row['test_accuracy'] <= best['test_ci95'] + row['test_ci95']]
        fastest = min(members, key=lambda row: row['seconds_per_iteration'])
        blocks.append(('paragraph', f'{group}: {best["algorithm"]} was the most accurate on meta-test '
                       f'({accuracy(best["test_accuracy"], best["test_ci95"])})'
                       + (f', within the confidence intervals of {", ".join(tied)}' if tied else '')
                       + f'; {fastest["algorithm"]} the fastest per iteration '
                         f'({fastest["seconds_per_iteration"]:.3f} s).'))
        for name, caption in ((f'val_{group}.png', 'validation accuracy against meta-iterations'),
                              (f'val_time_{group}.png', 'validation accuracy against training time')):
            blocks.append(('image', relative(os.path.join(compare_dir, name), start), f'{group}: {caption}.'))
    if os.path.exists(os.path.join(compare_dir, 'feature_change.png')):  # Drawn if a learner adapts.
        blocks.append(('image', relative(os.path.join(compare_dir, 'feature_change.png'), start),
                       'How far adaptation moves the penultimate features of the support set, per learner.'))
    return blocks


def build_report(runs, stability_dir, start, compare_dir=None, name=None, student_number=None):
    """The report as a list of blocks; image paths are relative to `start` (the report's folder)."""
    finished = [run for run in runs if run['summary']]
    versions = {f'TensorFlow {run["hyperparameters"]["versions"].get("tensorflow")}, '
                f'Keras {run["hyperparameters"]["versions"].get("keras")}' for run in runs}
    missing = [f'{algorithm} {setting} ({how_to_make(runs, algorithm, setting)})' for algorithm, setting in EXPECTED
               if main_run(runs, algorithm, setting) is None]
    if stability_dir is None:
        missing.append('the MAML vs MAML++ stability comparison (python stability.py)')
    blocks = [
        ('heading', 1, 'Meta-learning on Omniglot: FO-MAML, MAML++ and transfer learning'),
        ('paragraph', f'Name: {name or "(not given: python report.py --name ...)"}. Student number: '
                      f'{student_number or "(not given: python report.py --student_number ...)"}.'),
        ('paragraph', 'Paragraphs that begin "Draft analysis" are written by report.py from the measured numbers: '
                      'a starting point, not the analysis the assignment asks of you. Read each against the '
                      'figures, check it, and rewrite it in your own words before handing the report in.'),
        ('paragraph', f'Generated on {datetime.date.today().isoformat()} by report.py from {len(runs)} run '
                      f'folders ({len(finished)} finished). Machine: {results.machine()}, '
                      f'{platform.system()} {platform.release()}; {"; ".join(sorted(versions))}. '
                      'Every number below is read from the run folders. Training times are those of the '
                      'meta-training loop (validation included), as recorded by each run.'),
        ('heading', 2, 'Runs used'), runs_table(runs),
        ('paragraph', 'Missing: ' + '; '.join(missing) + '.' if missing else 'No expected run is missing.'),
    ]
    blocks += maml_section(runs, start)
    blocks += maml_plusplus_section(runs, stability_dir, start)
    blocks += transfer_section(runs, start)
    if compare_dir is not None and comparison.read_table(compare_dir) is not None:
        blocks += family_section(compare_dir, start)
    blocks.append(('heading', 2, 'Hyperparameters'))
    for algorithm in dict.fromkeys(run['algorithm'] for run in runs):
        group = [run for run in runs if run['algorithm'] == algorithm]
        blocks += [('heading', 3, algorithm), hyperparameter_table(group)]
    return blocks


# Rendering ---------------------------------------------------------------------------

def to_markdown(blocks):
    lines = []
    for block in blocks:
        kind = block[0]
        if kind == 'heading':
            lines += ['#' * block[1] + ' ' + block[2], '']
        elif kind == 'paragraph':
            lines += [block[1], '']
        elif kind == 'table':
            _, header, rows = block
            lines += ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
            lines += ['| ' + ' | '.join(cell.replace('|', '\\|') for cell in row) + ' |' for row in rows]
            lines.append('')
        elif kind == 'image':
            lines += [f'![{block[2]}]({block[1]})', '', f'*{block[2]}*', '']
    return '\n'.join(lines)


def to_pdf(blocks, path, start):
    """Renders the blocks to an A4 PDF (DejaVu Sans, the font matplotlib ships, for Unicode)."""
    fonts = os.path.join(matplotlib.get_data_path(), 'fonts', 'ttf')
    pdf = FPDF(format='A4')
    pdf.set_creation_date(datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc))  # Reproducible.
    pdf.add_font('DejaVu', '', os.path.join(fonts, 'DejaVuSans.ttf'))
    pdf.add_font('DejaVu', 'B', os.path.join(fonts, 'DejaVuSans-Bold.ttf'))
    pdf.add_font('DejaVu', 'I', os.path.join(fonts, 'DejaVuSans-Oblique.ttf'))
    pdf.set_margins(15, 15, 15)
    pdf.set_auto_page_break(True, margin=15)
    pdf.add_page()
    for block in blocks:
        kind = block[0]
        if kind == 'heading':
            pdf.set_font('DejaVu', 'B', {1: 15, 2: 12.5, 3: 10.5}[block[1]])
            pdf.ln(2)
            pdf.multi_cell(0, 7, block[2], new_x='LMARGIN', new_y='NEXT', align='L')
            pdf.ln(1)
        elif kind == 'paragraph':
            pdf.set_font('DejaVu', '', 9)
            pdf.multi_cell(0, 4.6, block[1], new_x='LMARGIN', new_y='NEXT', align='L')
            pdf.ln(2)
        elif kind == 'table':
            _, header, rows = block
            pdf.set_font('DejaVu', '', 7 if len(header) <= 6 else 5.5)
            with pdf.table(headings_style=FontFace(emphasis='BOLD'), line_height=3.2 if len(header) > 6 else 3.6,
                           text_align='LEFT') as table:
                for row in [header] + rows:
                    cells = table.row()
                    for cell in row:
                        cells.cell(str(cell))
            pdf.ln(2)
        elif kind == 'image':
            image = os.path.join(start, block[1])
            if os.path.exists(image):
                pdf.image(image, w=150, x=(pdf.w - 150) / 2)
            pdf.set_font('DejaVu', 'I', 8)
            pdf.multi_cell(0, 4, block[2] if os.path.exists(image) else f'(figure missing: {block[1]})',
                           new_x='LMARGIN', new_y='NEXT', align='C')
            pdf.ln(2)
    with results.replacing(path) as temporary:
        pdf.output(temporary)


def write_report(runs, stability_dir, output, compare_dir=None, name=None, student_number=None):
    """Writes `output` (.md) and the PDF beside it; returns both paths."""
    start = os.path.dirname(os.path.abspath(output))
    os.makedirs(start, exist_ok=True)
    blocks = build_report(runs, stability_dir, start, compare_dir, name, student_number)
    results.atomic_write(output, lambda f: f.write(to_markdown(blocks).encode()))
    pdf_path = os.path.splitext(output)[0] + '.pdf'
    to_pdf(blocks, pdf_path, start)
    return output, pdf_path


def main(argv):
    del argv
    for folder in FLAGS.runs:
        if not os.path.isdir(folder):
            raise results.RunError(f'--runs: {folder} is not a folder')
    if os.path.isdir(FLAGS.output):
        raise errors.OutputError(f'--output {FLAGS.output}: is a folder; name the report file, e.g. report.md')
    results.check_writable(os.path.dirname(os.path.abspath(FLAGS.output)), '--output')
    runs, stability_dir = find_runs(FLAGS.results_dir, FLAGS.runs)
    for path in write_report(runs, stability_dir, FLAGS.output, os.path.join(FLAGS.results_dir, 'compare'),
                             FLAGS.name, FLAGS.student_number):
        print(path)


def run():
    """The command, as `python report.py` and `fewshot report` run it."""
    cli.run(main)
