"""Many-task regression with very different loss scales, after GradNorm.

Chen et al. (2018), Section 4, build K regression tasks that share structure
but differ in scale:

    T_i(x) = σ_i · tanh((B + ε_i) x),   i = 1..K,

with B and ε_i constant (d_out × d_in) matrices whose entries are drawn
i.i.d. from N(0, 10) and N(0, 3.5) (variances), B shared by all tasks and ε_i
specific to task i. The scales σ_i set the size of each task's loss: here they
are spread geometrically over two decades, σ_i = σ_min (σ_max/σ_min)^(i/(K-1)),
so the mean squared errors differ by four orders of magnitude and a plain sum
of the losses is dominated by the last tasks.

What the paper leaves open, and what we chose:

* Inputs: x ~ N(0, I / (d_in (10 + 3.5))), so every pre-activation
  ((B + ε_i) x)_r has unit variance: tanh works in its curved range, neither
  linear nor saturated.
* No observation noise: the targets are exact.
* A fixed train / validation / test split drawn from one seed.

Targets are stored as (N, K, d_out). The natural per-task metric is the test
mean squared error divided by σ_i², which puts all tasks on the same scale
(:func:`normalized_mse`).

References:
  Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: Gradient Normalization
  for Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018,
  arXiv:1711.02257, Section 4.
"""

from typing import NamedTuple

import numpy as np

__all__ = [
    "RegressionSplit",
    "SyntheticRegression",
    "make_synthetic_regression",
    "normalized_mse",
]

_B_VARIANCE = 10.0
_EPSILON_VARIANCE = 3.5


class RegressionSplit(NamedTuple):
  """One split of the synthetic regression problem.

  Attributes:
    inputs: (N, d_in) float32.
    targets: (N, K, d_out) float32, ``targets[:, i]`` is T_i(x).
  """

  inputs: np.ndarray
  targets: np.ndarray


class SyntheticRegression(NamedTuple):
  """The splits and the task scales.

  Attributes:
    train: the training split.
    val: the validation split.
    test: the test split.
    sigmas: (K,) float32 task scales σ_i, increasing.
  """

  train: RegressionSplit
  val: RegressionSplit
  test: RegressionSplit
  sigmas: np.ndarray


def make_synthetic_regression(
    num_tasks: int = 10,
    *,
    input_dim: int = 250,
    output_dim: int = 100,
    sigma_min: float = 1.0,
    sigma_max: float = 100.0,
    num_train: int = 2_000,
    num_val: int = 500,
    num_test: int = 1_000,
    seed: int = 0,
) -> SyntheticRegression:
  """Draws the GradNorm regression tasks T_i(x) = σ_i tanh((B + ε_i) x).

  Args:
    num_tasks: K >= 1, the number of tasks (10 and 40 in the benchmark).
    input_dim: d_in (GradNorm: 250).
    output_dim: d_out, the output size of every task (GradNorm: 100).
    sigma_min: the smallest task scale, > 0.
    sigma_max: the largest task scale, >= sigma_min (two decades by default).
    num_train: number of training inputs.
    num_val: number of validation inputs.
    num_test: number of test inputs.
    seed: seed of B, ε_i and the inputs; the default gives the benchmark's
      fixed problem.

  Returns:
    A :class:`SyntheticRegression`.

  Examples:
    >>> from fairgrad_jax.datasets import make_synthetic_regression
    >>> data = make_synthetic_regression(3, input_dim=5, output_dim=2,
    ...                                  num_train=4, num_val=1, num_test=1)
    >>> data.train.targets.shape, data.sigmas.round(1).tolist()
    ((4, 3, 2), [1.0, 10.0, 100.0])
  """
  for name, value in (("num_tasks", num_tasks), ("input_dim", input_dim),
                      ("output_dim", output_dim), ("num_train", num_train),
                      ("num_val", num_val), ("num_test", num_test)):
    if int(value) != value or value < 1:
      raise ValueError(f"{name} must be a positive integer, got {value!r}.")
  if not 0 < sigma_min <= sigma_max < np.inf:
    raise ValueError(
        "need 0 < sigma_min <= sigma_max < inf, got"
        f" sigma_min={sigma_min}, sigma_max={sigma_max}."
    )
  rng = np.random.default_rng(seed)
  shared = rng.normal(0.0, np.sqrt(_B_VARIANCE), (output_dim, input_dim))
  specific = rng.normal(
      0.0, np.sqrt(_EPSILON_VARIANCE), (num_tasks, output_dim, input_dim)
  )
  weights = (shared[None] + specific).astype(np.float32)  # (K, d_out, d_in)
  flat_weights = weights.reshape(num_tasks * output_dim, input_dim)
  fraction = np.arange(num_tasks) / max(num_tasks - 1, 1)
  sigmas = (sigma_min * (sigma_max / sigma_min) ** fraction).astype(np.float32)
  input_std = 1.0 / np.sqrt(input_dim * (_B_VARIANCE + _EPSILON_VARIANCE))

  def split(num: int) -> RegressionSplit:
    x = (rng.normal(0.0, 1.0, (num, input_dim)) * input_std).astype(np.float32)
    pre = (x @ flat_weights.T).reshape(num, num_tasks, output_dim)
    y = sigmas[None, :, None] * np.tanh(pre)
    return RegressionSplit(inputs=x, targets=y.astype(np.float32))

  return SyntheticRegression(
      train=split(num_train),
      val=split(num_val),
      test=split(num_test),
      sigmas=sigmas,
  )


def normalized_mse(predictions, targets, sigmas) -> np.ndarray:
  """Per-task mean squared error divided by σ_i².

  Args:
    predictions: (N, K, d_out) predictions.
    targets: (N, K, d_out) targets.
    sigmas: (K,) task scales.

  Returns:
    (K,) float64: mean over examples and outputs of (pred - target)² / σ_i².

  Examples:
    >>> import numpy as np
    >>> from fairgrad_jax.datasets import normalized_mse
    >>> normalized_mse(np.ones((2, 2, 1)), np.zeros((2, 2, 1)), [1.0, 10.0])
    array([1.  , 0.01])
  """
  predictions = np.asarray(predictions, np.float64)
  targets = np.asarray(targets, np.float64)
  sigmas = np.asarray(sigmas, np.float64)
  if predictions.shape != targets.shape or predictions.ndim != 3:
    raise ValueError(
        "predictions and targets must both be (N, K, d_out), got"
        f" {predictions.shape} and {targets.shape}."
    )
  mse = np.mean((predictions - targets) ** 2, axis=(0, 2))
  return mse / sigmas**2
