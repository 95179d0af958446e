"""Small helpers shared by the on-disk dataset readers."""

import contextlib
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


@contextlib.contextmanager
def reading(path: str, what: str, expected: str) -> Iterator[None]:
  """Re-raises any failure to read or decode ``path`` with its name.

  NumPy, zipfile, Pillow and the text codecs fail on an empty, truncated or
  damaged file with EOFError, BadZipFile, OSError, UnicodeDecodeError, ...
  that do not say which file. Inside this context such an error becomes a
  ValueError (an OSError with an errno, a real I/O failure, stays an OSError
  of the same kind) whose message names the dataset, the file and what it
  should hold; the original error is chained as its cause. Keep only the
  reading and decoding inside the block, not the checks of what was read.

  Args:
    path: the file being read.
    what: the dataset, for the message ("QM9").
    expected: what the file should hold ("an .npz archive of ...").

  Raises:
    ValueError: the file could not be parsed or decoded.
    OSError: the file could not be read (permissions, a directory...).
  """
  try:
    yield
  except MemoryError:
    raise
  except Exception as error:  # pylint: disable=broad-except
    message = (f"{what}: cannot read {path!r}: expected {expected};"
               f" {type(error).__name__}: {error}")
    if isinstance(error, OSError) and error.errno is not None:
      raise OSError(error.errno, message) from error
    raise ValueError(message) from error


def load_npy(path: str, what: str, expected: str) -> np.ndarray:
  """``np.load`` of one .npy file (no pickles), failures naming ``path``."""
  with reading(path, what, expected):
    return np.load(path, allow_pickle=False)


def require_finite(array: np.ndarray, what: str, path: str, name: str,
                   index_names: Sequence[str] = ()) -> np.ndarray:
  """Returns ``array``, or raises ValueError at its first NaN or infinity.

  Args:
    array: data read from ``path``.
    what: the dataset, for the message.
    path: the file it came from.
    name: the array's name in that file (or what it holds).
    index_names: names of the leading axes, for the message ("molecule").
  """
  if not np.issubdtype(array.dtype, np.inexact):
    return array
  bad = ~np.isfinite(array)
  if np.any(bad):
    index = tuple(int(i) for i in np.argwhere(bad)[0])
    where = ", ".join(f"{n} {i}" for n, i in zip(index_names, index))
    raise ValueError(
        f"{what}: {name} in {path!r} holds {int(bad.sum())} non-finite"
        f" value(s), the first {array[index]} at index {index}"
        + (f" ({where})" if where else "")
        + "; the data must be finite."
    )
  return array
