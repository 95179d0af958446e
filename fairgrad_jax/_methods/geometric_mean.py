"""Geometric loss strategy (GLS, Chennupati et al., 2019): the gradient of
the geometric mean of the losses."""

import jax.numpy as jnp
from optax.experimental import aggregating

from fairgrad_jax import _aggregator
from fairgrad_jax import _gram
from fairgrad_jax._methods import _loss


def geometric_mean_weighting() -> _aggregator.Weighting:
  r"""GLS's :class:`Weighting`: w_i = (Π_j l_j)^{1/K} / (K l_i) (stateless).

  The weights of the gradient of the geometric mean of the losses (see
  :func:`geometric_mean`), computed in logs, so any finite positive losses
  give finite weights. A loss that is not finite and > 0 gives NaN weights.

  Returns:
    A :class:`Weighting`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> w, _ = fairgrad_jax.geometric_mean_weighting()(
    ...     jnp.zeros((2, 2)), losses=jnp.array([4.0, 1.0]))
    >>> w  # (4·1)^(1/2) / (2 l_i)
    Array([0.25, 1.  ], dtype=float32)

  References:
    Chennupati, Sistu, Yogamani & Rawashdeh, "MultiNet++: Multi-Stream
    Feature Aggregation and Geometric Loss Strategy for Multi-Task
    Learning", CVPR 2019 Workshops, arXiv:1904.08492.
  """

  def apply(gram, state, *, losses, key, init):
    del key, init
    k = gram.shape[0]
    ok = jnp.all(jnp.isfinite(losses) & (losses > 0))
    log_l = jnp.log(jnp.where(ok, losses, 1).astype(gram.dtype))
    # ∂/∂l_i (Π l)^{1/K} = exp(mean(log l) − log l_i) / K, with no product
    # that overflows (many large losses) or underflows (many small ones).
    w = jnp.exp(jnp.mean(log_l) - log_l) / k
    return _loss.unless(ok, w, state, state)

  return _loss.loss_weighting("geometric_mean", apply)


def geometric_mean(
    *,
    num_tasks: int | None = None,
    shared: _gram.Mask = None,
    max_norm: float | None = None,
) -> aggregating.Aggregator:
  r"""Geometric loss strategy (GLS): the gradient of (Π_i l_i)^{1/K}.

  Chennupati et al. minimise the geometric mean of the K task losses,
  L = (Π_i l_i)^{1/K}, so that no task's scale dominates; its gradient is
  d = Σ_i w_i g_i with

      w_i = ∂L/∂l_i = (Π_j l_j)^{1/K} / (K l_i),

  from ``losses=`` (required). Equal losses give w_i = 1/K (the mean of the
  gradients); w_i l_i is the same for every task, so the weights are
  L / K times those of the scale-invariant loss Σ log l_i. This is what
  LibMTL's ``GLS`` applies (it back-propagates L); the ``batch_weight`` it
  returns for logging, l_i / (K Π_j l_j), is not these weights (for K = 2,
  l = (4, 1): it logs (0.5, 0.125) where the update uses (0.25, 1)), so the
  tests compare with the gradient of LibMTL's loss. The weights do not
  change when every loss is scaled by the same factor.

  The losses must be finite and > 0 (log l_i, as l_i^{1/K − 1} at l_i = 0,
  is unbounded; LibMTL's torch code gives inf or NaN there): a call with a
  loss that is not gives NaN weights, hence a NaN update that
  ``optax.apply_if_finite`` skips, and ``state.weights`` keeps the last good
  weights. Shift losses that can reach 0 (or go negative) by a bound first.

  Args:
    num_tasks: K; when given, ``state.weights`` holds the last weights.
    shared: which leaves are shared (only for the interface).
    max_norm: clip the global norm of the shared update (off).

  Returns:
    An :class:`optax.experimental.aggregating.Aggregator`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> agg = fairgrad_jax.geometric_mean(num_tasks=2)
    >>> d, state = agg.update({"w": jnp.eye(2)}, agg.init(None),
    ...                       losses=jnp.array([4.0, 1.0]))
    >>> state.weights  # (4·1)^(1/2) / (2 l_i)
    Array([0.25, 1.  ], dtype=float32)

  References:
    Chennupati, Sistu, Yogamani & Rawashdeh, "MultiNet++: Multi-Stream
    Feature Aggregation and Geometric Loss Strategy for Multi-Task
    Learning", CVPR 2019 Workshops, arXiv:1904.08492;
    LibMTL's ``LibMTL/weighting/GLS.py`` (Lin & Zhang, JMLR 2023).
  """
  return _aggregator.aggregator(geometric_mean_weighting(),
                                num_tasks=num_tasks, shared=shared,
                                max_norm=max_norm)
