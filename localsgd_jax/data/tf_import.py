"""TensorFlow and tensorflow-datasets, imported here only, on first use.

The default install has neither (they are the `tf` extra): the tfds paths
of `sources.py` and the streaming dataset read through them, nothing else.
"""
from typing import Any, Tuple

from localsgd_jax.errors import UserError


def tensorflow() -> Any:
  """The TensorFlow module, for tf.data (`streaming.py`)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf


def import_tf() -> Tuple[Any, Any]:
  """Imports TensorFlow and tfds, hiding every GPU from TensorFlow.

  TF is only a data-preparation dependency here; left alone it would reserve
  most of the GPU memory that JAX needs.

  Returns:
    (tensorflow module, tensorflow_datasets module).

  Raises:
    UserError: TensorFlow or tensorflow-datasets is not installed (the
      default install leaves both out: they are the `tf` extra).
  """
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise UserError(_missing_tf_message(e)) from e
  try:
    tf.config.set_visible_devices([], 'GPU')
  except RuntimeError:
    # TF was already initialized (by the caller); its device list is fixed.
    pass
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise UserError(_missing_tf_message(e)) from e
  return tf, tfds


TF_EXTRA = 'pip install -e ".[tf]"'


def _missing_tf_message(e: ImportError) -> str:
  return (f'this data path reads through TensorFlow / tensorflow-datasets, '
          f'which the default install leaves out ({type(e).__name__}: {e}). '
          f'Install them with {TF_EXTRA} (or pip install -r '
          f'requirements-dev.txt); or read CIFAR from its python files '
          f'(config.data.dir) or an image folder held in memory, which need '
          f'neither.')
