"""User-facing errors: train.py prints their message without a traceback."""
import contextlib
import signal
import sys
import threading
from typing import Callable


class UserError(Exception):
  """A problem the user can fix (bad config, missing data, diverged run).

  The message names the problem and the fix; entry points print it and exit
  with `exit_code` (2) instead of showing a Python traceback.
  """
  exit_code = 2


def warn(message: str) -> None:
  """Prints `warning: <message>` to stderr: a problem the run works around."""
  print(f'warning: {message}', file=sys.stderr, flush=True)


class Stopped(BaseException):
  """SIGTERM or SIGINT (Ctrl-C) arrived: the run stops where it is.

  Raised in the main thread by `signals_stop_the_run`'s handler; the
  training loop's `finally` clauses finish the pending checkpoint save and
  release the workdir, and `signals_stop_the_run` adds what was saved
  (`saying`). Entry points print it as one `error:` line, as a UserError,
  with the shell's exit status for the signal (128 + its number: 143 for
  SIGTERM). Like KeyboardInterrupt it is no `Exception`, so no handler of
  failures (e.g. a checkpoint that does not restore) mistakes it for one.
  """

  def __init__(self, signum: int):
    self.name = signal.Signals(signum).name
    self.exit_code = 128 + signum
    super().__init__(f'{self.name} received: training stopped')

  def saying(self, saved: str) -> 'Stopped':
    self.args = (f'{self.args[0]}; {saved}',)
    return self


@contextlib.contextmanager
def signals_stop_the_run(saved: Callable[[], str]):
  """Within: SIGTERM and SIGINT raise `Stopped` (once; a second signal acts
  as it did before), which leaves saying `saved()`: what the stopped run
  kept. Outside the main thread nothing changes."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  signums = (signal.SIGTERM, signal.SIGINT)
  before = {s: signal.getsignal(s) for s in signums}

  def handler(signum, frame):
    del frame
    for s in signums:
      signal.signal(s, before[s])
    raise Stopped(signum)

  for s in signums:
    signal.signal(s, handler)
  try:
    yield
  except Stopped as e:
    raise e.saying(saved()) from None
  finally:
    for s in signums:
      signal.signal(s, before[s])
