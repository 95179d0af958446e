"""Constant: fixed, user-given task weights, d = Σ_i w_i g_i (TorchJD's
``Constant``)."""

import math
import numbers
from typing import Sequence

import jax.numpy as jnp
import numpy as np
from optax.experimental import aggregating

from fairgrad_jax import _aggregator
from fairgrad_jax import _gram


def _check_weights(weights) -> tuple[float, ...]:
  """``weights`` as a tuple of K >= 1 finite floats.

  Raises:
    TypeError: not a 1-D sequence or array of real numbers.
    ValueError: empty, or an entry is NaN or infinite.
  """
  expected = "a 1-D sequence of K finite real numbers"
  if isinstance(weights, (str, bytes, numbers.Number)):
    raise TypeError(f"weights must be {expected}, got {weights!r}.")
  try:
    arr = np.asarray(weights)
  except Exception as e:  # pylint: disable=broad-except
    raise TypeError(f"weights must be {expected}, got {weights!r}.") from e
  if arr.ndim != 1 or arr.dtype == np.bool_ or not (
      np.issubdtype(arr.dtype, np.floating)
      or np.issubdtype(arr.dtype, np.integer)):
    raise TypeError(f"weights must be {expected}, got {weights!r}"
                    f" (shape {arr.shape}, dtype {arr.dtype}).")
  values = tuple(float(x) for x in arr)
  if not values:
    raise ValueError(f"weights must be {expected} (K >= 1), got an empty"
                     f" {weights!r}.")
  if not all(math.isfinite(x) for x in values):
    raise ValueError(f"weights must be {expected}, got {weights!r}.")
  return values


def constant_weighting(weights: Sequence[float]) -> _aggregator.Weighting:
  """Constant's :class:`Weighting`: the given weights at every step.

  Stateless, degree 1, no Gram matrix is formed. Task-specific leaves get
  Σ_i g_i (``weight_heads=False``), as TorchJD's ``mtl_backward`` gives
  every task-specific parameter its own task's plain gradient; for the
  gradient of Σ_i w_i l_i on the heads as well, use
  ``dataclasses.replace(constant_weighting(w), weight_heads=True)``.

  Args:
    weights: the K task weights, finite (any sign: TorchJD checks only the
      shape). The gradients must have K tasks: a Gram matrix (or stacked
      gradients) with another count raises a ValueError.

  Returns:
    A :class:`Weighting`.

  Raises:
    TypeError: ``weights`` is not a 1-D sequence of real numbers.
    ValueError: ``weights`` is empty or not finite.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> fairgrad_jax.constant_weighting([0.5, 2.0])(jnp.eye(2))[0]
    Array([0.5, 2. ], dtype=float32)

  References:
    TorchJD's ``Constant`` / ``ConstantWeighting`` (Quinton & Rey, "Jacobian
    Descent for Multi-Objective Optimization", arXiv:2406.16232).
  """
  weights = _check_weights(weights)
  k_weights = len(weights)

  def check_k(k):
    if k != k_weights:
      raise ValueError(f"constant was given {k_weights} weights {weights} but"
                       f" the gradients have {k} tasks.")

  def init(num_tasks):
    if num_tasks is not None:
      check_k(num_tasks)

  def apply(gram, state, *, losses, key, init):
    del losses, key, init
    check_k(gram.shape[0])  # static: raises while tracing
    return jnp.asarray(weights, gram.dtype), state

  return _aggregator.Weighting(name="constant", apply=apply, init=init,
                               hyperparams={"weights": weights},
                               needs_gram=False)


def constant(
    weights: Sequence[float],
    *,
    num_tasks: int | None = None,
    shared: _gram.Mask = None,
    scale_by_num_tasks: bool = False,
    max_norm: float | None = None,
) -> aggregating.Aggregator:
  r"""Constant: fixed task weights, d = Σ_i w_i g_i.

  The gradient of Σ_i w_i l_i on the shared leaves, with the K weights
  given once; task-specific leaves get Σ_i g_i (see
  :func:`constant_weighting`). Extra keyword arguments (``losses=``...)
  are ignored.

  Args:
    weights: the K finite task weights.
    num_tasks: K; when given, it must be ``len(weights)`` (checked now), and
      ``state.weights`` holds the weights.
    shared: which leaves are shared (see :func:`fairgrad`).
    scale_by_num_tasks: multiply the shared update by K (off).
    max_norm: clip the global norm of the shared update (off).

  Returns:
    An :class:`optax.experimental.aggregating.Aggregator`.

  Raises:
    TypeError, ValueError: bad ``weights`` (see :func:`constant_weighting`),
      or ``num_tasks`` other than ``len(weights)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> agg = fairgrad_jax.constant([1.0, 0.25])
    >>> agg
    constant(weights=(1.0, 0.25), num_tasks=None)
    >>> grads = {"w": jnp.array([[1.0, 0.0], [0.0, 4.0]])}
    >>> agg.update(grads, agg.init(None))[0]["w"]
    Array([1., 1.], dtype=float32)

  References:
    TorchJD's ``Constant`` (Quinton & Rey, "Jacobian Descent for
    Multi-Objective Optimization", arXiv:2406.16232).
  """
  return _aggregator.aggregator(constant_weighting(weights),
                                num_tasks=num_tasks, shared=shared,
                                scale_by_num_tasks=scale_by_num_tasks,
                                max_norm=max_norm)
