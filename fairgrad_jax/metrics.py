"""How multi-task methods are compared: Δm%, Mean Rank, mean ± std.

The two summary numbers of Ban & Ji (2024), Section 5.1:

* Δm%, the average relative performance drop of a method m against the
  single-task baseline b over the K reported metrics,

      Δm% = (1/K) Σ_k (-1)^{δ_k} (M_{m,k} - M_{b,k}) / M_{b,k} × 100,

  with δ_k = 1 when a higher value of metric k is better. Lower is better;
  negative means better than single-task learning on average. K counts
  metrics, not tasks: on NYU-v2 the nine columns of Table 2 (mIoU, pixel
  accuracy, ..., within 30°) each count once, as in the authors' code.
* Mean Rank (MR), each method's rank among the compared methods on every
  metric (1 = best), averaged over the metrics. Lower is better. Tied
  methods share a rank and the next method takes the next rank ("dense"
  ranking), which reproduces the paper's MR columns exactly.

Every number in the paper's tables is a mean over 3 seeds; :func:`mean_std`
gives the mean and the spread.

The rest of this module computes the per-task metrics of the paper's
benchmarks from predictions (NumPy only, so it runs on any host):
:func:`binary_f1` (CelebA), :func:`confusion_matrix` and
:func:`segmentation_scores` (mIoU and pixel accuracy), :func:`depth_errors`
and :func:`normal_errors` (NYU-v2 and Cityscapes, as in MTAN's code).
"""

from typing import NamedTuple

import numpy as np

__all__ = [
    "binary_f1",
    "confusion_matrix",
    "delta_m",
    "DepthErrors",
    "depth_errors",
    "mean_rank",
    "mean_std",
    "NormalErrors",
    "normal_errors",
    "SegmentationScores",
    "segmentation_scores",
]


def _direction(higher_is_better, num_metrics: int) -> np.ndarray:
  direction = np.asarray(higher_is_better)
  if direction.dtype != np.bool_:
    raise ValueError(
        "higher_is_better must hold booleans (True where a higher value of"
        f" the metric is better), got dtype {direction.dtype}."
    )
  direction = np.broadcast_to(direction, (num_metrics,))
  return direction


def delta_m(method, baseline, higher_is_better) -> np.ndarray:
  r"""Δm%: the average relative drop of a method against a baseline.

  Δm% = (1/K) Σ_k (-1)^{δ_k} (M_{m,k} - M_{b,k}) / M_{b,k} × 100, where
  δ_k = 1 if a higher value of metric k is better (Ban & Ji 2024, Sec. 5.1).
  The sign makes a worse value count as a positive drop whatever the metric's
  direction; lower Δm% is better.

  Args:
    method: metrics of the method, shape (..., K); leading axes (e.g. seeds or
      methods) are kept.
    baseline: metrics of the single-task baseline, broadcastable to
      ``method``; every entry must be non-zero.
    higher_is_better: bool, or (K,) bools, one per metric.

  Returns:
    Δm% with the leading shape of ``method`` (a float64 scalar for (K,)).

  Raises:
    ValueError: on a zero baseline entry, mismatched shapes or non-boolean
      directions.

  Examples:
    >>> import numpy as np
    >>> from fairgrad_jax import metrics
    >>> # accuracy 0.9 -> 0.99 (+10%, higher is better), error 2.0 -> 3.0 (+50%)
    >>> float(metrics.delta_m([0.99, 3.0], [0.9, 2.0], [True, False]))
    20.0
  """
  method = np.asarray(method, np.float64)
  baseline = np.asarray(baseline, np.float64)
  if method.ndim == 0:
    raise ValueError("method must have a trailing metric axis of size K.")
  num_metrics = method.shape[-1]
  try:
    baseline = np.broadcast_to(baseline, method.shape)
  except ValueError:
    raise ValueError(
        f"baseline of shape {baseline.shape} does not broadcast to the"
        f" method's metrics of shape {method.shape}."
    ) from None
  if np.any(baseline == 0):
    raise ValueError("Δm% divides by the baseline: every entry must be != 0.")
  direction = _direction(higher_is_better, num_metrics)
  # (-1)^δ_k: -1 where higher is better, +1 where lower is better.
  sign = np.where(direction, -1.0, 1.0)
  relative = sign * (method - baseline) / baseline
  return relative.mean(axis=-1) * 100.0


_TIES = ("dense", "average", "min")


def _ranks(values: np.ndarray, ties: str) -> np.ndarray:
  """Ranks from 1 of ``values`` (the lowest value ranks 1)."""
  distinct, inverse = np.unique(values, return_inverse=True)
  if ties == "dense":
    return inverse.astype(np.float64) + 1.0
  counts = np.bincount(inverse, minlength=len(distinct))
  first = np.concatenate([[0], np.cumsum(counts)[:-1]]) + 1.0  # best rank
  if ties == "min":
    return first[inverse]
  return (first + (counts - 1) / 2.0)[inverse]  # "average"


def mean_rank(table, higher_is_better, ties: str = "dense") -> np.ndarray:
  """Mean Rank: each method's rank on every metric, averaged over metrics.

  Rank 1 is the best method on a metric. The paper ranks the compared
  multi-task methods, not the single-task baseline: pass the rows to rank.

  Tied methods share a rank. The paper's MR columns (Tables 1, 2, 3 and 8)
  are reproduced exactly by *dense* ranking, where the method after a tie
  takes the next rank (values 1, 2, 2, 3 rank 1, 2, 2, 3), so that is the
  default; 'min' (1, 2, 2, 4) and 'average' (1, 2.5, 2.5, 4) are the other
  common conventions.

  Args:
    table: (M, K) metrics, one row per method (already averaged over seeds).
    higher_is_better: bool, or (K,) bools, one per metric.
    ties: 'dense' (the paper's), 'min' or 'average'.

  Returns:
    (M,) mean ranks.

  Examples:
    >>> from fairgrad_jax import metrics
    >>> # three methods, metrics: accuracy (higher better), error (lower better)
    >>> table = [[0.9, 1.0], [0.8, 0.5], [0.9, 2.0]]
    >>> metrics.mean_rank(table, [True, False])
    array([1.5, 1.5, 2. ])
    >>> metrics.mean_rank(table, [True, False], ties="average")
    array([1.75, 2.  , 2.25])
  """
  if ties not in _TIES:
    raise ValueError(f"ties must be one of {_TIES}, got {ties!r}.")
  table = np.asarray(table, np.float64)
  if table.ndim != 2:
    raise ValueError(f"table must be (methods, metrics), got {table.shape}.")
  if not np.all(np.isfinite(table)):
    raise ValueError("table must be finite to be ranked.")
  direction = _direction(higher_is_better, table.shape[1])
  oriented = np.where(direction, -table, table)  # lower is better everywhere
  ranks = np.stack([_ranks(column, ties) for column in oriented.T], axis=1)
  return ranks.mean(axis=1)


def mean_std(values, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Mean and sample standard deviation (ddof=1) over ``axis`` (the seeds).

  With a single value along ``axis`` the standard deviation is 0.

  Examples:
    >>> from fairgrad_jax import metrics
    >>> mean, std = metrics.mean_std([[1.0, 10.0], [3.0, 10.0]])
    >>> mean, std
    (array([ 2., 10.]), array([1.41421356, 0.        ]))
  """
  values = np.asarray(values, np.float64)
  n = values.shape[axis]
  mean = values.mean(axis=axis)
  std = values.std(axis=axis, ddof=1) if n > 1 else np.zeros_like(mean)
  return mean, std


# ----------------------------------------------------------------------------
# Per-task metrics of the paper's benchmarks.


def binary_f1(probabilities, labels, threshold: float = 0.5) -> np.ndarray:
  """F1 score per task of binary predictions (CelebA's metric in FAMO's code).

  Args:
    probabilities: (N, K) predicted probabilities of the positive class.
    labels: (N, K) labels in {0, 1}.
    threshold: a prediction is positive when its probability is above this.

  Returns:
    (K,) F1 scores (0 for a task with no positive label and prediction).

  Examples:
    >>> from fairgrad_jax import metrics
    >>> metrics.binary_f1([[0.9, 0.1], [0.8, 0.7]], [[1, 0], [0, 1]])
    array([0.66666667, 1.        ])
  """
  predicted = np.asarray(probabilities) > threshold
  labels = np.asarray(labels).astype(bool)
  if predicted.shape != labels.shape:
    raise ValueError(
        f"probabilities {predicted.shape} and labels {labels.shape} differ."
    )
  tp = np.sum(predicted & labels, axis=0).astype(np.float64)
  fp = np.sum(predicted & ~labels, axis=0)
  fn = np.sum(~predicted & labels, axis=0)
  denominator = 2 * tp + fp + fn
  return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)


def confusion_matrix(predicted, target, num_classes: int) -> np.ndarray:
  """(C, C) counts, rows the true class; targets outside [0, C) are ignored.

  MTAN's label maps mark unlabelled pixels with -1; they do not count.

  Examples:
    >>> from fairgrad_jax import metrics
    >>> metrics.confusion_matrix([0, 1, 1, 0], [0, 1, 0, -1], num_classes=2)
    array([[1, 1],
           [0, 1]])
  """
  predicted = np.asarray(predicted).reshape(-1).astype(np.int64)
  target = np.asarray(target).reshape(-1)
  valid = (target >= 0) & (target < num_classes)
  index = num_classes * target[valid].astype(np.int64) + predicted[valid]
  counts = np.bincount(index, minlength=num_classes**2)
  return counts.reshape(num_classes, num_classes)


class SegmentationScores(NamedTuple):
  """Semantic segmentation scores (both higher is better).

  Attributes:
    mean_iou: intersection over union averaged over the classes that occur
      in the target or the prediction.
    pixel_accuracy: fraction of labelled pixels classified correctly.
  """

  mean_iou: float
  pixel_accuracy: float


def segmentation_scores(confusion) -> SegmentationScores:
  """mIoU and pixel accuracy from a confusion matrix (MTAN's ``ConfMatrix``).

  Classes absent from both the target and the prediction (IoU 0/0) are left
  out of the mean rather than counted as NaN.

  Examples:
    >>> from fairgrad_jax import metrics
    >>> scores = metrics.segmentation_scores([[1, 1], [0, 1]])
    >>> round(scores.mean_iou, 4), round(scores.pixel_accuracy, 4)
    (0.5, 0.6667)
  """
  confusion = np.asarray(confusion, np.float64)
  intersection = np.diag(confusion)
  union = confusion.sum(0) + confusion.sum(1) - intersection
  present = union > 0
  iou = intersection[present] / union[present]
  total = confusion.sum()
  return SegmentationScores(
      mean_iou=float(iou.mean()) if iou.size else 0.0,
      pixel_accuracy=float(intersection.sum() / total) if total else 0.0,
  )


class DepthErrors(NamedTuple):
  """Depth errors over pixels with a valid (non-zero) target; lower is better.

  Attributes:
    absolute: mean |pred - target|.
    relative: mean |pred - target| / target.
  """

  absolute: float
  relative: float


def depth_errors(predicted, target) -> DepthErrors:
  """Absolute and relative depth error, as MTAN's ``depth_error``.

  Pixels whose target depth is 0 carry no measurement and are ignored.

  Args:
    predicted: (..., H, W) or (..., H, W, 1) predicted depth.
    target: same shape, the ground truth.

  Examples:
    >>> from fairgrad_jax import metrics
    >>> metrics.depth_errors([[1.0, 2.0, 5.0]], [[2.0, 2.0, 0.0]])
    DepthErrors(absolute=0.5, relative=0.25)
  """
  predicted = np.asarray(predicted, np.float64)
  target = np.asarray(target, np.float64)
  if predicted.shape != target.shape:
    raise ValueError(f"predicted {predicted.shape} != target {target.shape}.")
  valid = target != 0
  if not np.any(valid):
    raise ValueError("depth target has no valid (non-zero) pixel.")
  error = np.abs(predicted[valid] - target[valid])
  return DepthErrors(
      absolute=float(error.mean()),
      relative=float((error / np.abs(target[valid])).mean()),
  )


class NormalErrors(NamedTuple):
  """Surface normal angle errors in degrees (MTAN / Table 2 columns).

  Attributes:
    mean: mean angle error (lower is better).
    median: median angle error (lower is better).
    within_11_25: fraction of pixels within 11.25° (higher is better).
    within_22_5: fraction within 22.5° (higher is better).
    within_30: fraction within 30° (higher is better).
  """

  mean: float
  median: float
  within_11_25: float
  within_22_5: float
  within_30: float


def normal_errors(predicted, target) -> NormalErrors:
  """Angle between predicted and true unit normals, as MTAN's ``normal_error``.

  Pixels whose target normal is all zeros are unlabelled and ignored. The
  prediction is normalised to unit length first.

  Args:
    predicted: (..., 3) predicted normals (channel last).
    target: (..., 3) unit ground-truth normals, zeros where unlabelled.

  Examples:
    >>> from fairgrad_jax import metrics
    >>> errors = metrics.normal_errors([[0, 0, 2.0], [1.0, 0, 0]],
    ...                                [[0, 0, 1.0], [0, 1.0, 0]])
    >>> errors.mean, errors.within_11_25
    (45.0, 0.5)
  """
  predicted = np.asarray(predicted, np.float64)
  target = np.asarray(target, np.float64)
  if predicted.shape != target.shape or predicted.shape[-1] != 3:
    raise ValueError(
        f"normals must both be (..., 3), got {predicted.shape} and"
        f" {target.shape}."
    )
  valid = np.any(target != 0, axis=-1)
  if not np.any(valid):
    raise ValueError("normal target has no labelled (non-zero) pixel.")
  p = predicted[valid]
  p = p / np.maximum(np.linalg.norm(p, axis=-1, keepdims=True), 1e-12)
  cosine = np.clip(np.sum(p * target[valid], axis=-1), -1.0, 1.0)
  angle = np.degrees(np.arccos(cosine))
  return NormalErrors(
      mean=float(angle.mean()),
      median=float(np.median(angle)),
      within_11_25=float(np.mean(angle < 11.25)),
      within_22_5=float(np.mean(angle < 22.5)),
      within_30=float(np.mean(angle < 30)),
  )

