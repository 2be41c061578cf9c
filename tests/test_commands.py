"""Every command at the top imports beside every other in one process (no two define the same flag),
and every learner command describes itself, so compare.py and benchmark.py find it by name."""

import glob
import os
import subprocess
import sys

from test_training import REPO

COMMANDS = sorted(os.path.basename(path)[:-3] for path in glob.glob(os.path.join(REPO, '*.py')))


def test_every_command_imports_beside_every_other_in_one_process():
    assert {'maml', 'compare', 'report', 'anil'} <= set(COMMANDS)
    script = (f'import {", ".join(COMMANDS)}\n'
              'from fewshot import commands\n'
              f'learners = [name for name in {COMMANDS!r} if hasattr(sys.modules[name], "COMMAND")]\n'
              'print(",".join(commands.find(name, "--algorithms").name for name in learners))\n')
    result = subprocess.run([sys.executable, '-c', 'import sys\n' + script], capture_output=True, text=True,
                            cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    learners = result.stdout.strip().splitlines()[-1].split(',')
    assert learners == ['anil', 'boil', 'imaml', 'maml', 'meta_sgd', 'proto_maml', 'protonet', 'relationnet', 'reptile']
