"""CR-MOGM (Zhou et al., NeurIPS 2022): a moving average of a weighting's
weights (MGDA's by default)."""

import math
import numbers
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from optax.experimental import aggregating

from fairgrad_jax import _aggregator
from fairgrad_jax import _checks
from fairgrad_jax import _gram
from fairgrad_jax._methods import _loss
from fairgrad_jax._solvers import mgda as mgda_solver


class CRMOGMState(NamedTuple):
  """CR-MOGM's state (``state.extra``).

  Attributes:
    weights: (K,) λ_{k−1}, the smoothed weights of the last step
      (``initial_weights``, or zeros until the first step).
    count: steps so far (int32); at the first step without
      ``initial_weights``, λ_0 = λ̂_1.
    inner: the wrapped weighting's own state (None for the default MGDA).
  """

  weights: jax.Array
  count: jax.Array
  inner: Any


def _min_norm_weighting() -> _aggregator.Weighting:
  """MGDA's min-norm weights (no normalisation), the default wrapped one."""

  def apply(gram, state, *, losses, key, init):
    del losses, key, init
    return mgda_solver.mgda_solve(gram).weights, state

  return _aggregator.Weighting(name="mgda", apply=apply, weight_heads=True)


def _check_initial_weights(initial_weights):
  if initial_weights is None:
    return None
  arr = None
  if not isinstance(initial_weights, (str, bytes, numbers.Number)):
    arr = np.asarray(initial_weights)
  if arr is None or arr.ndim != 1 or arr.dtype == np.bool_ or not (
      np.issubdtype(arr.dtype, np.floating)
      or np.issubdtype(arr.dtype, np.integer)):
    raise TypeError(f"initial_weights must be None or a 1-D sequence of K"
                    f" real numbers, got {initial_weights!r}.")
  values = tuple(float(x) for x in arr)
  if not values or not all(math.isfinite(x) for x in values):
    raise ValueError(f"initial_weights must have K >= 1 finite entries, got"
                     f" {initial_weights!r}.")
  return values


def cr_mogm_weighting(weighting: _aggregator.Weighting | None = None, *,
                      alpha: float = 0.9,
                      initial_weights: Sequence[float] | None = None
                      ) -> _aggregator.Weighting:
  r"""CR-MOGM's :class:`Weighting`: λ_k = α λ_{k−1} + (1 − α) λ̂_k.

  λ̂_k are the weights of the wrapped ``weighting`` at step k (MGDA's
  min-norm weights by default, the paper's main case); λ_0 is
  ``initial_weights``, or λ̂_1 when None (the first output is then λ̂_1
  whatever α), as TorchJD's ``CRMOGMWeighting``. The smoothing reduces the
  correlation between the weights and the current batch's noise, which
  gives stochastic MGDA-type methods their convergence guarantee. The
  state is a :class:`CRMOGMState` (``init(K)`` needs K). The heads,
  losses and Gram needs follow the wrapped weighting.

  The weights are averaged across steps in their own units, so the wrapped
  weighting must have degree 1 (scale-free weights: MGDA, UPGrad,
  PCGrad...); for another degree the average would mix steps whose
  gradients have different scales.

  The paper (Corollary 1) lets α_k grow towards 1 as the learning rate
  decays; α here is a fixed hyperparameter (a schedule: build with a
  traced α under ``optax.inject_hyperparams``).

  Args:
    weighting: the wrapped :class:`Weighting` (degree 1); None: MGDA's
      min-norm weights (Frank–Wolfe, as :func:`mgda_weighting`).
    alpha: α in [0, 1], the weight on the previous λ (TorchJD's 0.9; 0:
      the wrapped weights, 1: frozen at λ_0).
    initial_weights: λ_0, K finite reals; None: λ̂_1.

  Returns:
    A :class:`Weighting`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> weighting = fairgrad_jax.cr_mogm_weighting(alpha=0.5)
    >>> state = weighting.init(2)
    >>> w, state = weighting(jnp.diag(jnp.array([1.0, 4.0])), state)
    >>> w  # λ̂_1, MGDA's: 4/5, 1/5
    Array([0.8, 0.2], dtype=float32)
    >>> w, state = weighting(jnp.diag(jnp.array([4.0, 1.0])), state)
    >>> w  # (λ_1 + λ̂_2) / 2
    Array([0.5, 0.5], dtype=float32)

  References:
    Zhou, Zhang, Jiang, Zhong, Gu & Zhu, "On the Convergence of Stochastic
    Multi-Objective Gradient Manipulation and Beyond", NeurIPS 2022;
    TorchJD's ``CRMOGMWeighting``.
  """
  default = weighting is None
  inner = _min_norm_weighting() if default else _aggregator.check_weighting(
      weighting)
  if not (isinstance(inner.degree, numbers.Real) and inner.degree == 1):
    raise ValueError(f"cr_mogm averages weights across steps: the wrapped"
                     f" weighting must have degree 1 (scale-free weights),"
                     f" got {inner!r} of degree {inner.degree!r}.")
  alpha = _checks.real_hyperparameter("alpha", alpha, minimum=0.0)
  if isinstance(alpha, float) and alpha > 1.0:
    raise ValueError(f"alpha must be in [0, 1], got {alpha!r}.")
  initial_weights = _check_initial_weights(initial_weights)

  def init(num_tasks):
    _loss.needs_num_tasks("cr_mogm", num_tasks)
    if initial_weights is None:
      weights = jnp.zeros((num_tasks,), float)
    elif len(initial_weights) != num_tasks:
      raise ValueError(f"initial_weights has {len(initial_weights)} entries"
                       f" but num_tasks={num_tasks}: give one per task.")
    else:
      weights = jnp.asarray(initial_weights, float)
    return CRMOGMState(weights=weights, count=jnp.zeros((), jnp.int32),
                       inner=inner.init(num_tasks))

  def apply(gram, state, *, losses, key, init):
    del init  # the smoothed weights are no warm start of the wrapped solve
    lambda_hat, inner_state = inner.apply(gram, state.inner, losses=losses,
                                          key=key, init=None)
    lambda_hat = jnp.asarray(lambda_hat)
    previous = state.weights.astype(lambda_hat.dtype)
    if initial_weights is None:
      previous = jnp.where(state.count > 0, previous, lambda_hat)
    weights = alpha * previous + (1.0 - alpha) * lambda_hat
    return weights, CRMOGMState(weights=weights.astype(state.weights.dtype),
                                count=state.count + 1, inner=inner_state)

  hyperparams = {} if default else {"weighting": inner}
  hyperparams["alpha"] = alpha
  if initial_weights is not None:
    hyperparams["initial_weights"] = initial_weights
  return _aggregator.Weighting(
      name="cr_mogm", apply=apply, init=init, hyperparams=hyperparams,
      weight_heads=inner.weight_heads, needs_gram=inner.needs_gram,
      needs_losses=inner.needs_losses, keep_state_on_bad_step=True)


def cr_mogm(
    weighting: _aggregator.Weighting | None = None,
    *,
    alpha: float = 0.9,
    initial_weights: Sequence[float] | None = None,
    num_tasks: int | None = None,
    shared: _gram.Mask = None,
    scale_by_num_tasks: bool = False,
    max_norm: float | None = None,
) -> aggregating.Aggregator:
  r"""CR-MOGM: a method's weights smoothed by a moving average across steps.

  d = Σ_i λ_i g_i with λ_k = α λ_{k−1} + (1 − α) λ̂_k, λ̂_k the wrapped
  weighting's weights at step k (MGDA's min-norm weights by default); see
  :func:`cr_mogm_weighting`. Task-specific leaves are weighted as the
  wrapped method does (MGDA: the same weights). A step whose update is not
  finite keeps the state.

  Args:
    weighting: the wrapped :class:`Weighting` (degree 1), e.g.
      ``fairgrad_jax.upgrad_weighting()``; None: MGDA.
    alpha: α in [0, 1] (0.9).
    initial_weights: λ_0 (K finite reals); None: λ̂_1.
    num_tasks: K (required: λ carries over between steps).
    shared: which leaves are shared (see :func:`fairgrad`).
    scale_by_num_tasks: multiply the shared update by K (off).
    max_norm: clip the global norm of the shared update (off).

  Returns:
    An :class:`optax.experimental.aggregating.Aggregator`; ``state.extra`` is
    a :class:`CRMOGMState`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> agg = fairgrad_jax.cr_mogm(num_tasks=2)
    >>> d, state = agg.update({"w": jnp.array([[1.0, 0.0], [0.0, 2.0]])},
    ...                       agg.init(None))
    >>> [round(x, 4) for x in d["w"].tolist()]  # MGDA's: 4/5 g_1 + 1/5 g_2
    [0.8, 0.4]

  References:
    Zhou, Zhang, Jiang, Zhong, Gu & Zhu, "On the Convergence of Stochastic
    Multi-Objective Gradient Manipulation and Beyond", NeurIPS 2022.
  """
  _loss.needs_num_tasks("cr_mogm", num_tasks)
  return _aggregator.aggregator(
      cr_mogm_weighting(weighting, alpha=alpha,
                        initial_weights=initial_weights),
      num_tasks=num_tasks, shared=shared,
      scale_by_num_tasks=scale_by_num_tasks, max_norm=max_norm)
