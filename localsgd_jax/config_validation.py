"""Config validation: one function per config section, before the first step.

Every check names its field (`config.<field>=<value> is out of range:
expected ...`) and how to set it, so a bad value stops a run at start-up
with one line, not when the SGD warm-up is over (e.g. an unknown
selection.ramp). This is the one place values are checked: the code that
reads a config trusts it. Only what needs the code it names (a model's
number of units, a dataset's name and files) is checked where that is
built.
Every config starts from `configs/default.py`, so every field exists.
"""
import difflib
from typing import Any

import ml_collections

from localsgd_jax import config_fields
from localsgd_jax import local_rules
from localsgd_jax import models
from localsgd_jax import optim
from localsgd_jax import selection
from localsgd_jax import train_step
from localsgd_jax.data import augment as data_augment
from localsgd_jax.data import sources
from localsgd_jax.errors import UserError

# The rules and the freezing mode (`local_rules.FROZEN`).
LOCAL_RULES = local_rules.RULE_NAMES
WEAK_SUPERVISION = ('none', 'scale', 'sign')


def _check(ok: bool, field: str, value: Any, expected: str) -> None:
  if not ok:
    raise UserError(f'config.{field}={value!r} is out of range: expected '
                    f'{expected}. Fix it in the config file or with '
                    f'--config.{field}=...')


def _one_of(field: str, value: Any, choices) -> None:
  _check(value in choices, field, value, 'one of ' + ', '.join(choices))


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises UserError for out-of-range values (names are checked later)."""
  validate_run(config)
  validate_data(config.data)
  validate_optim(config.optim)
  validate_local(config.local)
  validate_selection(config.selection)
  validate_checkpoint(config.checkpoint)
  validate_log(config.log)
  validate_workdir_fields(config)


def validate_run(config: ml_collections.ConfigDict) -> None:
  """The top-level fields: epochs, batch sizes, dtype, seed, eval cadence."""
  _check(config.num_epochs >= 1, 'num_epochs', config.num_epochs, '>= 1')
  fraction = config.last_epoch_fraction
  _check(0 < fraction <= 1, 'last_epoch_fraction', fraction,
         'in (0, 1] (the share of the last epoch\'s steps that run)')
  _check(config.batch_size >= 1, 'batch_size', config.batch_size, '>= 1')
  _check(config.eval_batch_size >= 1, 'eval_batch_size',
         config.eval_batch_size, '>= 1')
  _check(config.dtype in models.DTYPES, 'dtype', config.dtype,
         ' or '.join(models.DTYPES))
  _check(config.seed >= 0, 'seed', config.seed, 'an integer >= 0')
  _check(config.eval_every_epochs >= 1, 'eval_every_epochs',
         config.eval_every_epochs, '>= 1 (the last epoch is always '
         'evaluated)')
  _one_of('eval_tta', config.eval_tta, train_step.TTA_MODES)
  _one_of('model.init', config.model.init, models.INITS)


def validate_eval_tta(eval_tta: str, dataset) -> None:
  """Flip TTA only for data trained with flips (mirrored digits are not
  digits); checked once the dataset is built."""
  if eval_tta != 'none' and not dataset.flip:
    raise UserError(
        f'config.eval_tta={eval_tta!r} averages over mirrored images, but '
        f'{dataset.name} trains without horizontal flips (digits, or '
        'config.data.augment=False): set --config.eval_tta=none')


def validate_data(d: ml_collections.ConfigDict) -> None:
  """config.data: sizes, counts, storage and augmentation (the name and
  the files are checked where the data is loaded)."""
  for field, minimum in (('image_size', 1), ('crop_padding', 0),
                         ('shuffle_buffer', 1), ('train_per_class', 0),
                         ('holdout_per_class', 0), ('holdout_seed', 0)):
    _check(_is_int(d[field]) and d[field] >= minimum, f'data.{field}',
           d[field], f'an integer >= {minimum}')
  _one_of('data.storage', d.storage, sources.STORAGE_MODES)
  _check(isinstance(d.max_memory_gb, (int, float))
         and not isinstance(d.max_memory_gb, bool) and d.max_memory_gb > 0,
         'data.max_memory_gb', d.max_memory_gb, 'a number > 0 (GB)')
  _one_of('data.augmentation', d.augmentation, data_augment.AUGMENTATIONS)
  scale = d.rrc_scale
  _check(isinstance(scale, (tuple, list)) and len(scale) == 2
         and all(isinstance(a, (int, float)) for a in scale)
         and 0 < scale[0] <= scale[1] <= 1, 'data.rrc_scale', scale,
         '(min, max) area fractions with 0 < min <= max <= 1, e.g. '
         '(0.35, 1.0)')
  for field, meaning in (('train_size', '0 for the images\' own size'),
                         ('cutout', '0 for no cutout')):
    _check(_is_int(d[field]) and d[field] >= 0, f'data.{field}', d[field],
           f'an integer >= 0 ({meaning})')


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def validate_optim(o: ml_collections.ConfigDict) -> None:
  """config.optim: the SGD part's optimizer and learning-rate schedule."""
  _check(o.learning_rate > 0, 'optim.learning_rate', o.learning_rate, '> 0')
  _check(0 <= o.momentum < 1, 'optim.momentum', o.momentum, 'in [0, 1)')
  _check(o.weight_decay >= 0, 'optim.weight_decay', o.weight_decay, '>= 0')
  _check(o.warmup_epochs >= 0, 'optim.warmup_epochs', o.warmup_epochs, '>= 0')
  _check(0 <= o.label_smoothing < 1, 'optim.label_smoothing',
         o.label_smoothing, 'in [0, 1)')
  _check(0 <= o.ema_decay < 1, 'optim.ema_decay', o.ema_decay,
         'in [0, 1) (0: no weight moving average)')
  _one_of('optim.name', o.name, optim.OPTIMIZERS)
  _one_of('optim.schedule', o.schedule, optim.SCHEDULES)
  if o.schedule == 'triangular':
    _check(0 <= o.peak_fraction <= 1, 'optim.peak_fraction', o.peak_fraction,
           'in [0, 1] (where the triangular schedule peaks)')
    _check(o.triangular_start >= 0 and o.triangular_end >= 0,
           'optim.triangular_start/end', (o.triangular_start,
                                          o.triangular_end),
           'fractions of the peak >= 0')
    _check(o.warmup_epochs == 0, 'optim.warmup_epochs', o.warmup_epochs,
           '0 with schedule triangular (it ramps up itself: '
           'optim.triangular_start, optim.peak_fraction)')
  _check(all(0 <= b <= 1 for b in o.step_boundaries),
         'optim.step_boundaries', o.step_boundaries,
         'fractions of training in [0, 1]')
  _check(o.step_decay > 0, 'optim.step_decay', o.step_decay, '> 0')
  _check(0 <= o.b1 < 1 and 0 <= o.b2 < 1, 'optim.b1/b2', (o.b1, o.b2),
         'in [0, 1)')


def validate_local(loc: ml_collections.ConfigDict) -> None:
  """config.local: the rule of the units trained locally."""
  _one_of('local.rule', loc.rule, LOCAL_RULES)
  _one_of('local.activity', loc.activity, local_rules.ACTIVITIES)
  _check(loc.learning_rate >= 0, 'local.learning_rate', loc.learning_rate,
         '>= 0')
  frac = loc.hebbian_fraction
  _check(0 < frac <= 1 and abs(1 / frac - round(1 / frac)) < 1e-6,
         'local.hebbian_fraction', frac, '1/m for an integer m >= 1 '
         '(1.0, 0.5, 0.25, ...)')
  _check(loc.hebbian_every >= 1, 'local.hebbian_every', loc.hebbian_every,
         '>= 1')
  _one_of('local.weak_supervision', loc.weak_supervision, WEAK_SUPERVISION)
  _check(0 <= loc.loss_ema_decay < 1, 'local.loss_ema_decay',
         loc.loss_ema_decay, 'in [0, 1)')
  _check(loc.ws_power >= 0, 'local.ws_power', loc.ws_power, '>= 0')


def validate_selection(s: ml_collections.ConfigDict) -> None:
  """config.selection: how the transition index k is chosen."""
  _one_of('selection.mode', s.mode, selection.MODES)
  _one_of('selection.ramp', s.ramp, selection.RAMPS)
  _check(s.k_max >= -1, 'selection.k_max', s.k_max,
         '>= 0, or -1 for all units but the head')
  _check(0 <= s.k_max_flop_share < 1, 'selection.k_max_flop_share',
         s.k_max_flop_share, 'in [0, 1) (0: use k_max)')
  if s.k_max_flop_share > 0 and s.k_max >= 0:
    raise UserError(
        f'config.selection.k_max={s.k_max} and k_max_flop_share='
        f'{s.k_max_flop_share} both set the largest transition index: set '
        '--config.selection.k_max=-1 to choose it by FLOP share, or '
        '--config.selection.k_max_flop_share=0 to use k_max')
  _check(s.warmup_epochs >= 0, 'selection.warmup_epochs', s.warmup_epochs,
         '>= 0')
  _check(s.ramp_epochs == -1 or s.ramp_epochs >= 1, 'selection.ramp_epochs',
         s.ramp_epochs, '>= 1, or -1 for until the last epoch')
  for epoch, k in selection.parse_table(s.table):
    _check(epoch >= 0 and k >= 0, 'selection.table', s.table,
           '"epoch:k" pairs with epoch >= 0 and k >= 0')
  _check(0 < s.settle_fraction <= 1, 'selection.settle_fraction',
         s.settle_fraction, 'in (0, 1]')
  _check(s.gradnorm_threshold >= 0, 'selection.gradnorm_threshold',
         s.gradnorm_threshold, '>= 0')
  _check(s.max_advance >= 1, 'selection.max_advance', s.max_advance, '>= 1')
  _check(s.min_hold_epochs >= 0, 'selection.min_hold_epochs',
         s.min_hold_epochs, '>= 0')
  _check(s.every_steps >= 0, 'selection.every_steps', s.every_steps,
         '>= 0 (0: decide between epochs only)')
  _one_of('selection.statistic', s.statistic, selection.STATISTICS)
  _check(s.retreat_tolerance >= 0, 'selection.retreat_tolerance',
         s.retreat_tolerance, '>= 0')


def validate_checkpoint(c: ml_collections.ConfigDict) -> None:
  """config.checkpoint: how often, how many kept."""
  _check(c.every_epochs >= 1, 'checkpoint.every_epochs', c.every_epochs,
         '>= 1')
  _check(c.keep >= 1, 'checkpoint.keep', c.keep, '>= 1')


def validate_log(log: ml_collections.ConfigDict) -> None:
  """config.log: NaN checks and the TensorBoard loss cadence."""
  _check(log.check_finite_every >= 1, 'log.check_finite_every',
         log.check_finite_every, '>= 1')
  _check(log.loss_every_steps >= 1, 'log.loss_every_steps',
         log.loss_every_steps, '>= 1')


def validate_workdir_fields(config: ml_collections.ConfigDict) -> None:
  """config.init_from's form and the fields config.resume_allow names (no
  file access: `workdir.open_run` checks the workdirs)."""
  config_fields.parse_init_from(config.init_from or '', config.seed)
  fields = config_fields.flatten(config_fields.as_dict(config))
  for name in str(config.resume_allow or '').split(','):
    name = name.strip()
    if name and not any(config_fields.matches(key, [name]) for key in fields):
      close = difflib.get_close_matches(name, list(fields), n=1)
      hint = f' (did you mean {close[0]}?)' if close else ''
      raise UserError(f'config.resume_allow names {name!r}, which is no '
                      f'config field{hint}; give dotted names such as '
                      'num_epochs,optim.learning_rate')
