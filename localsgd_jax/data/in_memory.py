"""The in-memory dataset: the whole uint8 dataset on the device.

Digits, CIFAR and image folders that fit. A training batch is gathered,
cropped (CIFAR's pad-crop, or ImageNet's random-resized crop for larger
images), flipped, normalized and cut out by batched array ops inside the
jitted train step, so the host never touches pixels and sends nothing per
step (see `dataset.py` for the interface and the multi-process rules).
"""
import dataclasses
import functools
import hashlib
import math
from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from localsgd_jax.data.dataset import Dataset, EpochFeed
from localsgd_jax.data.dataset import _place, channel_stats, epoch_key
from localsgd_jax.data.dataset import normalize, process_rows, replicate
from localsgd_jax.errors import UserError

# The crops of `config.data.augmentation`; 'auto' picks one by image size.
CROPS = ('pad_crop', 'random_resized_crop', 'none')
AUGMENTATIONS = ('auto',) + CROPS
# 'auto': images up to this side (CIFAR, digits) get CIFAR's pad-crop,
# larger (ImageNet-like) ones the random-resized crop.
PAD_CROP_MAX_SIDE = 64
# torchvision's RandomResizedCrop: aspect ratios log-uniform in this range,
# and this many tries at a box that fits before taking the whole image.
RRC_RATIO = (3 / 4, 4 / 3)
_RRC_ATTEMPTS = 10


def resolve_augmentation(augmentation: str, image_shape: Tuple[int, ...]
                         ) -> str:
  """The crop that `config.data.augmentation` means for images of a shape.

  Args:
    augmentation: one of `AUGMENTATIONS`.
    image_shape: (H, W, C) of the stored images.

  Returns:
    One of `CROPS`: 'auto' is pad_crop for images of at most
    `PAD_CROP_MAX_SIDE` pixels a side, random_resized_crop above.

  Raises:
    UserError: an unknown name.
  """
  if augmentation not in AUGMENTATIONS:
    raise UserError(f'config.data.augmentation={augmentation!r} is unknown: '
                    f'expected one of {", ".join(AUGMENTATIONS)}. Fix it in '
                    f'the config file or with --config.data.augmentation=...')
  if augmentation != 'auto':
    return augmentation
  side = max(int(image_shape[0]), int(image_shape[1]))
  return 'pad_crop' if side <= PAD_CROP_MAX_SIDE else 'random_resized_crop'


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """How a batch is built from the stored images (a static jit argument).

  Attributes:
    crop: one of `CROPS`.
    crop_padding: pad_crop's margin in pixels (0 = no crop).
    rrc_scale: random_resized_crop's range of the box's area, as fractions
      of the image's area.
    flip: whether half of the images are flipped horizontally.
    cutout: side of the square cut out of each image (0 = none).
    size: (H, W) of the output images; None = the stored images' size.
  """
  crop: str = 'none'
  crop_padding: int = 0
  rrc_scale: Tuple[float, float] = (0.35, 1.0)
  flip: bool = False
  cutout: int = 0
  size: Optional[Tuple[int, int]] = None


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


def random_resized_boxes(rng: jax.Array, batch: int, height: int, width: int,
                         scale: Tuple[float, float],
                         ratio: Tuple[float, float] = RRC_RATIO
                         ) -> jax.Array:
  """torchvision's RandomResizedCrop boxes, drawn for a batch at once.

  For each image up to 10 (area, aspect ratio) pairs are drawn: the area
  uniform in `scale` x H x W, the ratio w / h log-uniform in `ratio`; the
  first whose rounded box fits the image is taken, else the whole image.
  The box's corner is uniform over the positions where it fits.

  Args:
    rng: key.
    batch: B, the number of boxes.
    height: H of the images.
    width: W of the images.
    scale: (min, max) area of a box as fractions of H x W.
    ratio: (min, max) aspect ratio (width / height) of a box.

  Returns:
    int32 (B, 4) boxes (top, left, box height, box width), within the image.
  """
  tries = _RRC_ATTEMPTS
  # One draw for everything: each random op is a threefry program that XLA
  # takes seconds to compile on a CPU.
  u = jax.random.uniform(rng, (batch, 2 * tries + 2))  # in [0, 1)
  area = (scale[0] + (scale[1] - scale[0]) * u[:, :tries]) * (height * width)
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  aspect = jnp.exp(log_lo + (log_hi - log_lo) * u[:, tries:2 * tries])
  box_w = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)  # (B, T)
  box_h = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)  # (B, T)
  fits = (box_w >= 1) & (box_w <= width) & (box_h >= 1) & (box_h <= height)
  first = jnp.argmax(fits, axis=1)[:, None]  # (B, 1): first box that fits
  found = jnp.any(fits, axis=1)  # (B,)
  box_h = jnp.where(found, jnp.take_along_axis(box_h, first, 1)[:, 0], height)
  box_w = jnp.where(found, jnp.take_along_axis(box_w, first, 1)[:, 0], width)
  # floor(u * positions) is uniform over the box's positions.
  top = jnp.floor(u[:, -2] * (height - box_h + 1)).astype(jnp.int32)
  left = jnp.floor(u[:, -1] * (width - box_w + 1)).astype(jnp.int32)
  top = jnp.minimum(top, height - box_h)
  left = jnp.minimum(left, width - box_w)
  return jnp.stack([top, left, box_h, box_w], axis=1)


def resize_boxes(images: jax.Array, boxes: jax.Array,
                 size: Tuple[int, int]) -> jax.Array:
  """Resizes a box of each image to `size`, bilinearly, as PIL does.

  `jax.image.scale_and_translate` per image (one scale and translation per
  axis, a fixed output shape) under vmap: pixel centers at half-integers,
  the kernel widened when shrinking (antialiasing), pixels outside the image
  given no weight (the same as `PIL.Image.resize(size, BILINEAR, box=...)`;
  tested against it). Pixels around the box enter at its border, as in PIL.

  The weights are dense (H' x H and W' x W per image, two batched matrix
  products): on a CPU a two-tap gather version of the enlarging case was
  3x slower (XLA:CPU gathers), so there is one path.

  Args:
    images: (B, H, W, C), any numeric dtype.
    boxes: int (B, 4) (top, left, box height, box width).
    size: (H', W') of the output.

  Returns:
    float32 (B, H', W', C) pixels.
  """
  out_h, out_w = size
  channels = images.shape[-1]

  def resize_one(image, box):
    box = box.astype(jnp.float32)
    scale = jnp.stack([out_h / box[2], out_w / box[3]])
    translation = -box[:2] * scale
    return jax.image.scale_and_translate(
        image, (out_h, out_w, channels), (0, 1), scale, translation,
        method='linear', antialias=True)

  return jax.vmap(resize_one)(images.astype(jnp.float32), boxes)


def resize_images(images: jax.Array, size: Tuple[int, int]) -> jax.Array:
  """Whole images resized to `size` (`resize_boxes` of the full box);
  unchanged when they already have that size."""
  b, h, w, _ = images.shape
  if (h, w) == tuple(size):
    return images
  boxes = jnp.broadcast_to(jnp.array([0, 0, h, w], jnp.int32), (b, 4))
  return resize_boxes(images, boxes, size)


def cutout(images: jax.Array, rng: jax.Array, size: int) -> jax.Array:
  """Sets a `size` x `size` square of each image to 0, at a random place.

  As airbench's `batch_cutout`: the square lies wholly inside the image
  (its corner uniform over the positions where it fits), and it is applied
  to normalized images, so 0 is the per-channel mean pixel.

  Args:
    images: float (B, H, W, C), normalized.
    rng: key.
    size: side of the square; at most min(H, W).

  Returns:
    (B, H, W, C) images with the squares at 0.
  """
  b, h, w, _ = images.shape
  corners = jax.random.randint(rng, (b, 2), 0,
                               jnp.array([h - size + 1, w - size + 1]))
  rows = jnp.arange(h)[None, :] - corners[:, :1]  # (B, H)
  cols = jnp.arange(w)[None, :] - corners[:, 1:]  # (B, W)
  in_rows = (rows >= 0) & (rows < size)
  in_cols = (cols >= 0) & (cols < size)
  square = in_rows[:, :, None] & in_cols[:, None, :]  # (B, H, W)
  return jnp.where(square[..., None], jnp.zeros((), images.dtype), images)


def augment_batch(images: jax.Array, labels: jax.Array, idx: jax.Array,
                  rng: jax.Array, mean: jax.Array, inv_std: jax.Array, *,
                  augmentation: Augmentation
                  ) -> Tuple[jax.Array, jax.Array]:
  """Gathers, augments and normalizes one batch on the device (traceable).

  In order: the crop (pad_crop at the stored size; random_resized_crop
  resized to `augmentation.size`), a resize of the whole image to
  `augmentation.size` when the crop kept the stored size, the flip, the
  normalization, the cutout. The keys of the crop and the flip are those of
  before cutout existed (`jax.random.split(rng)`), so pad-crop batches are
  unchanged; cutout adds a third.

  Args:
    images: uint8 (N, H, W, C), the whole split.
    labels: int32 (N,).
    idx: int32 (B,) example indices.
    rng: key for this step's augmentation.
    mean: float32 (C,) per-channel mean in pixel units.
    inv_std: float32 (C,) 1 / per-channel std.
    augmentation: what to do.

  Returns:
    float32 (B, H', W', C) normalized images and int32 (B,) labels.
  """
  aug = augmentation
  b = idx.shape[0]
  h, w = images.shape[1:3]
  size = aug.size or (h, w)
  x = jnp.take(images, idx, axis=0)  # (B, H, W, C) uint8
  y = jnp.take(labels, idx, axis=0)  # (B,)
  keys = jax.random.split(rng, 3 if aug.cutout else 2)
  crop_rng, flip_rng = keys[0], keys[1]
  if aug.crop == 'pad_crop' and aug.crop_padding > 0:
    offsets = jax.random.randint(crop_rng, (b, 2), 0,
                                 2 * aug.crop_padding + 1)  # (B, 2)
    x = _random_crop(x, offsets, aug.crop_padding)
  if aug.crop == 'random_resized_crop':
    boxes = random_resized_boxes(crop_rng, b, h, w, aug.rrc_scale)  # (B, 4)
    x = resize_boxes(x, boxes, size)  # (B, H', W', C) float32
  else:
    x = resize_images(x, size)
  if aug.flip:
    do_flip = jax.random.bernoulli(flip_rng, 0.5, (b,))  # (B,)
    x = jnp.where(do_flip[:, None, None, None], x[:, :, ::-1, :], x)
  x = normalize(x, mean, inv_std)
  if aug.cutout:
    x = cutout(x, keys[2], aug.cutout)
  return x, y


@functools.partial(jax.jit, static_argnames=('augmentation',))
def make_batch(images, labels, idx, rng, mean, inv_std, rows=None, *,
               augmentation: Augmentation):
  """`augment_batch` as one jitted call, optionally cut to `rows`.

  `rows` (int32 (R,), a process's share of a global batch, `process_rows`)
  keeps those rows of the batch; the random draws are made for the whole
  batch first, so a process's rows are exactly those of the global batch.
  """
  x, y = augment_batch(images, labels, idx, rng, mean, inv_std,
                       augmentation=augmentation)
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
