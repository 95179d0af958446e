"""MultiDigits: Sener & Koltun's MultiMNIST, built from scikit-learn's digits.

Sener & Koltun (2018) overlay two MNIST digits on one canvas, one shifted
up-left and one down-right, and ask for both labels (two classification
tasks). MNIST needs a download; scikit-learn ships 1,797 8×8 digits
(``sklearn.datasets.load_digits``, UCI optdigits), so we build the same
construction from those:

* The 1,797 source digits are split once into disjoint train / validation /
  test pools (60% / 20% / 20%, a fixed permutation), so no source digit of
  the test set is ever seen in training.
* Each example draws two source digits from its split's pool. The first is
  pasted at the top-left corner of an (8 + shift) × (8 + shift) canvas, the
  second at the bottom-right corner (offset ``shift`` pixels down and right);
  overlapping pixels take the maximum, and intensities are scaled to [0, 1].
* Task 0 ("top-left") is the first digit's label, task 1 ("bottom-right")
  the second's.

With the defaults the split is fixed: the same call always returns the same
arrays.

References:
  Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization",
  NeurIPS 2018, arXiv:1810.04650, Section 5.1 (MultiMNIST).
"""

from typing import NamedTuple

import numpy as np

__all__ = ["MULTIDIGITS_TASKS", "MultiDigits", "ImageSplit", "load_multidigits"]

MULTIDIGITS_TASKS = ("top-left", "bottom-right")

_DIGIT_SIZE = 8
_MAX_INTENSITY = 16.0
# Fractions of the 1,797 source digits in the train and validation pools.
_POOL_FRACTIONS = (0.6, 0.2)


class ImageSplit(NamedTuple):
  """One split of MultiDigits.

  Attributes:
    images: (N, S, S, 1) float32 in [0, 1], S = 8 + shift (channel last).
    labels: (N, 2) int32 digit labels, column k for task k.
  """

  images: np.ndarray
  labels: np.ndarray


class MultiDigits(NamedTuple):
  """The three splits of MultiDigits (see the module docstring)."""

  train: ImageSplit
  val: ImageSplit
  test: ImageSplit


def _overlay(first: np.ndarray, second: np.ndarray, shift: int) -> np.ndarray:
  n = first.shape[0]
  size = _DIGIT_SIZE + shift
  canvas = np.zeros((n, size, size), np.float32)
  canvas[:, :_DIGIT_SIZE, :_DIGIT_SIZE] = first
  window = canvas[:, shift:, shift:]
  np.maximum(window, second, out=window)
  return canvas / _MAX_INTENSITY


def _make_split(images, labels, pool, num, rng, shift) -> ImageSplit:
  first = rng.choice(pool, size=num)
  second = rng.choice(pool, size=num)
  canvas = _overlay(images[first], images[second], shift)
  return ImageSplit(
      images=canvas[..., None],
      labels=np.stack([labels[first], labels[second]], axis=1).astype(np.int32),
  )


def load_multidigits(
    *,
    num_train: int = 10_000,
    num_val: int = 2_000,
    num_test: int = 2_000,
    shift: int = 3,
    seed: int = 0,
) -> MultiDigits:
  """Builds MultiDigits from ``sklearn.datasets.load_digits`` (no download).

  Args:
    num_train: number of training examples.
    num_val: number of validation examples.
    num_test: number of test examples.
    shift: offset in pixels of the bottom-right digit, 1 <= shift <= 8; the
      canvas is (8 + shift) pixels square. 3 (37% of a digit) is close to
      MultiMNIST's 8 pixels of 28.
    seed: seed of the source-digit split and of the pairing; keep the default
      for the fixed split used by ``benchmarks.multidigits``.

  Returns:
    A :class:`MultiDigits` with train, val and test :class:`ImageSplit`.

  Examples:
    >>> from fairgrad_jax.datasets import load_multidigits
    >>> data = load_multidigits(num_train=4, num_val=2, num_test=2)
    >>> data.train.images.shape, data.train.labels.shape
    ((4, 11, 11, 1), (4, 2))
  """
  for name, value in (("num_train", num_train), ("num_val", num_val),
                      ("num_test", num_test)):
    if int(value) != value or value < 1:
      raise ValueError(f"{name} must be a positive integer, got {value!r}.")
  if int(shift) != shift or not 1 <= shift <= _DIGIT_SIZE:
    raise ValueError(f"shift must be an integer in [1, 8], got {shift!r}.")
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

  digits = load_digits()
  images = digits.images.astype(np.float32)
  labels = digits.target.astype(np.int32)
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(labels))
  n_train = int(_POOL_FRACTIONS[0] * len(labels))
  n_val = int(_POOL_FRACTIONS[1] * len(labels))
  pools = (order[:n_train], order[n_train:n_train + n_val],
           order[n_train + n_val:])
  splits = [
      _make_split(images, labels, pool, num, rng, shift)
      for pool, num in zip(pools, (num_train, num_val, num_test))
  ]
  return MultiDigits(*splits)
