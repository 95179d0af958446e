"""Mean: every task weighted 1/K, d = (1/K) Σ_i g_i (TorchJD's ``Mean``).

Linear scalarization (:func:`fairgrad_jax.linear_scalarization`, weights 1)
is TorchJD's ``Sum``; this is the same direction at 1/K of its length.
"""

import jax.numpy as jnp
from optax.experimental import aggregating

from fairgrad_jax import _aggregator
from fairgrad_jax import _gram


def mean_weighting() -> _aggregator.Weighting:
  """Mean's :class:`Weighting`: weights 1/K (no Gram matrix is formed).

  Stateless, degree 1. Task-specific leaves get Σ_i g_i
  (``weight_heads=False``), as TorchJD's ``mtl_backward`` gives every
  task-specific parameter its own task's plain gradient; for the gradient
  of the mean loss on the heads as well, use
  ``dataclasses.replace(mean_weighting(), weight_heads=True)``.

  Returns:
    A :class:`Weighting`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> fairgrad_jax.mean_weighting()(jnp.eye(4))[0]
    Array([0.25, 0.25, 0.25, 0.25], dtype=float32)

  References:
    TorchJD's ``Mean`` / ``MeanWeighting`` (Quinton & Rey, "Jacobian Descent
    for Multi-Objective Optimization", arXiv:2406.16232).
  """

  def apply(gram, state, *, losses, key, init):
    del losses, key, init
    k = gram.shape[0]
    return jnp.full((k,), 1.0 / k, gram.dtype), state

  return _aggregator.Weighting(name="mean", apply=apply, needs_gram=False)


def mean(
    *,
    num_tasks: int | None = None,
    shared: _gram.Mask = None,
    scale_by_num_tasks: bool = False,
    max_norm: float | None = None,
) -> aggregating.Aggregator:
  r"""Mean: the average of the task gradients, d = (1/K) Σ_i g_i.

  The gradient of (1/K) Σ_i l_i on the shared leaves; task-specific leaves
  get Σ_i g_i (see :func:`mean_weighting`). ``scale_by_num_tasks=True``
  gives Σ_i g_i, :func:`linear_scalarization` (TorchJD's ``Sum``). Extra
  keyword arguments (``losses=``...) are ignored.

  Args:
    num_tasks: K; when given, ``state.weights`` holds 1/K.
    shared: which leaves are shared (see :func:`fairgrad`).
    scale_by_num_tasks: multiply the shared update by K (off).
    max_norm: clip the global norm of the shared update (off).

  Returns:
    An :class:`optax.experimental.aggregating.Aggregator`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> agg = fairgrad_jax.mean()
    >>> grads = {"w": jnp.array([[1.0, 0.0], [0.0, 2.0]])}
    >>> agg.update(grads, agg.init(None))[0]["w"]
    Array([0.5, 1. ], dtype=float32)

  References:
    TorchJD's ``Mean`` (Quinton & Rey, "Jacobian Descent for
    Multi-Objective Optimization", arXiv:2406.16232).
  """
  return _aggregator.aggregator(mean_weighting(), num_tasks=num_tasks,
                                shared=shared,
                                scale_by_num_tasks=scale_by_num_tasks,
                                max_norm=max_norm)
