"""IMTL-L, the loss balancing of impartial multi-task learning (Liu et al.,
2021)."""

from typing import Any, NamedTuple

import jax
import optax
from optax.experimental import aggregating

from fairgrad_jax import _aggregator
from fairgrad_jax import _gram
from fairgrad_jax._methods import _loss


class IMTLLState(NamedTuple):
  """IMTL-L's state (``state.extra``).

  Attributes:
    log_scales: (K,) learned s_i; the weights are exp(s_i).
    opt_state: the state of the optimizer that learns them.
  """

  log_scales: jax.Array
  opt_state: Any


def imtl_l_weighting(learning_rate: float = 1e-4, *,
                     optimizer: optax.GradientTransformation | None = None
                     ) -> _aggregator.Weighting:
  r"""IMTL-L's :class:`Weighting`: weights exp(s_i), s learned from the losses.

  At each call the weights are exp(s) with the current s, then s takes one
  step of ``optimizer`` (default Adam at ``learning_rate``) on
  ∂/∂s_i = exp(s_i) l_i − 1 (see :func:`imtl_l`). The state is an
  :class:`IMTLLState` (``init(K)`` needs K).

  Args:
    learning_rate: Adam's learning rate for s, finite and > 0 (ignored with
      ``optimizer``).
    optimizer: any optax transformation to learn s with, instead of Adam.

  Returns:
    A :class:`Weighting`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> weighting = fairgrad_jax.imtl_l_weighting(0.125)
    >>> w, state = weighting(jnp.zeros((2, 2)), weighting.init(2),
    ...                      losses=jnp.array([4.0, 0.5]))
    >>> w, state.log_scales.round(3)
    (Array([1., 1.], dtype=float32), Array([-0.125,  0.125], dtype=float32))

  References:
    Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards Impartial
    Multi-task Learning", ICLR 2021 (IMTL-L).
  """
  return _loss.learned_scale_weighting("imtl_l", 1.0, learning_rate, optimizer,
                                       IMTLLState)


def imtl_l(
    learning_rate: float = 1e-4,
    *,
    optimizer: optax.GradientTransformation | None = None,
    num_tasks: int | None = None,
    shared: _gram.Mask = None,
    max_norm: float | None = None,
) -> aggregating.Aggregator:
  r"""IMTL-L: loss weights exp(s_i) with learned log-scales s_i.

  Liu et al. make the scaled losses e^{s_i} l_i equal by minimising
  Σ_i (e^{s_i} l_i − s_i) over the network and the s_i, whose optimum is
  e^{s_i} = 1/l_i (every scaled loss at 1). Here s lives in ``state.extra``:
  at each call the update is d = Σ_i exp(s_i) g_i with the current s, then s
  takes one step of ``optimizer`` (default Adam at ``learning_rate``) on
  ∂/∂s_i = exp(s_i) l_i − 1 at this call's ``losses=`` — the joint step of
  LibMTL's ``IMTL`` (its loss part), where s is a parameter of the model and
  trained by the model's optimizer. s starts at 0 (weights 1). The default
  learning rate 1e-4 is LibMTL's default (Adam, lr 1e-4); LibMTL also
  applies its weight decay (1e-5) to s: to reproduce it, pass
  ``optimizer=optax.chain(optax.add_decayed_weights(1e-5),
  optax.adam(1e-4))``. (This is uncertainty weighting, :func:`uw`, with s
  replaced by −s.) IMTL-G, the gradient part of IMTL, is :func:`imtl_g`;
  the paper's full IMTL applies IMTL-G to the gradients of the scaled
  losses. Needs ``losses=`` and ``num_tasks``.

  The losses must be finite and >= 0 (at l_i = 0, s_i keeps growing, so
  w_i does too). A call with a negative or non-finite loss gives NaN
  weights, hence a NaN update that ``optax.apply_if_finite`` skips, and
  leaves the state (s and its optimizer state) as it was; so does a call
  whose update is not finite for another reason (non-finite gradients).

  Args:
    learning_rate: Adam's learning rate for s, finite and > 0 (ignored with
      ``optimizer``).
    optimizer: any optax transformation to learn s with, instead of Adam.
    num_tasks: K (required).
    shared: which leaves are shared (only for the interface).
    max_norm: clip the global norm of the shared update (off).

  Returns:
    An :class:`optax.experimental.aggregating.Aggregator`; ``state.extra`` is
    an :class:`IMTLLState`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> agg = fairgrad_jax.imtl_l(0.125, num_tasks=2)
    >>> state = agg.init(None)
    >>> d, state = agg.update({"w": jnp.eye(2)}, state,
    ...                       losses=jnp.array([4.0, 0.5]))
    >>> state.weights  # exp(0) at the first step
    Array([1., 1.], dtype=float32)
    >>> state.extra.log_scales.round(3)  # Adam's first step: -lr sign(l - 1)
    Array([-0.125,  0.125], dtype=float32)

  References:
    Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards Impartial
    Multi-task Learning", ICLR 2021 (IMTL-L); LibMTL's
    ``LibMTL/weighting/IMTL.py``.
  """
  _loss.needs_num_tasks("imtl_l", num_tasks)
  return _aggregator.aggregator(
      imtl_l_weighting(learning_rate, optimizer=optimizer),
      num_tasks=num_tasks, shared=shared, max_norm=max_norm)
