"""Tests for localsgd_jax.data: sources, epoch order, batching, augmentation.

CIFAR is exercised on tiny pickle files written here in the original format,
tfds paths on `tfds.testing.mock_data`, image folders on PNG/JPEG files written
here (cached under tmp_path): no test reads real data, the network or the
user's cache folder.
"""

import os
import pickle
import subprocess
import sys

import jax
import ml_collections
import numpy as np
from PIL import Image
import pytest

from localsgd_jax import config_validation
from localsgd_jax import data
from localsgd_jax.configs import default
from localsgd_jax.data import augment
from localsgd_jax.data import dataset as dataset_lib
from localsgd_jax.data import image_cache
from localsgd_jax.data import image_decode
from localsgd_jax.data import image_folder
from localsgd_jax.data import image_scan
from localsgd_jax.data import sources
from localsgd_jax.data import tfds_source
from localsgd_jax.errors import UserError


def _cfg(**overrides) -> ml_collections.ConfigDict:
  """config.data of the defaults: digits, a small shuffle buffer."""
  cfg = default.get_config().data
  cfg.update({'name': 'digits', 'shuffle_buffer': 64, **overrides})
  return cfg


def _normalized(images: np.ndarray, dataset) -> np.ndarray:
  return (images.astype(np.float32) - dataset.mean) * (np.float32(1.0) /
                                                       dataset.std)


# --------------------------------------------------------- fake CIFAR files


def _write_pickle(path, num, label_key=b'labels', num_classes=10, seed=0):
  """Writes a CIFAR-format pickle; returns its (N, 3072) data and labels."""
  rng = np.random.default_rng(seed)
  pixels = rng.integers(0, 256, (num, 3072), dtype=np.uint8)
  labels = [int(v) for v in rng.integers(0, num_classes, num)]
  with open(path, 'wb') as f:
    pickle.dump({b'batch_label': b'fake', label_key: labels,
                 b'data': pixels}, f)
  return pixels, labels


def _chw_to_hwc(pixels):
  return pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


@pytest.fixture
def cifar10_dir(tmp_path):
  """DIR/cifar-10-batches-py with data_batch_1, data_batch_2 and test_batch."""
  folder = tmp_path / 'cifar-10-batches-py'
  folder.mkdir()
  b1 = _write_pickle(folder / 'data_batch_1', 20, seed=1)
  b2 = _write_pickle(folder / 'data_batch_2', 17, seed=2)
  test = _write_pickle(folder / 'test_batch', 13, seed=3)
  return tmp_path, (b1, b2, test)


def test_cifar10_dir_reads_every_batch_file(cifar10_dir):
  root, ((p1, l1), (p2, l2), (pt, lt)) = cifar10_dir
  x_train, y_train, x_test, y_test = data.load_cifar_dir('cifar10', str(root))
  assert x_train.shape == (37, 32, 32, 3) and x_train.dtype == np.uint8
  np.testing.assert_array_equal(
      x_train, _chw_to_hwc(np.concatenate([p1, p2])))
  np.testing.assert_array_equal(y_train, l1 + l2)
  np.testing.assert_array_equal(x_test, _chw_to_hwc(pt))
  np.testing.assert_array_equal(y_test, lt)
  assert y_train.dtype == np.int32


def test_cifar10_dir_may_point_at_inner_folder(cifar10_dir):
  root, _ = cifar10_dir
  ds = data.load_dataset(
      _cfg(name='cifar10', dir=str(root / 'cifar-10-batches-py')), seed=0)
  assert (ds.num_train, ds.num_test, ds.num_classes) == (37, 13, 10)
  assert ds.image_shape == (32, 32, 3)
  assert ds.eval_split == 'test'


def test_cifar100_dir(tmp_path):
  folder = tmp_path / 'cifar-100-python'
  folder.mkdir()
  pixels, labels = _write_pickle(folder / 'train', 11, b'fine_labels', 100)
  _write_pickle(folder / 'test', 5, b'fine_labels', 100, seed=4)
  ds = data.load_dataset(_cfg(name='cifar100', dir=str(tmp_path)), seed=0)
  assert (ds.num_train, ds.num_test, ds.num_classes) == (11, 5, 100)
  x_train, y_train, _, _ = data.load_cifar_dir('cifar100', str(tmp_path))
  np.testing.assert_array_equal(x_train, _chw_to_hwc(pixels))
  np.testing.assert_array_equal(y_train, labels)


def test_cifar_dir_missing(tmp_path):
  missing = str(tmp_path / 'nowhere')
  with pytest.raises(UserError, match='nowhere') as err:
    data.load_dataset(_cfg(name='cifar10', dir=missing), seed=0)
  assert 'config.data.dir empty' in str(err.value)
  # An existing folder without the files names where it looked.
  with pytest.raises(UserError, match='cifar-10-batches-py') as err:
    data.load_dataset(_cfg(name='cifar10', dir=str(tmp_path)), seed=0)
  assert str(tmp_path) in str(err.value)


@pytest.mark.parametrize('damage', ['truncated', 'garbage', 'wrong_keys'])
def test_cifar_dir_corrupt_file_is_named(cifar10_dir, damage):
  root, _ = cifar10_dir
  path = root / 'cifar-10-batches-py' / 'data_batch_2'
  if damage == 'truncated':
    content = path.read_bytes()
    path.write_bytes(content[:len(content) // 2])
  elif damage == 'garbage':
    path.write_bytes(b'this is not a pickle at all')
  else:
    with open(path, 'wb') as f:
      pickle.dump({b'pixels': np.zeros((2, 3072), np.uint8)}, f)
  with pytest.raises(UserError, match='data_batch_2'):
    data.load_dataset(_cfg(name='cifar10', dir=str(root)), seed=0)


def test_unknown_name_lists_valid_names():
  with pytest.raises(UserError) as err:
    data.load_dataset(_cfg(name='mnist'), seed=0)
  assert 'mnist' in str(err.value)
  assert 'cifar10, cifar100, digits, image_folder, imagenet2012' in str(
      err.value)


def test_dir_paths_never_import_tensorflow(cifar10_dir):
  """CIFAR directories and in-memory image folders must start without TF.

  (TF is slow to import and grabs GPUs.)
  """
  root, _ = cifar10_dir
  folder = root / 'folder'
  _write_folder(folder, {'train': 2, 'val': 1}, ('a', 'b'))
  code = (
      'import sys\n'
      'from localsgd_jax import data\n'
      'from localsgd_jax.configs import default\n'
      'cfg = default.get_config().data\n'
      f'cfg.update(dict(name="cifar10", dir={str(root)!r}))\n'
      'next(data.load_dataset(cfg, seed=0).train_batches(0, 8))\n'
      'cfg = default.get_config().data\n'
      'cfg.update(dict(name="image_folder", '
      f'dir={str(folder)!r}, cache_dir={str(root / "cache")!r}))\n'
      'ds = data.load_dataset(cfg, seed=0)\n'
      'assert isinstance(ds, data.InMemoryDataset), ds\n'
      'next(ds.train_batches(0, 2))\n'
      'assert "tensorflow" not in sys.modules, "TF imported"\n')
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  root_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run([sys.executable, '-c', code], cwd=root_dir,
                          env=env, capture_output=True, text=True,
                          check=False)
  assert result.returncode == 0, result.stderr[-2000:]


# ------------------------------------------------------------------- digits


@pytest.fixture(scope='module')
def digits_arrays():
  return data.load_digits_arrays(32)


def test_digits_arrays(digits_arrays):
  x_train, y_train, x_test, y_test = digits_arrays
  assert len(x_train) + len(x_test) == 1797
  assert (len(x_train), len(x_test)) == (1437, 360)
  assert x_train.shape[1:] == (32, 32, 1) and x_train.dtype == np.uint8
  assert x_train.min() == 0 and x_train.max() == 255
  assert set(np.unique(y_train)) == set(range(10))
  assert set(np.unique(y_test)) == set(range(10))
  # The split is fixed: a second load gives the same test set.
  again = data.load_digits_arrays(32)
  np.testing.assert_array_equal(again[2], x_test)
  np.testing.assert_array_equal(again[3], y_test)


def test_digits_split_ignores_run_seed():
  a = data.load_dataset(_cfg(image_size=8), seed=0)
  b = data.load_dataset(_cfg(image_size=8), seed=123)
  assert a.image_shape == (8, 8, 1) and (a.num_train, a.num_test) == (1437,
                                                                       360)
  ea = np.concatenate([np.asarray(x['image']) for x in a.eval_batches(100)])
  eb = np.concatenate([np.asarray(x['image']) for x in b.eval_batches(100)])
  np.testing.assert_array_equal(ea, eb)


@pytest.fixture(scope='module')
def digits():
  return data.load_dataset(_cfg(), seed=7)


@pytest.fixture(scope='module')
def digits_plain():
  return data.load_dataset(_cfg(augment=False), seed=7)


def test_batch_format(digits):
  batch = next(digits.train_batches(0, 32))
  assert batch['image'].shape == (32, 32, 32, 1)
  assert batch['image'].dtype == np.float32
  assert batch['label'].shape == (32,) and batch['label'].dtype == np.int32
  np.testing.assert_array_equal(batch['mask'], np.ones(32, np.float32))
  assert digits.num_classes == 10 and digits.image_shape == (32, 32, 1)
  assert digits.steps_per_epoch(100) == 14
  with pytest.raises(UserError, match='batch_size'):
    digits.steps_per_epoch(5000)


# -------------------------------------------------------------- epoch order


def _epoch(dataset, epoch, batch_size):
  return [jax.tree.map(np.asarray, b)
          for b in dataset.train_batches(epoch, batch_size)]


def test_epoch_is_pure_function_of_seed_and_epoch(digits):
  first = _epoch(digits, 3, 200)
  # A fresh dataset object (as after a restart) and a repeated call agree.
  again = _epoch(data.load_dataset(_cfg(), seed=7), 3, 200)
  assert len(first) == len(again) == 1437 // 200
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a['image'], b['image'])
    np.testing.assert_array_equal(a['label'], b['label'])
  other = _epoch(digits, 4, 200)
  assert not np.array_equal(first[0]['label'], other[0]['label'])
  other_seed = _epoch(data.load_dataset(_cfg(), seed=8), 3, 200)
  assert not np.array_equal(first[0]['label'], other_seed[0]['label'])


def test_epoch_covers_distinct_examples(digits_plain, digits_arrays):
  x_train, y_train, _, _ = digits_arrays
  batch_size = 100
  steps = digits_plain.steps_per_epoch(batch_size)
  for epoch in (0, 1):
    order = np.asarray(digits_plain.epoch_order(epoch))
    assert sorted(order.tolist()) == list(range(1437))
    used = order[:steps * batch_size]
    assert len(set(used.tolist())) == 1437 - 1437 % batch_size
    batches = _epoch(digits_plain, epoch, batch_size)
    assert len(batches) == steps
    # Without augmentation a batch is exactly the normalized source images.
    for step, batch in enumerate(batches):
      idx = used[step * batch_size:(step + 1) * batch_size]
      np.testing.assert_array_equal(
          batch['image'], _normalized(x_train[idx], digits_plain))
      np.testing.assert_array_equal(batch['label'], y_train[idx])


def test_eval_covers_test_set_once(digits, digits_arrays):
  _, _, x_test, y_test = digits_arrays
  batches = [jax.tree.map(np.asarray, b) for b in digits.eval_batches(64)]
  assert len(batches) == -(-360 // 64)
  for b in batches:
    assert b['image'].shape == (64, 32, 32, 1)
  mask = np.concatenate([b['mask'] for b in batches])
  np.testing.assert_array_equal(mask, np.arange(6 * 64) < 360)
  images = np.concatenate([b['image'] for b in batches])[:360]
  labels = np.concatenate([b['label'] for b in batches])[:360]
  # Eval is never augmented, even when training is.
  np.testing.assert_array_equal(images, _normalized(x_test, digits))
  np.testing.assert_array_equal(labels, y_test)


# ------------------------------------------------------------- augmentation


def test_digits_crop_without_flip(digits, digits_plain, digits_arrays):
  x_train = digits_arrays[0]
  assert not digits.flip and digits.crop_padding == 4
  batch = jax.tree.map(np.asarray, next(digits.train_batches(0, 64)))
  idx = np.asarray(digits.epoch_order(0))[:64]
  source = _normalized(x_train[idx], digits)
  assert batch['image'].shape == source.shape
  assert not np.array_equal(batch['image'], source)  # crops moved pixels
  # With the crop off too, augmentation is the identity: no flip on digits.
  no_crop = data.load_dataset(_cfg(crop_padding=0), seed=7)
  batch = jax.tree.map(np.asarray, next(no_crop.train_batches(0, 64)))
  np.testing.assert_array_equal(batch['image'], source)


def test_cifar_flip_and_crop(cifar10_dir):
  root, _ = cifar10_dir
  x_train = data.load_cifar_dir('cifar10', str(root))[0]
  flip_only = data.load_dataset(
      _cfg(name='cifar10', dir=str(root), crop_padding=0), seed=0)
  assert flip_only.flip
  batch = np.asarray(next(flip_only.train_batches(0, 32))['image'])
  source = _normalized(
      x_train[np.asarray(flip_only.epoch_order(0))[:32]], flip_only)
  flipped = np.array([np.array_equal(b, s[:, ::-1])
                      for b, s in zip(batch, source)])
  kept = np.array([np.array_equal(b, s) for b, s in zip(batch, source)])
  assert np.all(flipped | kept) and flipped.any() and kept.any()
  plain = data.load_dataset(
      _cfg(name='cifar10', dir=str(root), augment=False), seed=0)
  assert not plain.flip and plain.crop_padding == 0
  np.testing.assert_array_equal(
      np.asarray(next(plain.train_batches(0, 32))['image']), source)


def test_sharding_places_batches(digits):
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ('data',))
  sharding = jax.sharding.NamedSharding(mesh,
                                        jax.sharding.PartitionSpec('data'))
  batch_size = 8 * len(jax.devices())
  batch = next(digits.train_batches(0, batch_size, sharding))
  for value in batch.values():
    assert value.sharding.is_equivalent_to(sharding, value.ndim)
  batch = next(digits.eval_batches(batch_size, sharding))
  assert batch['mask'].sharding.is_equivalent_to(sharding, 1)


# ---------------------------------------------------------------- tfds paths


@pytest.fixture(scope='module')
def tfds_module():
  # Imported once for the whole module: TF takes seconds to import.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  return tfds


def test_tfds_cifar10_in_memory(tfds_module):
  with tfds_module.testing.mock_data(num_examples=12):
    ds = data.load_dataset(_cfg(name='cifar10'), seed=0)
  assert (ds.num_train, ds.num_test) == (12, 12)
  assert ds.num_classes == 10 and ds.image_shape == (32, 32, 3)
  assert ds.eval_split == 'test'
  batch = next(ds.train_batches(0, 8))
  assert batch['image'].shape == (8, 32, 32, 3)
  assert np.all((np.asarray(batch['label']) >= 0)
                & (np.asarray(batch['label']) < 10))
  masks = [np.asarray(b['mask']) for b in ds.eval_batches(8)]
  assert [m.sum() for m in masks] == [8, 4]


def _write_cifar10_binary(folder, per_file=3):
  """CIFAR-10's binary release (what tfds downloads): records of a label
  byte and 3x32x32 channel-major pixels. Returns {split: (images, labels)}."""
  rng = np.random.default_rng(0)
  inner = folder / 'cifar-10-batches-bin'
  inner.mkdir(parents=True)
  (inner / 'batches.meta.txt').write_text('\n'.join(
      ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog',
       'horse', 'ship', 'truck']) + '\n')
  arrays = {}
  for split, names in (('train', [f'data_batch_{i}.bin' for i in range(1, 6)]),
                       ('test', ['test_batch.bin'])):
    images, labels = [], []
    for name in names:
      label = rng.integers(0, 10, per_file, dtype=np.uint8)
      chw = rng.integers(0, 256, (per_file, 3, 32, 32), dtype=np.uint8)
      np.concatenate([label[:, None], chw.reshape(per_file, -1)], 1).tofile(
          inner / name)
      images.append(chw.transpose(0, 2, 3, 1))
      labels.append(label)
    arrays[split] = (np.concatenate(images), np.concatenate(labels))
  return arrays


def test_tfds_prepares_cifar10_offline(tmp_path, tfds_module, monkeypatch):
  """tfds' real download_and_prepare, with the download replaced by a local
  archive folder: every module it imports must be installed (e.g.
  importlib_resources), nothing hides behind 'offline'."""
  written = _write_cifar10_binary(tmp_path / 'download')
  monkeypatch.setattr(tfds_module.download.DownloadManager,
                      'download_and_extract',
                      lambda self, url: str(tmp_path / 'download'))
  x_train, y_train, x_test, y_test = tfds_source.load_tfds_in_memory(
      'cifar10', str(tmp_path / 'tfds'))
  assert (tmp_path / 'tfds' / 'cifar10').is_dir()  # prepared there
  # tfds keeps the examples in its own (hashed) order: compare as sets.
  for (images, labels), (want_images, want_labels) in (
      ((x_train, y_train), written['train']),
      ((x_test, y_test), written['test'])):
    assert images.shape == want_images.shape and images.dtype == np.uint8
    key = lambda x, y: sorted(zip(y.tolist(), [i.tobytes() for i in x]))
    assert key(images, labels) == key(want_images, want_labels)


def test_tfds_missing_module_is_named(tmp_path, tfds_module, monkeypatch):
  def prepare(self, **kwargs):
    del self, kwargs
    raise ModuleNotFoundError("No module named 'importlib_resources'",
                              name='importlib_resources')
  monkeypatch.setattr(tfds_module.core.DatasetBuilder,
                      'download_and_prepare', prepare)
  with pytest.raises(UserError) as err:
    data.load_dataset(_cfg(name='cifar10', tfds_data_dir=str(tmp_path)),
                      seed=0)
  message = str(err.value)
  assert "No module named 'importlib_resources'" in message
  assert 'pip install importlib_resources' in message
  assert 'offline' not in message


def test_missing_tensorflow_names_the_extra(monkeypatch):
  monkeypatch.setitem(sys.modules, 'tensorflow', None)  # import fails
  with pytest.raises(UserError, match=r'pip install -e "\.\[tf\]"'):
    data.load_dataset(_cfg(name='cifar10'), seed=0)


def _write_image_folder(root):
  """train/{cat,dog,owl} with 3 images each, test/ with 2 per class."""
  rng = np.random.default_rng(0)
  for split, per_class in (('train', 3), ('test', 2)):
    for label in ('cat', 'dog', 'owl'):
      folder = root / split / label
      folder.mkdir(parents=True)
      for i in range(per_class):
        height, width = int(rng.integers(12, 40)), int(rng.integers(12, 40))
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        # One JPEG per class exercises the decode-and-crop JPEG branch.
        suffix = 'jpg' if i == 0 else 'png'
        Image.fromarray(pixels).save(folder / f'{i}.{suffix}')


def test_image_folder_stream(tmp_path, tfds_module):
  del tfds_module  # Only shares the TF import.
  _write_image_folder(tmp_path)
  ds = data.load_dataset(
      _cfg(name='image_folder', dir=str(tmp_path), image_size=16,
           storage='stream'), seed=0)
  assert isinstance(ds, data.StreamingDataset) and ds.eval_split == 'test'
  assert ds.num_classes == 3 and ds.class_names == ('cat', 'dog', 'owl')
  assert (ds.num_train, ds.num_test) == (9, 6)
  assert ds.image_shape == (16, 16, 3) and ds.flip
  epoch = _epoch(ds, 0, 4)
  assert len(epoch) == ds.steps_per_epoch(4) == 2
  for batch in epoch:
    assert batch['image'].shape == (4, 16, 16, 3)
    assert batch['image'].dtype == np.float32
    assert batch['label'].dtype == np.int32
    assert np.all(batch['mask'] == 1)
  assert len(set(np.concatenate([b['label'] for b in epoch]))) > 1
  # Same (seed, epoch) -> same batches, including crops and flips.
  for a, b in zip(epoch, _epoch(ds, 0, 4)):
    np.testing.assert_array_equal(a['image'], b['image'])
  evals = [jax.tree.map(np.asarray, b) for b in ds.eval_batches(4)]
  assert [b['mask'].tolist() for b in evals] == [[1, 1, 1, 1], [1, 1, 0, 0]]
  assert sorted(np.concatenate([b['label'][b['mask'] > 0]
                                for b in evals]).tolist()) == [0, 0, 1, 1, 2,
                                                               2]


def test_image_folder_errors(tmp_path):
  with pytest.raises(UserError, match='config.data.dir is empty'):
    data.load_dataset(_cfg(name='image_folder'), seed=0)
  (tmp_path / 'train' / 'cat').mkdir(parents=True)
  with pytest.raises(UserError, match='test/'):
    data.load_dataset(_cfg(name='image_folder', dir=str(tmp_path)), seed=0)


def test_bad_batch_size_fails_at_call(digits):
  with pytest.raises(UserError, match='batch_size'):
    digits.train_batches(0, 0)
  with pytest.raises(UserError, match='batch_size'):
    digits.eval_batches(-1)


# ------------------------------------------------- image folders in memory


def _write_folder(root, counts, classes=('cat', 'dog', 'owl'), size=(6, 5),
                  seed=0):
  """DIR/<split>/<class>/NN.png of one size; returns {relative path: pixels}.

  `counts` maps split -> images per class; `size` is (width, height).
  """
  rng = np.random.default_rng(seed)
  written = {}
  for split, per_class in counts.items():
    for label in classes:
      folder = root / split / label
      folder.mkdir(parents=True, exist_ok=True)
      for i in range(per_class):
        pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f'{i:02d}.png')
        written[f'{split}/{label}/{i:02d}.png'] = pixels
  return written


def _folder_cfg(root, tmp_path, **overrides):
  return _cfg(name='image_folder', dir=str(root),
              cache_dir=str(tmp_path / 'cache'), **overrides)


def test_folder_decode_matches_pil(tmp_path):
  root = tmp_path / 'data'
  rng = np.random.default_rng(1)
  expected = {}  # class -> list of file names in the expected load order
  # Names chosen so that sorted order differs from creation order; modes
  # and formats that convert('RGB') must turn into the same 3 channels.
  files = {'b_zebra': [('10.png', 'RGB'), ('02.JPG', 'RGB'), ('1.jpeg', 'L')],
           'a_ant': [('x.png', 'RGBA'), ('m.png', 'P'), ('c.Png', 'L')]}
  for split in ('train', 'val'):
    for label, names in files.items():
      folder = root / split / label
      folder.mkdir(parents=True)
      for name, mode in names:
        pixels = rng.integers(0, 256, (7, 9, 4), dtype=np.uint8)
        image = Image.fromarray(pixels, 'RGBA')
        if mode != 'RGBA':
          image = image.convert('RGB').convert(mode)
        if name.lower().endswith(('.jpg', '.jpeg')):
          image.save(folder / name, format='JPEG')
        else:
          image.save(folder / name, format='PNG')
      # Not images, or hidden: skipped.
      (folder / 'notes.txt').write_text('not an image')
      (folder / '.hidden.png').write_bytes(b'junk')
      expected[label] = sorted(name for name, _ in names)
  (root / 'train' / '.ipynb_checkpoints').mkdir()
  arrays = image_folder.load_image_folder(str(root), 'val',
                                          str(tmp_path / 'cache'))
  assert arrays.class_names == ('a_ant', 'b_zebra')
  for images, labels, split in ((arrays.train_images, arrays.train_labels,
                                 'train'),
                                (arrays.eval_images, arrays.eval_labels,
                                 'val')):
    assert images.shape == (6, 7, 9, 3) and images.dtype == np.uint8
    assert labels.dtype == np.int32 and labels.tolist() == [0, 0, 0, 1, 1, 1]
    paths = [root / split / label / name for label in ('a_ant', 'b_zebra')
             for name in expected[label]]
    for image, path in zip(images, paths):
      with Image.open(path) as pil:
        np.testing.assert_array_equal(image, np.asarray(pil.convert('RGB')))


def test_folder_parallel_decode_matches_serial(tmp_path):
  _write_folder(tmp_path, {'train': 5})
  split = image_scan.scan_split(str(tmp_path), 'train')
  serial = image_decode.decode_images(split.paths(), (5, 6, 3),
                                      num_workers=1)
  parallel = image_decode.decode_images(split.paths(), (5, 6, 3),
                                        num_workers=2)
  np.testing.assert_array_equal(parallel, serial)
  # Errors from workers name the first bad file in load order.
  Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(
      tmp_path / 'train' / 'dog' / '03.png')
  Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(
      tmp_path / 'train' / 'owl' / '01.png')
  with pytest.raises(UserError, match=r'dog/03\.png.* 3x3 .*6x5'):
    image_decode.decode_images(split.paths(), (5, 6, 3), num_workers=2)


def _cache_files(tmp_path):
  return sorted((tmp_path / 'cache').glob('*.npz'))


def test_folder_cache_is_reused(tmp_path, monkeypatch):
  root = tmp_path / 'data'
  written = _write_folder(root, {'train': 3, 'val': 2})
  first = image_folder.load_image_folder(str(root), 'val',
                                         str(tmp_path / 'cache'))
  cached = _cache_files(tmp_path)
  assert len(cached) == 2  # One file per split.
  mtimes = [p.stat().st_mtime_ns for p in cached]

  def no_decode(*args, **kwargs):
    raise AssertionError('decoded although the cache is current')

  monkeypatch.setattr(image_folder, 'decode_images', no_decode)
  again = image_folder.load_image_folder(str(root), 'val',
                                         str(tmp_path / 'cache'))
  np.testing.assert_array_equal(again.train_images, first.train_images)
  np.testing.assert_array_equal(again.eval_images, first.eval_images)
  assert [p.stat().st_mtime_ns for p in _cache_files(tmp_path)] == mtimes
  np.testing.assert_array_equal(first.train_images[0],
                                written['train/cat/00.png'])


def test_folder_cache_rebuilt_when_a_file_changes(tmp_path):
  root = tmp_path / 'data'
  _write_folder(root, {'train': 3, 'val': 2})
  image_folder.load_image_folder(str(root), 'val', str(tmp_path / 'cache'))
  before = _cache_files(tmp_path)
  new_pixels = np.full((5, 6, 3), 7, np.uint8)
  path = root / 'train' / 'dog' / '01.png'
  Image.fromarray(new_pixels).save(path)
  stat = path.stat()
  # Same size and a later mtime even on coarse-grained file systems.
  os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
  arrays = image_folder.load_image_folder(str(root), 'val',
                                          str(tmp_path / 'cache'))
  np.testing.assert_array_equal(arrays.train_images[4], new_pixels)
  after = _cache_files(tmp_path)
  # A new train cache replaced the stale one; the val cache is untouched.
  assert len(after) == 2
  assert [p for p in after if '-val-' in p.name] == [
      p for p in before if '-val-' in p.name]
  assert ([p for p in after if '-train-' in p.name]
          != [p for p in before if '-train-' in p.name])


@pytest.mark.parametrize('damage', ['truncated', 'garbage', 'wrong_shape',
                                    'pixels', 'checksum'])
def test_folder_corrupt_cache_is_rebuilt(tmp_path, capsys, damage):
  root = tmp_path / 'data'
  _write_folder(root, {'train': 3, 'val': 2})
  first = image_folder.load_image_folder(str(root), 'val',
                                         str(tmp_path / 'cache'))
  train_cache = next(p for p in _cache_files(tmp_path)
                     if '-train-' in p.name)
  content = train_cache.read_bytes()
  if damage == 'truncated':
    train_cache.write_bytes(content[:len(content) - 10])
  elif damage == 'garbage':
    train_cache.write_bytes(b'garbage' * 100)
  elif damage == 'wrong_shape':
    with open(train_cache, 'wb') as f:
      np.savez(f, images=np.zeros((2, 5, 6, 3), np.uint8),
               sha256=np.array('0' * 64))
  elif damage == 'pixels':  # one byte of the pixels, the size unchanged
    at = content.index(first.train_images.tobytes()) + 7
    train_cache.write_bytes(content[:at] + bytes([content[at] ^ 0xFF])
                            + content[at + 1:])
  else:  # other pixels, rewritten with a valid zip but the old checksum
    with np.load(train_cache) as cache:
      stored = cache['sha256']
    with open(train_cache, 'wb') as f:
      np.savez(f, images=first.train_images[::-1], sha256=stored)
  assert train_cache.read_bytes() != content
  capsys.readouterr()
  again = image_folder.load_image_folder(str(root), 'val',
                                         str(tmp_path / 'cache'))
  np.testing.assert_array_equal(again.train_images, first.train_images)
  warnings = [line for line in capsys.readouterr().err.splitlines()
              if line.startswith('warning:')]
  assert len(warnings) == 1 and train_cache.name in warnings[0]
  with np.load(train_cache) as rebuilt:
    np.testing.assert_array_equal(rebuilt['images'], first.train_images)
  capsys.readouterr()  # and served from then on without a word
  image_folder.load_image_folder(str(root), 'val', str(tmp_path / 'cache'))
  assert 'warning:' not in capsys.readouterr().err


def test_folder_unwritable_cache_dir_warns_once(tmp_path, capsys):
  root = tmp_path / 'data'
  written = _write_folder(root, {'train': 2, 'val': 1})
  blocker = tmp_path / 'a_file'
  blocker.write_text('a file where the cache folder should go')
  arrays = image_folder.load_image_folder(str(root), 'val',
                                          str(blocker / 'cache'))
  np.testing.assert_array_equal(arrays.eval_images[0],
                                written['val/cat/00.png'])
  warnings = [line for line in capsys.readouterr().err.splitlines()
              if line.startswith('warning:')]
  assert len(warnings) == 1 and 'without a cache' in warnings[0]


def test_folder_default_cache_dir(monkeypatch, tmp_path):
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
  assert image_cache.default_cache_dir() == str(tmp_path / 'xdg' /
                                                 'localsgd_jax')
  monkeypatch.delenv('XDG_CACHE_HOME')
  monkeypatch.setenv('HOME', str(tmp_path / 'home'))
  assert image_cache.default_cache_dir() == str(
      tmp_path / 'home' / '.cache' / 'localsgd_jax')


def test_folder_mixed_sizes_name_one_file(tmp_path):
  root = tmp_path / 'data'
  _write_folder(root, {'train': 3, 'val': 1})
  Image.fromarray(np.zeros((4, 8, 3), np.uint8)).save(
      root / 'train' / 'dog' / '02.png')
  with pytest.raises(UserError) as err:
    data.load_dataset(_folder_cfg(root, tmp_path), seed=0)
  message = str(err.value)
  assert 'dog/02.png' in message and '8x4' in message and '6x5' in message
  assert '--config.data.storage=stream' in message and '\n' not in message
  # An eval image of another size than the training images is named too.
  Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(
      root / 'train' / 'dog' / '02.png')
  Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(
      root / 'val' / 'owl' / '00.png')
  with pytest.raises(UserError, match=r'val/owl/00\.png.*9x9'):
    data.load_dataset(_folder_cfg(root, tmp_path), seed=0)


@pytest.mark.parametrize('damage', ['garbage', 'truncated'])
def test_folder_corrupt_image_is_named(tmp_path, damage):
  root = tmp_path / 'data'
  _write_folder(root, {'train': 3, 'val': 1})
  path = root / 'train' / 'owl' / '01.png'
  if damage == 'garbage':
    path.write_bytes(b'this is not an image')
  else:
    Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(
        root / 'train' / 'owl' / '01.jpg', quality=95)
    path.unlink()
    path = root / 'train' / 'owl' / '01.jpg'
    content = path.read_bytes()
    path.write_bytes(content[:len(content) // 2])
  with pytest.raises(UserError, match=f'owl/{path.name}') as err:
    data.load_dataset(_folder_cfg(root, tmp_path), seed=0)
  assert '\n' not in str(err.value)


@pytest.mark.parametrize('damage', ['garbage', 'truncated'])
def test_streamed_folder_corrupt_image_is_named(tmp_path, tfds_module,
                                                capsys, damage):
  """tf.data's decode error names no file: the streamed dataset finds it."""
  del tfds_module  # Only shares the TF import.
  root = tmp_path / 'data'
  _write_folder(root, {'train': 3, 'val': 1}, size=(16, 16))
  path = root / 'train' / 'owl' / '01.png'
  if damage == 'garbage':
    path.write_bytes(b'this is not an image')
  else:
    rng = np.random.default_rng(0)
    path.unlink()
    path = path.with_suffix('.jpg')
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), np.uint8)).save(
        path, quality=95)
    content = path.read_bytes()
    path.write_bytes(content[:len(content) // 3])
  ds = data.load_dataset(_folder_cfg(root, tmp_path, storage='stream',
                                     image_size=8), seed=0)
  with pytest.raises(UserError, match=f'owl/{path.name}') as err:
    _epoch(ds, 0, 3)
  assert '\n' not in str(err.value)
  assert 'looking for the file' in capsys.readouterr().out
  # Also when no file can be named: the split and the data, in one line.
  ds._find_unreadable = lambda split: None  # pylint: disable=protected-access
  with pytest.raises(UserError, match='train split of image_folder could '
                     'not be decoded') as err:
    _epoch(ds, 0, 3)
  assert '\n' not in str(err.value)


def test_find_unreadable_in_a_pool(tmp_path):
  """The process-pool scan names the first bad file in list order."""
  root = tmp_path / 'data'
  _write_folder(root, {'train': 6}, size=(7, 5))
  paths = sorted(str(p) for p in root.rglob('*.png'))
  assert image_decode.find_unreadable(paths, num_workers=2) is None
  for bad in (paths[9], paths[4]):
    with open(bad, 'wb') as f:
      f.write(b'garbage')
  error = image_decode.find_unreadable(paths, num_workers=2)
  assert isinstance(error, UserError) and paths[4] in str(error)


def test_folder_empty_class_is_named(tmp_path):
  root = tmp_path / 'data'
  _write_folder(root, {'train': 2, 'val': 1})
  (root / 'train' / 'emu').mkdir()
  (root / 'train' / 'emu' / 'readme.txt').write_text('no images yet')
  with pytest.raises(UserError, match=r'train/emu.*holds no'):
    data.load_dataset(_folder_cfg(root, tmp_path), seed=0)


def test_folder_class_mismatch_lists_both_sides(tmp_path):
  root = tmp_path / 'data'
  _write_folder(root, {'train': 2}, classes=('cat', 'dog', 'owl'))
  _write_folder(root, {'val': 1}, classes=('cat', 'dog', 'yak', 'zebu'))
  with pytest.raises(UserError) as err:
    data.load_dataset(_folder_cfg(root, tmp_path), seed=0)
  message = str(err.value)
  assert 'missing in val/: owl;' in message
  assert 'missing in train/: yak, zebu' in message


def test_streamed_folder_checks_its_classes_too(tmp_path):
  # The tf.data path would train on the union of the class folders and
  # count an empty one as a class: both are the same errors as in memory,
  # raised before TensorFlow is imported.
  root = tmp_path / 'data'
  _write_folder(root, {'train': 2}, classes=('cat', 'dog'))
  _write_folder(root, {'val': 1}, classes=('cat', 'frog'))
  with pytest.raises(UserError, match=r'missing in val/: dog; missing in '
                     r'train/: frog') as err:
    data.load_dataset(_folder_cfg(root, tmp_path, storage='stream'), seed=0)
  assert '\n' not in str(err.value)
  (root / 'val' / 'frog').rename(root / 'val' / 'dog')
  (root / 'train' / 'emu').mkdir()
  with pytest.raises(UserError, match=r'train/emu.*holds no'):
    data.load_dataset(_folder_cfg(root, tmp_path, storage='stream'), seed=0)


def test_dataset_declares_its_identity(tmp_path):
  # What a workdir's run.json records and a resume compares.
  root = tmp_path / 'data'
  _write_folder(root, {'train': 3, 'val': 2})
  ds = data.load_dataset(_folder_cfg(root, tmp_path), seed=0)
  assert ds.fingerprint() == {
      'name': 'image_folder', 'num_train': 9, 'num_eval': 6,
      'num_classes': 3, 'image_shape': [5, 6, 3], 'eval_split': 'val',
      'class_names': ['cat', 'dog', 'owl'], 'storage': 'memory',
      'content': ds.content_digest()}
  again = data.load_dataset(_folder_cfg(root, tmp_path), seed=1)
  assert again.fingerprint() == ds.fingerprint()  # the seed is no data
  path = root / 'train' / 'dog' / '01.png'
  Image.fromarray(np.full((5, 6, 3), 7, np.uint8)).save(path)
  stat = path.stat()
  os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
  changed = data.load_dataset(_folder_cfg(root, tmp_path), seed=0)
  assert changed.fingerprint()['content'] != ds.fingerprint()['content']
  digits = data.load_dataset(_cfg(), seed=0)
  assert digits.eval_split == 'test' and digits.class_names is None
  assert 'class_names' not in digits.fingerprint()


def test_folder_auto_storage_small_is_in_memory(tmp_path):
  root = tmp_path / 'data'
  written = _write_folder(root, {'train': 3, 'val': 2})
  ds = data.load_dataset(_folder_cfg(root, tmp_path, augment=False), seed=0)
  assert isinstance(ds, data.InMemoryDataset)
  assert ds.eval_split == 'val' and ds.class_names == ('cat', 'dog', 'owl')
  assert (ds.num_train, ds.num_test, ds.num_classes) == (9, 6, 3)
  # The folder's own size, not config.data.image_size (32).
  assert ds.image_shape == (5, 6, 3)
  batches = [jax.tree.map(np.asarray, b) for b in ds.eval_batches(6)]
  source = np.stack([written[f'val/{c}/{i:02d}.png']
                     for c in ('cat', 'dog', 'owl') for i in range(2)])
  np.testing.assert_array_equal(batches[0]['image'], _normalized(source, ds))
  np.testing.assert_array_equal(batches[0]['label'], [0, 0, 1, 1, 2, 2])


def test_folder_auto_storage_large_streams(tmp_path, tfds_module):
  del tfds_module  # Only shares the TF import.
  root = tmp_path / 'data'
  _write_folder(root, {'train': 3, 'test': 2})
  # 15 images x 90 bytes > 1e-6 GB.
  ds = data.load_dataset(
      _folder_cfg(root, tmp_path, max_memory_gb=1e-6, image_size=4), seed=0)
  assert isinstance(ds, data.StreamingDataset) and ds.eval_split == 'test'
  assert (ds.num_train, ds.num_test) == (9, 6)
  assert not (tmp_path / 'cache').exists()  # Streaming decodes nothing.
  assert isinstance(data.load_dataset(
      _folder_cfg(root, tmp_path, max_memory_gb=1e-5), seed=0),
                    data.InMemoryDataset)


def test_folder_train_per_class_keeps_first_files(tmp_path):
  root = tmp_path / 'data'
  written = _write_folder(root, {'train': 4, 'val': 1})
  ds = data.load_dataset(
      _folder_cfg(root, tmp_path, train_per_class=2, augment=False), seed=0)
  assert ds.num_train == 6 and ds.eval_split == 'val' and ds.num_test == 3
  order = np.asarray(ds.epoch_order(0))
  batch = jax.tree.map(np.asarray, next(ds.train_batches(0, 6)))
  kept = np.stack([written[f'train/{c}/{i:02d}.png']
                   for c in ('cat', 'dog', 'owl') for i in range(2)])
  np.testing.assert_array_equal(batch['image'],
                                _normalized(kept[order], ds))
  np.testing.assert_array_equal(batch['label'],
                                np.repeat(np.arange(3), 2)[order])


def _digit_images(digits_arrays):
  """The digits training images as bytes, for set comparisons."""
  return [x.tobytes() for x in digits_arrays[0]]


def _eval_images(dataset):
  batches = [jax.tree.map(np.asarray, b) for b in dataset.eval_batches(64)]
  images = np.concatenate([b['image'] for b in batches])
  real = np.concatenate([b['mask'] for b in batches]) > 0
  labels = np.concatenate([b['label'] for b in batches])
  return images[real], labels[real]


def test_select_per_class_holdout(digits_arrays):
  labels = digits_arrays[1]
  train, hold = sources.select_per_class(labels, 10, holdout_per_class=5,
                                         holdout_seed=3)
  assert len(hold) == 50 and len(train) == len(labels) - 50
  assert not set(train.tolist()) & set(hold.tolist())
  np.testing.assert_array_equal(np.bincount(labels[hold], minlength=10),
                                np.full(10, 5))
  again = sources.select_per_class(labels, 10, holdout_per_class=5,
                                   holdout_seed=3)
  np.testing.assert_array_equal(again[1], hold)
  other = sources.select_per_class(labels, 10, holdout_per_class=5,
                                   holdout_seed=4)[1]
  assert set(other.tolist()) != set(hold.tolist())
  # With train_per_class the hold-out comes from the images not kept.
  train, hold = sources.select_per_class(labels, 10, train_per_class=20,
                                         holdout_per_class=5, holdout_seed=3)
  first = np.concatenate([np.flatnonzero(labels == c)[:20]
                          for c in range(10)])
  np.testing.assert_array_equal(train, np.sort(first))
  assert not set(first.tolist()) & set(hold.tolist())
  np.testing.assert_array_equal(np.bincount(labels[hold], minlength=10),
                                np.full(10, 5))
  assert sources.select_per_class(labels, 10) == (None, None)


def test_holdout_replaces_test_split(digits_arrays):
  x_train = digits_arrays[0]
  ds = data.load_dataset(_cfg(holdout_per_class=4, holdout_seed=1), seed=0)
  assert ds.eval_split == 'holdout'
  assert (ds.num_train, ds.num_test) == (1437 - 40, 40)
  images, labels = _eval_images(ds)
  np.testing.assert_array_equal(np.bincount(labels, minlength=10),
                                np.full(10, 4))
  # Every held-out image is a training image of the full data, none of them
  # is trained on, and the run seed does not move them.
  _, hold = sources.select_per_class(digits_arrays[1], 10,
                                     holdout_per_class=4, holdout_seed=1)
  np.testing.assert_array_equal(images, _normalized(x_train[hold], ds))
  other_run = data.load_dataset(_cfg(holdout_per_class=4, holdout_seed=1),
                                seed=5)
  np.testing.assert_array_equal(_eval_images(other_run)[1], labels)
  assert data.load_dataset(_cfg(), seed=0).eval_split == 'test'


def test_holdout_on_folder_never_reads_eval_split(tmp_path):
  root = tmp_path / 'data'
  written = _write_folder(root, {'train': 5})  # No val/ at all.
  ds = data.load_dataset(
      _folder_cfg(root, tmp_path, train_per_class=3, holdout_per_class=2,
                  augment=False), seed=0)
  assert ds.eval_split == 'holdout' and (ds.num_train, ds.num_test) == (9, 6)
  images, labels = _eval_images(ds)
  # train_per_class keeps files 00-02, so the hold-out is files 03 and 04.
  held = np.stack([written[f'train/{c}/{i:02d}.png']
                   for c in ('cat', 'dog', 'owl') for i in (3, 4)])
  np.testing.assert_array_equal(images, _normalized(held, ds))
  np.testing.assert_array_equal(labels, [0, 0, 1, 1, 2, 2])


def test_subset_errors(tmp_path):
  with pytest.raises(UserError, match=r'images of class \d, fewer than'):
    data.load_dataset(_cfg(train_per_class=140, holdout_per_class=20),
                      seed=0)
  root = tmp_path / 'data'
  _write_folder(root, {'train': 3, 'val': 1})
  with pytest.raises(UserError, match="'cat'.*at most 3"):
    data.load_dataset(_folder_cfg(root, tmp_path, holdout_per_class=4),
                      seed=0)
  with pytest.raises(UserError, match='in-memory datasets only'):
    data.load_dataset(_folder_cfg(root, tmp_path, storage='stream',
                                  train_per_class=1), seed=0)


@pytest.mark.parametrize('field, value', [
    ('storage', 'disk'), ('max_memory_gb', 0.0), ('train_per_class', -1),
    ('holdout_per_class', -1), ('holdout_seed', -2), ('image_size', 0)])
def test_bad_data_options(field, value):
  # A value of another type ('big' for a number) cannot even be set: the
  # config's types refuse it, and the flags say so (test_flag_errors).
  with pytest.raises(UserError, match=f'config.data.{field}={value!r} is out '
                     'of range') as err:
    config_validation.validate_data(_cfg(**{field: value}))
  assert '\n' not in str(err.value)


def test_default_config_has_data_options():
  from localsgd_jax.configs import default  # pylint: disable=g-import-not-at-top
  cfg = default.get_config().data
  assert (cfg.storage, cfg.max_memory_gb, cfg.cache_dir) == ('auto', 4.0, '')
  assert (cfg.train_per_class, cfg.holdout_per_class,
          cfg.holdout_seed) == (0, 0, 0)


# ------------------------------------- random-resized crop, resize, cutout

# Jitted: run eagerly, each of its ops would compile on its own.
_jit_boxes = jax.jit(augment.random_resized_boxes,
                     static_argnums=(1, 2, 3, 4))


def _torchvision_box(rng, height, width, scale, ratio=(3 / 4, 4 / 3)):
  """torchvision's RandomResizedCrop.get_params in NumPy (square images:
  its fallback is the whole image, as ours)."""
  area = height * width
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
    w = int(round(np.sqrt(target * aspect)))
    h = int(round(np.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return (rng.integers(0, height - h + 1), rng.integers(0, width - w + 1),
              h, w)
  return 0, 0, height, width


def _pil_resize(image, box, size):
  """PIL's bilinear (antialiased) resize of box (top, left, h, w) of a float
  (H, W, C) image to size (H', W'), channel by channel in mode F."""
  top, left, h, w = (int(v) for v in box)
  channels = [np.asarray(Image.fromarray(
      np.ascontiguousarray(image[..., c], np.float32), 'F').resize(
          (size[1], size[0]), Image.BILINEAR,
          box=(left, top, left + w, top + h)))
              for c in range(image.shape[-1])]
  return np.stack(channels, axis=-1)


def test_resolve_augmentation_by_image_size():
  resolve = augment.resolve_augmentation
  assert resolve('auto', (32, 32, 3)) == 'pad_crop'
  assert resolve('auto', (64, 48, 3)) == 'pad_crop'
  assert resolve('auto', (65, 64, 3)) == 'random_resized_crop'
  assert resolve('auto', (128, 128, 3)) == 'random_resized_crop'
  assert resolve('none', (128, 128, 3)) == 'none'
  assert resolve('pad_crop', (128, 128, 3)) == 'pad_crop'
  with pytest.raises(ValueError):  # not a name: validation refuses it first
    resolve('rrc', (32, 32, 3))
  cfg = default.get_config().data
  cfg.augmentation = 'rrc'
  with pytest.raises(UserError, match="config.data.augmentation='rrc'"):
    config_validation.validate_data(cfg)


@pytest.mark.parametrize('height, width, scale', [
    (32, 32, (0.35, 1.0)), (20, 36, (0.08, 1.0)), (16, 16, (0.1, 0.2))])
def test_random_resized_boxes_in_image_and_scale(height, width, scale):
  n = 20_000
  boxes = np.asarray(_jit_boxes(jax.random.key(0), n, height, width, scale))
  top, left, h, w = boxes.T
  assert boxes.dtype == np.int32
  assert np.all((top >= 0) & (left >= 0) & (h >= 1) & (w >= 1))
  assert np.all((top + h <= height) & (left + w <= width))
  whole = (h == height) & (w == width)
  fraction = h * w / (height * width)
  # Rounding w and h to pixels moves the area by at most about a pixel a
  # side; the fall-back (whole image) is the only box outside the range.
  slack = (h + w + 1) / (height * width)
  inside = ((fraction >= scale[0] - slack) & (fraction <= scale[1] + slack))
  assert np.all(inside | whole)
  ratio = w / h
  slack_ratio = (1 / h + 1 / w) * 4 / 3 + 1e-6
  assert np.all(((ratio >= 3 / 4 - slack_ratio)
                 & (ratio <= 4 / 3 + slack_ratio)) | whole)
  # The corner is uniform over the box's positions: on average centred.
  for corner, free in ((top, height - h), (left, width - w)):
    movable = free > 0
    np.testing.assert_allclose(np.mean(corner[movable] / free[movable]), 0.5,
                               atol=0.02)


def test_random_resized_boxes_match_torchvision_statistics():
  """Area, aspect ratio and fall-back rate as torchvision's algorithm."""
  n, size, scale = 20_000, 24, (0.35, 1.0)
  ours = np.asarray(_jit_boxes(jax.random.key(1), n, size, size,
                              scale)).astype(np.float64)
  rng = np.random.default_rng(0)
  ref = np.array([_torchvision_box(rng, size, size, scale)
                  for _ in range(n)], np.float64)
  for boxes in (ours, ref):
    boxes[:, 0] = boxes[:, 2] * boxes[:, 3] / size ** 2  # area fraction
    boxes[:, 1] = np.log(boxes[:, 3] / boxes[:, 2])  # log aspect ratio
  for column in (0, 1):
    np.testing.assert_allclose(ours[:, column].mean(), ref[:, column].mean(),
                               atol=0.01)
    # The largest gap between the two distribution functions (the values
    # are discrete: boxes are whole pixels).
    values = np.union1d(ours[:, column], ref[:, column])
    cdf = lambda x: np.searchsorted(np.sort(x), values, side='right') / n
    assert np.max(np.abs(cdf(ours[:, column]) - cdf(ref[:, column]))) < 0.02
  whole = lambda b: np.mean(b[:, 0] == 1.0)
  np.testing.assert_allclose(whole(ours), whole(ref), atol=0.01)


def test_resize_boxes_match_pil():
  rng = np.random.default_rng(0)
  images = rng.uniform(0, 255, (5, 13, 17, 3)).astype(np.float32)
  boxes = np.array([[0, 0, 13, 17],    # whole image, shrunk / enlarged
                    [2, 3, 6, 5],      # small box, enlarged
                    [7, 11, 6, 6],     # at the bottom-right edge
                    [0, 0, 1, 1],      # one pixel
                    [1, 0, 12, 16]], np.int32)
  # Shrinking (antialiased) and enlarging boxes.
  for size in ((8, 8), (13, 17), (20, 24)):
    got = np.asarray(jax.jit(augment.resize_boxes, static_argnums=2)(
        images, boxes, size))
    assert got.shape == (5,) + size + (3,) and got.dtype == np.float32
    for image, box, out in zip(images, boxes, got):
      np.testing.assert_allclose(out, _pil_resize(image, box, size),
                                 atol=2e-3, rtol=0)
    if size == (13, 17):  # the whole image at its own size is itself
      np.testing.assert_array_equal(got[0], images[0])


@pytest.fixture(scope='module')
def rrc_folder(tmp_path_factory):
  """A folder of 20 x 16 images, 4 train and 2 val per class, and the
  config of its random-resized crops to 12 x 12."""
  tmp_path = tmp_path_factory.mktemp('rrc')
  root = tmp_path / 'data'
  written = _write_folder(root, {'train': 4, 'val': 2}, size=(20, 16))
  cfg = _folder_cfg(root, tmp_path, augmentation='random_resized_crop',
                    train_size=12, rrc_scale=(0.2, 0.6))
  return cfg, written


@pytest.fixture(scope='module')
def rrc_dataset(rrc_folder):
  return data.load_dataset(rrc_folder[0], seed=3)


def _step_boxes(dataset, epoch, step, batch):
  """The crop boxes of a training step, from its documented key."""
  key = jax.random.fold_in(dataset_lib.epoch_key(dataset.seed, epoch), step)
  crop_key = jax.random.split(key, 3 if dataset.cutout else 2)[0]
  h, w = dataset.stored_shape[:2]
  return np.asarray(_jit_boxes(crop_key, batch, h, w, dataset.rrc_scale))


def test_random_resized_crop_batches_match_reference(rrc_folder,
                                                    rrc_dataset):
  """Each training image is its source's box, resized by PIL, maybe
  flipped; eval images are the whole images resized."""
  written, ds = rrc_folder[1], rrc_dataset
  assert ds.augmentation == 'random_resized_crop' and ds.flip
  assert ds.image_shape == (12, 12, 3) and ds.stored_shape == (16, 20, 3)
  source = np.stack([written[f'train/{c}/{i:02d}.png']
                     for c in ('cat', 'dog', 'owl') for i in range(4)])
  batch_size, flips = 6, []
  for epoch in (0, 1):
    order = np.asarray(ds.epoch_order(epoch))
    for step, batch in enumerate(_epoch(ds, epoch, batch_size)):
      idx = order[step * batch_size:(step + 1) * batch_size]
      boxes = _step_boxes(ds, epoch, step, batch_size)
      fractions = boxes[:, 2] * boxes[:, 3] / (16 * 20)
      assert np.all(fractions < 0.7)  # not the whole image
      for image, i, box in zip(batch['image'], idx, boxes):
        want = _normalized(_pil_resize(source[i].astype(np.float32), box,
                                       (12, 12)), ds)
        flipped = np.allclose(image, want[:, ::-1], atol=1e-3)
        assert flipped or np.allclose(image, want, atol=1e-3)
        flips.append(flipped)
  assert 0 < np.mean(flips) < 1
  evals = [jax.tree.map(np.asarray, b) for b in ds.eval_batches(6)]
  val = np.stack([written[f'val/{c}/{i:02d}.png']
                  for c in ('cat', 'dog', 'owl') for i in range(2)])
  want = np.stack([_pil_resize(v.astype(np.float32), (0, 0, 16, 20),
                               (12, 12)) for v in val])
  np.testing.assert_allclose(evals[0]['image'], _normalized(want, ds),
                             atol=1e-3)


def test_large_folder_images_get_random_resized_crops(tmp_path):
  """'auto': 70-pixel images are random-resized-cropped, at their own size
  unless train_size says otherwise; eval is then the images unchanged."""
  root = tmp_path / 'data'
  written = _write_folder(root, {'train': 1, 'val': 2}, size=(70, 66))
  ds = data.load_dataset(_folder_cfg(root, tmp_path), seed=0)
  assert ds.augmentation == 'random_resized_crop' and ds.crop_padding == 0
  assert ds.image_shape == (66, 70, 3)
  batch = jax.tree.map(np.asarray, next(ds.train_batches(0, 3)))
  assert batch['image'].shape == (3, 66, 70, 3)
  images, _ = _eval_images(ds)
  val = np.stack([written[f'val/{c}/{i:02d}.png']
                  for c in ('cat', 'dog', 'owl') for i in range(2)])
  np.testing.assert_array_equal(images, _normalized(val, ds))


def test_random_resized_crop_is_a_function_of_seed_epoch_step(
    rrc_folder, rrc_dataset):
  first = _epoch(rrc_dataset, 2, 4)
  # A fresh dataset (as after a restart) builds the same batches.
  again = data.load_dataset(rrc_folder[0], seed=3)
  for a, b in zip(first, _epoch(again, 2, 4)):
    np.testing.assert_array_equal(a['image'], b['image'])
  # Step 1 alone, through the feed, as the train step builds it.
  feed = again.train_feed(2, 4)
  step1 = jax.jit(again.assemble)(feed.device, None, np.int32(1))
  np.testing.assert_array_equal(np.asarray(step1['image']),
                                first[1]['image'])
  other_epoch = _epoch(again, 3, 4)
  assert not np.array_equal(first[0]['image'], other_epoch[0]['image'])


def test_train_size_resizes_pad_crop_and_eval(digits_arrays):
  """Digits at train_size 16: batches of 16 x 16, eval the whole images
  resized; pad_crop still crops at the stored size first."""
  ds = data.load_dataset(_cfg(train_size=16, crop_padding=0), seed=0)
  assert ds.augmentation == 'pad_crop' and ds.image_shape == (16, 16, 1)
  x_train, _, x_test, _ = digits_arrays
  batch = jax.tree.map(np.asarray, next(ds.train_batches(0, 8)))
  idx = np.asarray(ds.epoch_order(0))[:8]
  want = np.stack([_pil_resize(x.astype(np.float32), (0, 0, 32, 32),
                               (16, 16)) for x in x_train[idx]])
  np.testing.assert_allclose(batch['image'], _normalized(want, ds),
                             atol=1e-3)
  images, _ = _eval_images(ds)
  want = np.stack([_pil_resize(x.astype(np.float32), (0, 0, 32, 32),
                               (16, 16)) for x in x_test])
  np.testing.assert_allclose(images, _normalized(want, ds), atol=1e-3)


def _zero_squares(images, source):
  """Per image: the (top, left, height, width) bounding box of the pixels
  set to 0 that were not 0, and their count."""
  changed = np.any(images != source, axis=-1)  # (B, H, W)
  out = []
  for mask, image in zip(changed, images):
    assert np.all(image[mask] == 0)
    rows, cols = np.nonzero(mask)
    out.append((rows.min(), cols.min(), np.ptp(rows) + 1, np.ptp(cols) + 1,
                mask.sum()))
  return np.array(out)


def test_cutout_zeroes_one_square_inside_the_image(digits_arrays):
  """5-pixel cutout on digits (no flip) without a crop: each image differs
  from its normalized source in one 5 x 5 square, set to 0 (the mean), at
  positions that cover the image."""
  ds = data.load_dataset(_cfg(crop_padding=0, cutout=5), seed=1)
  assert ds.cutout == 5
  x_train = digits_arrays[0]
  corners = []
  for epoch in (0, 1):
    batch = jax.tree.map(np.asarray, next(ds.train_batches(epoch, 256)))
    idx = np.asarray(ds.epoch_order(epoch))[:256]
    squares = _zero_squares(batch['image'], _normalized(x_train[idx], ds))
    np.testing.assert_array_equal(squares[:, 2:], [[5, 5, 25]] * 256)
    assert np.all(squares[:, :2] + 5 <= 32)
    corners.append(squares[:, :2])
  corners = np.concatenate(corners)
  assert corners.min() == 0 and corners.max() == 32 - 5
  np.testing.assert_allclose(corners.mean(), (32 - 5) / 2, atol=1.0)
  # Off when augmentation is off.
  assert data.load_dataset(_cfg(augment=False, cutout=5), seed=1).cutout == 0


def test_cutout_function_matches_reference():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(64, 9, 7, 2)).astype(np.float32)
  got = np.asarray(augment.cutout(x, jax.random.key(4), 3))
  squares = _zero_squares(got, x)
  np.testing.assert_array_equal(squares[:, 2:], [[3, 3, 9]] * 64)
  want = x.copy()
  for image, (top, left, *_) in zip(want, squares):
    image[top:top + 3, left:left + 3] = 0
  np.testing.assert_array_equal(got, want)


def test_streamed_cutout(tmp_path, tfds_module):
  del tfds_module  # Only shares the TF import.
  root = tmp_path / 'data'
  _write_folder(root, {'train': 2, 'val': 1}, size=(16, 16))
  ds = data.load_dataset(_folder_cfg(root, tmp_path, storage='stream',
                                     image_size=8, cutout=4), seed=0)
  assert ds.cutout == 4 and ds.rrc_scale == (0.35, 1.0)
  batch = _epoch(ds, 0, 6)[0]
  # IMAGENET_MEAN is not a whole pixel value: only cut-out pixels are 0.
  zeros = np.all(batch['image'] == 0, axis=-1)  # (B, H, W)
  np.testing.assert_array_equal(zeros.sum(axis=(1, 2)), np.full(6, 16))
  for mask in zeros:
    rows, cols = np.nonzero(mask)
    assert np.ptp(rows) == np.ptp(cols) == 3
  again = _epoch(ds, 0, 6)[0]
  np.testing.assert_array_equal(again['image'], batch['image'])


def test_augmentation_errors_that_need_the_data(tmp_path):
  with pytest.raises(UserError, match='config.data.cutout=40') as err:
    data.load_dataset(_cfg(cutout=40), seed=0)
  assert '\n' not in str(err.value) and 'at most 32' in str(err.value)
  root = tmp_path / 'data'
  _write_folder(root, {'train': 2, 'val': 1})
  with pytest.raises(UserError, match="augmentation='pad_crop'") as err:
    data.load_dataset(_folder_cfg(root, tmp_path, storage='stream',
                                  augmentation='pad_crop'), seed=0)
  assert '\n' not in str(err.value)


@pytest.mark.parametrize('field, value', [
    ('augmentation', 'random_crop'), ('rrc_scale', (0.5, 0.2)),
    ('rrc_scale', (0.0, 1.0)), ('rrc_scale', (0.3, 1.5)),
    ('rrc_scale', (0.3,)), ('train_size', -1), ('cutout', -2)])
def test_bad_augmentation_fields(field, value):
  from localsgd_jax.configs import default  # pylint: disable=g-import-not-at-top
  config = default.get_config()
  config.data[field] = value
  with pytest.raises(UserError, match=rf'config\.data\.{field}=') as err:
    config_validation.validate_config(config)
  assert f'--config.data.{field}=' in str(err.value)
  assert '\n' not in str(err.value)


def test_default_config_augmentation_fields():
  from localsgd_jax.configs import default  # pylint: disable=g-import-not-at-top
  cfg = default.get_config().data
  assert (cfg.augment, cfg.augmentation, cfg.crop_padding) == (True, 'auto',
                                                                4)
  assert (cfg.rrc_scale, cfg.train_size, cfg.cutout) == ((0.35, 1.0), 0, 0)


# ------------------------------------------------------------ RGB conversion


def _write_modes(folder, rng, size=(7, 6)):
  """One image per PIL mode that folders hold; returns {name: expected RGB}.

  `size` is (width, height). Expected pixels are built from the arrays the
  images were made from, not by PIL's conversion."""
  h, w = size[1], size[0]
  folder.mkdir(parents=True)
  expected = {}
  gray = rng.integers(0, 256, (h, w), dtype=np.uint8)
  rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  alpha = rng.integers(0, 256, (h, w), dtype=np.uint8)
  Image.fromarray(gray, 'L').save(folder / 'l.png')
  expected['l.png'] = np.repeat(gray[..., None], 3, -1)
  Image.fromarray(np.stack([gray, alpha], -1), 'LA').save(folder / 'la.png')
  expected['la.png'] = np.repeat(gray[..., None], 3, -1)  # alpha dropped
  Image.fromarray(np.dstack([rgb, alpha]), 'RGBA').save(folder / 'rgba.png')
  expected['rgba.png'] = rgb
  palette = rng.integers(0, 256, (256, 3), dtype=np.uint8)
  indices = rng.integers(0, 256, (h, w), dtype=np.uint8)
  for name, extra in (('p.png', {}), ('p_transparent.png',
                                      {'transparency': int(indices[0, 0])})):
    image = Image.fromarray(indices, 'P')
    image.putpalette(palette.ravel().tolist())
    image.save(folder / name, **extra)
    expected[name] = palette[indices]  # transparency dropped
  sixteen = rng.integers(0, 65536, (h, w), dtype=np.uint16)
  sixteen[0, :4] = (0, 128, 65535, 65407)  # the ends and rounding cases
  Image.fromarray(sixteen).save(folder / 'gray16.png')
  scaled = np.round(sixteen.astype(np.float64) * 255 / 65535).astype(np.uint8)
  expected['gray16.png'] = np.repeat(scaled[..., None], 3, -1)
  # CMYK JPEG of a smooth image (small JPEG error): back to the RGB it was.
  ramp = np.linspace(30, 220, h * w).reshape(h, w)
  smooth = np.stack([ramp, ramp[::-1], np.full((h, w), 90.0)], -1)
  Image.fromarray(smooth.astype(np.uint8)).convert('CMYK').save(
      folder / 'cmyk.jpg', quality=100)
  expected['cmyk.jpg'] = smooth.astype(np.uint8)
  return expected


def test_folder_rgb_conversion_of_every_mode(tmp_path):
  rng = np.random.default_rng(0)
  expected = _write_modes(tmp_path / 'train' / 'cat', rng)
  with Image.open(tmp_path / 'train' / 'cat' / 'gray16.png') as image:
    assert image.mode == 'I;16'
    assert np.mean(np.asarray(image.convert('RGB')) == 255) > 0.9  # white
  with Image.open(tmp_path / 'train' / 'cat' / 'cmyk.jpg') as image:
    assert image.mode == 'CMYK'
    cmyk = np.asarray(image).astype(np.int64)
  split = image_scan.scan_split(str(tmp_path), 'train')
  decoded = image_decode.decode_images(split.paths(), (6, 7, 3))
  names = [os.path.basename(p) for p in split.paths()]
  assert sorted(names) == sorted(expected)
  for name, image in zip(names, decoded):
    if name == 'cmyk.jpg':
      # PIL's CMYK -> RGB: (255 - C)(255 - K) / 255, and the RGB the file
      # was made from, up to the JPEG error.
      want = (255 - cmyk[..., :3]) * (255 - cmyk[..., 3:]) / 255
      np.testing.assert_allclose(image, want, atol=1)
      np.testing.assert_allclose(image, expected[name], atol=8)
    else:
      np.testing.assert_array_equal(image, expected[name], err_msg=name)


def test_to_rgb_refuses_what_has_no_8_bit_meaning():
  as_int = Image.fromarray(np.array([[0, 65535], [257, 1]], np.int32), 'I')
  np.testing.assert_array_equal(image_decode.to_rgb(as_int)[..., 0],
                                [[0, 255], [1, 0]])
  with pytest.raises(ValueError, match='16-bit range'):
    image_decode.to_rgb(Image.fromarray(np.array([[70000]], np.int32), 'I'))
  with pytest.raises(ValueError, match='mode F'):
    image_decode.to_rgb(Image.fromarray(np.zeros((2, 2), np.float32), 'F'))
