"""Linear scalarization (LS): every task weighted 1, d = Σ_i g_i."""

import jax.numpy as jnp
from optax.experimental import aggregating

from fairgrad_jax import _aggregator
from fairgrad_jax import _gram


def linear_scalarization_weighting() -> _aggregator.Weighting:
  """LS's :class:`Weighting`: weights 1 (no Gram matrix is formed).

  Returns:
    A :class:`Weighting`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> fairgrad_jax.linear_scalarization_weighting()(jnp.eye(3))[0]
    Array([1., 1., 1.], dtype=float32)
  """

  def apply(gram, state, *, losses, key, init):
    del losses, key, init
    return jnp.ones(gram.shape[:1], gram.dtype), state

  return _aggregator.Weighting(name="linear_scalarization", apply=apply,
                               needs_gram=False)


def linear_scalarization(
    *,
    num_tasks: int | None = None,
    shared: _gram.Mask = None,
) -> aggregating.Aggregator:
  """Linear scalarization (LS): the sum of the task gradients, d = Σ_i g_i.

  The gradient of Σ_i l_i; FairGrad with α = 0. Same calling convention as
  :func:`fairgrad` (``shared`` only matters for the repr, every leaf gets the
  sum).

  Args:
    num_tasks: K; when given, ``state.weights`` holds ones.
    shared: accepted for a uniform interface.

  Returns:
    An :class:`optax.experimental.aggregating.Aggregator`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> agg = fairgrad_jax.linear_scalarization()
    >>> grads = {"w": jnp.array([[1.0, 0.0], [0.0, 2.0]])}
    >>> agg.update(grads, agg.init(None))[0]["w"]
    Array([1., 2.], dtype=float32)
  """
  return _aggregator.aggregator(linear_scalarization_weighting(),
                                num_tasks=num_tasks, shared=shared)
