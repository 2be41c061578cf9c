"""The student's name and number, which the hand-in's report (report.py, on its first page) and zip
(submit.py, in its name) both show."""

from absl import flags

flags.DEFINE_string('name', None, "Your name, on the report's first page and in the zip's name (submit.py).")
flags.DEFINE_string('student_number', None, "Your student number, on the report's first page and in the zip's "
                    'name (submit.py), e.g. 2020-12345.')
