"""Augmentation of in-memory training batches: batched array ops on device.

CIFAR's pad-crop and ImageNet's random-resized crop
(`config.data.augmentation`; 'auto' picks one by image size), the flip and
the cutout, all inside the jitted train step (`augment_batch`,
`make_batch`); `resize_images` is the eval resize. Random draws are keyed by
(seed, epoch, step), so a batch is a pure function of them.
"""
import dataclasses
import functools
import math
from typing import Optional, Tuple

import jax
import jax.numpy as jnp

from localsgd_jax.data.dataset import normalize


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
  """
  if augmentation != 'auto':
    return CROPS[CROPS.index(augmentation)]  # ValueError: not a crop
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
