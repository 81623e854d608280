"""The learning-mode selection state machine, from tables of cases."""
import ml_collections
import pytest

from localsgd_jax import selection
from localsgd_jax.errors import UserError


def _cfg(**kw):
  cfg = ml_collections.ConfigDict({
      'mode': 'static', 'k_max': -1, 'warmup_epochs': 1, 'ramp': 'linear',
      'ramp_epochs': -1, 'table': ''})
  cfg.update(kw)
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
    ({'mode': 'magic'}, 'sgd, static'),
    ({'ramp': 'zigzag'}, 'linear, cosine'),
])
def test_bad_config_names_the_field(kw, match):
  with pytest.raises(UserError, match=match):
    s = selection.Selector(_cfg(**kw), num_units=6, num_epochs=4)
    s.transition(3)


def test_state_round_trip():
  s = selection.Selector(_cfg(), num_units=6, num_epochs=4)
  s.observe(0, {'transition': 0, 'train_loss': 1.5})
  t = selection.Selector(_cfg(), num_units=6, num_epochs=4)
  t.load_state_dict(s.state_dict())
  assert t.history == s.history
