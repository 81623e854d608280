"""The in-memory dataset: the whole uint8 dataset on the device.

Digits, CIFAR and image folders that fit. A training batch is gathered,
cropped (CIFAR's pad-crop, or ImageNet's random-resized crop for larger
images), flipped, normalized and cut out by batched array ops inside the
jitted train step, so the host never touches pixels and sends nothing per
step (see `dataset.py` for the interface and the multi-process rules).
"""
import functools
import hashlib
from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from localsgd_jax.data.dataset import Dataset, EpochFeed
from localsgd_jax.data.dataset import _place, channel_stats, epoch_key
from localsgd_jax.data.dataset import process_rows, replicate
from localsgd_jax.data.augment import Augmentation, augment_batch
from localsgd_jax.data.augment import make_batch, resolve_augmentation
from localsgd_jax.errors import UserError


@functools.partial(jax.jit, static_argnames=('n', 'steps', 'batch_size'))
def _epoch_inputs(seed: jax.Array, epoch: jax.Array, *, n: int, steps: int,
                  batch_size: int) -> Tuple[jax.Array, jax.Array]:
  """The epoch's key and its order cut to (steps, batch_size) indices."""
  key = epoch_key(seed, epoch)
  order = jax.random.permutation(key, n)[:steps * batch_size]
  return key, order.reshape(steps, batch_size)


class InMemoryDataset(Dataset):
  """A dataset held whole on the device as uint8 (digits, CIFAR, folders).

  Training batches are cropped as `augmentation` says (`resolve_augmentation`),
  flipped where `flip`, and cut out (`cutout`), to `image_shape`: the stored
  size, or `train_size` square. Evaluation batches are the whole images,
  resized (bilinear, antialiased) to that size, or unchanged when the sizes
  match; never cropped.

  The order of epoch `e` is
  `jax.random.permutation(jax.random.fold_in(jax.random.key(seed), e), n)` and
  the augmentation of step `s` uses
  `jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), e), s)`, so
  batches are a pure function of (seed, epoch, step).
  """

  def __init__(self, *, name: str, train_images: np.ndarray,
               train_labels: np.ndarray, test_images: np.ndarray,
               test_labels: np.ndarray, num_classes: int, seed: int,
               augment: bool, crop_padding: int, flip: bool,
               augmentation: str = 'auto',
               rrc_scale: Tuple[float, float] = (0.35, 1.0),
               train_size: int = 0, cutout: int = 0,
               eval_split: str = 'test',
               class_names: Optional[Sequence[str]] = None):
    """Puts the data on the device.

    Args:
      name: config name of the dataset.
      train_images: uint8 (N, H, W, C).
      train_labels: integer (N,).
      test_images: uint8 (M, H, W, C).
      test_labels: integer (M,).
      num_classes: number of labels.
      seed: run seed; fixes order and augmentation of every epoch.
      augment: False turns off the crop, the flip and the cutout (as
        augmentation='none').
      crop_padding: pad-crop margin in pixels (0 = no crop).
      flip: whether horizontal flips suit this data (False for digits).
      augmentation: the crop, one of `AUGMENTATIONS` ('auto': by image size).
      rrc_scale: the random-resized crop's (min, max) area fractions.
      train_size: side of the square training (and eval) images; 0 = the
        stored images' size.
      cutout: side of the square cut out of each training image, in pixels
        of the training image; 0 = none.
      eval_split: what the test arrays are (`Dataset.eval_split`).
      class_names: the label names, if the data has them.

    Raises:
      UserError: a cutout larger than the training images.
    """
    if train_images.dtype != np.uint8 or test_images.dtype != np.uint8:
      raise ValueError('images must be uint8')
    self.name = name
    self.num_classes = int(num_classes)
    self.eval_split = eval_split
    self.class_names = tuple(class_names) if class_names is not None else None
    stored = tuple(int(d) for d in train_images.shape[1:])
    size = ((int(train_size), int(train_size)) if train_size
            else stored[:2])  # (H, W) of the batches
    self.stored_shape = stored  # (H, W, C) of the images held
    self.image_shape = size + stored[2:]
    self.num_train = int(train_images.shape[0])
    self.num_test = int(test_images.shape[0])
    self.seed = int(seed)
    self.augmentation = (resolve_augmentation(augmentation, stored)
                         if augment else 'none')
    self.crop_padding = (int(crop_padding)
                         if self.augmentation == 'pad_crop' else 0)
    self.flip = bool(flip and self.augmentation != 'none')
    self.cutout = int(cutout) if self.augmentation != 'none' else 0
    self.rrc_scale = tuple(float(a) for a in rrc_scale)
    if self.cutout > min(size):
      raise UserError(
          f'config.data.cutout={cutout} is larger than the training images '
          f'({size[0]}x{size[1]} pixels); set it to at most {min(size)}, '
          f'or 0 for no cutout, with --config.data.cutout=...')
    out_size = None if size == stored[:2] else size
    self._train_augmentation = Augmentation(
        crop=self.augmentation, crop_padding=self.crop_padding,
        rrc_scale=self.rrc_scale, flip=self.flip,
        cutout=self.cutout, size=out_size)
    self._eval_augmentation = Augmentation(size=out_size)
    mean, std = channel_stats(train_images)
    self.mean, self.std = mean, std  # numpy (C,), pixel units
    self._mean = jnp.asarray(mean)
    self._inv_std = jnp.asarray(np.float32(1.0) / std)
    # Uploaded once per placement (`_arrays_on`); steps send nothing.
    self._host_arrays = (train_images, train_labels.astype(np.int32))
    self._placed = {}
    self._test_images = jax.device_put(test_images)
    self._test_labels = jax.device_put(test_labels.astype(np.int32))

  def _contents(self) -> Dict[str, Any]:
    return {'storage': 'memory', 'content': self.content_digest()}

  def content_digest(self, max_bytes: int = 1 << 26) -> str:
    """A hash of the data: every label, and the pixels of every image (of
    evenly spaced images, about `max_bytes` of them, for big datasets).

    Tells a moved data folder holding the same files from different data
    (a workdir's resume check).
    """
    digest = hashlib.blake2b(digest_size=16)
    test = (jax.device_get(self._test_images),
            jax.device_get(self._test_labels))
    for images, labels in (self._host_arrays, test):
      digest.update(repr(images.shape).encode())
      digest.update(np.ascontiguousarray(labels, np.int32).tobytes())
      per_image = max(1, int(np.prod(images.shape[1:])))
      stride = max(1, -(-len(images) * per_image // max_bytes))
      digest.update(np.ascontiguousarray(images[::stride]).tobytes())
    return digest.hexdigest()

  def epoch_order(self, epoch: int) -> jax.Array:
    """The permutation of the training set used in `epoch`, int32 (N,)."""
    return jax.random.permutation(epoch_key(self.seed, epoch), self.num_train)

  def _arrays_on(self, sharding: Optional[jax.sharding.Sharding]) -> dict:
    """The split and its statistics, placed on `sharding` once."""
    if sharding not in self._placed:
      self._placed[sharding] = replicate(
          {'images': self._host_arrays[0], 'labels': self._host_arrays[1],
           'mean': self.mean, 'inv_std': np.float32(1.0) / self.std},
          sharding)
    return self._placed[sharding]

  def _train_feed(self, epoch, batch_size, steps, replicated, batch_sharding):
    del batch_sharding  # batches are built inside the step
    seed_epoch = replicate((np.uint32(self.seed), np.uint32(epoch)),
                           replicated)
    key, order = _epoch_inputs(*seed_epoch, n=self.num_train, steps=steps,
                               batch_size=batch_size)
    return EpochFeed(device={**self._arrays_on(replicated), 'key': key,
                             'order': order},
                     host=None, steps=steps)

  def assemble(self, device, host, i):
    del host
    idx = jax.lax.dynamic_index_in_dim(device['order'], i, keepdims=False)
    images, labels = augment_batch(
        device['images'], device['labels'], idx,
        jax.random.fold_in(device['key'], i), device['mean'],
        device['inv_std'], augmentation=self._train_augmentation)
    return {'image': images, 'label': labels,
            'mask': jnp.ones(labels.shape, jnp.float32)}

  def _eval_iter(self, batch_size, sharding):
    # The rng is unused without augmentation; any fixed key will do.
    rng = jax.random.key(0)
    rows = process_rows(sharding, batch_size)
    global_size = None if rows is None else batch_size
    for start in range(0, self.num_test, batch_size):
      # No augmentation here, so a process simply builds its own positions.
      positions = start + (np.arange(batch_size) if rows is None else rows)
      real = positions < self.num_test
      # Padding repeats example 0; the mask removes it from every metric.
      idx = np.where(real, positions, 0).astype(np.int32)
      images, labels = make_batch(
          self._test_images, self._test_labels, jnp.asarray(idx), rng,
          self._mean, self._inv_std, augmentation=self._eval_augmentation)
      mask = jnp.asarray(real.astype(np.float32))
      yield _place({'image': images, 'label': labels, 'mask': mask}, sharding,
                   global_size)
