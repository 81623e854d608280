"""Does LoCal+SGD beat SGD at any budget? The decisive experiment, resumable.

  python benchmarks/frontier.py --out=OUT            # CIFAR-10, issue #19
  python benchmarks/frontier.py --out=OUT \
      --config=configs/imagenette_resnet50.py --budgets=20,30 \
      --warmups=0.6 --ks=6,9 --seeds=3                # Imagenette, issue #20
  python benchmarks/frontier.py --out=OUT --small     # a CPU, ~2 minutes

One GPU, runs one at a time (their times are the isolated costs the report
compares). Four stages, in this order:

  recipe    the config's SGD recipe checked on a hold-out of train/ (never
            val/): peak learning rate x --recipe_lr_scales and cutout in
            {the config's, 0}, --grid_seeds seeds, the full budget, then the
            best of those with the other parameter init (--recipe_inits:
            model.init, PyTorch's layer defaults or torchvision's He
            init), then the best so far with a weight moving average
            (--recipe_ema); a trial replaces the best so far (first the
            config's values) only by more than --recipe_margin points of
            mean hold-out accuracy, and the later stages train with the
            best;
  grid      on the same hold-out, --grid_seeds seeds: SGD at every budget
            (its frontier: --budgets and the full one) and the static
            schedules (SGD for a --warmups fraction of the budget, then
            units [0, k) local, k in --ks, rule in --rules), each a fork of
            its seed's full-budget SGD run at the end of its warm-up, plus
            the FreezeOut and AutoFreeze peers (not forks: their own
            schedules); the best schedule is the one furthest above SGD's
            frontier at its own cost;
  frontier  on val/, --seeds seeds: SGD at every budget, the best schedule
            and the same schedule with the other --rules (the decisive pair
            and its rule control);
  report    comparison.md / .json and the plots of the frontier stage
            (iso-accuracy speed-up against SGD's frontier with paired-
            bootstrap intervals over seeds: localsgd_jax/aggregate.py),
            copied to OUT.

Resumable: a run already finished in --runs_dir (same config) is skipped,
and no run starts that is expected to end after --time_limit_s; in its
last 3 minutes OUT's records are brought up to date after every run, so a
device call cut short loses only the run in progress and the same command
goes on. Once all of a seed's runs are finished their checkpoints are
deleted; summaries, metrics, configs and the stages' reports stay, and
are packed into OUT/records.tgz: a later, fresh machine resumes with
--resume_from=<that file>. The compiled programs of the runs'
compilation cache (--runs_dir/compile_cache) go to
OUT/compile_cache.tgz, the newest first, as many as fit in the 15 MiB a
device call brings back of a file; one beside the records is unpacked
with them, so the next machine loads the programs it holds rather than
compiling them. OUT holds at most seven files, none in a
subfolder (what a device call brings back: at most 8): records.tgz,
compile_cache.tgz, stages.json (the choices and counts), stages.log and
the frontier's comparison.md, comparison.json and accuracy_vs_cost.png
(its other plots are in the archive, and `--stages=report` redraws them
from the records on any machine). GPUs: bfloat16 (the configs' float32
stays on CPUs).
"""
import math
import os
import shutil
import sys
import tarfile
import time
import zlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from localsgd_jax import aggregate
from localsgd_jax import config_fields
from localsgd_jax import models
from localsgd_jax import modes as modes_lib
from localsgd_jax import plots
from localsgd_jax import report
from localsgd_jax import resume_check
from localsgd_jax import run_stats
from localsgd_jax import runs as runs_lib
from localsgd_jax import train_lib
from localsgd_jax import workdir as workdir_lib
from localsgd_jax.errors import UserError

import suite_common  # benchmarks/suite_common.py  # pylint: disable=g-bad-import-order

_CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(suite_common.ROOT, 'configs', 'cifar10_resnet.py'),
    'The run config (its num_epochs is the full budget); overrides with '
    '--config.x=y.', lock_config=True)
_OUT = flags.DEFINE_string('out', None, 'Output folder.', required=True)
_DATA_DIR = flags.DEFINE_string(
    'data_dir', '', 'The image folder (train/, val/); default: the '
    "config's data.dir, else .gpu/<folder> or ../shared/data/<folder> "
    '(cifar10-jpg, or imagenette128 for imagenette configs).')
_RUNS_DIR = flags.DEFINE_string(
    'runs_dir', '', 'Where the runs go (default runs/frontier_<config>); the '
    'same folder on the next call resumes the experiment.')
_SMALL = flags.DEFINE_bool(
    'small', False, 'The same stages on a CPU in about 2 minutes: tiny CNN, '
    '12 images per class, budgets of 1 and 2 epochs, one schedule per '
    'rule, 2 seeds.')
_BUDGETS = flags.DEFINE_list(
    'budgets', ['16', '19', '21', '23'], 'SGD budgets below the full one '
    '(epochs; fractions allowed). Dense where the schedules cost (0.6-0.9 '
    'of the full budget): the frontier is linear between budgets, a chord '
    'below a concave curve, which favours the schedules (RESULTS.md).')
_WARMUPS = flags.DEFINE_list(
    'warmups', ['0.3', '0.45', '0.6'], 'Schedule grid: fractions of the '
    'budget trained by SGD first.')
_KS = flags.DEFINE_list('ks', ['3', '5', '7', '9'],
                        'Schedule grid: transition indices k.')
_RULES = flags.DEFINE_list('rules', ['frozen', 'oja'],
                           'Schedule grid: local rules.')
_RECIPE_LR = flags.DEFINE_list('recipe_lr_scales', ['1', '0.5', '2'],
                               'Recipe stage: peak learning rate factors.')
_RECIPE_INITS = flags.DEFINE_list(
    'recipe_inits', list(models.INITS), 'Recipe stage: parameter inits '
    '(model.init) other than the config\'s, tried on the best learning rate '
    'and cutout; empty: none.')
_RECIPE_EMA = flags.DEFINE_list(
    'recipe_ema', ['0.99'], 'Recipe stage: weight moving-average decays '
    '(optim.ema_decay) tried on the best learning rate and cutout; empty: '
    'none.')
_RECIPE_MARGIN = flags.DEFINE_float(
    'recipe_margin', 0.5, 'Recipe stage: points of hold-out accuracy by '
    'which a trial must beat the best so far (first the config\'s values) '
    'to replace it. Two runs of one recipe differ by ~0.5 points (SD) at '
    'one seed, so without a margin a trial that changes nothing wins half '
    'the time.')
_SEEDS = flags.DEFINE_integer('seeds', 10, 'Seeds of the frontier stage.')
_GRID_SEEDS = flags.DEFINE_integer('grid_seeds', 1,
                                   'Seeds of the recipe and grid stages.')
_HOLDOUT = flags.DEFINE_integer(
    'holdout_per_class', 0, 'Hold-out images per class of train/ (0: 500 '
    'for CIFAR-10, 100 otherwise).')
_STAGES = flags.DEFINE_list('stages', ['recipe', 'grid', 'frontier',
                                       'report'], 'Which stages to run.')
_RESUME_FROM = flags.DEFINE_string(
    'resume_from', '', 'records.tgz of an earlier call (its OUT): unpacked '
    'into --runs_dir first (files already there are kept), so its finished '
    'runs are skipped.')
_TIME_LIMIT = flags.DEFINE_float(
    'time_limit_s', 540, 'No run starts that is expected to end after this '
    'many seconds (a device call is limited to 600 s; a run\'s expected '
    'time: the same run\'s of an earlier seed in this call, else the median '
    'of its runs), and in its last 3 minutes the records are packed into '
    'OUT after every run; 0 = no limit.')

_T0 = time.perf_counter()
PEERS = ('freeze', 'autofreeze')


class _OutOfTime(Exception):
  """The time limit passed: no more runs start; the finished ones stay."""


def sgd_run(config, seed: int, epochs: float):
  """Plain SGD for `epochs` (fractional: a partial last epoch), one
  checkpoint at the end."""
  cfg = modes_lib.mode_config(config, modes_lib.BASELINE, seed,
                              epochs=epochs)
  cfg.checkpoint.every_epochs = cfg.num_epochs
  return cfg


def schedule_name(fraction: float, k: int, rule: str) -> str:
  return f'static_w{round(100 * fraction)}_k{k}_{rule}'


def schedule_run(config, seed: int, parent: str, warmup: int, k: int,
                 rule: str):
  """SGD for `warmup` epochs, then units [0, k) local with `rule`: a fork of
  `parent` (the same seed's full-budget SGD run) after its epoch `warmup`."""
  cfg = modes_lib.mode_config(config, 'static', seed)
  cfg.selection.ramp = 'step'
  cfg.selection.warmup_epochs = warmup
  cfg.selection.k_max = k
  cfg.selection.k_max_flop_share = 0.0
  cfg.local.rule = rule
  cfg.init_from = f'{parent}:{warmup}'
  return cfg


def _finished(path: str, cfg) -> bool:
  """A finished run of `cfg` in `path`: by its checkpoints (the resume
  check), or, once they are deleted (`_drop_checkpoints`), by its saved
  config; where the data and a fork's parent lie may differ on another
  machine (the parent is checked by the folder it is in)."""
  if not os.path.exists(os.path.join(path, 'summary.json')):
    return False
  if os.path.isdir(os.path.join(path, 'checkpoints')):
    return workdir_lib.finished_run(path, cfg)
  changes = resume_check.config_changes(
      runs_lib.read_json(os.path.join(path, 'config.json')),
      config_fields.as_dict(cfg))
  moved = resume_check.DATA_LOCATION + ('init_from',)
  return all(config_fields.matches(c.field, moved) for c in changes)


class Runner:
  """Trains runs one at a time, skipping finished ones, within the time
  limit (`suite_common.RunBudget`: no run starts that is expected to
  outlast it, and near it `save` runs after every run); one console line
  per run, the run's own output in its train.log."""

  def __init__(self, time_limit_s: float, save=lambda: None):
    self.budget = suite_common.RunBudget(time_limit_s)
    self.save = save
    self.trained, self.skipped = 0, 0

  def __call__(self, cfg, path: str, again: bool = False) -> Dict[str, Any]:
    """Trains `cfg` in `path` unless it is finished there; `again`: a
    finished run is trained anew (its records replaced)."""
    finished = _finished(path, cfg)
    if finished and not again:
      self.skipped += 1
      return runs_lib.read_json(os.path.join(path, 'summary.json'))
    key, start = os.path.dirname(path), time.perf_counter()
    if not self.budget.may_start(key, start - _T0):
      raise _OutOfTime(path)
    if finished:
      print(f'{path}: finished elsewhere, without the checkpoints its '
            'unfinished forks start from; trained again', flush=True)
      shutil.rmtree(path)
    print(f'=== {path} ({start - _T0:.0f}s)', flush=True)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, 'train.log'), 'a') as log:
      with suite_common.redirect(log):
        summary = train_lib.train_and_evaluate(cfg, path)
    self.trained += 1
    self.budget.finished(key, time.perf_counter() - start)
    print(f'    {summary["eval_split"]} accuracy '
          f'{summary["final_eval_accuracy"]:.4f}, '
          f'{summary["total_time_s"]:.1f}s', flush=True)
    if self.budget.closing(time.perf_counter() - _T0):
      self.save()
    return summary


def recipe_stage(config, workdir: str, run, seeds: List[int],
                 lr_scales: List[float], ema_decays: List[float],
                 cutouts: Optional[List[int]] = None,
                 inits: Sequence[str] = (), margin: float = 0.0
                 ) -> Dict[str, Any]:
  """Peak learning rate x cutout (default: the config's and 0) on the
  hold-out, then the best of them with each other parameter init of
  `inits`, then the best so far with each weight moving-average decay.
  The best so far starts as the config's values (the first scale and
  cutout), and a trial replaces it only where its mean hold-out accuracy
  is more than `margin` above it."""
  lr = float(config.optim.learning_rate)
  cutouts = list(dict.fromkeys(cutouts or [config.data.cutout, 0]))
  results = {}

  def trial(name, scale, cutout, ema_decay, init=config.model.init):
    accs = []
    for seed in seeds:
      cfg = sgd_run(config, seed, config.num_epochs)
      cfg.optim.learning_rate = lr * scale
      cfg.data.cutout = cutout
      cfg.optim.ema_decay = ema_decay
      cfg.model.init = init
      accs.append(run(cfg, runs_lib.run_dir(workdir, name, seed))
                  ['final_eval_accuracy'])
    results[name] = {'lr_scale': scale, 'cutout': cutout,
                     'ema_decay': ema_decay, 'init': init,
                     'holdout_accuracy': run_stats.mean(accs)}
    return name

  def best(given, trials):
    """The best of `trials` where it beats `given` by the margin, else
    `given`."""
    top = max(trials, key=lambda n: results[n]['holdout_accuracy'],
              default=given)
    beaten = (results[top]['holdout_accuracy']
              > results[given]['holdout_accuracy'] + margin)
    return top if beaten else given

  grid = [trial(f'recipe_lr{scale:g}x_cutout{cutout}', scale, cutout,
                config.optim.ema_decay)
          for scale in lr_scales for cutout in cutouts]
  plain = best(grid[0], grid)  # grid[0]: the config's values
  plain = best(plain, [
      trial(f'{plain}_{init}', results[plain]['lr_scale'],
            results[plain]['cutout'], config.optim.ema_decay, init)
      for init in dict.fromkeys(inits) if init != config.model.init])
  chosen = best(plain, [
      trial(f'{plain}_ema{decay:g}', results[plain]['lr_scale'],
            results[plain]['cutout'], decay, results[plain]['init'])
      for decay in ema_decays])
  return {'runs': results, 'chosen': chosen, **results[chosen],
          'learning_rate': lr * results[chosen]['lr_scale']}


def seed_runs(config, workdir: str, run, seed: int, budgets: List[float],
              schedules: List[Tuple[str, float, int, str]],
              peers: List[str]) -> None:
  """One seed's runs: SGD at the full budget (checkpoints at every warm-up
  end), its forks, the peers and SGD at the other budgets. A seed's runs
  finish together, so a stop leaves complete pairs.

  A full-budget run finished on another machine (its records came in an
  archive, without checkpoints) while some of its forks did not is
  trained again first, so that they have its checkpoints to fork from
  (its records are replaced; the forks finished before keep theirs, which
  on a GPU may differ from the new run's in the last bits). A call with
  time for that run but not for a fork after it makes no progress here:
  --time_limit_s must fit a few runs.
  """
  epochs = config.num_epochs
  warmups = sorted({max(1, round(f * epochs)) for _, f, _, _ in schedules})
  parent = runs_lib.run_dir(workdir, modes_lib.BASELINE, seed)
  cfg = sgd_run(config, seed, epochs)
  if warmups:
    cfg.checkpoint.every_epochs = math.gcd(*warmups)
    cfg.checkpoint.keep = epochs
  forks = [(schedule_run(config, seed, parent, max(1, round(f * epochs)), k,
                         rule), runs_lib.run_dir(workdir, name, seed))
           for name, f, k, rule in schedules]
  no_checkpoints = not os.path.isdir(os.path.join(parent, 'checkpoints'))
  run(cfg, parent, again=no_checkpoints and not all(
      _finished(path, fork) for fork, path in forks))
  for fork, path in forks:
    run(fork, path)
  for mode in peers:
    run(modes_lib.mode_config(config, mode, seed),
        runs_lib.run_dir(workdir, mode, seed))
  for budget in budgets:
    run(sgd_run(config, seed, budget),
        runs_lib.run_dir(workdir, modes_lib.budget_mode(budget), seed))
  for mode in os.listdir(workdir):  # the forks are done
    path = runs_lib.run_dir(workdir, mode, seed)
    if os.path.exists(os.path.join(path, 'summary.json')):
      shutil.rmtree(os.path.join(path, 'checkpoints'), ignore_errors=True)


# What records.tgz keeps of --runs_dir: the runs' records and the stages'
# choices and reports.
_RECORDS = ('summary.json', 'metrics.jsonl', 'config.json', 'run.json',
            'match.json', 'stages.json', 'comparison.md', 'comparison.json')
# The frontier's report files that OUT gets as files of their own.
_OUT_REPORT = ('comparison.md', 'comparison.json',
               plots.PLOTS['accuracy_vs_cost'])


def _is_record(relpath: str) -> bool:
  name = os.path.basename(relpath)
  return name in _RECORDS or name in plots.PLOTS.values()


def _write_tgz(path: str, root: str, relpaths: List[str]) -> None:
  """`root`'s files `relpaths` into the archive `path`, whole or not at
  all (written aside, then moved)."""
  with tarfile.open(f'{path}.tmp', 'w:gz', compresslevel=6) as tar:
    for relpath in relpaths:
      tar.add(os.path.join(root, relpath), arcname=relpath)
  os.replace(f'{path}.tmp', path)


def pack_records(runs_dir: str, out_dir: str) -> str:
  """OUT/records.tgz: what a later machine needs to skip the finished runs
  (no checkpoints, no compiled programs); returns its path."""
  relpaths = []
  for root, dirs, files in os.walk(runs_dir):
    dirs[:] = sorted(d for d in dirs if d != 'checkpoints')
    relpaths += [os.path.relpath(os.path.join(root, name), runs_dir)
                 for name in sorted(files)]
  path = os.path.join(out_dir, 'records.tgz')
  _write_tgz(path, runs_dir, [r for r in relpaths if _is_record(r)])
  return path


# A device call brings back files of up to 16 MiB.
_CACHE_ARCHIVE_LIMIT = 15 * 2**20


def pack_compile_cache(runs_dir: str, out_dir: str,
                       limit: int = _CACHE_ARCHIVE_LIMIT) -> Optional[str]:
  """OUT/compile_cache.tgz: the runs' compiled programs, newest first, as
  many as fit in `limit` bytes:
  those the latest runs compiled, which the runs still to come are the
  likeliest to need (the frontier's steps, not the grid's). Returns its
  path, None where the cache is empty or none fits."""
  cache = os.path.join(runs_dir, 'compile_cache')
  names = [n for n in os.listdir(cache) if os.path.isfile(
      os.path.join(cache, n))] if os.path.isdir(cache) else []
  names.sort(key=lambda n: (-os.path.getmtime(os.path.join(cache, n)), n))
  path = os.path.join(out_dir, 'compile_cache.tgz')
  if os.path.exists(path):
    os.remove(path)  # an earlier call's, which this one's replaces
  chosen, packed = [], 0
  for name in names:
    with open(os.path.join(cache, name), 'rb') as f:
      # Its size compressed at the fastest level (in practice no smaller
      # than at the archive's level 6), plus a tar header and padding.
      size = len(zlib.compress(f.read(), 1)) + 1024
    if packed + size <= limit:
      chosen.append(name)
      packed += size
  if len(chosen) < len(names):
    print(f'compile cache: the newest {len(chosen)} of its {len(names)} '
          f'programs packed, the {limit / 2**20:.0f} MiB a device call '
          'brings back of a file (the next machine compiles the others)',
          flush=True)
  if not chosen:
    return None
  _write_tgz(path, cache, chosen)
  return path


def unpack(path: str, dest: str) -> int:
  """An earlier call's archive (records.tgz, compile_cache.tgz) into
  `dest`, keeping the files already there; returns how many it added."""
  if not os.path.isfile(path):
    raise UserError(f'--resume_from={path}: no such file; pass the '
                    'records.tgz an earlier call wrote to its --out')
  try:
    with tarfile.open(path) as tar:
      members = [m for m in tar.getmembers() if m.isfile()
                 and not os.path.exists(os.path.join(dest, m.name))]
      tar.extractall(dest, members=members, filter='data')
  except (tarfile.TarError, EOFError, OSError) as e:
    raise UserError(f'--resume_from={path} is not a whole .tgz archive '
                    f'({type(e).__name__}); pass the records.tgz an earlier '
                    'call wrote, as it came back') from e
  return len(members)


def _data_dir(config) -> str:
  """--data_dir, else the config's, else the shared folder for its stem."""
  if _DATA_DIR.value or config.data.dir:
    return _DATA_DIR.value or config.data.dir
  return suite_common.default_data_dir(
      'cifar10-jpg' if config.model.cifar_stem else 'imagenette128')


def main(argv):
  del argv
  logging.set_verbosity(logging.ERROR)  # Orbax's notes on every fork
  small = _SMALL.value
  config = suite_common.prepare_config(_CONFIG.value,
                                       _data_dir(_CONFIG.value), small)
  if not config.data.dir:
    raise app.UsageError('no image folder: pass --data_dir')
  out_dir = os.path.abspath(_OUT.value)
  os.makedirs(out_dir, exist_ok=True)
  runs_dir = os.path.abspath(_RUNS_DIR.value or os.path.join(
      'runs', f'frontier_{config.model.name}'))
  config.compile_cache_dir = os.path.join(runs_dir, 'compile_cache')
  budgets = [1.0] if small else modes_lib.parse_budgets(_BUDGETS.value)
  warmups = [0.5] if small else [float(w) for w in _WARMUPS.value]
  ks = [1] if small else [int(k) for k in _KS.value]
  schedules = [(schedule_name(f, k, r), f, k, r)
               for f in warmups for k in ks for r in _RULES.value]
  seeds = list(range(2 if small else _SEEDS.value))
  grid_seeds = list(range(1 if small else _GRID_SEEDS.value))
  holdout = _HOLDOUT.value or (4 if small else 500 if config.model.cifar_stem
                               else 100)
  held_out = config.copy_and_resolve_references()
  held_out.data.holdout_per_class = holdout
  # In runs_dir, so a copy of runs_dir carries the stages' choices too.
  os.makedirs(runs_dir, exist_ok=True)
  if _RESUME_FROM.value:
    added = unpack(_RESUME_FROM.value, runs_dir)
    print(f'{_RESUME_FROM.value}: {added} files of earlier runs into '
          f'{runs_dir}', flush=True)
    programs = os.path.join(os.path.dirname(_RESUME_FROM.value),
                            'compile_cache.tgz')
    if os.path.isfile(programs):  # optional: a damaged one is compiled anew
      try:
        added = unpack(programs, config.compile_cache_dir)
        print(f'{programs}: {added} compiled programs', flush=True)
      except UserError as e:
        print(f'warning: compiled programs not unpacked: {e}', flush=True)
  # The machine the runs trained on: the earlier calls' (stages.json's),
  # for a call that trains none (a report redrawn on a CPU is of GPU runs).
  trained_on = (runs_lib.read_json(os.path.join(runs_dir, 'stages.json'))
                or {}).get('device')
  record = suite_common.Record(runs_dir, 'stages.json', argv=sys.argv)
  run = Runner(0 if small else _TIME_LIMIT.value,
               save=lambda: pack_records(runs_dir, out_dir))
  device = jax.devices()[0].device_kind
  runs_device = lambda: device if run.trained else trained_on or device
  stages = _STAGES.value
  stopped = None  # the run before which the time limit stopped this call
  with suite_common.tee(os.path.join(out_dir, 'stages.log')):
    try:
      if 'recipe' in stages:
        record('recipe', recipe_stage(
            held_out, os.path.join(runs_dir, 'recipe'), run, grid_seeds,
            [1.0, 2.0] if small else [float(s) for s in _RECIPE_LR.value],
            [float(d) for d in _RECIPE_EMA.value],
            cutouts=[held_out.data.cutout] if small else None,
            inits=_RECIPE_INITS.value, margin=_RECIPE_MARGIN.value / 100))
      chosen = record.get('recipe')
      for c in (config, held_out) if chosen else ():
        c.optim.learning_rate = chosen['learning_rate']
        c.data.cutout = chosen['cutout']
        # A stages.json from before the EMA (init) trial has no decay
        # (init): none (the config's).
        c.optim.ema_decay = chosen.get('ema_decay', 0.0)
        c.model.init = chosen.get('init', c.model.init)
      if 'grid' in stages:
        grid_dir = os.path.join(runs_dir, 'grid')
        for seed in grid_seeds:
          seed_runs(held_out, grid_dir, run, seed, budgets, schedules,
                    list(PEERS))
        report.write_report(grid_dir, command=' '.join(sys.argv),
                            device=runs_device())
        record('grid', aggregate.furthest_above_frontier(
            aggregate.analyze(runs_lib.load_runs(grid_dir))[0],
            [s[0] for s in schedules]))
      if 'frontier' in stages:
        best = record.get('grid')
        if not best:
          raise UserError(
              'the frontier stage needs a schedule from the grid stage, and '
              + ('the grid ranked none: no schedule costs less than the full '
                 'budget and more than the smallest --budgets, in time or '
                 'FLOPs; add budgets around the schedules\' costs and run '
                 '--stages=grid,frontier' if 'grid' in record
                 else 'it has not run: --stages=grid,frontier'))
        _, fraction, k, _ = next(s for s in schedules
                                 if s[0] == best['mode'])
        pair = [(schedule_name(fraction, k, r), fraction, k, r)
                for r in _RULES.value]
        for seed in seeds:
          seed_runs(config, os.path.join(runs_dir, 'frontier'), run, seed,
                    budgets, pair, [])
      if 'report' in stages:
        front = os.path.join(runs_dir, 'frontier')
        report.write_report(front, command=' '.join(sys.argv),
                            device=runs_device())
        for name in _OUT_REPORT:
          if os.path.exists(os.path.join(front, name)):
            shutil.copy(os.path.join(front, name), out_dir)
    except _OutOfTime as stop:
      print(f'time limit: stopped before {stop}; run the same command again '
            'to go on', flush=True)
      stopped = str(stop)
    # This call's (an earlier call's is replaced): None when every stage
    # asked for ran to its end.
    record('stopped_before', stopped)
    record('runs', {'trained': run.trained, 'skipped': run.skipped,
                    'wall_s': time.perf_counter() - _T0})
    pack_records(runs_dir, out_dir)
    pack_compile_cache(runs_dir, out_dir)
    shutil.copy(record.path, out_dir)


def _main(argv):
  """`main`, a bad input reported as one `error:` line (exit 2)."""
  try:
    main(argv)
  except (UserError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(_main)
