"""CelebA as 40 binary attribute tasks, read from the published files.

The paper (Section 5.1) follows FAMO: the 40 attributes of CelebA are 40
binary classification tasks, images resized to 64 × 64, the official
train / validation / test partition. This reader takes the files of the
official release in either of its two usual layouts:

Google Drive release (what FAMO's code reads)::

    root/Anno/list_attr_celeba.txt
    root/Eval/list_eval_partition.txt
    root/Img/img_align_celeba/000001.jpg ...

torchvision layout (``torchvision.datasets.CelebA``; everything in one
folder)::

    root/celeba/list_attr_celeba.txt   (or root/list_attr_celeba.txt)
    root/celeba/list_eval_partition.txt
    root/celeba/img_align_celeba/000001.jpg ...

``list_attr_celeba.txt``: first line the number of images, second line the 40
attribute names, then one line per image: ``000001.jpg`` and 40 values in
{-1, 1}. ``list_eval_partition.txt``: one line per image, the file name and
0 (train), 1 (validation) or 2 (test).

Images are decoded with Pillow (a dependency of matplotlib), converted to RGB,
resized bilinearly to ``image_size`` (as torchvision's ``Resize`` on PIL
images) and scaled to [0, 1]; labels are 0/1.
"""

import os
from typing import Iterator

import numpy as np

from fairgrad_jax.datasets import _files

__all__ = ["CELEBA_ATTRIBUTES", "CelebA"]

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes",
    "Bald", "Bangs", "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair",
    "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin",
    "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
    "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard",
    "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks",
    "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings",
    "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie",
    "Young",
)

_SPLITS = {"train": 0, "val": 1, "test": 2}

_LAYOUT = """\
  root/Anno/list_attr_celeba.txt, root/Eval/list_eval_partition.txt and
  root/Img/img_align_celeba/*.jpg (Google Drive release), or
  root[/celeba]/list_attr_celeba.txt, list_eval_partition.txt and
  img_align_celeba/*.jpg (torchvision layout)."""


def _find_layout(root: str) -> tuple[str, str, str]:
  candidates = [
      (os.path.join(root, "Anno", "list_attr_celeba.txt"),
       os.path.join(root, "Eval", "list_eval_partition.txt"),
       os.path.join(root, "Img", "img_align_celeba")),
  ]
  for base in (os.path.join(root, "celeba"), root):
    candidates.append((os.path.join(base, "list_attr_celeba.txt"),
                       os.path.join(base, "list_eval_partition.txt"),
                       os.path.join(base, "img_align_celeba")))
  for attr, partition, images in candidates:
    if os.path.isfile(attr):
      _files.require_file(partition, "CelebA", _LAYOUT)
      _files.require_dir(images, "CelebA", _LAYOUT)
      return attr, partition, images
  raise FileNotFoundError(
      f"CelebA: no list_attr_celeba.txt under {root!r}. Expected layout:\n"
      + _LAYOUT
  )


def _read_text(path: str, expected: str) -> str:
  with _files.reading(path, "CelebA", expected):
    with open(path, encoding="utf-8") as f:
      return f.read()


def _read_attributes(path: str) -> tuple[list[str], np.ndarray]:
  text = _read_text(path, "a text file of 40 attribute labels per image")
  lines = [line.split() for line in text.splitlines() if line.strip()]
  if len(lines) < 2:
    raise ValueError(f"CelebA: {path!r} is too short for an attribute file.")
  names = lines[1]
  if tuple(names) != CELEBA_ATTRIBUTES:
    raise ValueError(
        f"CelebA: line 2 of {path!r} must list the 40 attribute names"
        f" {CELEBA_ATTRIBUTES[:2]}..., got {names[:3]}... ({len(names)} names)."
    )
  files, values = [], []
  for number, row in enumerate(lines[2:], start=3):
    if len(row) != 41 or any(v not in ("-1", "1") for v in row[1:]):
      raise ValueError(
          f"CelebA: line {number} of {path!r} must be an image name and 40"
          f" values in {{-1, 1}}, got {' '.join(row)[:80]!r}."
      )
    files.append(row[0])
    values.append([v == "1" for v in row[1:]])
  try:
    declared = int(lines[0][0])
  except (IndexError, ValueError):
    declared = None
  if declared != len(files):
    raise ValueError(
        f"CelebA: line 1 of {path!r} declares {lines[0][:1]} images but"
        f" {len(files)} follow."
    )
  return files, np.asarray(values, np.int32).reshape(-1, 40)


def _read_partition(path: str) -> dict[str, int]:
  partition = {}
  text = _read_text(path, "a text file of image names and partitions 0/1/2")
  for number, line in enumerate(text.splitlines(), start=1):
    row = line.split()
    if not row:
      continue
    if len(row) != 2 or row[1] not in ("0", "1", "2"):
      raise ValueError(
          f"CelebA: line {number} of {path!r} must be an image name and 0, 1"
          f" or 2, got {line.strip()[:80]!r}."
      )
    partition[row[0]] = int(row[1])
  return partition


class CelebA:
  """One split of CelebA: 40 binary labels per image, images loaded lazily.

  Attributes:
    files: the image file names of the split, in file order.
    labels: (N, 40) int32 labels in {0, 1}, columns in
      :data:`CELEBA_ATTRIBUTES` order.
    image_size: (height, width) the images are resized to.

  Examples:
    >>> import os, tempfile
    >>> import numpy as np
    >>> from PIL import Image
    >>> from fairgrad_jax.datasets import CelebA, CELEBA_ATTRIBUTES
    >>> root = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(root, "img_align_celeba"))
    >>> Image.new("RGB", (20, 24)).save(
    ...     os.path.join(root, "img_align_celeba", "000001.jpg"))
    >>> with open(os.path.join(root, "list_attr_celeba.txt"), "w") as f:
    ...   _ = f.write("1\\n" + " ".join(CELEBA_ATTRIBUTES) + "\\n"
    ...               + "000001.jpg" + " 1" * 40 + "\\n")
    >>> with open(os.path.join(root, "list_eval_partition.txt"), "w") as f:
    ...   _ = f.write("000001.jpg 0\\n")
    >>> data = CelebA(root, "train", image_size=8)
    >>> images, labels = next(data.batches(1))
    >>> images.shape, labels.shape, int(labels.sum())
    ((1, 8, 8, 3), (1, 40), 40)
    >>> import shutil; shutil.rmtree(root)
  """

  def __init__(self, root: str, split: str = "train", image_size=64):
    """Reads the annotation files of ``split`` ('train', 'val' or 'test').

    Args:
      root: the dataset folder (see the module docstring for the layouts).
      split: 'train', 'val' or 'test' (partition 0, 1 or 2).
      image_size: int or (height, width) to resize to; 64 in the paper.

    Raises:
      FileNotFoundError: when a required file or folder is missing.
      ValueError: when an annotation file is unreadable (not UTF-8 text, ...;
        the message names it) or malformed, or the two files do not list the
        same images. An unreadable image (empty, truncated, damaged) raises a
        ValueError naming it when it is loaded.
    """
    _files.check_split(split, tuple(_SPLITS), "CelebA")
    _files.require_dir(root, "CelebA", _LAYOUT)
    attr_path, partition_path, self._image_dir = _find_layout(root)
    files, labels = _read_attributes(attr_path)
    partition = _read_partition(partition_path)
    missing = [name for name in files if name not in partition]
    if missing:
      raise ValueError(
          f"CelebA: {len(missing)} images of {attr_path!r} are missing from"
          f" {partition_path!r}, e.g. {missing[0]!r}."
      )
    keep = np.array([partition[name] == _SPLITS[split] for name in files],
                    dtype=bool)
    self.files = [name for name, k in zip(files, keep) if k]
    self.labels = labels[keep]
    if isinstance(image_size, int):
      image_size = (image_size, image_size)
    self.image_size = tuple(int(s) for s in image_size)

  def __len__(self) -> int:
    return len(self.files)

  def load_images(self, indices) -> np.ndarray:
    """(n, H, W, 3) float32 images in [0, 1] for the given indices."""
    from PIL import Image  # pylint: disable=g-import-not-at-top

    height, width = self.image_size
    out = np.empty((len(indices), height, width, 3), np.float32)
    for row, index in enumerate(indices):
      path = os.path.join(self._image_dir, self.files[index])
      if not os.path.isfile(path):
        raise FileNotFoundError(
            f"CelebA: image {path!r} listed in the annotations is missing."
            f" Expected layout:\n{_LAYOUT}"
        )
      with _files.reading(path, "CelebA", "an image Pillow can decode"):
        with Image.open(path) as image:
          image = image.convert("RGB").resize((width, height),
                                              Image.BILINEAR)
          pixels = np.asarray(image, np.float32)
      out[row] = pixels / 255.0
    return out

  def batches(
      self,
      batch_size: int,
      *,
      shuffle: bool = False,
      seed: int | None = None,
      drop_last: bool = False,
  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """One pass over the split: (images (B, H, W, 3), labels (B, 40)).

    Args:
      batch_size: examples per batch.
      shuffle: visit the examples in a random order drawn from ``seed``.
      seed: seed of the order when shuffling.
      drop_last: skip a last, smaller batch (keeps shapes fixed for ``jit``).
    """
    for index in _files.batch_indices(len(self), batch_size, shuffle=shuffle,
                                      seed=seed, drop_last=drop_last):
      yield self.load_images(index), self.labels[index]
