"""TensorBoard output read back from the event files, and the run's console.

The event files are read with TensorBoard's own Event protobuf (the records
are TFRecords: length, CRC, payload, CRC), without importing TensorFlow.
"""
import errno
import json
import os
import struct

import pytest
from tensorboard.compat.proto import event_pb2

from localsgd_jax import metrics as metrics_lib
from localsgd_jax import train_lib
from localsgd_jax.configs import quickstart
from localsgd_jax.errors import UserError


def read_events(tb_dir):
  """{tag: [(step, value)]} for scalars, {tag: text} for text summaries."""
  scalars, texts = {}, {}
  for name in sorted(os.listdir(tb_dir)):
    with open(os.path.join(tb_dir, name), 'rb') as f:
      data = f.read()
    pos = 0
    while pos < len(data):
      (length,) = struct.unpack('<Q', data[pos:pos + 8])
      event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      for value in event.summary.value:
        if value.HasField('simple_value'):
          scalars.setdefault(value.tag, []).append(
              (event.step, value.simple_value))
        elif value.metadata.plugin_data.plugin_name == 'text':
          texts[value.tag] = value.tensor.string_val[0].decode()
  return scalars, texts


def test_tensorboard_tags_are_grouped():
  tag = metrics_lib.tensorboard_tag
  assert tag('train_loss') == 'train/epoch_loss'
  assert tag('train_accuracy') == 'train/accuracy'
  assert tag('learning_rate') == 'train/learning_rate'
  assert tag('eval_accuracy') == 'eval/accuracy'
  assert tag('eval_loss') == 'eval/loss'
  assert tag('transition') == 'selection/k'
  assert tag('transition_update') == 'selection/transition_update'
  assert tag('step_flops') == 'cost/step_flops'
  assert tag('local_flop_fraction') == 'cost/local_flop_fraction'
  assert tag('epoch_time_s') == 'time/epoch_s'
  assert tag('compile_time_s') == 'time/compile_s'
  assert tag('images_per_s') == 'time/images_per_s'


def test_writer_round_trip(tmp_path):
  writer = metrics_lib.MetricsWriter(str(tmp_path))
  writer.write_config('{\n  "seed": 3\n}', 0)
  writer.write_losses(20, [1.0, 2.0, 3.0, 4.0, 5.0], every=2)
  writer.write({'epoch': 1, 'step': 25, 'train_loss': 0.5,
                'eval_accuracy': 0.75, 'eval_split': 'val', 'transition': 2,
                'step_flops': 1e9, 'epoch_time_s': 1.5, 'selection': 'hold'})
  writer.close()
  scalars, texts = read_events(tmp_path / 'tb')
  # Steps 22 and 24 (losses[1], losses[3]): every 2nd global step.
  assert scalars['train/loss'] == [(22, 2.0), (24, 4.0)]
  assert scalars['train/epoch_loss'] == [(25, 0.5)]
  assert scalars['eval/accuracy'] == [(25, 0.75)]
  assert scalars['selection/k'] == [(25, 2.0)]
  assert scalars['cost/step_flops'] == [(25, 1e9)]
  assert scalars['time/epoch_s'] == [(25, 1.5)]
  assert not [t for t in scalars if '/' not in t]  # every tag is grouped
  assert json.loads(texts['config/text_summary']) == {'seed': 3}
  with open(tmp_path / 'metrics.jsonl') as f:
    assert json.loads(f.read())['eval_split'] == 'val'


def test_run_writes_grouped_tensorboard_and_a_summary(tmp_path, capsys):
  config = quickstart.get_config()
  config.num_epochs = 2
  config.data.image_size = 8
  config.log.progress = False
  config.log.loss_every_steps = 5
  workdir = str(tmp_path / 'run')
  summary = train_lib.train_and_evaluate(config, workdir)
  out = capsys.readouterr().out

  scalars, texts = read_events(os.path.join(workdir, 'tb'))
  steps = 22  # 1437 training digits / batch 64
  assert [s for s, _ in scalars['train/loss']] == list(
      range(5, 2 * steps + 1, 5))
  assert [s for s, _ in scalars['eval/accuracy']] == [steps, 2 * steps]
  assert [v for _, v in scalars['selection/k']] == [0, 2]
  for group in ('train/', 'eval/', 'selection/', 'cost/', 'time/'):
    assert any(t.startswith(group) for t in scalars), group
  assert json.loads(texts['config/text_summary'])['num_epochs'] == 2

  # Start-up stages, the plan of k, compiles, and the closing summary.
  for line in ('Loading data: digits',
               'Data: 1437 training images, 360 test images',
               'Model: tiny, 4 units',
               'Selection: static: k=0 in epoch 1, k=2 in epoch 2',
               'Compiling the step for k=0 (plain SGD)',
               'Compiling the step for k=2',
               'next k: schedule',
               'Done: 2 epochs',
               f'test accuracy: final {summary["final_eval_accuracy"]:.4f}',
               f'files in {workdir}: checkpoints/, config.json',
               f'tensorboard --logdir {workdir}'):
    assert line in out, (line, out)

  # Run again: nothing to train, and the same summary.
  train_lib.train_and_evaluate(config, workdir)
  again = capsys.readouterr().out
  assert 'Nothing to train: all 2 epochs are done' in again
  assert 'Compiling' not in again
  assert (f'test accuracy: final {summary["final_eval_accuracy"]:.4f}'
          in again)


def test_run_with_tta_reports_it_apart(tmp_path, capsys, monkeypatch):
  """config.eval_tta: eval_accuracy_tta next to the plain eval_accuracy in
  the epoch rows, TensorBoard's eval/ group, summary.json and the console.
  (Digits train without flips, so TTA is refused for them; the dataset is
  marked as flipped here, which changes nothing in its training batches,
  built at load time.)"""
  load = train_lib.data.load_dataset

  def flipped(*args, **kwargs):
    dataset = load(*args, **kwargs)
    dataset.flip = True
    return dataset

  monkeypatch.setattr(train_lib.data, 'load_dataset', flipped)
  config = quickstart.get_config()
  config.num_epochs = 1
  config.data.image_size = 8
  config.log.progress = False
  config.eval_tta = 'flip_shift'
  workdir = str(tmp_path / 'run')
  summary = train_lib.train_and_evaluate(config, workdir)
  out = capsys.readouterr().out
  rows = metrics_lib.read_rows(os.path.join(workdir, 'metrics.jsonl'))
  assert 0 <= rows[-1]['eval_accuracy_tta'] <= 1
  assert rows[-1]['eval_loss_tta'] > 0
  assert summary['final_eval_accuracy_tta'] == rows[-1]['eval_accuracy_tta']
  assert summary['best_eval_accuracy_tta'] == rows[-1]['eval_accuracy_tta']
  scalars, _ = read_events(os.path.join(workdir, 'tb'))
  assert 'eval/accuracy_tta' in scalars and 'eval/loss_tta' in scalars
  assert f'tta_acc {rows[-1]["eval_accuracy_tta"]:.4f}' in out
  assert ('test accuracy with test-time augmentation: final '
          f'{summary["final_eval_accuracy_tta"]:.4f}') in out


def test_summary_without_tta_has_no_tta_fields():
  rows = [{'epoch': 1, 'eval_accuracy': 0.5}, {'epoch': 2}]
  assert metrics_lib.run_summary(rows) == {'final_eval_accuracy': 0.5,
                                           'best_eval_accuracy': 0.5}
  rows = [{'epoch': 2, 'eval_accuracy': 0.6, 'eval_accuracy_tta': 0.65},
          {'epoch': 1, 'eval_accuracy': 0.7, 'eval_accuracy_tta': 0.72}]
  summary = metrics_lib.run_summary(rows)
  assert summary['final_eval_accuracy_tta'] == 0.65  # by epoch, not order
  assert summary['best_eval_accuracy_tta'] == 0.72


def _no_space(*args, **kwargs):
  raise OSError(errno.ENOSPC, 'No space left on device')


def test_a_full_disk_at_a_metrics_row_is_one_line(tmp_path, monkeypatch):
  writer = metrics_lib.MetricsWriter(str(tmp_path), tensorboard=False)
  writer.write({'epoch': 1, 'train_loss': 0.5})
  before = (tmp_path / 'metrics.jsonl').read_bytes()
  monkeypatch.setattr(os, 'fsync', _no_space)  # after the write
  with pytest.raises(UserError) as err:
    writer.write({'epoch': 2, 'train_loss': 0.4})
  message = str(err.value)
  assert '\n' not in message
  assert message.startswith(f'cannot write the metrics file {tmp_path}'
                            '/metrics.jsonl: No space left on device (')
  assert 'free there). Free some space on that disk' in message
  # No torn row is left behind.
  assert (tmp_path / 'metrics.jsonl').read_bytes() == before


def test_a_full_disk_at_the_start_is_one_line(tmp_path, monkeypatch):
  # TensorBoard's event file is the first thing a run writes.
  from tensorboardX import record_writer  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(record_writer, 'RecordWriter', _no_space)
  config = quickstart.get_config()
  config.num_epochs = 1
  config.data.image_size = 8
  config.log.progress = False
  workdir = tmp_path / 'run'
  with pytest.raises(UserError) as err:
    train_lib.train_and_evaluate(config, str(workdir))
  message = str(err.value)
  assert '\n' not in message
  assert message.startswith('cannot write the TensorBoard events '
                            f'{workdir}/tb/events.out.tfevents.')
  assert 'No space left on device' in message
  assert not workdir.exists()  # nothing left behind
