"""Reader of MTAN's preprocessed .npy layout (NYU-v2 and Cityscapes).

Liu, Johns & Davison (MTAN, CVPR 2019) released both datasets preprocessed as
one .npy file per image and per target::

    root/train/image/0.npy, 1.npy, ...     (H, W, 3) float, RGB in [0, 1]
                                           (or uint8 0..255, scaled by 1/255)
    root/train/<target>/0.npy, 1.npy, ...  one folder per target
    root/val/...                           the same for the evaluation split

The evaluation split is called ``val`` in that release (it is the test set of
the papers that use it). Files are numbered 0..N-1 without gaps.

An unreadable file (empty, truncated, damaged) raises a ValueError naming it;
so does a NaN or an infinity in any file, with its index.
"""

import fnmatch
import os
import re
from typing import Iterator, Mapping

import numpy as np

from fairgrad_jax.datasets import _files

_INDEXED = re.compile(r"^(\d+)\.npy$")


def _count_indexed(folder: str, what: str, layout: str) -> int:
  names = fnmatch.filter(os.listdir(folder), "*.npy")
  indices = sorted(int(m.group(1)) for m in map(_INDEXED.match, names) if m)
  if len(indices) != len(names):
    bad = sorted(n for n in names if not _INDEXED.match(n))[:3]
    raise ValueError(
        f"{what}: files in {folder!r} must be named 0.npy, 1.npy, ...;"
        f" found {bad}. Expected layout:\n{layout}"
    )
  if not indices:
    raise FileNotFoundError(
        f"{what}: no .npy files in {folder!r}. Expected layout:\n{layout}"
    )
  if indices != list(range(len(indices))):
    missing = sorted(set(range(indices[-1] + 1)) - set(indices))[:3]
    raise ValueError(
        f"{what}: files in {folder!r} must be numbered 0..N-1 without gaps;"
        f" missing {[f'{i}.npy' for i in missing]}."
    )
  return len(indices)


class MTANDataset:
  """One split of a dataset in MTAN's .npy layout (base of NYUv2/Cityscapes).

  Subclasses set ``name``, ``layout`` (a description for error messages) and
  ``targets``: a mapping from the key returned per example to
  (folder name, expected trailing shape of an example, where ``None`` entries
  match the image height and width).
  """

  name: str = ""
  layout: str = ""
  splits: tuple[str, ...] = ("train", "val")

  def __init__(self, root: str, split: str, targets: Mapping[str, tuple]):
    _files.check_split(split, self.splits, self.name)
    _files.require_dir(root, self.name, self.layout)
    self.root = root
    self.split = split
    split_dir = _files.require_dir(
        os.path.join(root, split), self.name, self.layout
    )
    self._folders = {"image": (os.path.join(split_dir, "image"), (3,))}
    for key, (folder, shape) in targets.items():
      self._folders[key] = (os.path.join(split_dir, folder), shape)
    counts = {}
    for key, (folder, _) in self._folders.items():
      _files.require_dir(folder, self.name, self.layout)
      counts[key] = _count_indexed(folder, self.name, self.layout)
    if len(set(counts.values())) != 1:
      raise ValueError(
          f"{self.name}: the folders of {split_dir!r} hold different numbers"
          f" of examples: {counts}."
      )
    self._size = counts["image"]

  def __len__(self) -> int:
    return self._size

  def _load(self, key: str, index: int, height=None, width=None) -> np.ndarray:
    folder, trailing = self._folders[key]
    path = os.path.join(folder, f"{index}.npy")
    if key == "image":
      expected = f"(H, W, {trailing[0]})"
    else:
      expected = "(" + ", ".join(["H", "W"] + [str(t) for t in trailing]) + ")"
    array = _files.load_npy(path, self.name,
                            f"a .npy array of shape {expected}")
    if key == "image":
      ok = array.ndim == 3 and array.shape[-1] == trailing[0]
    else:
      ok = (array.ndim == 2 + len(trailing)
            and array.shape[:2] == (height, width)
            and tuple(array.shape[2:]) == tuple(trailing))
    if not ok:
      raise ValueError(
          f"{self.name}: {path!r} has shape {array.shape}, expected {expected}"
          + (f" with H, W = {height}, {width}" if key != "image" else "")
          + f". Expected layout:\n{self.layout}"
      )
    if not (np.issubdtype(array.dtype, np.floating)
            or np.issubdtype(array.dtype, np.integer)):
      raise ValueError(f"{self.name}: {path!r} holds {array.dtype} values,"
                       " expected real numbers.")
    if key == "image" and not (np.issubdtype(array.dtype, np.floating)
                               or array.dtype == np.uint8):
      raise ValueError(
          f"{self.name}: image {path!r} has dtype {array.dtype}, expected"
          " floats in [0, 1] or uint8 in 0..255.")
    return _files.require_finite(array, self.name, path, key,
                                 ("row", "column", "channel"))

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    """Example ``index`` as a dict of float32 arrays (labels int32)."""
    if not 0 <= index < len(self):
      raise IndexError(f"index {index} out of range for {len(self)} examples.")
    image = self._load("image", index)
    height, width = image.shape[:2]
    if image.dtype == np.uint8:  # 0..255, scaled as documented to [0, 1]
      image = image.astype(np.float32) / 255.0
    example = {"image": image.astype(np.float32)}
    for key in self._folders:
      if key != "image":
        example[key] = self._load(key, index, height, width)
    return self._convert(example)

  def _convert(self, example: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return example

  def batches(
      self,
      batch_size: int,
      *,
      shuffle: bool = False,
      seed: int | None = None,
      drop_last: bool = False,
  ) -> Iterator[dict[str, np.ndarray]]:
    """One pass over the split, as dicts of stacked arrays (batch first)."""
    for index in _files.batch_indices(len(self), batch_size, shuffle=shuffle,
                                      seed=seed, drop_last=drop_last):
      examples = [self[int(i)] for i in index]
      yield {key: np.stack([e[key] for e in examples]) for key in examples[0]}
