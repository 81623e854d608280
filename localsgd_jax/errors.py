"""User-facing errors: train.py prints their message without a traceback."""


class UserError(Exception):
  """A problem the user can fix (bad config, missing data, diverged run).

  The message names the problem and the fix; entry points print it and exit
  with status 2 instead of showing a Python traceback.
  """
