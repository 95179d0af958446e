"""MGDA's weights: the min-norm point of the convex hull of the task gradients.

Sener & Koltun (2018), Section 3.1–3.2: the multiple-gradient descent
direction d = Σ_i w_i g_i minimises ‖Σ_i w_i g_i‖² over the simplex (Désidéri's
MGDA); −d is a descent direction for every task, or d = 0 at a Pareto
stationary point. For K = 2 the minimiser has a closed form (their Algorithm 1)
and for K > 2 they run Frank–Wolfe with that closed form as the exact line
search (their Algorithm 2), started from the best pair of tasks, as in their
``MinNormSolver.find_min_norm_element_FW``.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from fairgrad_jax import _checks
from fairgrad_jax._solvers import _common


class MGDASolution(NamedTuple):
  """The weights and the solver's diagnostics.

  Attributes:
    weights: (K,) weights on the simplex (non-negative, summing to 1), or
      all zero at a (numerically) Pareto-stationary point (d = 0 there).
    num_iterations: Frank–Wolfe and active-set iterations taken (int32; 0
      for K <= 2).
    squared_norm: ‖Σ_i w_i g_i‖² = wᵀ(GᵀG)w, in the units of ``gram``.
    converged: whether the active-set phase verified the minimiser's KKT
      conditions (to round-off) within ``maxiter`` iterations in all; True
      for K <= 2 (closed form). False for a Gram matrix that is not
      finite.
  """

  weights: jax.Array
  num_iterations: jax.Array
  squared_norm: jax.Array
  converged: jax.Array


def min_norm_2(v11, v12, v22):
  """Closed form of min_γ∈[0,1] ‖γ v1 + (1-γ) v2‖² (Sener & Koltun, Alg. 1).

  Args:
    v11, v12, v22: the inner products v1ᵀv1, v1ᵀv2, v2ᵀv2 (arrays broadcast).

  Returns:
    ``(gamma, delta, cost)``: the weight γ of v1, the weight δ = 1 - γ of v2
    computed on its own (1 - γ rounds to 0 where δ is below the dtype's
    epsilon, e.g. ‖v1‖ = 1e-7 ‖v2‖, yet the optimum needs it), and the
    minimal squared norm. The authors' code clips γ to [0.001, 0.999] at
    the two boundary cases; we return the exact 1 and 0.
  """
  denom = v11 + v22 - 2.0 * v12
  safe = jnp.where(denom > 0, denom, 1.0)
  first = v12 >= v11   # v1 itself is the minimiser
  second = ~first & (v12 >= v22)
  gamma = jnp.where(first, 1.0, jnp.where(second, 0.0, (v22 - v12) / safe))
  delta = jnp.where(first, 0.0, jnp.where(second, 1.0, (v11 - v12) / safe))
  # At an interior optimum d projects equally on v1 and v2: ‖d‖² = dᵀv1 =
  # γ v11 + δ v12 = dᵀv2 = γ v12 + δ v22; the form whose terms are the
  # smaller has the smaller round-off.
  interior = jnp.where(v11 <= v22, gamma * v11 + delta * v12,
                       gamma * v12 + delta * v22)
  cost = jnp.where(first, v11, jnp.where(second, v22, interior))
  return gamma, delta, cost


_REFINEMENTS = 3
# ‖d‖² below this many eps (Σ_i w_i ‖g_i‖)² is round-off (see mgda_solve).
_STATIONARY = 32.0


def _active_set(a, w, maxiter):
  """Wolfe's min-norm-point active-set method, started from ``w``.

  Frank–Wolfe stops on a small step: on tasks whose norms span decades
  (the weights of the large ones are tiny) or on conflicting tasks (it
  converges slowly) its weights can still be far from the minimiser, and
  then conflict with a task. Wolfe's method ("Finding the nearest point in
  a polytope", Math. Programming 11, 1976) finishes exactly: on the
  support S the affine minimiser solves A_SS v = μ 1, 1ᵀv = 1; a negative
  v_i moves w only to the boundary and drops the task there; else w = v,
  and a task with (A w)_t below wᵀAw (beyond round-off) joins S. The
  affine minimiser is solved in the gradients' correlations (A = N C N,
  N = diag ‖g_i‖; C's condition number is the directions' alone) with a
  step of iterative refinement on an eps-accurate residual.

  Returns ``(w, iterations, converged)``: converged when the KKT
  conditions hold to round-off within ``maxiter`` iterations.
  """
  k = a.shape[0]
  dtype = a.dtype
  eps = jnp.finfo(dtype).eps
  norms = jnp.sqrt(jnp.maximum(jnp.diagonal(a), 0.0))
  live = norms > 0
  inv = jnp.where(live, 1.0 / jnp.where(live, norms, 1.0), 0.0)
  eye = jnp.eye(k, dtype=dtype)
  corr = jnp.clip(a * inv[:, None] * inv[None, :], -1.0, 1.0)
  corr = jnp.where(eye > 0, 1.0, corr)

  def affine_minimiser(on):
    both = on[:, None] & on[None, :]
    c = jnp.where(both, corr, eye) + (10.0 * k * eps) * eye
    m = jnp.where(on, inv, 0.0)
    # m spans the decades of the norms: each refinement step divides the
    # error, relative to max m, by about cond(C) eps (three reach float
    # round-off from 1e7 spreads at cond(C) ~ 1e3).
    lu = jax.scipy.linalg.lu_factor(c)
    z = jax.scipy.linalg.lu_solve(lu, m)
    for _ in range(_REFINEMENTS):
      z = z + jax.scipy.linalg.lu_solve(lu, m - _common.accurate_matvec(c, z))
    v = jnp.where(on, z * inv, 0.0)
    total = jnp.sum(v)
    return v / jnp.where(total != 0, total, 1.0), total != 0

  def kkt(w):
    # A w with an eps-accurate product: its error is a few ulps of the
    # result, so a task joins S whenever (A w)_t < wᵀAw beyond that, even
    # where ‖d‖² is 1e-14 of the largest squared norm (the Gram matrix is
    # taken as exact; the rule of mgda_solve allows for its own rounding).
    aw = _common.accurate_matvec(a, w)
    f = jnp.dot(w, aw)
    slack = 16.0 * eps * (jnp.abs(f) + jnp.abs(aw))
    return aw, f, slack

  def cond(carry):
    _, _, it, done = carry
    return (it < maxiter) & ~done

  def body(carry):
    w, on, it, _ = carry
    v, ok = affine_minimiser(on)
    feasible = ok & jnp.all(jnp.where(on, v >= 0, True))
    # Minor cycle: from w towards v up to the first weight that hits 0.
    d = v - w
    shrink = on & (d < 0)
    ratio = jnp.where(shrink, w / jnp.where(shrink, -d, 1.0), jnp.inf)
    theta = jnp.clip(jnp.min(ratio), 0.0, 1.0)
    partial = jnp.maximum(w + theta * d, 0.0)
    dropped = on & (jnp.arange(k) == jnp.argmin(ratio))
    w_new = jnp.where(feasible, v, partial)
    w_new = w_new / jnp.sum(w_new)
    on_new = jnp.where(feasible, on, on & ~dropped & (partial > 0))
    # Major cycle: the task most below wᵀAw joins.
    aw, f, slack = kkt(w_new)
    t = jnp.argmin(jnp.where(on_new, jnp.inf, aw - f))
    violated = ~on_new[t] & (aw[t] < f - slack[t])
    done = feasible & ~violated
    on_new = jnp.where(feasible & violated, on_new.at[t].set(True), on_new)
    return w_new, on_new, it + 1, done | ~ok

  w, on, it, done = jax.lax.while_loop(
      cond, body, (w, w > 0, jnp.zeros((), jnp.int32),
                   jnp.zeros((), jnp.bool_)))
  return w, it, done & jnp.all(jnp.isfinite(w))


def mgda_solve(gram: jax.Array, *, maxiter: int = 250, tol: float = 1e-5
               ) -> MGDASolution:
  r"""Min-norm point of the convex hull of the task gradients, from GᵀG.

  Solves min_{w ∈ Δ_K} wᵀ(GᵀG)w. K = 1: w = 1. K = 2: the closed form of
  :func:`min_norm_2`. K > 2: Frank–Wolfe from the best pair of tasks; each
  step moves towards the vertex t = argmin_t (GᵀG w)_t with the exact line
  search of :func:`min_norm_2` (the authors' step), or moves weight from
  the support's worst task to t (a pairwise step, exact line search)
  when that lowers the norm more, and stops when the weights change by
  less than ``tol`` in the L1 norm (the authors' ``STOP_CRIT``) or after
  half of ``maxiter`` steps (their ``MAX_ITER`` = 250). The pairwise step
  is our addition: with the authors' step alone a task that should leave
  the support keeps a weight that shrinks only geometrically (10 tasks in
  100 dimensions: a support task 90% above the optimum after 2000 steps).
  Then Wolfe's active-set method (see :func:`_active_set`) finishes
  exactly from Frank–Wolfe's weights, with the rest of ``maxiter``: a
  small Frank–Wolfe step is not the minimiser, and where norms span
  decades or tasks conflict it stopped far from it (relative objective
  gap up to 1, the update then conflicting; measured by
  ``benchmarks.weighting_accuracy``). Our answer is the min-norm point
  to float32 round-off (the authors' too, up to their solver's
  tolerance). Jittable and vmappable.

  Args:
    gram: (K, K) Gram matrix GᵀG of the task gradients (symmetric PSD).
    maxiter: iterations at most (>= 1), Frank–Wolfe's (at most half) and
      the active-set method's together.
    tol: Frank–Wolfe stops once ‖w_{t+1} − w_t‖₁ < tol (finite, > 0).

  At a (numerically) Pareto-stationary point the min-norm element is 0
  and every task's g_iᵀd is 0 up to round-off. The weights returned are
  all zero (d = 0), as TorchJD returns below its relative ``norm_eps``,
  when ‖d‖² is below 32 eps (Σ_i w_i ‖g_i‖)² (what the Gram matrix's own
  rounding resolves), or when the computed d conflicts with a task by
  more than the Gram matrix's round-off (relative to the gradients'
  norms).

  Returns:
    An :class:`MGDASolution`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> sol = fairgrad_jax.mgda_solve(jnp.eye(3))  # orthonormal gradients
    >>> sol.weights.round(4)
    Array([0.3333, 0.3333, 0.3333], dtype=float32)

  References:
    Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization",
    NeurIPS 2018, arXiv:1810.04650 (Algorithms 1–2).
  """
  maxiter = _checks.int_hyperparameter("maxiter", maxiter, minimum=1)
  tol = _checks.real_hyperparameter("tol", tol, minimum=0.0, strict=True)
  gram = _common.as_gram(gram)
  dtype = gram.dtype
  k = gram.shape[0]
  zero_it = jnp.zeros((), jnp.int32)
  finite = jnp.all(jnp.isfinite(gram))
  if k == 1:
    return MGDASolution(jnp.ones((1,), dtype), zero_it, gram[0, 0], finite)

  # The weights do not depend on the scale of G: work with max diag = 1.
  scale = jnp.max(jnp.diagonal(gram))
  scale = jnp.where(scale > 0, scale, 1.0)
  a = gram / scale

  # Best pair (i < j) by the closed form.
  diag = jnp.diagonal(a)
  gamma, delta, cost = min_norm_2(diag[:, None], a, diag[None, :])
  upper = jnp.triu(jnp.ones((k, k), bool), 1)
  flat = jnp.argmin(jnp.where(upper, cost, jnp.inf))
  i, j = flat // k, flat % k
  w0 = jnp.zeros((k,), dtype).at[i].set(gamma[i, j]).at[j].add(delta[i, j])
  if k == 2:
    w0 = _common.zero_if_conflicting(a, w0)
    return MGDASolution(w0, zero_it, w0 @ gram @ w0, finite)

  # Frank–Wolfe (the authors' method) gets half the iterations and Wolfe's
  # active-set method, which finishes exactly, the rest.
  fw_maxiter = (maxiter + 1) // 2

  def cond(carry):
    _, it, change = carry
    return (it < fw_maxiter) & (change >= tol)

  def body(carry):
    w, it, _ = carry
    aw = a @ w
    waw = w @ aw
    t = jnp.argmin(aw)
    # The authors' Frank–Wolfe step towards vertex t, exact line search.
    g, g_t, fw_cost = min_norm_2(waw, aw[t], a[t, t])
    fw = (g * w).at[t].add(g_t)
    # A pairwise step (Lacoste-Julien & Jaggi, NeurIPS 2015): move weight
    # from the worst task of the support, s, to t. Plain Frank–Wolfe only
    # shrinks a bad task's weight geometrically and zigzags (O(1/t)); with
    # this step the iteration converges linearly to the same minimiser.
    s = jnp.argmax(jnp.where(w > 0, aw, -jnp.inf))
    curv = a[t, t] + a[s, s] - 2.0 * a[t, s]
    slope = aw[s] - aw[t]  # >= 0
    step = jnp.clip(slope / jnp.where(curv > 0, curv, 1.0), 0.0, w[s])
    step = jnp.where(curv > 0, step, jnp.where(slope > 0, w[s], 0.0))
    pw_cost = waw - 2.0 * step * slope + step ** 2 * curv
    pw = w.at[s].add(-step).at[t].add(step)
    pairwise = pw_cost < fw_cost
    new = jnp.where(pairwise, pw, fw)
    # A pairwise step that empties task s (a "drop" step) is as long as
    # w_s, however far from the optimum: it never counts as convergence.
    drop = pairwise & (step > 0) & (step >= w[s])
    change = jnp.where(drop, jnp.inf, jnp.sum(jnp.abs(new - w)))
    return new, it + 1, change

  w, it, change = jax.lax.while_loop(
      cond, body, (w0, zero_it, jnp.asarray(jnp.inf, dtype)))
  # Finish exactly (Frank–Wolfe's small step is not the optimum), with
  # Wolfe's active-set method from there; kept unless it raises wᵀAw
  # beyond round-off.
  w_as, it_as, converged = _active_set(a, w, maxiter - it)
  slack = 8 * k * jnp.finfo(dtype).eps * jnp.max(jnp.abs(a))
  better = (jnp.all(jnp.isfinite(w_as)) & jnp.all(w_as >= 0)
            & (w_as @ a @ w_as <= w @ a @ w + slack))
  w = jnp.where(better, w_as, w)
  it = it + it_as
  # Pareto-stationary up to round-off: ‖d‖² = wᵀAw is below what the Gram
  # matrix resolves (its entries carry about eps ‖g_i‖ ‖g_j‖), so d's
  # direction is noise: d = 0.
  # (The exact d = 0 of a zero gradient's vertex keeps its weights.)
  norms = jnp.sqrt(jnp.maximum(jnp.diagonal(a), 0.0))
  mass = norms @ jnp.abs(w)
  noise = ((w @ a @ w) <= _STATIONARY * jnp.finfo(dtype).eps * mass ** 2) & (
      mass > 0)
  w = jnp.where(noise, jnp.zeros_like(w), w)
  # At the optimum g_iᵀd >= ‖d‖² >= 0; a d that conflicts beyond round-off
  # only comes from a (numerically) Pareto-stationary point: d = 0 there.
  w = _common.zero_if_conflicting(a, w)
  return MGDASolution(w, it, w @ gram @ w, finite & better & converged)
