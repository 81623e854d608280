"""frontier.py's whole command on a CPU, on tiny random images.

  python benchmarks/frontier_dry_run.py --out=OUT --runs_dir=RUNS \
      --seeds=2 --time_limit_s=0 --config.batch_size=20 \
      --config.eval_batch_size=20 --config.data.cutout=4

Runs benchmarks/frontier.py with the flags given (every stage, the real
networks and grid) on a tiny image folder of random 8x8 images (6 training
and 2 val images per class, a hold-out of 2; made in RUNS_data unless
--data_dir is given), so ResNet-18's 26-epoch runs take seconds. Each
run's summary.json says how many programs it compiled cold
(compile_cache_requests - compile_cache_hits). Before a GPU lend this
checks that the command gets through all its stages (and, with
--time_limit_s and --resume_from, call after call), and sizes its
compiles (RESULTS.md: the GPU protocol's re-estimate).
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def _image_folder(root: str) -> None:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  for split, n in (('train', 6), ('val', 2)):
    for label in range(10):
      folder = os.path.join(root, split, f'class{label}')
      os.makedirs(folder, exist_ok=True)
      for i in range(n):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                        ).save(os.path.join(folder, f'{i:04d}.png'))


def main() -> None:
  argv = sys.argv[1:]
  if not any(a.startswith('--data_dir=') for a in argv):
    runs = next((a.split('=', 1)[1] for a in argv
                 if a.startswith('--runs_dir=')), 'runs/frontier_dry_run')
    data = os.path.abspath(runs).rstrip('/') + '_data'  # not in the records
    if not os.path.isdir(data):
      _image_folder(data)
    argv.append(f'--data_dir={data}')
  if not any(a.startswith('--holdout_per_class=') for a in argv):
    argv.append('--holdout_per_class=2')
  import frontier  # pylint: disable=g-import-not-at-top
  from absl import app  # pylint: disable=g-import-not-at-top
  app.run(frontier._main, argv=[sys.argv[0], *argv])  # pylint: disable=protected-access


if __name__ == '__main__':
  main()
