"""Datasets for localsgd-jax: loaders and on-device batching.

Usage:

  dataset = data.load_dataset(config.data, seed=config.seed)
  for batch in dataset.train_batches(epoch, batch_size, sharding):
    ...  # batch: {'image': (B, H, W, C) f32, 'label': (B,) i32, 'mask': (B,)}

This package never imports model code: models and data meet only in the
train loop.
"""

from localsgd_jax.data.dataset import Dataset
from localsgd_jax.data.files import load_cifar_dir
from localsgd_jax.data.files import load_digits_arrays
from localsgd_jax.data.in_memory import InMemoryDataset
from localsgd_jax.data.sources import load_dataset
from localsgd_jax.data.sources import VALID_NAMES
from localsgd_jax.data.streaming import StreamingDataset

__all__ = [
    'Dataset',
    'InMemoryDataset',
    'StreamingDataset',
    'VALID_NAMES',
    'load_cifar_dir',
    'load_dataset',
    'load_digits_arrays',
]
