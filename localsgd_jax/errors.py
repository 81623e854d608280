"""User-facing errors: train.py prints their message without a traceback."""
import sys


class UserError(Exception):
  """A problem the user can fix (bad config, missing data, diverged run).

  The message names the problem and the fix; entry points print it and exit
  with status 2 instead of showing a Python traceback.
  """


def warn(message: str) -> None:
  """Prints `warning: <message>` to stderr: a problem the run works around."""
  print(f'warning: {message}', file=sys.stderr, flush=True)
