"""docs/tutorial.md runs as it is: its code blocks, one after the other, on a folder of generated classes,
and what it prints is what a working toolkit prints (the learner learns, the run resumes where it stopped,
adapt and predict agree)."""

import os
import re
import subprocess
import sys

from test_package import _write_classes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_tutorial_runs_as_written(tmp_path):
    with open(os.path.join(REPO, 'docs', 'tutorial.md'), encoding='utf-8') as f:
        blocks = re.findall(r'```python\n(.*?)\n```', f.read(), re.S)
    assert len(blocks) == 6
    _write_classes(tmp_path / 'my_images', num_classes=40, per_class=6)
    (tmp_path / 'tutorial.py').write_text('\n\n'.join(blocks), encoding='utf-8')
    run = subprocess.run([sys.executable, 'tutorial.py'], cwd=tmp_path, capture_output=True, text=True, timeout=900,
                         env={**os.environ, 'PYTHONPATH': REPO})
    assert run.returncode == 0, run.stderr[-3000:]
    assert '40 classes; a meta-batch of 4 tasks: support (4, 5, 28, 28, 1)' in run.stdout
    assert 'resumed at iteration 60, validated at [90]' in run.stdout
    post, pre = map(float, re.search(r'meta-test accuracy ([\d.]+)% ± [\d.]+% over 100 tasks \(before adapting '
                                     r'([\d.]+)%', run.stdout).groups())
    assert post > pre + 20, run.stdout  # Chance is 20%: the test classes were never seen.
    assert 'adapt and predict agree: True' in run.stdout
    assert (tmp_path / 'runs' / 'my_maml' / 'model.keras').exists() and (tmp_path / 'runs' / 'my_maml_log.csv').exists()
