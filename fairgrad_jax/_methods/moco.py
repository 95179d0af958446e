"""MoCo: multi-objective gradient correction (Fernando et al., 2023).

Like GradDrop, MoCo is not a :class:`Weighting`: its update d = Σ_i λ_i y_i
is a combination of *tracked* gradients y_i, moving averages of the past
steps' normalised gradients, and neither y nor yᵢᵀyⱼ is a function of the
current Gram matrix and a finite state (y_i is a combination of every past
gradient, and yᵢᵀyⱼ needs their inner products with one another, which no
step's Gram matrix holds). So it keeps y, K copies of the shared
parameters, in its state and runs on stacked gradients only.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from optax.experimental import aggregating

from fairgrad_jax import _aggregator
from fairgrad_jax import _checks
from fairgrad_jax import _gram
from fairgrad_jax._methods import _loss
from fairgrad_jax._methods import _stacked


class MoCoState(NamedTuple):
  """MoCo's state (``state.extra``).

  Attributes:
    tracked: y, a list with one (K, ...) float32 array per shared leaf (in
      ``jax.tree.leaves`` order): the tracked gradients; None before the
      first step when ``init`` got no params.
    lambdas: (K,) λ, the weights of the tracked gradients (1/K at the
      start).
    count: calls so far, t (int32; β_t = β/t^σ_β, γ_t = γ/t^σ_γ).
  """

  tracked: Any
  lambdas: jax.Array
  count: jax.Array


def moco(
    beta: float = 0.5,
    beta_sigma: float = 0.5,
    gamma: float = 0.1,
    gamma_sigma: float = 0.5,
    rho: float = 0.0,
    *,
    num_tasks: int | None = None,
    shared: _gram.Mask = None,
) -> aggregating.Aggregator:
  r"""MoCo: MGDA-like weights on tracked (bias-corrected) gradients.

  Fernando et al. correct the bias of stochastic MGDA by tracking each
  task's gradient and updating the weights by one projected gradient step
  per iteration instead of solving for them. This follows LibMTL's
  ``MoCo`` (from the authors' code), at step t = 1, 2, ...:

      ĝ_i = l_i g_i / ‖g_i‖,
      y_i ← y_i − β_t (y_i − ĝ_i),                  β_t = β / t^σ_β,
      λ ← softmax(λ − γ_t (Y Yᵀ + ρ I) λ),          γ_t = γ / t^σ_γ,
      d = Σ_i λ_i y_i,

  from y = 0 and λ = 1/K, on the shared leaves (the task-specific ones get
  Σ_i g_i, as LibMTL's heads). Two differences from LibMTL: its
  normalisation g_i / (‖g_i‖ + 1e-8) has an absolute 1e-8 that has no
  meaning for gradients of arbitrary scale (here a zero gradient gives
  ĝ_i = 0 and d is homogeneous of degree 0 in the gradients); and the
  paper projects λ onto the simplex where LibMTL (and this) takes a
  softmax. The defaults are LibMTL's (β = 0.5, σ_β = 0.5, γ = 0.1,
  σ_γ = 0.5, ρ = 0). Needs ``losses=`` and ``num_tasks``.

  y is K copies of the shared parameters (LibMTL's K×P buffer):
  ``init(params)`` allocates it (the shared leaves are ``shared`` applied to
  the params); ``init(None)`` leaves it None until the first update, whose
  state then has a different structure (fine in a Python loop; under
  ``jax.lax.scan`` give the params). MoCo keeps that state across steps, so
  it runs on stacked gradients only, not Gram-only nor on a representation
  (LibMTL refuses representation gradients too).

  The losses must be finite and >= 0: a call with a loss that is not, or
  whose update is not finite for another reason, gives a NaN update that
  ``optax.apply_if_finite`` skips and leaves the state as it was.

  Args:
    beta: β in (0, 1], the tracking rate of y (LibMTL's 0.5).
    beta_sigma: σ_β >= 0, its decay β/t^σ_β (LibMTL's 0.5).
    gamma: γ > 0, the step size of λ (LibMTL's 0.1).
    gamma_sigma: σ_γ >= 0, its decay γ/t^σ_γ (LibMTL's 0.5).
    rho: ρ >= 0, the ℓ2 regularisation of λ's step (LibMTL's 0).
    num_tasks: K (required).
    shared: which leaves are shared (see :func:`fairgrad`).

  Returns:
    An :class:`optax.experimental.aggregating.Aggregator`; ``state.weights``
    is λ (the weights of the tracked gradients, not of this step's g_i) and
    ``state.extra`` a :class:`MoCoState`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> agg = fairgrad_jax.moco(num_tasks=2)
    >>> grads = {"w": jnp.array([[2.0, 0.0], [0.0, 1.0]])}
    >>> d, state = agg.update(grads, agg.init(grads["w"][0]),
    ...                       losses=jnp.array([1.0, 3.0]))
    >>> state.extra.tracked[0]  # β_1 ĝ = 0.5 l_i g_i/‖g_i‖
    Array([[0.5, 0. ],
           [0. , 1.5]], dtype=float32)
    >>> state.weights.round(4)  # softmax(1/2 − 0.1 (0.125, 1.125))
    Array([0.525, 0.475], dtype=float32)

  References:
    Fernando, Shen, Liu, Chaudhury, Murugesan & Chen, "Mitigating Gradient
    Bias in Multi-objective Learning: A Provably Convergent Approach",
    ICLR 2023, arXiv:2210.12624; LibMTL's ``LibMTL/weighting/MoCo.py``.
  """
  beta = _checks.real_hyperparameter("beta", beta, minimum=0.0, strict=True)
  if beta > 1.0:
    raise ValueError(f"beta must be in (0, 1], got {beta!r}.")
  beta_sigma = _checks.real_hyperparameter("beta_sigma", beta_sigma,
                                           minimum=0.0)
  gamma = _checks.real_hyperparameter("gamma", gamma, minimum=0.0,
                                      strict=True)
  gamma_sigma = _checks.real_hyperparameter("gamma_sigma", gamma_sigma,
                                            minimum=0.0)
  rho = _checks.real_hyperparameter("rho", rho, minimum=0.0)
  num_tasks = _checks.num_tasks(num_tasks)
  _loss.needs_num_tasks("moco", num_tasks)
  name = "moco"

  def init_fn(params):
    lambdas = jnp.full((num_tasks,), 1.0 / num_tasks, jnp.float32)
    return _aggregator.AggregatorState(
        weights=lambdas,
        extra=MoCoState(_stacked.initial_buffer(params, shared, num_tasks),
                        lambdas, jnp.zeros((), jnp.int32)))

  def update_fn(grads, state, params=None, *, losses=None, **extra_args):
    del extra_args
    extra = state.extra
    leaves, treedef, mask, shared_leaves, old_tracked, losses = (
        _stacked.check_update(name, grads, params, num_tasks, shared,
                              extra.tracked, losses, needs_losses=True))
    k = num_tasks
    dtype = _gram.solve_dtype(shared_leaves)
    ok = jnp.all(jnp.isfinite(losses) & (losses >= 0))
    l = jnp.where(ok, losses, 0).astype(dtype)
    count = jnp.minimum(extra.count + 1, 2**30)
    t = count.astype(dtype)
    beta_t = beta / t ** beta_sigma
    gamma_t = gamma / t ** gamma_sigma
    # ‖g_i‖ on g / 2^e (in range for any gradient scale); ĝ = l g/‖g‖.
    e = _gram.log2_scale(shared_leaves, dtype)
    scaled = [_gram.times_pow2(x.astype(dtype), -e) for x in shared_leaves]
    sq = sum(jnp.sum(jnp.square(x).reshape(k, -1), axis=1) for x in scaled)
    norms = jnp.sqrt(sq)
    inv_norms = jnp.where(norms > 0, 1 / jnp.where(norms > 0, norms, 1), 0)

    tracked = []
    for y, x in zip(old_tracked, scaled):
      per_task = (k,) + (1,) * (x.ndim - 1)
      # ĝ = l (g/‖g‖): the unit vector first (l/‖g‖ may overflow); y's
      # step as the convex combination (1 − β_t) y + β_t ĝ (y − ĝ may).
      g_hat = l.reshape(per_task) * (inv_norms.reshape(per_task) * x)
      tracked.append(((1 - beta_t) * y + beta_t * g_hat).astype(y.dtype))
    # Y Yᵀ on Y / 2^s, then λ's exponent with 4^s put back (exactly); an
    # exponent beyond the dtype's range is clipped to it: its softmax is
    # then the one-hot of the smallest (Y Yᵀ λ)_i.
    s = _gram.log2_scale(tracked, dtype)
    small = [_gram.times_pow2(y.astype(dtype), -s) for y in tracked]
    yy = sum(jnp.einsum("i...,j...->ij", y, y,
                        precision=jax.lax.Precision.HIGHEST) for y in small)
    lambdas = extra.lambdas.astype(dtype)
    step = _gram.times_pow2(gamma_t * (yy @ lambdas), 2 * s) + (
        gamma_t * rho * lambdas)
    big = jnp.finfo(dtype).max
    logits = jnp.clip(lambdas - step, -big, big)
    new_lambdas = jax.nn.softmax(logits - jnp.max(logits))
    new_lambdas = jnp.where(ok, new_lambdas, jnp.nan)
    shared_out = iter([
        y.astype(x.dtype) for y, x in zip(
            _gram.weighted_sums(new_lambdas, tracked), shared_leaves)])
    heads = iter(_gram.weighted_sums(
        jnp.ones((k,), dtype), [x for x, m in zip(leaves, mask) if not m]))
    out = [next(shared_out) if m else next(heads)
           for x, m in zip(leaves, mask)]
    updates = jax.tree.unflatten(treedef, out)
    new_state = _aggregator.AggregatorState(
        weights=new_lambdas.astype(state.weights.dtype),
        extra=MoCoState(tracked, new_lambdas.astype(extra.lambdas.dtype),
                        count))
    old_state = _aggregator.AggregatorState(
        weights=state.weights,
        extra=MoCoState(old_tracked, extra.lambdas, extra.count))
    return updates, _stacked.keep_if_bad(updates, new_state, old_state)

  return _aggregator.with_repr(
      init_fn, update_fn, name,
      {"beta": beta, "beta_sigma": beta_sigma, "gamma": gamma,
       "gamma_sigma": gamma_sigma, "rho": rho}
      | _aggregator.common_hyperparams(num_tasks, shared, False, None))
