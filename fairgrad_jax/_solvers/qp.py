"""Projections onto the dual cone of the task gradients: small box QPs.

Quinton & Rey (2024), Proposition 1: the projection of Jᵀu onto the dual cone
{x : Jx >= 0} of the rows of J (the task gradients) is Jᵀv with

  v = argmin_v vᵀ G v   subject to   v >= u,          G = J Jᵀ,

a QP with K variables and lower bounds only, in the Gram matrix alone. UPGrad
solves it for u = p_i e_i, i = 1..K; DualProj for u = p. TorchJD hands it to
quadprog on the host, on G/trace(G) + reg_eps I. Here it is solved inside
``jit`` by an exact active-set method (Lawson & Hanson's NNLS on x = v − u
>= 0): a K×K masked linear solve per step, finite termination, and the
active set's KKT conditions as the stopping test.
"""

import math
import numbers
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fairgrad_jax import _checks
from fairgrad_jax._solvers import _common


class DualConeSolution(NamedTuple):
  """The projections' weights and the solver's diagnostics.

  Attributes:
    weights: (..., K) the v of each projection, like ``u``: Jᵀv is the
      projection of Jᵀu onto the dual cone (v >= u).
    num_iterations: active-set steps taken (int32, per projection).
    residual: the KKT residual of each projection relative to the
      problem's scale, max(max_free |(Av)_j|, max_bound max(−(Av)_j, 0)) /
      (max_j A_jj · max_j |u_j|), with A the regularised, normalised Gram
      matrix (0 at the exact solution).
    converged: whether the active set met the KKT conditions up to ``tol``
      (see :func:`lower_bounded_qp`) rather than stopping at ``maxiter``;
      False for a Gram matrix that is not finite.
  """

  weights: jax.Array
  num_iterations: jax.Array
  residual: jax.Array
  converged: jax.Array


def _masked_solve(a, rhs, free):
  """s with A_FF s_F = rhs_F, s_B = 0 (F = free), as one K×K solve."""
  k = a.shape[0]
  both = free[:, None] & free[None, :]
  m = jnp.where(both, a, jnp.eye(k, dtype=a.dtype))
  s = jnp.linalg.solve(m, jnp.where(free, rhs, 0.0))
  return jnp.where(free, s, 0.0)


def lower_bounded_qp(a: jax.Array, u: jax.Array, *, maxiter: int = 250,
                     tol: float = 1e-6) -> DualConeSolution:
  r"""min_v ½ vᵀ A v subject to v >= u, for a symmetric positive definite A.

  With x = v − u >= 0 this is the non-negative QP min ½ xᵀAx + (Au)ᵀx, which
  Lawson & Hanson's active-set method solves exactly in finitely many
  steps: starting from x = 0 with every bound active, free the bound
  variable whose gradient (Av)_j is most negative, solve the equality-
  constrained problem on the free set, step back to feasibility (and bind
  the variables that hit their bound) while that solution leaves the box,
  and stop when freeing any bound variable would move it by less than
  tol · max_j |u_j| (−(Av)_j / A_jj below that), or its gradient is within
  round-off of 0. One iteration is one masked K×K solve; the typical count is the
  number of constraints that end up inactive (one per conflicting task for
  UPGrad's projections). Jittable and vmappable (vmap over ``u`` for
  several projections with the same A).

  Args:
    a: (K, K) symmetric positive definite matrix (a Gram matrix plus a
      ridge: a singular A may give non-finite weights).
    u: (K,) lower bounds.
    maxiter: active-set steps, at most (>= 1).
    tol: stationarity tolerance: how far, relative to max_j |u_j|, a bound
      variable may still move when freed (finite, > 0). Gradients below
      2 K ε max_j A_jj max_j |u_j| (ε of the dtype), round-off, count as
      0; a variable that round-off frees and the next step binds again
      stays bound.

  Returns:
    A :class:`DualConeSolution` (``weights`` is v).

  Examples:
    >>> import jax.numpy as jnp
    >>> from fairgrad_jax._solvers import qp
    >>> a = jnp.array([[1.0, -0.5], [-0.5, 1.0]])
    >>> sol = qp.lower_bounded_qp(a, jnp.array([1.0, 0.0]))
    >>> sol.weights, bool(sol.converged)  # v_2 freed to 0.5: (Av)_2 = 0
    (Array([1. , 0.5], dtype=float32), True)

  References:
    Lawson & Hanson, "Solving Least Squares Problems", Prentice-Hall 1974
    (Chapter 23, algorithm NNLS); Quinton & Rey, "Jacobian Descent for
    Multi-Objective Optimization", arXiv:2406.16232 (Proposition 1).
  """
  maxiter = _checks.int_hyperparameter("maxiter", maxiter, minimum=1)
  tol = _checks.real_hyperparameter("tol", tol, minimum=0.0, strict=True)
  a = _common.as_gram(a)
  dtype = a.dtype
  u = jnp.asarray(u, dtype)
  k = a.shape[0]
  if u.shape != (k,):
    raise ValueError(f"u must have shape ({k},), got {u.shape}.")
  c = a @ u
  scale = jnp.max(jnp.abs(jnp.diagonal(a))) * jnp.max(jnp.abs(u))
  eps = jnp.finfo(dtype).eps
  # Freeing bound variable j would move it by about −(Av)_j / A_jj: stop
  # when that is below tol · max|u| for every j, or when (Av)_j is within
  # the round-off of its K products.
  diag = jnp.diagonal(a)
  threshold = jnp.maximum(tol * jnp.max(jnp.abs(u)) * diag,
                          2 * k * eps * scale)
  finite = jnp.all(jnp.isfinite(a)) & jnp.all(jnp.isfinite(u))

  def cond(carry):
    return (~carry[3]) & (carry[2] < maxiter)

  def body(carry):
    x, free, it, _, blocked = carry
    s = _masked_solve(a, -c, free)
    feasible = jnp.all(jnp.where(free, s > 0, True))
    # Feasible: accept s; free the bound variable of most negative gradient
    # (or stop: KKT holds).
    grad = a @ s + c
    # Of the bound variables whose gradient is below its threshold, the one
    # that would move most: −(Av)_j / A_jj largest.
    violating = ~(free | blocked) & (grad < -threshold)
    j = jnp.argmin(jnp.where(violating, grad / diag, jnp.inf))
    optimal = ~jnp.any(violating)
    free_add = free.at[j].set(True)
    # Infeasible: move from x towards s until the first free variable hits
    # its bound; bind it (and any other that reached 0).
    leaving = free & (s <= 0)
    denom = x - s  # >= 0 where leaving
    ratio = jnp.where(leaving, jnp.where(denom > 0, x / jnp.where(
        denom > 0, denom, 1.0), 0.0), jnp.inf)
    alpha = jnp.clip(jnp.min(ratio), 0.0, 1.0)
    x_back = x + alpha * (s - x)
    hit = leaving & (ratio <= alpha)
    free_back = free & ~hit & (x_back > 0)
    x_back = jnp.where(free_back, x_back, 0.0)
    # A variable freed and bound again at once (round-off made its gradient
    # look negative) is not freed again until x moves: no cycling.
    stuck = hit & (x == 0) & (alpha == 0)
    x = jnp.where(feasible, s, x_back)
    free = jnp.where(feasible, jnp.where(optimal, free, free_add), free_back)
    blocked = jnp.where(feasible, blocked & optimal,
                        jnp.where(alpha > 0, stuck, blocked | stuck))
    done = (feasible & optimal) | ~finite
    return x, free, it + 1, done, blocked

  x0 = jnp.zeros((k,), dtype)
  false = jnp.zeros((k,), bool)
  x, free, it, done, _ = jax.lax.while_loop(
      cond, body,
      (x0, false, jnp.zeros((), jnp.int32), jnp.zeros((), bool), false))
  # A Gram matrix that is not finite gives NaN weights (a skipped step).
  v = jnp.where(finite, u + x, jnp.nan)
  grad = a @ v
  viol = jnp.where(free, jnp.abs(grad), jnp.maximum(-grad, 0.0))
  residual = jnp.max(viol) / jnp.where(scale > 0, scale, 1.0)
  converged = done & finite
  return DualConeSolution(weights=v, num_iterations=it, residual=residual,
                          converged=converged)


def regularized_gram(gram: jax.Array, norm_eps: float, reg_eps: float
                     ) -> jax.Array:
  """TorchJD's G/trace(G) + reg_eps I (0 + reg_eps I when trace(G) < norm_eps).

  The ridge is at least K ε (ε of the dtype) so that the solve stays finite
  on rank-deficient G with ``reg_eps=0``.

  The trace is taken after dividing by the largest diagonal entry, so that
  no sum overflows for entries near the dtype's largest number; the test
  trace(G) < norm_eps is made on the same quotient.
  """
  gram = _common.as_gram(gram)
  k = gram.shape[0]
  top = jnp.max(jnp.diagonal(gram))
  positive = top > 0
  top = jnp.where(positive, top, 1.0)
  a = gram / top
  trace = jnp.trace(a)
  small = ~positive | (trace <= 0) | (trace < norm_eps / top)
  a = jnp.where(small, 0.0, a / jnp.where(small, 1.0, trace))
  # A ridge of at least K ε (round-off of the normalised entries) keeps the
  # active-set solves finite on rank-deficient G when reg_eps = 0.
  ridge = jnp.maximum(reg_eps, k * jnp.finfo(a.dtype).eps).astype(a.dtype)
  return a + ridge * jnp.eye(k, dtype=a.dtype)


def project_to_dual_cone(gram: jax.Array, u: jax.Array, *,
                         norm_eps: float = 1e-4, reg_eps: float = 1e-4,
                         maxiter: int = 250, tol: float = 1e-6
                         ) -> DualConeSolution:
  r"""Weights of the projections of Jᵀu onto the dual cone of J's rows.

  Solves min_v vᵀ A v s.t. v >= u with A = G/trace(G) + reg_eps I (TorchJD's
  normalisation and regularisation; A = reg_eps I when trace(G) <
  norm_eps) by :func:`lower_bounded_qp`, vmapped over the rows of ``u``.

  Args:
    gram: (K, K) Gram matrix G = JJᵀ.
    u: (K,) or (M, K) weights of the vectors Jᵀu to project.
    norm_eps: trace below which G is treated as 0 (>= 0).
    reg_eps: ridge added to the normalised G (>= 0; > 0 keeps A positive
      definite for rank-deficient gradients).
    maxiter: active-set steps per projection, at most.
    tol: stationarity tolerance (see :func:`lower_bounded_qp`).

  Returns:
    A :class:`DualConeSolution` with fields shaped like ``u`` (weights) or
    ``u.shape[:-1]`` (diagnostics).

  Examples:
    >>> import jax.numpy as jnp
    >>> from fairgrad_jax._solvers import qp
    >>> g = jnp.array([[1.0, 0.0], [-1.0, 1.0]])  # conflicting gradients
    >>> sol = qp.project_to_dual_cone(g @ g.T, jnp.eye(2), reg_eps=0.0)
    >>> sol.weights.round(4)  # g_1 + g_2/2 ⟂ g_2 and g_1 + g_2 ⟂ g_1
    Array([[1. , 0.5],
           [1. , 1. ]], dtype=float32)
  """
  a = regularized_gram(gram, norm_eps, reg_eps)
  u = jnp.asarray(u, a.dtype)
  if u.ndim not in (1, 2) or u.shape[-1] != a.shape[0]:
    raise ValueError(f"u must have shape ({a.shape[0]},) or (M,"
                     f" {a.shape[0]}), got {u.shape}.")
  solve = lambda row: lower_bounded_qp(a, row, maxiter=maxiter, tol=tol)
  if u.ndim == 1:
    return solve(u)
  return jax.vmap(solve)(u)


def check_pref_vector(pref_vector) -> tuple[float, ...] | None:
  """A preference vector as a tuple of finite floats >= 0 (None stays None).

  Raises:
    TypeError: not a 1-D sequence or array of real numbers.
    ValueError: empty, or an entry is negative, NaN or infinite.
  """
  if pref_vector is None:
    return None
  if isinstance(pref_vector, (str, bytes, numbers.Number)):
    raise TypeError(f"pref_vector must be None or a 1-D sequence of K real"
                    f" numbers >= 0, got {pref_vector!r}.")
  try:
    arr = np.asarray(pref_vector)
  except Exception as e:  # pylint: disable=broad-except
    raise TypeError(f"pref_vector must be None or a 1-D sequence of K real"
                    f" numbers >= 0, got {pref_vector!r}.") from e
  if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.floating)
                           or np.issubdtype(arr.dtype, np.integer)) or (
                               arr.dtype == np.bool_):
    raise TypeError(f"pref_vector must be None or a 1-D sequence of K real"
                    f" numbers >= 0, got {pref_vector!r}.")
  values = tuple(float(x) for x in arr)
  if not values or not all(math.isfinite(x) and x >= 0 for x in values):
    raise ValueError(f"pref_vector must have K >= 1 finite entries >= 0, got"
                     f" {pref_vector!r}.")
  return values


def preference(pref_vector: Sequence[float] | None, k: int, dtype
               ) -> jax.Array:
  """(K,) preference weights: ``pref_vector``, or the mean 1/K if None."""
  if pref_vector is None:
    return jnp.full((k,), 1.0 / k, dtype)
  if len(pref_vector) != k:
    raise ValueError(f"pref_vector has {len(pref_vector)} entries but the"
                     f" Gram matrix is {k}×{k}: give one entry per task.")
  return jnp.asarray(pref_vector, dtype)
