"""Image folders scanned and checked: DIR/<split>/<class>/<image>.

Classes are the sorted subfolder names of a split; images load in sorted
file order within each class, classes in sorted order. Hidden entries (names
starting with '.', e.g. macOS '._x.jpg' resource forks) are skipped. No image
is opened here.
"""
import dataclasses
import os
from typing import List, Optional, Tuple

import numpy as np

from localsgd_jax.errors import UserError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')


@dataclasses.dataclass(frozen=True, eq=False)
class FolderSplit:
  """The image files of one split, in load order.

  Attributes:
    root: the dataset folder DIR.
    name: the split folder name ('train', 'val', ...).
    class_names: sorted class subfolder names.
    files: paths relative to `root` ('train/cat/0001.jpg', '/'-separated).
    labels: int32 (N,), the class index of each file.
  """
  root: str
  name: str
  class_names: Tuple[str, ...]
  files: Tuple[str, ...]
  labels: np.ndarray

  def path(self, index: int) -> str:
    """The full path of file `index`."""
    return os.path.join(self.root, *self.files[index].split('/'))

  def paths(self) -> List[str]:
    """Every file's full path, in load order."""
    return [self.path(i) for i in range(len(self.files))]


@dataclasses.dataclass(frozen=True, eq=False)
class FolderArrays:
  """Decoded train and eval splits of an image folder.

  Attributes:
    train_images: uint8 (N, H, W, 3).
    train_labels: int32 (N,).
    eval_images: uint8 (M, H, W, 3), or None when the eval split was skipped.
    eval_labels: int32 (M,), or None likewise.
    class_names: sorted class names; label i is class_names[i].
  """
  train_images: np.ndarray
  train_labels: np.ndarray
  eval_images: Optional[np.ndarray]
  eval_labels: Optional[np.ndarray]
  class_names: Tuple[str, ...]


def _visible_entries(folder: str) -> List[os.DirEntry]:
  with os.scandir(folder) as it:
    return sorted((e for e in it if not e.name.startswith('.')),
                  key=lambda e: e.name)


def scan_split(root: str, split: str) -> FolderSplit:
  """Lists the images of DIR/<split>/<class>/ without opening them.

  Args:
    root: the dataset folder DIR.
    split: the split subfolder ('train', 'val', ...).

  Returns:
    The split's files and labels, in load order.

  Raises:
    UserError: the split has no class folder, or a class folder holds no
      image.
  """
  split_dir = os.path.join(root, split)
  try:
    class_dirs = [e for e in _visible_entries(split_dir)
                  if e.is_dir(follow_symlinks=True)]
  except OSError as e:
    raise UserError(f'Cannot list {split_dir!r} ({e}); check that the image '
                    f'folder exists and is readable.') from e
  if not class_dirs:
    raise UserError(f'{split_dir!r} has no class subfolders; put the images '
                    f'of each class in {split_dir}/<class>/.')
  files, labels = [], []
  for label, class_dir in enumerate(class_dirs):
    try:
      names = [e.name for e in _visible_entries(class_dir.path)
               if e.name.lower().endswith(IMAGE_EXTENSIONS)
               and e.is_file(follow_symlinks=True)]
    except OSError as e:
      raise UserError(f'Cannot list {class_dir.path!r} ({e}); check its '
                      f'permissions.') from e
    if not names:
      raise UserError(
          f'Class folder {class_dir.path!r} holds no .jpg, .jpeg or .png '
          f'image; add its images or remove the folder (its class would '
          f'have no examples).')
    files.extend(f'{split}/{class_dir.name}/{name}' for name in names)
    labels.extend([label] * len(names))
  return FolderSplit(root=root, name=split,
                     class_names=tuple(e.name for e in class_dirs),
                     files=tuple(files),
                     labels=np.asarray(labels, np.int32))


def check_same_classes(train: FolderSplit, other: FolderSplit) -> None:
  """Raises a UserError unless both splits have the same class folders.

  A class on one side only would shift every label after it, so the eval
  split would silently score the wrong classes.
  """
  if train.class_names == other.class_names:
    return
  only_train = sorted(set(train.class_names) - set(other.class_names))
  only_other = sorted(set(other.class_names) - set(train.class_names))
  raise UserError(
      f'The class folders of {train.name}/ and {other.name}/ in '
      f'{train.root!r} differ: missing in {other.name}/: '
      f'{", ".join(only_train) or "none"}; missing in {train.name}/: '
      f'{", ".join(only_other) or "none"}. Give both splits the same class '
      f'subfolders.')
