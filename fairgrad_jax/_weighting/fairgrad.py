"""FairGrad's weights: the positive root of GᵀG w = w^(-1/α).

Ban & Ji (2024), Section 4, eq. (4). The maximiser of the α-fair utility
Σ_i (g_iᵀd)^(1-α)/(1-α) over the ball is d = G w with (g_iᵀd)^(-α) = w_i,
that is GᵀG w = w^(-1/α) elementwise (eq. 3 with c = 1, as the paper and the
authors' code take it).

How the solve works (all inside ``jit``):

* Diagonal preconditioning. With a_i = (GᵀG)_ii we write
  w_i = a_i^(-α/(1+α)) v_i. For orthogonal gradients v = 1 exactly, and the
  equation becomes M v ⊙ v^(1/α) = 1 with M_ij = C_ij (a_i/a_j)^γ,
  C the correlation matrix of the gradients and γ = (α-1)/(2(1+α)). M has a
  unit diagonal and depends only on ratios of gradient norms, so the solve is
  the same for gradients of norm 1e-6 and of norm 1e6: the paper's scaling law
  (GᵀG → c GᵀG gives w → c^(-α/(1+α)) w) holds exactly.
* Levenberg–Marquardt (jaxopt) on u = log v (so w > 0 without bounds) for
  r(u) = M v - v^(-1/α). Its Jacobian is T (GᵀG + diag(w^(-1/α-1))/α) S
  diag(v) with positive diagonal T, S: nonsingular, so ‖r‖² has no
  stationary point but the root (a relative residual r_i v_i^(1/α) would
  create spurious minima at v_i → 0). Thanks to the preconditioning every
  task weighs the same whatever its gradient norm; the authors' call (scipy's
  ``least_squares`` on A w - w^(-1/α) from w = 1/K) weighs the absolute
  residual, which is why it stops far from the root when norms differ by
  orders of magnitude. We stop on each task's relative residual.
* A task whose gradient is zero (a_i = 0) has no finite weight: (g_iᵀd)^(-α)
  is infinite. It drops out of the solve and gets weight 0.
* Rank-deficient Gram matrices (linearly dependent gradients, e.g. a Pareto
  stationary point) have no exact root. A relative Tikhonov term
  (C → C + λ I, i.e. GᵀG → GᵀG + λ diag(GᵀG)) makes the root exist and bounds
  the weights by about λ^(-α/(1+α)); it shifts well-conditioned solutions by
  O(λ) relatively. λ defaults to 10 machine epsilons (1.2e-6 in float32),
  the round-off level of the Gram matrix. This is our addition; the paper
  assumes independence.
* A final Newton step on the equation as given (no λ, no preconditioning)
  removes that O(λ) shift and the solver tolerance when the unregularized
  root is within 1%: the relative residual ends at the dtype's round-off
  (1e-7 in float32, 1e-16 in float64), where scipy's float64 answer rounded
  to the same dtype lands. Near rank deficiency the regularized root stays.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from fairgrad_jax import _jaxopt
from fairgrad_jax._weighting import _common

# Below this fraction of the largest squared gradient norm, a task counts as
# having a zero gradient. Norm ratios up to 1e15 stay in the solve.
_INACTIVE_RATIO = 1e-30
# Box for u = log v: [-_LOG_BOUND * α, _LOG_BOUND], so that v and v^(-1/α)
# stay below e^40 in float32; wide enough for every regularized root.
_LOG_BOUND = 40.0
# Saturation of residuals and Jacobian entries at trial points far from the
# root, so that jaxopt never sees inf (its branch masking turns 0 * inf into
# NaN). Near the root both are O(1).
_RESIDUAL_CAP = 1e15
_JACOBIAN_CAP = 1e17
# The final Newton step on the unregularized equation is taken only if it
# changes no weight by more than about 1% (see _polish).
_POLISH_MAX_STEP = 1e-2


class FairGradSolution(NamedTuple):
  """The weights and the solver's diagnostics.

  Attributes:
    weights: (K,) FairGrad weights, >= 0 (0 exactly for zero-gradient tasks).
    num_iterations: Levenberg–Marquardt iterations taken (int32).
    relative_residual: ‖GᵀG w - w^(-1/α)‖ / ‖w^(-1/α)‖ over the tasks with a
      non-zero gradient, for the Gram matrix given (without regularization).
  """

  weights: jax.Array
  num_iterations: jax.Array
  relative_residual: jax.Array


def check_alpha(alpha) -> float:
  """Returns α as a float, or raises ``ValueError`` if it is not allowed."""
  try:
    alpha = float(alpha)
  except (TypeError, ValueError):
    raise ValueError(
        f"alpha must be a finite number >= 0, got {alpha!r}."
    ) from None
  if not (alpha >= 0.0 and alpha < float("inf")):
    raise ValueError(
        f"alpha must be a finite number >= 0, got {alpha}. Use alpha=0 for"
        " linear scalarization, 1 for proportional fairness, 2 for minimum"
        " potential delay and a large value (e.g. 10) to approach max-min"
        " fairness; `mgda` gives the max-min limit itself."
    )
  return alpha


# The residual, its Jacobian and the stopping scale take (u, m, alpha, bound);
# u is clipped to [bound[0], bound[1]] so that a long trial step cannot
# overflow.


def _residual(u, m, alpha, bound):
  u = jnp.clip(u, *bound)
  r = m @ jnp.exp(u) - jnp.exp(-u / alpha)
  return jnp.clip(r, -_RESIDUAL_CAP, _RESIDUAL_CAP)


def _jacobian(u, m, alpha, bound):
  u = jnp.clip(u, *bound)
  jac = m * jnp.exp(u)[None, :] + jnp.diag(jnp.exp(-u / alpha) / alpha)
  return jnp.clip(jac, -_JACOBIAN_CAP, _JACOBIAN_CAP)


def _relative(u, m, alpha, bound):
  """Scales residual i by 1/v_i^(-1/α): the per-task relative residual."""
  del m
  return jnp.exp(jnp.clip(u, *bound) / alpha)


def _polish(weights, u, gram, m, active, alpha, bound):
  """One Newton step on the equation as given; returns (weights, residual).

  The Levenberg–Marquardt root solves the regularized, preconditioned
  equation to ``tol``: it is O(λ + tol) away from the root of GᵀG w =
  w^(-1/α) itself, and exp(u + log a_i^(-α/(1+α))) rounds large arguments.
  One Newton step on the relative residual of the Gram matrix as given
  (``gram``, inactive tasks zeroed) corrects both, multiplicatively
  (w ← w exp(δ)), up to the dtype's round-off: Newton converges
  quadratically from an O(λ) error. The step uses the preconditioned
  Jacobian at u (already clipped to ``bound``) without λ (``m``). It is kept only when it is finite, moves
  no weight by more than about 1% (``_POLISH_MAX_STEP``) and lowers the
  largest relative residual: near a rank-deficient Gram matrix, where the
  unregularized equation has no root, the regularized root stays.

  Returns the weights and the relative residual ‖GᵀG w - w^(-1/α)‖ /
  ‖w^(-1/α)‖ over the active tasks.
  """
  def relative_residual(w):
    target = jnp.where(active, jnp.where(active, w, 1.0) ** (-1.0 / alpha),
                       1.0)
    rel = jnp.where(active, (gram @ w) / target - 1.0, 0.0)
    return rel, target

  rel, target = relative_residual(weights)
  # In the preconditioned variables the residual is r_i = rel_i v_i^(-1/α).
  step = jnp.linalg.solve(_jacobian(u, m, alpha, bound),
                          -rel * jnp.exp(-u / alpha))
  polished = weights * jnp.exp(step)
  rel_polished, target_polished = relative_residual(polished)
  worst = jnp.max(jnp.abs(rel))
  ok = (jnp.all(jnp.isfinite(step))
        & (jnp.max(jnp.abs(step)) <= _POLISH_MAX_STEP)
        & (jnp.max(jnp.abs(rel_polished)) < worst))
  weights = jnp.where(ok, polished, weights)
  rel = jnp.where(ok, rel_polished, rel)
  target = jnp.where(ok, target_polished, target)
  # ‖rel ⊙ t‖ / ‖t‖ with t scaled to max 1, so the norms cannot overflow.
  target = jnp.where(active, target / jnp.max(jnp.where(active, target, 0.0)),
                     0.0)
  residual = jnp.linalg.norm(rel * target) / jnp.linalg.norm(target)
  return weights, jnp.where(jnp.any(active), residual, 0.0)


def fairgrad_solve(
    gram: jax.Array,
    alpha: float,
    *,
    init: jax.Array | None = None,
    maxiter: int = 100,
    tol: float = 1e-5,
    regularization: float | None = None,
) -> FairGradSolution:
  r"""Solves FairGrad's weight equation GᵀG w = w^(-1/α), w > 0.

  The pure solve behind :func:`fairgrad`: jittable, vmappable, no host
  callbacks. ``alpha`` and the solver settings are static.

  Args:
    gram: (K, K) Gram matrix GᵀG of the task gradients (symmetric PSD).
    alpha: fairness level α >= 0 (0: linear scalarization, every weight 1;
      1: proportional fairness; 2: minimum potential delay; large: max-min).
    init: optional (K,) starting weights (e.g. the previous step's); entries
      that are not positive and finite fall back to the default start.
    maxiter: maximum Levenberg–Marquardt iterations. Typical problems take
      3–15 (fewer when warm-started); gradient norms spread over six decades
      with α >= 5 can take 100–250.
    tol: stop Levenberg–Marquardt once every task's relative residual
      |(GᵀG w)_i - w_i^(-1/α)| / w_i^(-1/α) is at most ``tol``; the final
      Newton step then usually brings it to round-off (e.g. ``tol=1e-8``
      gives float64 round-off under x64).
    regularization: λ >= 0 in GᵀG + λ diag(GᵀG); bounds the weights when the
      gradients are linearly dependent (see the module docstring). Default:
      10 × the machine epsilon of the solve (1.2e-6 in float32, 2.2e-15 in
      float64), the level of round-off in the Gram matrix itself.

  Returns:
    A :class:`FairGradSolution`. Weights are NaN when ``gram`` is not finite.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> gram = jnp.array([[4.0, 0.0], [0.0, 1.0]])
    >>> sol = fairgrad_jax.fairgrad_solve(gram, alpha=1.0)
    >>> sol.weights.round(4)  # w_i = a_i^(-1/2) for orthogonal gradients
    Array([0.5, 1. ], dtype=float32)
    >>> bool(sol.relative_residual < 1e-5)
    True

  References:
    Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024,
    arXiv:2402.15638, Section 4, eq. (4).
  """
  alpha = check_alpha(alpha)
  gram = _common.as_gram(gram)
  dtype = gram.dtype
  if regularization is not None and not regularization >= 0:
    raise ValueError(f"regularization must be >= 0, got {regularization}.")
  if regularization is None:
    regularization = 10 * float(jnp.finfo(dtype).eps)
  k = gram.shape[0]

  if alpha == 0.0:
    # Linear scalarization: (g_iᵀd)^0 = 1 for every task (Section 4).
    return FairGradSolution(
        weights=jnp.ones((k,), dtype),
        num_iterations=jnp.zeros((), jnp.int32),
        relative_residual=jnp.zeros((), dtype),
    )

  finite = jnp.all(jnp.isfinite(gram))
  gram = jnp.where(finite, gram, 0.0)
  diag = jnp.diagonal(gram)
  active = diag > _INACTIVE_RATIO * jnp.max(diag)
  both_active = active[:, None] & active[None, :]
  safe_diag = jnp.where(active, diag, 1.0)
  log_diag = jnp.log(safe_diag)
  eye = jnp.eye(k, dtype=dtype)

  # Preconditioned matrix M_ij = C_ij (a_i / a_j)^γ, with inactive tasks
  # replaced by decoupled unit rows (their weight is discarded below).
  inv_norms = jax.lax.rsqrt(safe_diag)
  corr = gram * inv_norms[:, None] * inv_norms[None, :]
  corr = jnp.where(both_active, corr, eye) + regularization * eye
  gamma = (alpha - 1.0) / (2.0 * (1.0 + alpha))
  m = corr * jnp.exp(gamma * (log_diag[:, None] - log_diag[None, :]))

  # w_i = a_i^(-α/(1+α)) v_i, v = exp(u).
  log_scale = -(alpha / (1.0 + alpha)) * log_diag
  u0 = jnp.zeros((k,), dtype)
  if init is not None:
    init = jnp.asarray(init, dtype)
    if init.shape != (k,):
      raise ValueError(f"init must have shape ({k},), got {init.shape}.")
    init = jax.lax.stop_gradient(init)
    usable = (init > 0) & jnp.isfinite(init) & active
    u0 = jnp.where(usable, jnp.log(jnp.where(usable, init, 1.0)) - log_scale,
                   u0)
  bound = (-_LOG_BOUND * alpha, _LOG_BOUND)
  u0 = jnp.clip(u0, *bound)

  result = _jaxopt.levenberg_marquardt(
      _residual, _jacobian, u0, m, alpha, bound, maxiter=maxiter, tol=tol,
      # Or stop when a step changes no log-weight by more than the machine
      # epsilon: round-off then stops progress.
      xtol=float(jnp.finfo(dtype).eps),
      residual_scale_fn=_relative,
  )
  u = jnp.clip(result.params, *bound)
  weights = jnp.where(active, jnp.exp(u + log_scale), 0.0)
  weights, rel = _polish(weights, u, jnp.where(both_active, gram, 0.0),
                         m - regularization * eye, active, alpha, bound)

  nan = jnp.asarray(jnp.nan, dtype)
  return FairGradSolution(
      weights=jnp.where(finite, weights, nan),
      num_iterations=result.num_iterations,
      relative_residual=jnp.where(finite, rel, nan),
  )


def fairgrad_weights(gram: jax.Array, alpha: float, **solver_kwargs
                     ) -> jax.Array:
  """FairGrad weights from a Gram matrix: ``fairgrad_solve(...).weights``.

  Args:
    gram: (K, K) Gram matrix GᵀG of the task gradients.
    alpha: fairness level α >= 0.
    **solver_kwargs: ``init``, ``maxiter``, ``tol``, ``regularization`` of
      :func:`fairgrad_solve`.

  Returns:
    (K,) weights w with GᵀG w = w^(-1/α); the update is d = Σ_i w_i g_i.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import fairgrad_jax
    >>> g = jnp.array([[1.0, 0.0], [-0.5, 2.0]])  # two task gradients
    >>> w = jax.jit(fairgrad_jax.fairgrad_weights, static_argnums=1)(
    ...     g @ g.T, 2.0)
    >>> d = w @ g
    >>> bool(jnp.allclose(g @ d, w ** (-1 / 2.0), rtol=1e-4))  # (g_iᵀd)^-α = w_i
    True

  References:
    Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024,
    arXiv:2402.15638, Section 4, eq. (4).
  """
  return fairgrad_solve(gram, alpha, **solver_kwargs).weights
