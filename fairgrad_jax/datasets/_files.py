"""Small helpers shared by the on-disk dataset readers."""

import os
from typing import Iterator, Sequence

import numpy as np


def require_dir(path: str, what: str, layout: str) -> str:
  """Returns ``path`` if it is a directory, else raises FileNotFoundError."""
  if not os.path.isdir(path):
    raise FileNotFoundError(
        f"{what}: no directory {path!r}. Expected layout:\n{layout}"
    )
  return path


def require_file(path: str, what: str, layout: str) -> str:
  """Returns ``path`` if it is a file, else raises FileNotFoundError."""
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"{what}: no file {path!r}. Expected layout:\n{layout}"
    )
  return path


def batch_indices(
    num: int,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int | None,
    drop_last: bool,
) -> Iterator[np.ndarray]:
  """Yields index arrays of one pass over ``num`` examples."""
  if int(batch_size) != batch_size or batch_size < 1:
    raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
  order = (np.random.default_rng(seed).permutation(num) if shuffle
           else np.arange(num))
  stop = num - num % batch_size if drop_last else num
  for start in range(0, stop, batch_size):
    yield order[start:start + batch_size]


def check_split(split: str, allowed: Sequence[str], what: str) -> str:
  if split not in allowed:
    raise ValueError(f"{what}: split must be one of {tuple(allowed)}, got "
                     f"{split!r}.")
  return split
