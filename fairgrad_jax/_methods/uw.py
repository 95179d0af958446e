"""Uncertainty weighting (UW, Kendall, Gal & Cipolla, 2018)."""

from typing import Any, NamedTuple

import jax
import optax
from optax.experimental import aggregating

from fairgrad_jax import _aggregator
from fairgrad_jax import _gram
from fairgrad_jax._methods import _loss


class UWState(NamedTuple):
  """UW's state (``state.extra``).

  Attributes:
    log_variances: (K,) learned s_i = log σ_i²; the weights are exp(−s_i).
    opt_state: the state of the optimizer that learns them.
  """

  log_variances: jax.Array
  opt_state: Any




def uw_weighting(learning_rate: float = 0.025, *,
                 optimizer: optax.GradientTransformation | None = None
                 ) -> _aggregator.Weighting:
  r"""UW's :class:`Weighting`: weights exp(−s_i), s learned from the losses.

  At each call the weights are exp(−s) with the current s, then s takes one
  step of ``optimizer`` (default Adam at ``learning_rate``) on
  ∂/∂s_i = 1 − exp(−s_i) l_i (see :func:`uw`). The state is a
  :class:`UWState` (``init(K)`` needs K).

  Args:
    learning_rate: Adam's learning rate for s, finite and > 0 (ignored with
      ``optimizer``).
    optimizer: any optax transformation to learn s with, instead of Adam.

  Returns:
    A :class:`Weighting`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> weighting = fairgrad_jax.uw_weighting()
    >>> w, state = weighting(jnp.zeros((2, 2)), weighting.init(2),
    ...                      losses=jnp.array([4.0, 0.5]))
    >>> w, state.log_variances.round(4)
    (Array([1., 1.], dtype=float32), Array([ 0.025, -0.025], dtype=float32))

  References:
    Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh
    Losses for Scene Geometry and Semantics", CVPR 2018, arXiv:1705.07115.
  """
  return _loss.learned_scale_weighting("uw", -1.0, learning_rate, optimizer,
                                       UWState)


def uw(
    learning_rate: float = 0.025,
    *,
    optimizer: optax.GradientTransformation | None = None,
    num_tasks: int | None = None,
    shared: _gram.Mask = None,
    max_norm: float | None = None,
) -> aggregating.Aggregator:
  r"""Uncertainty weighting (UW): weights exp(−s_i) with learned log-variances.

  Kendall et al. minimise Σ_i exp(−s_i) l_i + s_i over the network and the
  log-variances s_i = log σ_i². Here s lives in ``state.extra``: at each call
  the update is d = Σ_i exp(−s_i) g_i with the current s, then s takes one
  step of ``optimizer`` (default Adam at ``learning_rate``) on
  ∂/∂s_i = 1 − exp(−s_i) l_i evaluated at this call's ``losses=`` — the
  same joint step as training s with the network. s starts at 0 (weights 1)
  and tends to log l_i. The default learning rate 0.025 is the
  ``method-params-lr`` of Nash-MTL's benchmark code, which the FairGrad paper
  uses. Needs ``losses=`` and ``num_tasks``.

  The losses must be finite and >= 0 (the paper's regression and
  classification losses; its optimum s_i = log l_i needs l_i > 0, and at
  l_i = 0 s_i keeps decreasing, so w_i keeps growing). A call with a
  negative or non-finite loss gives NaN weights, hence a NaN update that
  ``optax.apply_if_finite`` skips, and leaves the state (s and its optimizer
  state) as it was; so does a call whose update is not finite for another
  reason (non-finite gradients). For losses that can be negative (e.g. a
  Gaussian negative log-likelihood), shift them by a lower bound first.

  Args:
    learning_rate: Adam's learning rate for s, finite and > 0 (ignored with
      ``optimizer``).
    optimizer: any optax transformation to learn s with, instead of Adam.
    num_tasks: K (required).
    shared: which leaves are shared (only for the interface).
    max_norm: clip the global norm of the shared update (off).

  Returns:
    An :class:`optax.experimental.aggregating.Aggregator`; ``state.extra`` is
    a :class:`UWState`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> agg = fairgrad_jax.uw(num_tasks=2)
    >>> state = agg.init(None)
    >>> d, state = agg.update({"w": jnp.eye(2)}, state,
    ...                       losses=jnp.array([4.0, 0.5]))
    >>> state.weights  # exp(-0) at the first step
    Array([1., 1.], dtype=float32)
    >>> state.extra.log_variances.round(4)  # Adam's first step: -lr sign(1 - l)
    Array([ 0.025, -0.025], dtype=float32)

  References:
    Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh
    Losses for Scene Geometry and Semantics", CVPR 2018, arXiv:1705.07115.
  """
  _loss.needs_num_tasks("uw", num_tasks)
  return _aggregator.aggregator(
      uw_weighting(learning_rate, optimizer=optimizer), num_tasks=num_tasks,
      shared=shared, max_norm=max_norm)
