"""The learner commands, found rather than listed: every command (fewshot/cli/scripts/) that defines its
`commands.Command` as COMMAND. A new learner's command is in every test that uses these, with no
edit to a test."""

import glob
import os
import re

from fewshot.cli import commands, scripts


def learner_scripts():
    """The learner commands' file names, e.g. ['anil.py', ..., 'reptile.py']."""
    return sorted(os.path.basename(path) for path in glob.glob(os.path.join(scripts.HERE, '*.py'))
                  if re.search(r'^COMMAND = ', open(path).read(), re.MULTILINE))


def learners():
    """{what each learner is called: (its Command, first_order)}, a learner that has an order at both."""
    found = {}
    for script in learner_scripts():
        command = commands.find(script[:-3], 'script')
        for first_order in (True, False) if command.takes('first_order') else (True,):
            found[command.algorithm_name(first_order)] = (command, first_order)
    return found
