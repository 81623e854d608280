"""The in-memory dataset: the whole uint8 dataset on the device.

Digits, CIFAR and small image folders. A training batch is gathered,
pad-cropped, flipped and normalized by batched array ops inside the jitted
train step, so the host never touches pixels and sends nothing per step
(see `dataset.py` for the interface and the multi-process rules).
"""
import functools
import hashlib
from typing import Any, Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from localsgd_jax.data.dataset import Batch, Dataset, EpochFeed
from localsgd_jax.data.dataset import _place, channel_stats, epoch_key
from localsgd_jax.data.dataset import normalize, process_rows, replicate


def _random_crop(images: jax.Array, offsets: jax.Array,
                 padding: int) -> jax.Array:
  """Reflect-pads a batch by `padding` and crops each image back.

  Reflection rather than zeros: the crop then never shows artificial black
  borders, which are a pixel pattern absent from the test set.

  Args:
    images: (B, H, W, C).
    offsets: int (B, 2) top-left corners in the padded images, each in
      [0, 2 * padding].
    padding: pixels added on each side.

  Returns:
    (B, H, W, C) crops.
  """
  _, h, w, c = images.shape
  padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding),
                            (0, 0)), mode='reflect')  # (B, H+2p, W+2p, C)

  def crop_one(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

  # vmap turns the per-image slice into one batched gather.
  return jax.vmap(crop_one)(padded, offsets)


def augment_batch(images: jax.Array, labels: jax.Array, idx: jax.Array,
                  rng: jax.Array, mean: jax.Array, inv_std: jax.Array, *,
                  crop_padding: int, flip: bool
                  ) -> Tuple[jax.Array, jax.Array]:
  """Gathers, augments and normalizes one batch on the device (traceable).

  Args:
    images: uint8 (N, H, W, C), the whole split.
    labels: int32 (N,).
    idx: int32 (B,) example indices.
    rng: key for this step's augmentation.
    mean: float32 (C,) per-channel mean in pixel units.
    inv_std: float32 (C,) 1 / per-channel std.
    crop_padding: 0 disables the random crop.
    flip: whether to flip half of the images horizontally.

  Returns:
    float32 (B, H, W, C) normalized images and int32 (B,) labels.
  """
  b = idx.shape[0]
  x = jnp.take(images, idx, axis=0)  # (B, H, W, C) uint8
  y = jnp.take(labels, idx, axis=0)  # (B,)
  crop_rng, flip_rng = jax.random.split(rng)
  if crop_padding > 0:
    offsets = jax.random.randint(crop_rng, (b, 2), 0,
                                 2 * crop_padding + 1)  # (B, 2)
    x = _random_crop(x, offsets, crop_padding)
  if flip:
    do_flip = jax.random.bernoulli(flip_rng, 0.5, (b,))  # (B,)
    x = jnp.where(do_flip[:, None, None, None], x[:, :, ::-1, :], x)
  return normalize(x, mean, inv_std), y


@functools.partial(jax.jit, static_argnames=('crop_padding', 'flip'))
def make_batch(images, labels, idx, rng, mean, inv_std, rows=None, *,
               crop_padding: int, flip: bool):
  """`augment_batch` as one jitted call, optionally cut to `rows`.

  `rows` (int32 (R,), a process's share of a global batch, `process_rows`)
  keeps those rows of the batch; the random draws are made for the whole
  batch first, so a process's rows are exactly those of the global batch.
  """
  x, y = augment_batch(images, labels, idx, rng, mean, inv_std,
                       crop_padding=crop_padding, flip=flip)
  if rows is not None:
    x, y = jnp.take(x, rows, axis=0), jnp.take(y, rows, axis=0)
  return x, y


@functools.partial(jax.jit, static_argnames=('n', 'steps', 'batch_size'))
def _epoch_inputs(seed: jax.Array, epoch: jax.Array, *, n: int, steps: int,
                  batch_size: int) -> Tuple[jax.Array, jax.Array]:
  """The epoch's key and its order cut to (steps, batch_size) indices."""
  key = epoch_key(seed, epoch)
  order = jax.random.permutation(key, n)[:steps * batch_size]
  return key, order.reshape(steps, batch_size)


class InMemoryDataset(Dataset):
  """A dataset held whole on the device as uint8 (digits, CIFAR).

  The order of epoch `e` is
  `jax.random.permutation(jax.random.fold_in(jax.random.key(seed), e), n)` and
  the augmentation of step `s` uses
  `jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), e), s)`, so
  batches are a pure function of (seed, epoch, step).
  """

  def __init__(self, *, name: str, train_images: np.ndarray,
               train_labels: np.ndarray, test_images: np.ndarray,
               test_labels: np.ndarray, num_classes: int, seed: int,
               augment: bool, crop_padding: int, flip: bool):
    """Puts the data on the device.

    Args:
      name: config name of the dataset.
      train_images: uint8 (N, H, W, C).
      train_labels: integer (N,).
      test_images: uint8 (M, H, W, C).
      test_labels: integer (M,).
      num_classes: number of labels.
      seed: run seed; fixes order and augmentation of every epoch.
      augment: False turns off both the crop and the flip.
      crop_padding: pad-crop margin in pixels (0 = no crop).
      flip: whether horizontal flips suit this data (False for digits).
    """
    if train_images.dtype != np.uint8 or test_images.dtype != np.uint8:
      raise ValueError('images must be uint8')
    self.name = name
    self.num_classes = int(num_classes)
    self.image_shape = tuple(int(d) for d in train_images.shape[1:])
    self.num_train = int(train_images.shape[0])
    self.num_test = int(test_images.shape[0])
    self.seed = int(seed)
    self.crop_padding = int(crop_padding) if augment else 0
    self.flip = bool(flip and augment)
    mean, std = channel_stats(train_images)
    self.mean, self.std = mean, std  # numpy (C,), pixel units
    self._mean = jnp.asarray(mean)
    self._inv_std = jnp.asarray(np.float32(1.0) / std)
    # Uploaded once per placement (`_arrays_on`); steps send nothing.
    self._host_arrays = (train_images, train_labels.astype(np.int32))
    self._placed = {}
    self._test_images = jax.device_put(test_images)
    self._test_labels = jax.device_put(test_labels.astype(np.int32))

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
        device['inv_std'], crop_padding=self.crop_padding, flip=self.flip)
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
          self._mean, self._inv_std, crop_padding=0, flip=False)
      mask = jnp.asarray(real.astype(np.float32))
      yield _place({'image': images, 'label': labels, 'mask': mask}, sharding,
                   global_size)
