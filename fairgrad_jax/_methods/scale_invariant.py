"""The scale-invariant (SI) loss: the gradient of Σ_i log l_i."""

import jax
import jax.numpy as jnp
from optax.experimental import aggregating

from fairgrad_jax import _aggregator
from fairgrad_jax import _gram
from fairgrad_jax._methods import _loss


def scale_invariant_weighting() -> _aggregator.Weighting:
  r"""SI's :class:`Weighting`: weights 1/l_i (stateless; needs the losses).

  A loss that is not finite and > 0 gives NaN weights (see
  :func:`scale_invariant`).

  Returns:
    A :class:`Weighting`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> fairgrad_jax.scale_invariant_weighting()(
    ...     jnp.zeros((2, 2)), losses=jnp.array([2.0, 0.5]))[0]
    Array([0.5, 2. ], dtype=float32)

  References:
    The SI baseline of Navon et al., "Multi-Task Learning as a Bargaining
    Game", ICML 2022, arXiv:2202.01017 (Section 6).
  """

  def apply(gram, state, *, losses, key, init):
    del key, init
    ok = jnp.all(jnp.isfinite(losses) & (losses > 0))
    return _loss.unless(ok, 1.0 / losses.astype(gram.dtype), state, state)

  return _loss.loss_weighting("scale_invariant", apply)


def scale_invariant(
    *,
    num_tasks: int | None = None,
    shared: _gram.Mask = None,
    max_norm: float | None = None,
) -> aggregating.Aggregator:
  r"""Scale-invariant (SI) loss: the gradient of Σ_i log l_i.

  d = Σ_i g_i / l_i, i.e. weights 1/l_i from ``losses=`` (required, > 0).
  Equivalently, linear scalarization of ``fair_loss(losses, 1.0)``; invariant
  to rescaling any task's loss.

  log l_i is defined for l_i > 0 only: a call with a loss that is not finite
  and > 0 gives NaN weights, hence a NaN update that
  ``optax.apply_if_finite`` skips (never the gradient ascent of a negative
  weight 1/l_i, nor the silent drop of a task with l_i = inf), and
  ``state.weights`` keeps the last good weights. For losses that can be
  negative (e.g. a Gaussian negative log-likelihood), shift them by a lower
  bound first.

  Args:
    num_tasks: K; when given, ``state.weights`` holds the last weights.
    shared: which leaves are shared (only for the interface).
    max_norm: clip the global norm of the shared update (off).

  Returns:
    An :class:`optax.experimental.aggregating.Aggregator`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> agg = fairgrad_jax.scale_invariant()
    >>> agg.update({"w": jnp.eye(2)}, agg.init(None),
    ...            losses=jnp.array([2.0, 0.5]))[0]["w"]
    Array([0.5, 2. ], dtype=float32)

  References:
    The SI baseline of Navon et al., "Multi-Task Learning as a Bargaining
    Game", ICML 2022, arXiv:2202.01017 (Section 6), and Ban & Ji, "Fair
    Resource Allocation in Multi-Task Learning", ICML 2024, arXiv:2402.15638.
  """

  return _aggregator.aggregator(scale_invariant_weighting(),
                                num_tasks=num_tasks, shared=shared,
                                max_norm=max_norm)
