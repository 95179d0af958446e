"""CAGrad's weights: conflict-averse update within a ball around the mean.

Liu, Liu, Jin, Stone & Liu (2021), Algorithm 1: with g0 the average gradient
and φ = c²‖g0‖², CAGrad maximises the worst local improvement min_i g_iᵀd
over ‖d − g0‖ ≤ √φ. Its dual is

  min_{w ∈ Δ_K}  g_wᵀg0 + √φ ‖g_w‖,   g_w = Σ_i w_i g_i,

and the update is d = g0 + (√φ/‖g_w‖) g_w, which the authors' code divides by
1 + c² (``rescale=1``, their default). Everything is in terms of GᵀG, so the
update is Σ_i λ_i g_i with λ_i = (1/K + √φ w_i/‖g_w‖) / (1 + c²).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from optax.experimental import aggregating

from fairgrad_jax import _aggregator
from fairgrad_jax import _checks
from fairgrad_jax import _gram
from fairgrad_jax._solvers import _common

# Relative smoothing of ‖g_w‖ (the authors' code adds 1e-8 in absolute terms).
_EPS = 1e-8
# ‖g_w‖ / max_i ‖g_i‖ below which g_w/‖g_w‖ is 0/0 (a Pareto-stationary
# point): λ = 0 (TorchJD's ``norm_eps``). Ten times the floor √_EPS that the
# smoothing puts on the dual solve's resolution of ‖g_w‖.
_NORM_EPS = 1e-3
# L1 change of the weights under one more projected-gradient step below
# which the dual solve counts as converged (MGDA's Frank–Wolfe tolerance).
_TOL = 1e-5


class CAGradInfo(NamedTuple):
  """Diagnostics of the last dual solve (CAGrad's state).

  Attributes:
    converged: whether one more projected-gradient step would move the
      dual weights by at most 1e-5 in the L1 norm (bool; False before the
      first step and for a Gram matrix that is not finite). The solve runs
      all ``maxiter`` iterations either way.
  """

  converged: jax.Array


def project_simplex(v: jax.Array) -> jax.Array:
  """Euclidean projection onto the probability simplex (sort-based)."""
  k = v.shape[0]
  u = jnp.sort(v)[::-1]
  css = jnp.cumsum(u) - 1.0
  ind = jnp.arange(1, k + 1, dtype=v.dtype)
  rho = jnp.max(jnp.where(u - css / ind > 0, ind, 0.0))
  theta = css[rho.astype(jnp.int32) - 1] / rho
  return jnp.maximum(v - theta, 0.0)


def _solve(gram, c, rescale, maxiter):
  """(λ, converged): the update's weights on the gradients (see below)."""
  gram = _common.as_gram(gram)
  dtype = gram.dtype
  k = gram.shape[0]
  # The weights do not depend on the scale of G: work with max diag = 1.
  scale = jnp.max(jnp.diagonal(gram))
  scale = jnp.where(scale > 0, scale, 1.0)
  a = gram / scale
  b = jnp.full((k,), 1.0 / k, dtype)
  ab = a @ b
  radius = c * jnp.sqrt(jnp.maximum(b @ ab, 0.0))  # √φ = c‖g0‖

  def f(w):
    return w @ ab + radius * jnp.sqrt(jnp.maximum(w @ a @ w, 0.0) + _EPS)

  def grad(w):
    aw = a @ w
    return ab + radius * aw / jnp.sqrt(jnp.maximum(w @ aw, 0.0) + _EPS)

  def body(_, carry):
    w, step = carry
    fw, gw = f(w), grad(w)

    def try_step(s):
      new = project_simplex(w - s * gw)
      diff = new - w
      ok = f(new) <= fw + gw @ diff + (diff @ diff) / (2 * s) + 1e-7 * abs(fw)
      return new, ok

    def cond(inner):
      _, _, ok, n = inner
      return (~ok) & (n < 30)

    def shrink(inner):
      _, s, _, n = inner
      s = s / 2
      new, ok = try_step(s)
      return new, s, ok, n + 1

    new, ok = try_step(step)
    new, step, ok, _ = jax.lax.while_loop(cond, shrink, (new, step, ok, 0))
    # Try a longer step next time, within bounds that keep w - s∇f finite.
    return jnp.where(ok, new, w), jnp.clip(step * 2, 1e-12, 1e6)

  w, step = jax.lax.fori_loop(0, maxiter, body,
                              (b, jnp.asarray(1.0, dtype)))
  # Converged: one more projected-gradient step (at the last accepted step
  # length) would move the weights by at most _TOL in the L1 norm.
  moved = jnp.sum(jnp.abs(project_simplex(w - (step / 2) * grad(w)) - w))
  converged = jnp.isfinite(moved) & (moved <= _TOL)
  gw_sq = jnp.maximum(w @ a @ w, 0.0)
  lam = b + radius / jnp.sqrt(gw_sq + _EPS) * w
  if rescale:
    lam = lam / (1.0 + c ** 2)
  # g_w = 0 at the dual optimum: a (numerically) Pareto-stationary point,
  # where d = g0 + √φ g_w/‖g_w‖ is 0/0 and cancels to noise: d = 0 (as
  # TorchJD). With c >= 1, d = 0 lies in the ball, so the optimum has
  # min_i g_iᵀd >= 0; a d that conflicts beyond round-off is replaced by 0.
  stationary = (gw_sq <= _NORM_EPS ** 2) | _common.numerically_zero(a, lam)
  safe = _common.zero_if_conflicting(
      a, jnp.where(stationary, jnp.zeros_like(lam), lam))
  return jnp.where(c >= 1.0, safe, lam), converged


def cagrad_weighting(c: float = 0.4, *, rescale: bool = True,
                     maxiter: int = 200) -> _aggregator.Weighting:
  r"""CAGrad's :class:`Weighting` (see :func:`cagrad_weights`).

  Task-specific leaves get Σ_i g_i (as in Nash-MTL's benchmark code, which
  the FairGrad paper uses). The state is the last solve's
  :class:`CAGradInfo`.

  Args:
    c: radius c >= 0 of the ball relative to ‖g0‖, finite.
    rescale: divide by 1 + c² (the authors' ``rescale=1``).
    maxiter: projected-gradient iterations of the dual solve (>= 1).

  Returns:
    A :class:`Weighting`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> weights, info = fairgrad_jax.cagrad_weighting(c=0.0)(jnp.eye(2))
    >>> weights, bool(info.converged)  # the mean gradient at c = 0
    (Array([0.5, 0.5], dtype=float32), True)

  References:
    Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent for
    Multi-task Learning", NeurIPS 2021, arXiv:2110.14048 (Algorithm 1).
  """
  c = _checks.real_hyperparameter("c", c, minimum=0.0)
  rescale = _checks.bool_hyperparameter("rescale", rescale)
  maxiter = _checks.int_hyperparameter("maxiter", maxiter, minimum=1)

  def apply(gram, state, *, losses, key, init):
    del state, losses, key, init
    lam, converged = _solve(gram, c, rescale, maxiter)
    return lam, CAGradInfo(converged=converged)

  return _aggregator.Weighting(
      name="cagrad", apply=apply,
      init=lambda num_tasks: CAGradInfo(converged=jnp.zeros((), jnp.bool_)),
      hyperparams={"c": c, "rescale": rescale})


def cagrad_weights(gram: jax.Array, c: float = 0.4, *, rescale: bool = True,
                   maxiter: int = 200) -> jax.Array:
  r"""CAGrad's weights on the task gradients, from GᵀG.

  Solves the dual min_{w ∈ Δ_K} wᵀGᵀG 1/K + c‖g0‖ √(wᵀGᵀGw) by projected
  gradient descent with a backtracking step (jittable; the authors use
  scipy's SLSQP), then returns λ with d = Σ_i λ_i g_i (see the module
  docstring). A view of :func:`cagrad_weighting`.

  Args:
    gram: (K, K) Gram matrix GᵀG.
    c: the radius c >= 0 of the ball, relative to ‖g0‖, finite (0: the
      mean gradient).
    rescale: divide the update by 1 + c², as the authors' code does by
      default.
    maxiter: projected-gradient iterations (>= 1).

  Pareto-stationary points, c >= 1: the ball then contains d = 0, so
  CAGrad's update never needs to conflict with a task (min_i g_iᵀd >= 0 at
  the optimum). At a (numerically) Pareto-stationary point the dual's g_w
  vanishes and d = g0 + √φ g_w/‖g_w‖ is 0/0; the weights are then 0
  (d = 0), as TorchJD returns below its relative ``norm_eps``: when
  ‖g_w‖ <= 1e-3 max_i ‖g_i‖, when d is 0 up to the round-off of its
  cancelling terms, or when d conflicts with a task beyond the Gram
  matrix's round-off. For c < 1, d = 0 is outside the ball and the update
  is the authors' formula as it is.

  Returns:
    (K,) weights λ.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> g = jnp.array([[1.0, 0.0], [0.0, 3.0]])
    >>> fairgrad_jax.cagrad_weights(g @ g.T, c=0.0)  # the mean gradient
    Array([0.5, 0.5], dtype=float32)

  References:
    Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent for
    Multi-task Learning", NeurIPS 2021, arXiv:2110.14048 (Algorithm 1).
  """
  return cagrad_weighting(c, rescale=rescale, maxiter=maxiter)(gram)[0]


def cagrad(
    c: float = 0.4,
    *,
    rescale: bool = True,
    num_tasks: int | None = None,
    shared: _gram.Mask = None,
    scale_by_num_tasks: bool = False,
    max_norm: float | None = None,
    maxiter: int = 200,
) -> aggregating.Aggregator:
  r"""CAGrad: the best worst-case improvement within a ball around the mean.

  d = (g0 + (√φ/‖g_w‖) g_w) / (1 + c²) with g0 the mean gradient, φ = c²‖g0‖²
  and w ∈ Δ_K the minimiser of g_wᵀg0 + √φ‖g_w‖ (see :func:`cagrad_weights`).
  We follow the authors' code, including its default division by 1 + c²
  (``rescale``); c = 0 gives the mean gradient. Task-specific leaves get
  Σ_i g_i (as in Nash-MTL's benchmark code, which the FairGrad paper uses).
  Extra keyword arguments (``losses=``...) are ignored.

  Args:
    c: radius c of the ball relative to ‖g0‖, finite and >= 0; 0.4 is the
      authors' default for their multi-task supervised experiments.
    rescale: divide by 1 + c² (the authors' ``rescale=1``).
    num_tasks: K; when given, ``state.weights`` holds the last weights λ
      (d = Σ_i λ_i g_i). ``state.extra`` is a :class:`CAGradInfo`.
    shared: which leaves are shared (see :func:`fairgrad`).
    scale_by_num_tasks: multiply the shared update by K (off).
    max_norm: clip the global norm of the shared update (off).
    maxiter: projected-gradient iterations of the dual solve.

  Returns:
    An :class:`optax.experimental.aggregating.Aggregator`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> agg = fairgrad_jax.cagrad(c=0.0)
    >>> grads = {"w": jnp.array([[1.0, 0.0], [-1.0, 3.0]])}
    >>> agg.update(grads, agg.init(None))[0]["w"]  # the mean at c = 0
    Array([0. , 1.5], dtype=float32)

  References:
    Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent for
    Multi-task Learning", NeurIPS 2021, arXiv:2110.14048.
  """
  return _aggregator.aggregator(
      cagrad_weighting(c, rescale=rescale, maxiter=maxiter),
      num_tasks=num_tasks, shared=shared,
      scale_by_num_tasks=scale_by_num_tasks, max_norm=max_norm)
