"""The learning-mode selection state machine, from tables of cases."""
import json

import pytest

from localsgd_jax import config_validation
from localsgd_jax import selection
from localsgd_jax.configs import default
from localsgd_jax.errors import UserError


def _cfg(**kw):
  """config.selection of the defaults, with the values these cases assume."""
  cfg = default.get_config().selection
  cfg.update({
      'mode': 'static', 'k_max': -1, 'warmup_epochs': 1, 'ramp': 'linear',
      'ramp_epochs': -1, 'table': '', 'settle_fraction': 0.5,
      'gradnorm_threshold': 0.1, 'max_advance': 2, 'min_hold_epochs': 2.0,
      'retreat': True, 'retreat_tolerance': 0.05, 'every_steps': 0,
      'statistic': 'update_per_lr', **kw})
  return cfg


@pytest.mark.parametrize('ramp,epochs,want', [
    # k_max = 8, 2 warm-up epochs, 4 ramp epochs.
    ('linear', range(8), [0, 0, 2, 4, 6, 8, 8, 8]),
    ('step', range(8), [0, 0, 8, 8, 8, 8, 8, 8]),
    ('cubic', range(8), [0, 0, 0, 1, 3, 8, 8, 8]),
    ('cosine', range(8), [0, 0, 1, 4, 6, 8, 8, 8]),
])
def test_static_ramps(ramp, epochs, want):
  got = [selection.static_schedule(e, k_max=8, warmup_epochs=2,
                                   ramp_epochs=4, ramp=ramp) for e in epochs]
  assert got == want


def test_sgd_mode_is_always_zero():
  s = selection.Selector(_cfg(mode='sgd'), num_units=10, num_epochs=5)
  assert [s.transition(e) for e in range(5)] == [0] * 5


def test_default_ramp_reaches_all_but_head_at_last_epoch():
  s = selection.Selector(_cfg(), num_units=5, num_epochs=5)
  ks = [s.transition(e) for e in range(5)]
  assert ks == [0, 1, 2, 3, 4]
  assert max(ks) == 4  # the head (unit 4) never leaves SGD


def test_table_overrides_ramp():
  s = selection.Selector(_cfg(table='0:0, 2:3,4:1'), num_units=6,
                         num_epochs=6)
  assert [s.transition(e) for e in range(6)] == [0, 0, 3, 3, 1, 1]


@pytest.mark.parametrize('kw,match', [
    ({'k_max': 6}, 'k_max=6 is out of range'),
    ({'table': '0:7'}, 'k=7'),
    ({'table': '0-2'}, 'not "epoch:k"'),
    ({'mode': 'magic'}, 'sgd, static, dynamic, gradnorm'),
    ({'ramp': 'zigzag'}, 'linear, cosine'),
    ({'every_steps': -1}, 'every_steps=-1 is out of range: expected >= 0'),
])
def test_bad_config_names_the_field(kw, match):
  # Values are checked by config_validation; what needs the model (k_max
  # and the table's k against its units) by the Selector.
  with pytest.raises(UserError, match=match):
    config_validation.validate_selection(_cfg(**kw))
    s = selection.Selector(_cfg(**kw), num_units=6, num_epochs=4)
    s.transition(3)


def test_table_with_an_epoch_twice_is_refused():
  # The last entry used to win silently: 3:4 replaced 3:2.
  with pytest.raises(UserError) as err:
    selection.parse_table('0:0,3:2,3:4')
  assert str(err.value) == (
      'config.selection.table: epoch 3 is given twice (3:2 and 3:4); give '
      'each epoch once')
  # The same pair twice is ambiguous in the config all the same.
  with pytest.raises(UserError, match='epoch 0 is given twice'):
    selection.Selector(_cfg(table='0:1, 0:1'), num_units=6, num_epochs=4)
  assert selection.parse_table('3:2,0:0') == [(0, 0), (3, 2)]


def test_state_round_trip():
  s = selection.Selector(_cfg(), num_units=6, num_epochs=4)
  s.observe(1, {'transition': 0, 'train_loss': 1.5})
  t = selection.Selector(_cfg(), num_units=6, num_epochs=4)
  t.load_state_dict(s.state_dict())
  assert t.history == s.history


def _feed(selector, epochs):
  """Feeds (loss, per-unit stats) per epoch; returns (k used, decision)."""
  out = []
  for e, (loss, ratios) in enumerate(epochs):
    k = selector.transition(e)
    key = ('update_ratios' if selector.cfg.mode == 'dynamic'
           else 'grad_norms')
    decision = selector.observe(e + 1, {'train_loss': loss, key: ratios})
    out.append((k, decision))
  return out


# Per-unit update statistics of a 6-unit network (None: a local unit).
HIGH = [10.0] * 6


@pytest.mark.parametrize('case,epochs,want', [
    ('advance once units settle',
     [(2.0, HIGH), (1.5, [4.0, 4.0, 9.0, 9, 9, 9])],
     [(0, 'hold'), (0, 'advance')]),
    ('advance is capped by max_advance',
     [(2.0, HIGH), (1.5, [1.0] * 6), (1.4, [None, None, 1, 1, 1, 1])],
     [(0, 'hold'), (0, 'advance'), (2, 'hold')]),
    ('guard: hold right after a move, then advance again',
     [(2.0, HIGH), (1.5, [1.0] * 6), (1.4, [None, None, 1, 1, 1, 1]),
      (1.3, [None, None, 1, 1, 1, 1])],
     [(0, 'hold'), (0, 'advance'), (2, 'hold'), (2, 'advance')]),
    ('guard: never past k_max = L - 1',
     [(2.0, HIGH), (1.5, [1.0] * 6), (1.4, [None] * 2 + [1] * 4),
      (1.3, [None] * 2 + [1] * 4), (1.2, [None] * 4 + [1] * 2),
      (1.1, [None] * 4 + [1] * 2), (1.0, [None] * 5 + [1])],
     [(0, 'hold'), (0, 'advance'), (2, 'hold'), (2, 'advance'),
      (4, 'hold'), (4, 'advance'), (5, 'hold')]),
    ('retreat when the loss rises',
     [(2.0, HIGH), (1.5, [1.0] * 6), (1.8, [None, None, 1, 1, 1, 1])],
     [(0, 'hold'), (0, 'advance'), (2, 'retreat')]),
    ('still unsettled: hold',
     [(2.0, HIGH), (1.9, [8.0] * 6)],
     [(0, 'hold'), (0, 'hold')]),
])
def test_dynamic_decisions(case, epochs, want):
  s = selection.Selector(_cfg(mode='dynamic', warmup_epochs=0),
                         num_units=6, num_epochs=10)
  assert _feed(s, epochs) == want, case


def test_dynamic_warmup_guard():
  s = selection.Selector(_cfg(mode='dynamic', warmup_epochs=3),
                         num_units=6, num_epochs=10)
  got = _feed(s, [(2.0, HIGH), (1.5, [1.0] * 6), (1.4, [0.5] * 6)])
  assert got == [(0, 'warmup'), (0, 'warmup'), (0, 'advance')]


def test_gradnorm_advances_when_gradient_norms_stop_changing():
  s = selection.Selector(_cfg(mode='gradnorm', warmup_epochs=0),
                         num_units=6, num_epochs=10)
  got = _feed(s, [(2.0, [5.0] * 6), (1.9, [4.0] * 6),
                  (1.8, [3.9, 3.0, 4, 4, 4, 4]),
                  (1.9, [None, 3.0, 3.0, 4, 4, 4])])
  # Unit 0 changed 2.5% < 10%, unit 1 25%: advance by one; a loss rise does
  # not retreat in gradnorm mode, but the hold guard applies.
  assert got == [(0, 'hold'), (0, 'hold'), (0, 'advance'), (1, 'hold')]


def test_dynamic_state_round_trip_continues_identically():
  epochs = [(2.0, HIGH), (1.5, [1.0] * 6), (1.4, [None] * 2 + [1] * 4),
            (1.3, [None] * 2 + [1] * 4)]
  ref = selection.Selector(_cfg(mode='dynamic', warmup_epochs=0), 6, 10)
  want = _feed(ref, epochs)
  first = selection.Selector(_cfg(mode='dynamic', warmup_epochs=0), 6, 10)
  _feed(first, epochs[:2])
  resumed = selection.Selector(_cfg(mode='dynamic', warmup_epochs=0), 6, 10)
  resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
  rest = []
  for e, (loss, r) in enumerate(epochs[2:], start=2):
    k = resumed.transition(e)
    rest.append((k, resumed.observe(e + 1, {'train_loss': loss,
                                        'update_ratios': r})))
  assert rest == want[2:]


def test_every_steps_applies_to_adaptive_modes_only():
  for mode, want in (('sgd', 0), ('static', 0), ('dynamic', 8),
                     ('gradnorm', 8)):
    s = selection.Selector(_cfg(mode=mode, every_steps=8), 6, 10)
    assert s.every_steps == want, mode


def test_decisions_within_an_epoch_hold_for_min_hold_epochs():
  # Periods of a quarter epoch, every unit settled (settle_fraction 1); a
  # move may follow the last one only half an epoch later.
  s = selection.Selector(_cfg(mode='dynamic', warmup_epochs=0, max_advance=1,
                              min_hold_epochs=0.5, every_steps=8,
                              settle_fraction=1.0), 6, 10)
  got = []
  for q in range(1, 6):
    got.append((s.transition(0), s.observe(q / 4, {
        'train_loss': 1.0, 'update_ratios': [1.0] * 6})))
  assert got == [(0, 'advance'), (1, 'hold'), (1, 'advance'), (2, 'hold'),
                 (2, 'advance')]
  assert s.transition(1) == 3 and s.last_move_epoch == 1.25


def test_consistency_statistic_drives_dynamic_mode():
  """With statistic='consistency' the selector reads 'consistency' (not the
  per-lr update ratio, which here keeps rising as a decaying lr would make
  it) and advances once it fell to half its peak."""
  s = selection.Selector(_cfg(mode='dynamic', statistic='consistency',
                              warmup_epochs=0, min_hold_epochs=0.0,
                              max_advance=1), num_units=4, num_epochs=10)
  reasons = []
  for epoch, c in enumerate([0.8, 0.6, 0.35], start=1):
    reasons.append(s.observe(epoch, {
        'train_loss': 1.0, 'consistency': [c, 0.9, 0.9, 0.9],
        'update_ratios': [float(epoch)] * 4}))
  assert reasons == ['hold', 'hold', 'advance'] and s.k == 1
  with pytest.raises(UserError, match='consistency, update_per_lr'):
    config_validation.validate_selection(
        _cfg(mode='dynamic', statistic='mystery'))


def test_period_consistency_is_net_change_over_path():
  import numpy as np  # pylint: disable=g-import-not-at-top
  host = {'loss': np.ones(4), 'learning_rate': np.full(4, 0.1),
          'grad_norms': np.ones((4, 3)),
          # unit 1: 4 steps of 0.5 -> path 2; unit 2: never updated (local)
          'update_norms': np.array([[1.0, 0.5, 0.0]] * 4)}
  change = [(0.5, 10.0), (2.0, 4.0), (0.0, 1.0)]  # units 0, 1, 2
  stats = selection.period_stats(host, change, k=0, steps_per_epoch=8)
  assert stats['consistency'] == [0.125, 1.0, None]
  # update per unit of lr, scaled from 4 steps to an epoch of 8: x 20.
  assert stats['update_ratios'] == pytest.approx([1.0, 10.0, 0.0])
  stats = selection.period_stats(host, change, k=1, steps_per_epoch=8)
  assert stats['consistency'][0] is None


@pytest.mark.parametrize('kw,local', [
    ({}, False),                                  # 1 SGD epoch first
    ({'warmup_epochs': 0, 'ramp': 'step'}, True),
    ({'warmup_epochs': 0, 'ramp': 'linear', 'ramp_epochs': 10}, False),
    ({'table': '0:2'}, True),
    ({'table': '0:0,1:2'}, False),
    ({'mode': 'sgd', 'warmup_epochs': 0}, False),
    ({'mode': 'dynamic', 'warmup_epochs': 0}, False),  # decides after epoch 1
    ({'mode': 'dynamic', 'warmup_epochs': 0, 'every_steps': 5}, True),
])
def test_local_from_init_is_reported(kw, local):
  s = selection.Selector(_cfg(**kw), num_units=4, num_epochs=5)
  reason = s.local_from_init()
  assert bool(reason) == local, reason
