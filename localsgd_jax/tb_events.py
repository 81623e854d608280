"""TensorBoard event files, written in the calling thread.

tensorboardX's own records (TFRecords of Event protos), without
`SummaryWriter`'s writer thread: a failed write (e.g. a full disk) raises
here as a one-line `disk.write_failed` error instead of killing that thread,
after which its queue fills and the run would block.
"""
import contextlib
import os
import socket
import time

from localsgd_jax import disk


class EventFile:
  """One run's event file in `logdir`, as SummaryWriter writes it.

  Raises UserError (one line) from any method whose write fails.
  """

  def __init__(self, logdir: str):
    # pylint: disable=g-import-not-at-top
    from tensorboardX import record_writer, summary
    from tensorboardX.proto import event_pb2
    # pylint: enable=g-import-not-at-top
    self._event_pb2, self._summary = event_pb2, summary
    self.path = logdir  # until the file exists: errors name the folder
    self._file = None
    self._failed = False
    with self._reporting():
      os.makedirs(logdir, exist_ok=True)
      self.path = os.path.join(
          logdir, f'events.out.tfevents.{int(time.time())}.'
          f'{socket.gethostname()}')
      self._file = record_writer.RecordWriter(self.path)
      self._write(event_pb2.Event(wall_time=time.time(),
                                  file_version='brain.Event:2'))
      self._file.flush()  # a full disk shows now, before the first epoch

  def add_scalar(self, tag: str, value: float, step: int) -> None:
    self._add(self._summary.scalar(tag, value), step)

  def add_text(self, tag: str, text: str, step: int) -> None:
    self._add(self._summary.text(tag, text), step)

  def flush(self) -> None:
    with self._reporting():
      self._file.flush()

  def close(self) -> None:
    """Flushes and closes; after an error already raised, quietly."""
    if self._file is None:
      return
    file, self._file = self._file, None
    if self._failed:
      try:
        file.close()
      except OSError:
        pass
      return
    with self._reporting():
      file.flush()
      file.close()

  def _add(self, summary, step: int) -> None:
    with self._reporting():
      self._write(self._event_pb2.Event(wall_time=time.time(), step=int(step),
                                        summary=summary))

  def _write(self, event) -> None:
    self._file.write(event.SerializeToString())

  @contextlib.contextmanager
  def _reporting(self):
    try:
      yield
    except OSError as e:
      self._failed = True
      raise disk.write_failed('the TensorBoard events', self.path, e) from None
