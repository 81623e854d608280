"""The notebooks' set-up, shared: install what a bare runtime lacks.

A notebook's first cell finds the repository (or clones it on Colab), puts
it on `sys.path` and calls `install(root, ...)`. This module imports
nothing but the standard library, so it runs before the project's
dependencies exist.
"""
import shutil
import subprocess
import sys
from typing import Sequence


def install(root: str, extra_packages: Sequence[str] = ()) -> None:
  """Installs the project's requirements if `localsgd_jax`'s are missing.

  Args:
    root: the repository's root (holds requirements.txt).
    extra_packages: more pip requirements (e.g. tensorflow-datasets for
      CIFAR through tfds; Colab ships TensorFlow).
  """
  try:
    import flax  # pylint: disable=g-import-not-at-top,unused-import
    import ml_collections  # pylint: disable=g-import-not-at-top,unused-import
    return  # a checkout with its requirements installed
  except ImportError:
    pass
  pip = [sys.executable, '-m', 'pip', 'install', '-q']
  subprocess.run(pip + ['-r', 'requirements.txt', *extra_packages],
                 cwd=root, check=True)
  if shutil.which('nvidia-smi'):  # A GPU runtime: JAX's CUDA build.
    subprocess.run(pip + ['-U', 'jax[cuda12]'], check=True)

