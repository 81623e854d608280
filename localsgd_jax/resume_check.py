"""Whether a new config may continue the run a workdir holds.

The workdir's `config.json` (the run's resolved config) is compared with the
new config (`config_changes`) and its `run.json` records the data's
fingerprint (`data_fingerprint`); `check_resume` turns the differences into
a `Resume` or a one-line error naming the changes and the ways on (see
`workdir.py` for the rules).
"""
import dataclasses
import os
from typing import Any, Dict, List, Optional, Tuple

from localsgd_jax import checkpointing
from localsgd_jax import metrics as metrics_lib
from localsgd_jax.config_fields import as_dict, flatten, matches
from localsgd_jax.configs import default
from localsgd_jax.errors import UserError
from localsgd_jax.errors import warn

CONFIG_FILE = 'config.json'
RECORD_FILE = 'run.json'
SUMMARY_FILE = 'summary.json'

# Fields (or groups, by prefix) that never change what a run computes.
RESULT_NEUTRAL = ('eval_batch_size', 'eval_every_epochs', 'compile_cache_dir',
                  'resume_allow', 'log', 'checkpoint', 'data.cache_dir',
                  'eval_tta')  # TTA: reported apart, training unchanged
# ...and, between two plain-SGD configs (selection.mode sgd), these.
SGD_NEUTRAL = ('selection', 'local')
# Where the data is read from: they pass when the data is the same (its
# fingerprint in run.json), else they count as changes.
DATA_LOCATION = ('data.dir', 'data.tfds_data_dir', 'data.storage',
                 'data.max_memory_gb')
# Changes that cannot continue a run, resume_allow or not: the checkpoint
# would not fit the model or the data, or it would be another run (a run of
# another seed is another sample, never the same run continued).
FIXED = ('model', 'data.name', 'data.image_size', 'data.train_per_class',
         'data.holdout_per_class', 'data.holdout_seed', 'optim.name',
         'optim.ema_decay', 'init_from', 'seed')
DATA_CONTENTS = 'data contents'  # a change of the data's fingerprint

_ABSENT = object()


def _defaults() -> Dict[str, Any]:
  """configs/default.py, flattened."""
  return flatten(as_dict(default.get_config()))


@dataclasses.dataclass
class Change:
  """A config field that differs: `old` -> `new` (_ABSENT: not set)."""
  field: str
  old: Any
  new: Any

  def __str__(self) -> str:
    show = lambda v: '(unset)' if v is _ABSENT else repr(v)
    if self.field == DATA_CONTENTS:
      return f'{DATA_CONTENTS} ({self.new})'
    return f'{self.field} {show(self.old)} -> {show(self.new)}'

  def record(self) -> List[Any]:
    return [None if v is _ABSENT else v for v in (self.old, self.new)]


def config_changes(saved: Dict[str, Any], new: Dict[str, Any]
                   ) -> List[Change]:
  """The fields of `new` that differ from `saved`, but the neutral ones.

  A field `saved` lacks (added to the code after that run started) counts
  only if `new` sets it away from its default; a field `new` lacks (gone
  from the code) is ignored.
  """
  old_flat, new_flat = flatten(saved), flatten(new)
  neutral = RESULT_NEUTRAL
  if old_flat.get('selection.mode') == new_flat.get('selection.mode') == 'sgd':
    # Plain SGD: k stays 0, no unit ever learns locally.
    neutral += SGD_NEUTRAL
  defaults = None
  out = []
  for key in sorted(set(old_flat) | set(new_flat)):
    if matches(key, neutral):
      continue
    old, value = old_flat.get(key, _ABSENT), new_flat.get(key, _ABSENT)
    if value is _ABSENT:
      continue
    if old is _ABSENT:
      defaults = _defaults() if defaults is None else defaults
      if key in defaults and defaults[key] == value:
        continue
    elif old == value:
      continue
    out.append(Change(key, old, value))
  return out


def fingerprint_change(old: Dict[str, Any], new: Dict[str, Any]
                        ) -> Optional[Change]:
  diff = []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key), new.get(key)
    if a == b:
      continue
    if key in ('content', 'files', 'class_names'):
      diff.append(f'{key} differ')
    else:
      diff.append(f'{key} {a!r} -> {b!r}')
  if not diff:
    return None
  return Change(DATA_CONTENTS, None, ', '.join(diff))


def read_json(path: str) -> Optional[Dict[str, Any]]:
  """A workdir record (config.json, run.json, summary.json), or None."""
  return metrics_lib.read_json(
      path, 'restore it, or move it aside to resume without the check it '
      'serves')


@dataclasses.dataclass
class Resume:
  """What `check_resume` found in a workdir."""
  epoch: Optional[int] = None   # its latest checkpoint folder; None: none
  saved_config: Optional[Dict[str, Any]] = None
  allowed: List[Change] = dataclasses.field(default_factory=list)
  data_unverified: bool = False  # location changed, fingerprint not checked
  summary: Optional[Dict[str, Any]] = None

  @property
  def finished(self) -> bool:
    """A finished run of the very same config (nothing left to train)."""
    return (self.summary is not None and self.saved_config is not None
            and not self.allowed and not self.data_unverified
            and self.summary.get('num_epochs') == self.epoch)


def _learning_rate(cfg: Dict[str, Any], steps_per_epoch: int,
                   epoch: int) -> float:
  from localsgd_jax import optim  # pylint: disable=g-import-not-at-top
  # A config saved by an older version may lack newer fields: the
  # defaults fill them in, as they would have run.
  optim_cfg = default.get_config().optim
  optim_cfg.update(cfg['optim'])
  schedule = optim.learning_rate_schedule(optim_cfg, steps_per_epoch,
                                          cfg['num_epochs'])
  return float(schedule(epoch * steps_per_epoch))


def _schedule_note(saved: Dict[str, Any], new: Dict[str, Any], epoch: int,
                   steps_per_epoch: Optional[int]) -> str:
  """How the learning rate at the resume step changes, or ''."""
  if not steps_per_epoch:
    return ''
  try:
    old = _learning_rate(saved, steps_per_epoch, epoch)
    now = _learning_rate(new, steps_per_epoch, epoch)
  except Exception:  # pylint: disable=broad-except
    return ''  # an unreadable old config: no statement
  if old == now:
    return ''
  return (f'the learning-rate schedule is recomputed for '
          f'{new["num_epochs"]} epochs: the learning rate after epoch '
          f'{epoch} goes from {old:.4g} to {now:.4g}')


def _resume_changes(saved: Dict[str, Any], new: Dict[str, Any],
                    saved_fingerprint: Optional[Dict[str, Any]],
                    fingerprint: Optional[Dict[str, Any]]
                    ) -> Tuple[List[Change], bool]:
  """(the changes that count, whether the data is left unverified).

  The data's location fields count only when the data itself changed (its
  fingerprint), or when no fingerprint was recorded to compare with.
  """
  changes = config_changes(saved, new)
  location = [c for c in changes if matches(c.field, DATA_LOCATION)]
  others = [c for c in changes if c not in location]
  unverified = False
  if fingerprint is not None and saved_fingerprint is not None:
    data_change = fingerprint_change(saved_fingerprint, fingerprint)
    if data_change is None:
      location = []  # the same data, wherever it is read from now
    else:
      others.append(data_change)
  elif fingerprint is None and location and saved_fingerprint is not None:
    unverified, location = True, []
  return others + location, unverified


def check_resume(workdir: str, new: Dict[str, Any], *,
                 fingerprint: Optional[Dict[str, Any]] = None,
                 steps_per_epoch: Optional[int] = None,
                 quiet: bool = False) -> Resume:
  """Checks that `new` (as_dict) may continue the run in `workdir`.

  Long because each way a resume can be refused (no saved config, fewer
  epochs, changed fields, changed data) ends in its own one-line message.

  Args:
    workdir: the run's directory.
    new: the new config.
    fingerprint: the new data's `data_fingerprint`; None (compare.py's
      check before loading any data): changed location fields are left to
      the check at the start of the run (`data_unverified`).
    steps_per_epoch: for the learning-rate statement of the error.
    quiet: no warnings (processes other than 0).

  Raises:
    UserError: a change that resume_allow does not name, one that cannot
      continue the run, or fewer epochs than the checkpoint has.
  """
  epochs = checkpointing.step_folders(os.path.join(workdir, 'checkpoints'))
  if not epochs:
    return Resume()
  resume = Resume(epoch=epochs[-1])
  # Its later epochs cannot be undone: never relabelled as a shorter run.
  if new['num_epochs'] < resume.epoch:
    raise UserError(
        f'{workdir} holds a checkpoint after epoch {resume.epoch}, past '
        f'config.num_epochs={new["num_epochs"]}. Train a '
        f'{new["num_epochs"]}-epoch run in a new --workdir, or fork this '
        'one from an earlier checkpoint into a new --workdir: '
        f'--config.init_from={workdir}:{new["num_epochs"]}.')
  resume.saved_config = read_json(os.path.join(workdir, CONFIG_FILE))
  resume.summary = read_json(os.path.join(workdir, SUMMARY_FILE))
  if resume.saved_config is None:
    if not quiet:
      warn(f'{workdir} has no {CONFIG_FILE} (a run of an older version): '
            'resuming without checking that the config is the one it was '
            'trained with.')
    return resume
  saved = resume.saved_config
  record = read_json(os.path.join(workdir, RECORD_FILE)) or {}
  changes, resume.data_unverified = _resume_changes(
      saved, new, record.get('data'), fingerprint)
  allow = [a.strip() for a in str(new.get('resume_allow') or '').split(',')
           if a.strip()]
  fixed = [c for c in changes
           if c.field == DATA_CONTENTS or matches(c.field, FIXED)]
  blocked = [c for c in changes
             if c in fixed or not matches(c.field, allow)]
  listed = ', '.join(str(c) for c in changes)
  if fixed:
    raise UserError(
        f'{workdir} holds a run of another config: {listed}. '
        f'{", ".join(c.field for c in fixed)} cannot change within a run: '
        'train this config in a new --workdir.')
  if blocked:
    note = _schedule_note(saved, new, resume.epoch, steps_per_epoch)
    fields = ','.join(c.field for c in changes)
    raise UserError(
        f'{workdir} holds a run of another config: {listed}. Train this '
        'config in a new --workdir, or continue that run with the change '
        f'on purpose: --config.resume_allow={fields} (recorded in '
        f'{RECORD_FILE}{"; " + note if note else ""}).')
  resume.allowed = changes
  return resume
