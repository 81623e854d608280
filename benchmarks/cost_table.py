"""The paper's cost table: what each transition index k saves, compiled only.

For every network of the zoo at its resolutions and every k, from XLA's
CPU programs (nothing is trained or run; FLOPs are XLA's count of each
program as written, before optimization, `localsgd_jax/flops.py`; bytes
come from the compiled programs):
  * FLOPs per image of the training step: plain SGD (k = 0), the Hebbian
    step (units [0, k) forward + their Hebbian GEMM, with the defaults of
    configs/default.py: the rule, on a quarter of the batch) and the frozen
    step (units [0, k) forward only);
  * the activation bytes held for the backward pass, parameter bytes, and
    the bytes the data-parallel step all-reduces per step on 4 host devices
    (1 image per device), split into parameter gradients and the rest
    (BatchNorm batch statistics, the loss and the metrics) and the local
    units' own all-reduces (`all_reduces`: the Hebbian directions are sums
    over the batch, all-reduced like gradients);
  * the share of the forward FLOPs and of the activation bytes held by the
    units before k.

How it is counted (compiling the full step of ResNet-101 once takes ~45 s
on two cores; every k of every network would take hours):
  * exact, per unit: each distinct unit (same fields, same input shape:
    the repeated blocks of a stage compile once) is compiled on the 4-device
    data-parallel mesh as the pieces the train step is made of, with
    localsgd_jax's own functions: its local forward (frozen and Hebbian,
    `train_step.make_local_forward`), its SGD forward + backward (with and
    without the input gradient: the first SGD unit's input is a
    stop_gradient boundary) and the head with `train_step.cross_entropy`;
    its parameter updates (the optimizer's `tx.update` and the step's
    norms; the Hebbian update of its kernels), elementwise, are counted on
    their CPU lowering (XLA's HLO count, no compile);
  * composed, per k: the step's FLOPs and all-reduce bytes are the sums of
    its units' pieces; the activation bytes are the sizes of the residuals
    `jax.vjp` keeps for the SGD units' backward pass (before XLA's buffer
    reuse);
  * verified: the real train step (`train_step.make_train_step` under
    `StepCache`, the batch sharded over a 'data' mesh as train_lib builds
    it) is compiled at a few (network, k) and its FLOPs, all-reduce bytes
    and temporary bytes are reported beside the composed numbers; the
    largest disagreement is in the summary.

FLOPs per image: the programs run 1 image per device; the per-step work on
parameters (optimizer and Hebbian updates) is reported apart
('param_flops') and left out of 'flops_per_image', which is the
batch-proportional part.

  python benchmarks/cost_table.py --out_dir=benchmarks/results
  python benchmarks/cost_table.py --models=resnet20 --resolutions=32 --small
"""
import functools
import json
import os
import re
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

if 'jax' not in sys.modules:  # 4 host devices: set before JAX starts
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             ' --xla_force_host_platform_device_count=4')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from localsgd_jax import flops as flops_lib
from localsgd_jax import local_rules
from localsgd_jax import models
from localsgd_jax import optim
from localsgd_jax import selection
from localsgd_jax import train_step as ts
from localsgd_jax.configs import default
from localsgd_jax.models import base
# pylint: enable=g-import-not-at-top,wrong-import-position

DEVICES = 4
# CIFAR stem at 32 px for every network; the ImageNet stem at 224 and 128 px
# for the ImageNet networks (ResNet-20/56 are CIFAR networks only).
CIFAR_ONLY = ('resnet20', 'resnet56')
RESOLUTIONS = (32, 224, 128)
NETWORKS = tuple(n for n in models.MODELS if n != 'tiny')
# The full steps compiled to check the composition: (network, px, k, rule).
VERIFY = (('resnet20', 32, 0, 'oja'), ('resnet20', 32, 5, 'oja'),
          ('resnet20', 32, 5, 'frozen'), ('resnet18', 224, 4, 'oja'),
          ('vgg16', 128, 14, 'frozen'))

_BYTES = {'f64': 8, 'f32': 4, 's32': 4, 'u32': 4, 'bf16': 2, 'f16': 2,
          's64': 8, 'u64': 8, 's8': 1, 'u8': 1, 'pred': 1, 's16': 2, 'u16': 2}
_SHAPE = re.compile(r'\b(f64|f32|s32|u32|bf16|f16|s64|u64|s8|u8|pred|s16|u16)'
                    r'\[([\d,]*)\]')
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def all_reduces(hlo_text: str) -> List[Dict[str, Any]]:
  """Every operand of every all-reduce in a compiled module's HLO text.

  XLA's all-reduce combiner merges independent all-reduces into one with a
  tuple of operands (a layer's gradient beside a BatchNorm statistic or the
  loss), so each operand is classified on its own, by the op_name of the
  instruction that computes it: 'transpose(' marks JAX's backward pass.

  Returns:
    One dict per operand: 'bytes', 'kind' and 'op_name'. 'kind' is 'grad'
    for the SGD units' backward pass (JAX names it 'transpose(jvp(...'),
    'local' for the local units' forward pass (the train step runs them
    outside `jax.value_and_grad`, so their ops carry no 'jvp('): their
    BatchNorm statistics, the Hebbian rule's activity statistics and
    directions (a sum over the batch, like a gradient), and 'other' for the
    rest: the SGD units' BatchNorm statistics, the loss and the metrics.
  """
  op_names, lines = {}, []
  for line in hlo_text.splitlines():
    head, sep, rest = line.strip().removeprefix('ROOT ').partition(' = ')
    if not sep or not head.startswith('%'):
      continue
    name = head[1:]
    found = _OP_NAME.search(rest)
    op_names[name] = found.group(1) if found else ''
    for op in (' all-reduce(', ' all-reduce-start('):
      if op in rest:
        lines.append((rest.index(op), op, rest))
  out = []
  for at, op, rest in lines:
    shapes = _SHAPE.findall(rest[:at])
    args = rest[at + len(op):]
    args = args[:args.index(')')]
    operands = re.findall(r'%([\w.\-]+)', args)
    if len(shapes) != len(operands):
      raise ValueError(f'cannot pair shapes {shapes} with {operands}')
    for (dtype, dims), operand in zip(shapes, operands):
      size = int(np.prod([int(d) for d in dims.split(',') if d]))
      name = op_names.get(operand, '')
      if 'transpose(jvp(' in name:
        kind = 'grad'
      elif '/Network/' in name:
        kind = 'local'
      else:
        kind = 'other'
      out.append({'bytes': size * _BYTES[dtype], 'kind': kind,
                  'op_name': name})
  return out


def reduce_bytes(hlo_text: str) -> Dict[str, int]:
  """All-reduce bytes of a compiled module by `all_reduces`' kinds."""
  out = {'grad': 0, 'local': 0, 'other': 0}
  for r in all_reduces(hlo_text):
    out[r['kind']] += r['bytes']
  return out


def _nbytes(tree) -> int:
  return int(sum(np.prod(a.shape) * np.dtype(a.dtype).itemsize
                 for a in jax.tree.leaves(tree)))


class Counter:
  """Compiles programs on the 4-device data-parallel mesh and counts them."""

  def __init__(self):
    devices = jax.devices()
    if len(devices) < DEVICES:
      raise SystemExit(f'needs {DEVICES} devices; set XLA_FLAGS='
                       f'--xla_force_host_platform_device_count={DEVICES} '
                       'before JAX is imported')
    self.mesh = Mesh(np.array(devices[:DEVICES]), ('data',))
    self.rep = NamedSharding(self.mesh, P())
    self.data = NamedSharding(self.mesh, P('data'))
    self.compiles, self.compile_s = 0, 0.0

  def replicated(self, tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(
        a.shape, a.dtype, sharding=self.rep), tree)

  def sharded(self, tree):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(
        a.shape, a.dtype, sharding=self.data), tree)

  def count_replicated(self, traced) -> Dict[str, float]:
    """FLOPs of a replicated program (the elementwise parameter updates),
    which every device runs whole: `count`'s per-device share times the
    devices, no compile."""
    return {'flops': flops_lib.cpu_flops(traced) * DEVICES}

  def count(self, traced) -> Dict[str, float]:
    """FLOPs per device of `traced` as written (`flops.cpu_flops`), and
    the all-reduce and temporary bytes of its compiled program."""
    t0 = time.perf_counter()
    compiled = traced.lower().compile()
    self.compile_s += time.perf_counter() - t0
    self.compiles += 1
    out = {'flops': flops_lib.cpu_flops(traced)}
    out.update(reduce_bytes(compiled.as_text()))
    out['temp_bytes'] = int(compiled.memory_analysis().temp_size_in_bytes)
    return out


def _config(rule: str = ''):
  config = default.get_config()
  if rule:
    config.local.rule = rule
  return config


class UnitCosts:
  """The train step's pieces for one unit, compiled once per distinct unit.

  Every piece runs the global batch of `DEVICES` images, one per device;
  XLA's count of a partitioned program is one device's: per image.
  """

  def __init__(self, counter: Counter):
    self.counter = counter
    self.config = _config()
    self.tx = optim.direction(self.config.optim)
    self.cache: Dict[Any, Dict[str, Any]] = {}

  def __call__(self, unit, x_shape, variables, is_head: bool,
               num_classes: int) -> Dict[str, Any]:
    key = (repr(unit), tuple(x_shape), is_head, num_classes)
    if key not in self.cache:
      self.cache[key] = self._measure(unit, x_shape, variables, is_head,
                                      num_classes)
    return self.cache[key]

  def _measure(self, unit, x_shape, variables, is_head, num_classes):
    c = self.counter
    net = base.Network(units=[unit])
    name = base.unit_name(0)
    params = c.replicated({name: variables['params']})
    bstats = c.replicated({name: variables['batch_stats']}
                          if variables['batch_stats'] else {})
    x = c.sharded(jax.ShapeDtypeStruct(x_shape, jnp.float32))
    out = {'param_bytes': _nbytes(params),
           'param_count': int(sum(np.prod(a.shape)
                                  for a in jax.tree.leaves(params)))}
    local = ts.make_local_forward(net, self.config.local)
    fwd = jax.jit(lambda p, b, x: local(p, b, x, 1, False))
    # The forward pass (train mode): the frozen local unit's whole cost.
    out['frozen'] = c.count(fwd.trace(params, bstats, x))
    out['hebbian_update'] = None
    if not is_head:  # the head is never local
      heb = jax.jit(lambda p, b, x: local(p, b, x, 1, True))
      out['hebbian'] = c.count(heb.trace(params, bstats, x))
      directions = jax.eval_shape(heb, params, bstats, x)[2]
      apply_heb = jax.jit(lambda p, d, lr: ts._apply_hebbian(  # pylint: disable=protected-access
          p, d, lr, self.config.local.normalize))
      out['hebbian_update'] = c.count_replicated(apply_heb.trace(
          params, c.replicated(directions),
          jax.ShapeDtypeStruct((), jnp.float32, sharding=c.rep)))
    smoothing = self.config.optim.label_smoothing

    def apply(p, b, x):
      return net.apply({'params': p, 'batch_stats': b}, x, train=True,
                       mutable=['batch_stats'])

    if is_head:
      labels = c.sharded(jax.ShapeDtypeStruct((x_shape[0],), jnp.int32))
      mask = c.sharded(jax.ShapeDtypeStruct((x_shape[0],), jnp.float32))

      def sgd(p, b, x, labels, mask, with_input):
        def loss(p, x):
          logits, _ = apply(p, b, x)
          return ts.cross_entropy(logits, labels, mask, smoothing)
        return jax.value_and_grad(loss, argnums=(0, 1) if with_input else 0
                                  )(p, x)
      extra = (labels, mask)

      def residuals(x):
        return jax.eval_shape(
            lambda p, b, x: jax.vjp(lambda p: apply(p, b, x)[0], p)[1],
            params, bstats, x)
    else:
      y = jax.eval_shape(lambda p, b, x: apply(p, b, x)[0], params, bstats, x)

      def sgd(p, b, x, ct, with_input):
        if with_input:
          y, vjp, stats = jax.vjp(lambda p, x: apply(p, b, x), p, x,
                                  has_aux=True)
        else:
          y, vjp, stats = jax.vjp(lambda p: apply(p, b, x), p, has_aux=True)
        return y, stats, vjp(ct)
      extra = (c.sharded(y),)

      def residuals(x):
        return jax.eval_shape(
            lambda p, b, x: jax.vjp(lambda p, x: apply(p, b, x)[0], p,
                                    x)[1], params, bstats, x)
    # What autodiff keeps for this unit's backward pass, per image: the
    # growth of its residuals from 1 to 2 images per device (parameters
    # kept as residuals do not grow).
    more = jax.ShapeDtypeStruct((2 * x_shape[0], *x_shape[1:]), jnp.float32)
    out['residual_bytes'] = (_nbytes(residuals(more))
                             - _nbytes(residuals(x))) // x_shape[0]
    for with_input in (False, True):
      program = jax.jit(functools.partial(sgd, with_input=with_input))
      out[f'sgd_{int(with_input)}'] = c.count(
          program.trace(params, bstats, x, *extra))

    def update(p, g, s, lr):
      # As the train step does per SGD unit: direction, lr step, the norms.
      upd, s = self.tx.update(g, s, p)
      new = jax.tree.map(lambda p, u: p - lr * u, p, upd)
      return new, s, lr * optax.tree.norm(upd), optax.tree.norm(g)
    opt_state = c.replicated(jax.eval_shape(self.tx.init, params[name]))
    out['sgd_update'] = c.count_replicated(jax.jit(update).trace(
        params[name], params[name], opt_state,
        jax.ShapeDtypeStruct((), jnp.float32, sharding=c.rep)))
    return out


def network_rows(name: str, px: int, units: UnitCosts,
                 ks: Optional[Sequence[int]] = None) -> Dict[str, Any]:
  """The composed table of one network at one resolution: one row per k."""
  cifar = px == 32
  num_classes = 10 if cifar else 1000
  model = models.create_model(name, num_classes, cifar_stem=cifar)
  shape = (DEVICES, px, px, 3)
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  variables = jax.eval_shape(functools.partial(model.init, train=False),
                             jax.random.key(0), x)
  per_unit = []
  for i in range(model.num_units):
    n = base.unit_name(i)
    v = {'params': variables['params'][n],
         'batch_stats': variables.get('batch_stats', {}).get(n, {})}
    per_unit.append(units(model.units[i], x.shape, v,
                          i == model.num_units - 1, num_classes))
    x = jax.eval_shape(functools.partial(
        model.apply, train=False, start=i, stop=i + 1), variables, x)
  num = model.num_units
  fwd = [u['frozen']['flops'] for u in per_unit]
  residual = [u['residual_bytes'] for u in per_unit]
  ks = list(range(num)) if ks is None else list(ks)
  rows = []
  for k in ks:
    row = {'k': k}
    sgd_part = (per_unit[k]['sgd_0'],) + tuple(u['sgd_1']
                                               for u in per_unit[k + 1:])
    for variant in ('hebbian', 'frozen'):
      act = sum(p['flops'] for p in sgd_part) + sum(
          u[variant]['flops'] for u in per_unit[:k])
      param = sum(u['sgd_update']['flops'] for u in per_unit[k:])
      if variant == 'hebbian':
        param += sum(u['hebbian_update']['flops'] for u in per_unit[:k]
                     if u['hebbian_update'])
      row[f'{variant}_flops_per_image'] = act
      row[f'{variant}_param_flops'] = param
    row['allreduce_grad_bytes'] = sum(p['grad'] for p in sgd_part)
    row['allreduce_other_bytes'] = sum(p['other'] for p in sgd_part)
    for variant in ('hebbian', 'frozen'):
      row[f'{variant}_allreduce_local_bytes'] = sum(
          u[variant]['grad'] + u[variant]['local'] + u[variant]['other']
          for u in per_unit[:k])
    row['sgd_param_bytes'] = sum(u['param_bytes'] for u in per_unit[k:])
    row['residual_bytes_per_image'] = sum(residual[k:])
    row['local_forward_flop_share'] = sum(fwd[:k]) / sum(fwd)
    row['local_residual_share'] = sum(residual[:k]) / sum(residual)
    rows.append(row)
  return {'network': name, 'px': px, 'stem': 'cifar' if cifar else 'imagenet',
          'num_units': num, 'num_classes': num_classes,
          'param_bytes': sum(u['param_bytes'] for u in per_unit),
          'param_count': sum(u['param_count'] for u in per_unit),
          'forward_flops_per_image': sum(fwd),
          'k_half': selection.k_for_flop_share(fwd, 0.5),
          'rows': rows}


def full_step(counter: Counter, name: str, px: int, k: int, rule: str,
              per_device: int = 1) -> Dict[str, Any]:
  """The real train step at k, compiled on the data-parallel mesh."""
  cifar = px == 32
  num_classes = 10 if cifar else 1000
  config = _config(rule)
  model = models.create_model(name, num_classes, cifar_stem=cifar)
  tx = optim.direction(config.optim)
  step = functools.partial(ts.make_train_step(model, tx, config),
                           rates=ts.step_rates(config))
  state = counter.replicated(jax.eval_shape(lambda: ts.create_train_state(
      model, tx, jax.random.key(0), (px, px, 3))))
  b = DEVICES * per_device
  batch = counter.sharded({
      'image': jax.ShapeDtypeStruct((b, px, px, 3), jnp.float32),
      'label': jax.ShapeDtypeStruct((b,), jnp.int32),
      'mask': jax.ShapeDtypeStruct((b,), jnp.float32)})
  hebbian = k > 0 and not local_rules.is_frozen(rule)
  jitted = jax.jit(step, static_argnums=(2, 3))
  t0 = time.perf_counter()
  out = counter.count(jitted.trace(state, batch, k, hebbian))
  out['compile_s'] = time.perf_counter() - t0
  return out


def verify(counter: Counter, tables: Dict[Tuple[str, int], Dict[str, Any]],
           cases: Sequence[Tuple[str, int, int, str]]) -> List[Dict[str, Any]]:
  """Full-step compiles beside the composed numbers, for the cases whose
  (network, px) is in `tables`."""
  out = []
  for name, px, k, rule in cases:
    table = tables.get((name, px))
    row = next((r for r in table['rows'] if r['k'] == k),
               None) if table else None
    if row is None:
      continue
    variant = 'frozen' if local_rules.is_frozen(rule) else 'hebbian'
    full = full_step(counter, name, px, k, rule)
    composed = (row[f'{variant}_flops_per_image']
                + row[f'{variant}_param_flops'])
    out.append({
        'network': name, 'px': px, 'k': k, 'variant': variant,
        'full_flops': full['flops'], 'composed_flops': composed,
        'flops_rel_diff': composed / full['flops'] - 1,
        'full_allreduce_grad_bytes': full['grad'],
        'composed_allreduce_grad_bytes': row['allreduce_grad_bytes'],
        'full_allreduce_other_bytes': full['other'],
        'composed_allreduce_other_bytes': row['allreduce_other_bytes'],
        'full_allreduce_local_bytes': full['local'],
        'composed_allreduce_local_bytes':
            row[f'{variant}_allreduce_local_bytes'],
        'grad_rel_to_4x_sgd_params': full['grad'] / row['sgd_param_bytes'] - 1,
        'full_temp_bytes': full['temp_bytes'],
        'compile_s': full['compile_s']})
  return out


def summary(table: Dict[str, Any]) -> Dict[str, Any]:
  """SGD FLOPs per image, and the k holding half the forward FLOPs as ratios
  to SGD."""
  rows = {r['k']: r for r in table['rows']}
  base_row, half = rows[0], rows.get(table['k_half'])
  out = {'network': table['network'], 'px': table['px'],
         'sgd_gflops_per_image': base_row['hebbian_flops_per_image'] / 1e9,
         'k_half': table['k_half'], 'num_units': table['num_units']}
  if half is not None:
    sgd = base_row['hebbian_flops_per_image']
    out.update({
        'forward_share': half['local_forward_flop_share'],
        'hebbian_flops_ratio': half['hebbian_flops_per_image'] / sgd,
        'frozen_flops_ratio': half['frozen_flops_per_image'] / sgd,
        'residual_ratio': (half['residual_bytes_per_image']
                           / base_row['residual_bytes_per_image']),
        'allreduce_ratio': (half['allreduce_grad_bytes']
                            / base_row['allreduce_grad_bytes']),
        # The Hebbian units all-reduce their directions too.
        'hebbian_allreduce_ratio': (
            (half['allreduce_grad_bytes']
             + half['hebbian_allreduce_local_bytes'])
            / base_row['allreduce_grad_bytes'])})
  return out


def markdown(tables, checks, meta) -> str:
  """The summary, the checks and every network's rows, as markdown."""
  lines = ['# Cost of the LoCal+SGD step per transition index k', '',
           meta['how'], '',
           f'Run: `{meta["command"]}`, {meta["wall_s"]:.0f} s on '
           f'{meta["machine"]} ({meta["compiles"]} compiles, '
           f'{meta["compile_s"]:.0f} s compiling).', '',
           '## Summary: SGD, and k holding half of the forward FLOPs', '',
           '| network | px | SGD GFLOP/img | k_half / L | fwd share | '
           'Hebbian x | frozen x | act. bytes x | grad all-reduce x | '
           'Hebbian step all-reduce x |',
           '|---|---|---|---|---|---|---|---|---|---|']
  for t in tables:
    s = summary(t)
    lines.append(
        f'| {s["network"]} | {s["px"]} | {s["sgd_gflops_per_image"]:.3f} | '
        f'{s["k_half"]} / {s["num_units"]} | '
        f'{s.get("forward_share", 0):.2f} | '
        f'{s.get("hebbian_flops_ratio", 1):.3f} | '
        f'{s.get("frozen_flops_ratio", 1):.3f} | '
        f'{s.get("residual_ratio", 1):.3f} | '
        f'{s.get("allreduce_ratio", 1):.3f} | '
        f'{s.get("hebbian_allreduce_ratio", 1):.3f} |')
  lines += ['', '## Composed vs full-step compiles', '',
            '| network | px | k | step | FLOPs full | composed | diff | '
            'grad all-reduce full / 4 x SGD params | local all-reduce B '
            'full / composed | other B full / composed | temp MB | '
            'compile s |',
            '|---|---|---|---|---|---|---|---|---|---|---|---|']
  for c in checks:
    lines.append(
        f'| {c["network"]} | {c["px"]} | {c["k"]} | {c["variant"]} | '
        f'{c["full_flops"]:.4g} | {c["composed_flops"]:.4g} | '
        f'{100 * c["flops_rel_diff"]:+.2f}% | '
        f'{1 + c["grad_rel_to_4x_sgd_params"]:.4f} | '
        f'{c["full_allreduce_local_bytes"]} / '
        f'{c["composed_allreduce_local_bytes"]} | '
        f'{c["full_allreduce_other_bytes"]} / '
        f'{c["composed_allreduce_other_bytes"]} | '
        f'{c["full_temp_bytes"] / 1e6:.1f} | {c["compile_s"]:.0f} |')
  for t in tables:
    lines += ['', f'## {t["network"]} at {t["px"]} px ({t["stem"]} stem, '
              f'{t["num_units"]} units, {t["param_count"]:,} params)', '',
              '| k | Hebbian GFLOP/img | frozen GFLOP/img | param MFLOP '
              '(Heb.) | grad all-reduce MB | / (4 x SGD params) | '
              'Hebbian local all-reduce MB | frozen local B | other B | '
              'act. MB/img | fwd share | act. share |',
              '|---|---|---|---|---|---|---|---|---|---|---|---|']
    for r in t['rows']:
      lines.append(
          f'| {r["k"]} | {r["hebbian_flops_per_image"] / 1e9:.4f} | '
          f'{r["frozen_flops_per_image"] / 1e9:.4f} | '
          f'{r["hebbian_param_flops"] / 1e6:.1f} | '
          f'{r["allreduce_grad_bytes"] / 1e6:.3f} | '
          f'{r["allreduce_grad_bytes"] / max(1, r["sgd_param_bytes"]):.4f} |'
          f' {r["hebbian_allreduce_local_bytes"] / 1e6:.3f} | '
          f'{r["frozen_allreduce_local_bytes"]} | '
          f'{r["allreduce_other_bytes"]} | '
          f'{r["residual_bytes_per_image"] / 1e6:.2f} | '
          f'{r["local_forward_flop_share"]:.2f} | '
          f'{r["local_residual_share"]:.2f} |')
  return '\n'.join(lines) + '\n'


def plot(tables, path: str) -> None:
  """Per network and resolution: ratios to SGD against k / L."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  n = len(tables)
  cols = min(5, n)
  rows = -(-n // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.4 * rows),
                           squeeze=False, sharey=True)
  for ax, t in zip(axes.flat, tables):
    r0 = t['rows'][0]
    ks = [r['k'] for r in t['rows']]
    for key, label, base_key in (
        ('hebbian_flops_per_image', 'FLOPs Hebbian', None),
        ('frozen_flops_per_image', 'FLOPs frozen', 'hebbian_flops_per_image'),
        ('residual_bytes_per_image', 'activation bytes', None),
        ('allreduce_grad_bytes', 'grad all-reduce', None)):
      ref = r0[base_key or key]
      ax.plot(ks, [r[key] / ref for r in t['rows']], label=label, lw=1.2)
    ax.set_title(f'{t["network"]} {t["px"]}px', fontsize=8)
    ax.tick_params(labelsize=7)
    ax.axvline(t['k_half'], color='grey', lw=0.5, ls=':')
  for ax in list(axes.flat)[n:]:
    ax.axis('off')
  axes.flat[0].legend(fontsize=6)
  fig.supxlabel('transition index k (dotted: half the forward FLOPs local)',
                fontsize=8)
  fig.supylabel('ratio to SGD (k = 0)', fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=70)
  plt.close(fig)


def run(networks: Sequence[str], resolutions: Sequence[int], out_dir: str,
        ks: Optional[Sequence[int]] = None,
        verify_cases: Sequence[Tuple[str, int, int, str]] = VERIFY,
        command: str = '', prefix: str = 'cost_table') -> Dict[str, Any]:
  """Builds the table; writes `prefix`.md / .json / .png into `out_dir`."""
  t0 = time.perf_counter()
  counter = Counter()
  units = UnitCosts(counter)
  tables = []
  for name in networks:
    for px in resolutions:
      if px != 32 and name in CIFAR_ONLY:
        continue
      t1 = time.perf_counter()
      tables.append(network_rows(name, px, units, ks))
      print(f'{name} {px}px: {time.perf_counter() - t1:.0f} s, '
            f'{counter.compiles} compiles so far', flush=True)
  checks = verify(counter, {(t['network'], t['px']): t for t in tables},
                  verify_cases)
  for c in checks:
    print(f'check {c["network"]} {c["px"]}px k={c["k"]} {c["variant"]}: '
          f'FLOPs {100 * c["flops_rel_diff"]:+.2f}%, grad all-reduce / '
          f'(4 x SGD params) {1 + c["grad_rel_to_4x_sgd_params"]:.4f}',
          flush=True)
  meta = {
      'command': command, 'wall_s': time.perf_counter() - t0,
      'machine': f'{os.cpu_count()} CPU cores, JAX {jax.__version__}',
      'compiles': counter.compiles, 'compile_s': counter.compile_s,
      'devices': DEVICES, 'images_per_device': 1,
      'rule': units.config.local.rule,
      'how': (__doc__.split('\n\n')[1].strip() + ' Hebbian step: rule '
              f'{units.config.local.rule!r}; frozen: forward only. FLOPs '
              'and all-reduce bytes are composed from exact per-unit '
              'compiles; the checks below compile the real full step.'),
      'max_abs_flops_diff': max((abs(c['flops_rel_diff']) for c in checks),
                                default=None),
      'max_abs_grad_vs_params': max(
          (abs(c['grad_rel_to_4x_sgd_params']) for c in checks),
          default=None)}
  os.makedirs(out_dir, exist_ok=True)
  paths = {ext: os.path.join(out_dir, f'{prefix}.{ext}')
           for ext in ('md', 'json', 'png')}
  with open(paths['json'], 'w') as f:
    json.dump({'meta': meta, 'summary': [summary(t) for t in tables],
               'checks': checks, 'tables': tables}, f, indent=1)
  with open(paths['md'], 'w') as f:
    f.write(markdown(tables, checks, meta))
  plot(tables, paths['png'])
  return {'meta': meta, 'tables': tables, 'checks': checks, 'paths': paths}


flags.DEFINE_list('models', list(NETWORKS), 'Networks of the zoo.')
flags.DEFINE_list('resolutions', [str(r) for r in RESOLUTIONS],
                  'Image sizes: 32 = CIFAR stem, others the ImageNet stem.')
flags.DEFINE_string('out_dir', os.path.join(ROOT, 'benchmarks', 'results'),
                    'Where cost_table.{md,json,png} are written.')
flags.DEFINE_bool('small', False, 'Quick run: ResNet-20 at 32 px only '
                  '(overrides --models and --resolutions).')
flags.DEFINE_bool('verify', True, 'Compile the full steps of VERIFY.')
flags.DEFINE_string('from_json', '', 'Only render: rewrite the markdown, '
                    'summary and plot next to this cost_table.json.')
FLAGS = flags.FLAGS


def main(argv):
  del argv
  if FLAGS.from_json:
    with open(FLAGS.from_json) as f:
      data = json.load(f)
    data['summary'] = [summary(t) for t in data['tables']]
    stem = FLAGS.from_json[:-len('.json')]
    with open(FLAGS.from_json, 'w') as f:
      json.dump(data, f, indent=1)
    with open(stem + '.md', 'w') as f:
      f.write(markdown(data['tables'], data['checks'], data['meta']))
    plot(data['tables'], stem + '.png')
    return
  networks = ['resnet20'] if FLAGS.small else FLAGS.models
  resolutions = [32] if FLAGS.small else [int(r) for r in FLAGS.resolutions]
  cases = VERIFY if FLAGS.verify else ()
  result = run(networks, resolutions, FLAGS.out_dir, None, cases,
               command=' '.join(['python benchmarks/cost_table.py']
                                + sys.argv[1:]))
  print(f'wrote {", ".join(result["paths"].values())} in '
        f'{result["meta"]["wall_s"]:.0f} s')


if __name__ == '__main__':
  app.run(main)
