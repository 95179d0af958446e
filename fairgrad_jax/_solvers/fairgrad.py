"""FairGrad's weights: the positive root of GᵀG w = w^(-1/α).

Ban & Ji (2024), Section 4, eq. (4). The maximiser of the α-fair utility
Σ_i (g_iᵀd)^(1-α)/(1-α) over the ball is d = G w with (g_iᵀd)^(-α) = w_i,
that is GᵀG w = w^(-1/α) elementwise (eq. 3 with c = 1, as the paper and the
authors' code take it).

How the solve works (all inside ``jit``, one ``lax.while_loop``):

* The equation is the stationarity condition of the strictly convex
  f(w) = ½ wᵀ GᵀG w + Σ_i φ(w_i) on w > 0, with φ'(w) = -w^(-1/α)
  (φ(w) = -w^p/p, p = 1 - 1/α; -log w at α = 1). Its Hessian
  GᵀG + diag(w^(-1/α-1)/α) is the equation's Jacobian, symmetric positive
  definite. We run damped Newton on f in the log-weights u = log w (so
  w > 0 without bounds): the step solves (W H W) Δu = -w ⊙ ∇f, a descent
  direction for f(e^u) whatever the distance to the root, and a backtracking
  (Armijo) search on f, evaluated for twelve step lengths at once (no nested
  loop), makes the iteration globally convergent; near the root it is
  Newton's method and converges quadratically. The change in f is computed
  task by task as a difference (never f(new) - f(old)), so tasks whose terms
  are decades below the largest still count in float32.
* Far from the root that step moves a log-weight by at most about α per
  iteration where the barrier term dominates. When every task's left-hand
  side (GᵀG w)_i w_i is positive, a second candidate is Newton's step on the
  equation in logarithms, log((GᵀG w)_i w_i) = log(w_i^(1-1/α)), which
  solves a task dominated by its own term (or by the others') in one step;
  both are searched at once and the one that lowers f more is taken
  (correlated gradients over seven decades: 2 iterations instead of 16).
* A third candidate follows Newton's direction on f along a different
  path: a weight that grows moves as Newton's step in w itself,
  w(1 + tΔx) (f is quadratic in w where the task's own term dominates; the
  exponential e^(tΔx) overshoots there), one that shrinks by
  -α log(1 - tΔx/α) (Newton's step on the equation in logarithms where the
  barrier term dominates). Both leave x with the same slope, so the
  backtracking search on f applies unchanged. With conflicting tasks, whose
  left-hand sides start negative (no logarithm), it takes about one to four
  iterations off the damped phase (issue 11's hard set at α >= 2).
* After a full Newton step (unit step length), each iteration adds a
  second Newton step from the new point (its own factorization), kept when
  it passes Armijo's test at unit length and is no longer than the first:
  two damped Newton steps per trip of the loop (fourth-order convergence
  near the root) for one more factorization and gradient evaluation, and
  no second line search or loop predicate (on an accelerator each trip
  costs a host round trip). The two steps' contraction also estimates the
  error left at the point returned, so the loop stops there rather than
  spend a trip confirming it. On issue 11's hard set every (K, α) takes a
  median of at most 5 iterations cold (K = 64, α = 10: 6.5 → 5 against a
  second step taken only after full steps of up to 4 log-units and kept
  only at half the first's size) at the same CPU time or less;
  warm-started from weights 1% off the root, every case takes one or two.
  (A chord correction with the first step's factor, Shamanskii's method,
  did this before; on ill-conditioned conflicting tasks it contracted
  little.)
* Newton's iterates do not depend on a diagonal rescaling of w, so the
  weights are written w_i = a_i^(-α/(1+α)) e^(x_i) (a_i = ‖g_i‖², the
  orthogonal-gradient closed form, which is also the cold start x = 0) only
  for the arithmetic: every quantity is held as a logarithm and the Newton
  matrix is scaled to a unit diagonal, so gradient norms 1e-15 … 1e15 and
  weights spanning 1e30 meet no overflow. The paper's scaling law
  (GᵀG → c GᵀG gives w → c^(-α/(1+α)) w) holds exactly. Warm-started
  (``init``, e.g. the previous step's weights) a slowly drifting problem
  takes 1–2 iterations.
* We stop once every task's relative residual
  |(GᵀG w)_i / w_i^(-1/α) - 1| is at most ``tol``, or a full Newton step
  changed no weight by more than ``tol`` relatively (the weights are then
  within about tol² of the root, even where the residual of a task whose
  (GᵀG w)_i cancels cannot be brought below round-off times the
  cancellation), or when no step length decreases f (round-off), or at
  ``maxiter``.
* A task whose gradient is zero (a_i = 0) has no finite weight: (g_iᵀd)^(-α)
  is infinite. It drops out of the solve and gets weight 0.
* Rank-deficient Gram matrices (linearly dependent gradients, e.g. a Pareto
  stationary point) may have no root: f is unbounded below along a
  non-negative null direction. A relative Tikhonov term
  (GᵀG → GᵀG + λ diag(GᵀG)) makes the root exist and bounds the weights by
  about λ^(-α/(1+α)); it shifts well-conditioned solutions by O(λ)
  relatively. λ defaults to 10 machine epsilons (1.2e-6 in float32), the
  round-off level of the Gram matrix itself. This is our addition; the paper
  assumes independence.
* A final Newton step on the equation as given (λ = 0) removes that O(λ)
  shift when the unregularized root is within 1%: the relative residual ends
  at the dtype's round-off (1e-7 in float32, 1e-16 in float64), where
  scipy's float64 answer rounded to the same dtype lands; where conflicting
  tasks make GᵀG w cancel, at what the float64 root rounded to the dtype
  leaves (on issue 11's hard set within about 2x that, often below it). Near
  rank deficiency the regularized root stays.

The authors' code solves the same equation with scipy's ``least_squares``
from w = 1/K on the host; it weighs the absolute residual, which is why it
stops far from the root when norms differ by orders of magnitude.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fairgrad_jax import _checks
from fairgrad_jax import _jaxopt
from fairgrad_jax import _aggregator
from fairgrad_jax._solvers import _common

# Below this fraction of the largest squared gradient norm, a task counts as
# having a zero gradient. Norm ratios up to 1e15 stay in the solve.
_INACTIVE_RATIO = 1e-30
# Bound on x = log(w / a^(-α/(1+α))), far beyond any root whose weights
# the dtype can hold (the logarithms keep the arithmetic finite anyway).
_X_BOUND = 200.0
# No Newton step moves a log-weight by more than this (the direction is
# scaled down as a whole, so it stays a descent direction).
_MAX_STEP = 30.0
# ... nor, along the weight path (see _weight_path), lowers one by more than
# this.
_MAX_WEIGHT_STEP = 60.0
# Step lengths tried by the line search: 1, 1/2, ..., 2^-(_NUM_STEPS - 1).
_NUM_STEPS = 12
# Rows of C q whose largest term is within e^_LINEAR_RANGE of the largest q
# are summed in linear scale (see _terms).
_LINEAR_RANGE = 60.0
# Armijo's sufficient-decrease constant.
_ARMIJO = 1e-4
# The Newton loop stops when full Newton steps shorter than _LOCAL (in
# log-weights) have not cut its largest residual by _PROGRESS for this many
# iterations: the residual is then at the round-off floor of its evaluation.
_PATIENCE = 2
# Contraction factor below which two full Newton steps count as being in
# Newton's quadratic phase (the remaining error is then θ² · the step).
_QUADRATIC = 0.25
_LOCAL = 0.1
_PROGRESS = 0.5
# The final Newton steps on the unregularized equation are taken only if
# they change no weight by more than about 1% (see _polish).
_POLISH_MAX_STEP = 1e-2
_POLISH_STEPS = 2
# The polishing steps' Cholesky jitter, in units of K eps (the loop's is 10;
# see _factor); the loop's where this one leaves the factor singular.
_POLISH_JITTER = 1.0
# At the residual's round-off floor, converged allows a last Newton
# correction of up to this many times tol (see _solve_weights).
_FLOOR_STEPS = 10.0
# The second Newton step of an iteration follows full steps of at most this
# size (in log-weights): any full Newton step, not a longer move along the
# weight path.
_SECOND_STEP_RANGE = _MAX_STEP


class FairGradSolution(NamedTuple):
  """The weights and the solver's diagnostics.

  Attributes:
    weights: (K,) FairGrad weights, >= 0 (0 exactly for zero-gradient tasks).
    num_iterations: Newton iterations of the loop (int32; the one or two
      polishing steps on the unregularized equation are not counted).
    relative_residual: ‖GᵀG w - w^(-1/α)‖ / ‖w^(-1/α)‖ over the tasks with a
      non-zero gradient, for the Gram matrix given (without regularization).
    converged: True when, on the equation as given, every task's relative
      residual is at most ``tol`` or the last Newton correction changes no
      weight by more than ``tol`` relatively, or when every residual is
      within ``tol`` of what rounding the weights to the dtype leaves
      (conflicting tasks: GᵀG w cancels) and that correction is at most
      10 ``tol``; False when the solve stopped
      at ``maxiter`` or stalled at round-off short of that, when the root
      lies outside the dtype's range (weights clipped), near rank
      deficiency (the regularized root is returned), or when the Gram
      matrix was not finite.
  """

  weights: jax.Array
  num_iterations: jax.Array
  relative_residual: jax.Array
  converged: jax.Array


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


class _Problem(NamedTuple):
  """The equation in the variables x, w_i = a_i^(-α/(1+α)) e^(x_i).

  With b_i = a_i^((1-α)/(1+α)) (so that w_i^(1-1/α) = b_i e^(p x_i) and
  w_i² a_i = b_i e^(2 x_i)), q_i = √b_i e^(x_i) and r_i = b_i e^(p x_i),
  the equation reads q_i (C_λ q)_i = r_i, C the gradients' correlation
  matrix and C_λ = C + λ I; the gradient of f in x is q ⊙ C_λ q - r. Every
  quantity that can span decades is held as a logarithm.
  """

  corr: jax.Array        # (K, K) C_λ, inactive tasks as unit rows
  log_abs_corr: jax.Array  # log |C_λ| (-inf where 0)
  log_b: jax.Array       # (K,) log b_i, max 0
  alpha: jax.Array       # scalar
  reg: jax.Array         # λ (0 for the polishing step)


class _Terms(NamedTuple):
  rel: jax.Array     # (K,) relative residuals q_i (C_λ q)_i / r_i - 1
  g_hat: jax.Array   # (K,) ∇f_i / √h_i, in units of e^norm
  norm: jax.Array    # log of the largest term of ∇f / √h
  hess: jax.Array    # (K, K) W H W scaled to a unit diagonal
  lq: jax.Array      # log q
  lr: jax.Array      # log r
  lh: jax.Array      # log h, h the diagonal of W H W
  ly: jax.Array      # log |y|, y = q ⊙ C_λ q (the left-hand side)
  y_pos: jax.Array   # y > 0


def _terms(x, prob):
  """Residuals, scaled gradient and unit-diagonal Newton matrix at x."""
  p = 1.0 - 1.0 / prob.alpha
  lq = 0.5 * prob.log_b + x
  lr = prob.log_b + p * x
  # (C_λ q)_i as e^(m_i) cq_i, scaled row by row by its largest term, so
  # that no task underflows whatever the spread of the q's. Where a row's
  # largest term is within e^_LINEAR_RANGE of the largest q, the sum is
  # formed in linear scale with the error-free product and sum (the
  # log-domain terms carry a relative error of eps·|log|, which the
  # cancellation of conflicting gradients amplifies); the other rows, if
  # any, in the log domain (K² exponentials, skipped when no row needs them).
  lq_max = jnp.max(lq)
  q_lin = jnp.exp(lq - lq_max)
  row_max = jnp.max(jnp.abs(prob.corr) * q_lin[None, :], axis=1)
  linear = row_max > np.exp(-_LINEAR_RANGE)

  def log_domain(lq):
    terms = prob.log_abs_corr + lq[None, :]
    m = jnp.max(terms, axis=1)
    return m, jnp.sum(jnp.sign(prob.corr) * jnp.exp(terms - m[:, None]),
                      axis=1)

  m_log, cq_log = jax.lax.cond(
      jnp.all(linear), lambda lq: (jnp.zeros_like(lq), jnp.zeros_like(lq)),
      log_domain, lq)
  m = jnp.where(linear, lq_max + jnp.log(jnp.where(linear, row_max, 1.0)),
                m_log)
  cq_lin = _common.accurate_matvec(prob.corr, q_lin) * jnp.exp(
      jnp.clip(lq_max - m, -_LINEAR_RANGE, _LINEAR_RANGE))
  cq = jnp.where(linear, cq_lin, cq_log)
  # Diagonal of the Newton matrix W H W: h_i = (1+λ) q_i² + r_i / α.
  log_alpha = jnp.log(prob.alpha)
  lh = jnp.logaddexp(2.0 * lq + jnp.log1p(prob.reg), lr - log_alpha)
  # ∇f_i / √h_i = q_i (C_λ q)_i / √h_i - r_i / √h_i, both terms as logs.
  la = lq + m - 0.5 * lh + jnp.log(jnp.abs(cq))
  lb = lr - 0.5 * lh
  norm = jnp.maximum(jnp.max(la), jnp.max(lb))
  g_hat = jnp.sign(cq) * jnp.exp(la - norm) - jnp.exp(lb - norm)
  rel = jnp.exp(jnp.minimum(lq + m - lr, 80.0)) * cq - 1.0
  scaled_q = jnp.exp(lq - 0.5 * lh)
  hess = (prob.corr * scaled_q[:, None] * scaled_q[None, :]
          + jnp.diag(jnp.exp(lr - log_alpha - lh)))
  ly = lq + m + jnp.log(jnp.abs(cq))
  return _Terms(rel, g_hat, norm, hess, lq, lr, lh, ly, cq > 0)


def _gradient(tm):
  """∇f in units of e^(2 norm) (g_hat is ∇f / √h in units of e^norm)."""
  return tm.g_hat * jnp.exp(0.5 * tm.lh - tm.norm)


def _factor(tm, jitter=10.0):
  """The Cholesky factor of the unit-diagonal Newton matrix in ``tm``."""
  k = tm.g_hat.shape[0]
  eps = jnp.finfo(tm.g_hat.dtype).eps
  # A relative jitter of a few ulps keeps the Cholesky factor finite when the
  # Newton matrix is singular to working precision (then the step is a
  # slightly damped Newton step, still a descent direction).
  hess = tm.hess + (jitter * k * eps) * jnp.eye(k, dtype=tm.hess.dtype)
  return jax.scipy.linalg.cho_factor(hess, lower=True)


def _newton_step(tm, chol=None):
  """Δx solving (W H W) Δx = -∇f, and ∇fᵀΔx in units of e^(2 norm)."""
  chol = _factor(tm) if chol is None else chol
  y = jax.scipy.linalg.cho_solve(chol, -tm.g_hat)
  step = y * jnp.exp(tm.norm - 0.5 * tm.lh)
  return step, jnp.dot(tm.g_hat, y)


def _log_newton_step(tm, prob):
  """Newton's step on log(y_i / r_i) = 0 where y_i > 0, and Δx's slope.

  Far from the root Newton's step on f moves a log-weight by at most about
  α per iteration where the barrier term dominates (w_i far too small: the
  step is r_i / (r_i / α)), and the equation's left-hand side y = q ⊙ C_λ q
  is nearly linear in x only in logarithms. Newton's method on
  F_i = log y_i - log r_i (rows scaled by y_i, which makes the matrix
  Q C_λ Q + diag(y / α), symmetric, positive definite when y > 0) solves a
  task dominated by its own term, or by the others', in one step. Rows with
  y_i <= 0 (conflicting tasks far from the root) keep f's Newton row. Near
  the root the steps agree (y log(y/r) ≈ y - r); the line search on f picks
  whichever candidate decreases f most (see :func:`_solve`).
  """
  log_alpha = jnp.log(prob.alpha)
  lrho = jnp.where(tm.y_pos, tm.ly, tm.lr)
  lh = jnp.logaddexp(2.0 * tm.lq + jnp.log1p(prob.reg), lrho - log_alpha)
  norm = jnp.maximum(jnp.max(tm.ly - 0.5 * lh), jnp.max(tm.lr - 0.5 * lh))
  log_ratio = jnp.where(tm.y_pos, tm.ly - tm.lr, 0.0)
  y_hat = jnp.exp(tm.ly - 0.5 * lh - norm)
  g_hat = jnp.where(tm.y_pos, y_hat * log_ratio,
                    -y_hat - jnp.exp(tm.lr - 0.5 * lh - norm))
  scaled_q = jnp.exp(tm.lq - 0.5 * lh)
  hess = (prob.corr * scaled_q[:, None] * scaled_q[None, :]
          + jnp.diag(jnp.exp(lrho - log_alpha - lh)))
  step, _ = _newton_step(tm._replace(g_hat=g_hat, norm=norm, hess=hess,
                                     lh=lh))
  return step, jnp.dot(_gradient(tm), step)


def _weight_path(u, alpha):
  """Log-weight displacement φ(u) along the weight path, elementwise.

  φ(u) = log(1 + u) for u >= 0 and -α log(1 - u/α) for u < 0, with
  u = t Δx for Newton's step Δx on f. Both branches have φ(0) = 0 and
  φ'(0) = 1, so the path leaves x along Newton's direction with the same
  slope ∇fᵀΔx. A weight that grows follows Newton's step in w itself,
  w(1 + t Δx), not e^(t Δx): f is quadratic in w where the task's own term
  dominates, and the exponential overshoots there by orders of magnitude. A
  weight that shrinks follows Newton's step on log(y_i / r_i), which is
  -α log(1 + rel_i) where the barrier term dominates (Newton's step on f is
  -α rel_i there, far too long when rel_i is large).
  """
  return jnp.where(u >= 0.0, jnp.log1p(jnp.maximum(u, 0.0)),
                   -alpha * jnp.log1p(jnp.maximum(-u, 0.0) / alpha))


def _merit_change(step, ts, prob, tm, weight_path=False):
  """f(x + t Δx) - f(x) for each t in ``ts``, in units of e^(2 norm).

  Written per task as a difference: with e = expm1(t Δx),
  Σ_i [e_i ∇f_i + r_i (e_i - expm1(p t Δx_i)/p)] + ½ (q ⊙ e)ᵀ C_λ (q ⊙ e).
  With ``weight_path``, x moves to x + φ(t Δx) instead (see
  :func:`_weight_path`).
  """
  p = 1.0 - 1.0 / prob.alpha
  grad = _gradient(tm)
  r = jnp.exp(tm.lr - 2.0 * tm.norm)
  q = jnp.exp(tm.lq - tm.norm)
  safe_p = jnp.where(p == 0.0, 1.0, p)

  def one(t):
    tx = _weight_path(t * step, prob.alpha) if weight_path else t * step
    e = jnp.expm1(tx)
    barrier = jnp.where(p == 0.0, tx, jnp.expm1(p * tx) / safe_p)
    linear = jnp.sum(e * grad + r * (e - barrier))
    qe = q * e
    return linear + 0.5 * jnp.dot(qe, prob.corr @ qe)

  return jax.vmap(one)(ts)


def _sufficient_decrease(change, ts, slope):
  """Armijo's test per step length: f's change <= c t ∇fᵀΔx, ∇fᵀΔx < 0."""
  return (change <= _ARMIJO * ts * slope) & jnp.isfinite(change) & (slope < 0)


def _problem(gram, alpha, regularization, active):
  k = gram.shape[0]
  dtype = gram.dtype
  both_active = active[:, None] & active[None, :]
  diag = jnp.diagonal(gram)
  safe_diag = jnp.where(active, diag, 1.0)
  log_diag = jnp.log(safe_diag)
  eye = jnp.eye(k, dtype=dtype)
  inv_norms = jax.lax.rsqrt(safe_diag)
  corr = gram * inv_norms[:, None] * inv_norms[None, :]
  corr = jnp.where(both_active, corr, eye)
  # Round-off can put |C_ij| slightly above 1; so can a Gram matrix that is
  # not quite PSD. Keep the diagonal exactly 1.
  corr = jnp.where(eye > 0, 1.0, jnp.clip(corr, -1.0, 1.0))
  corr = corr + regularization * eye
  log_b = ((1.0 - alpha) / (1.0 + alpha)) * log_diag
  log_b = jnp.where(active, log_b, 0.0)
  log_b = log_b - jnp.max(log_b)
  with jax.numpy_dtype_promotion("standard"):
    log_abs_corr = jnp.where(corr == 0.0, -jnp.inf,
                             jnp.log(jnp.abs(jnp.where(corr == 0.0, 1.0,
                                                       corr))))
  return _Problem(corr=corr, log_abs_corr=log_abs_corr, log_b=log_b,
                  alpha=jnp.asarray(alpha, dtype),
                  reg=jnp.asarray(regularization, dtype)), log_diag


def _solve(x0, prob, active, maxiter, tol):
  """Damped Newton on f; returns (x, iterations).

  Stops once every task's relative residual is at most ``tol`` or the
  estimated remaining error of the log-weights is (see the body), when no
  step length decreases f, at ``maxiter``, or when the largest relative
  residual has not improved for ``_PATIENCE`` full Newton steps: the
  residual is then at the round-off floor of its float evaluation
  (conflicting gradients cancel in GᵀG w), and the iterate with the smallest
  residual is returned for the exact polishing in :func:`_polish`.
  """
  dtype = x0.dtype
  ts = 0.5 ** jnp.arange(_NUM_STEPS, dtype=dtype)
  step_tol = 0.1 * jnp.minimum(tol, float(jnp.finfo(dtype).eps) ** 0.5)

  def worst(rel):
    return jnp.max(jnp.where(active, jnp.abs(rel), 0.0))

  def cond(carry):
    _, it, err, _, _, since, stalled, _ = carry
    return (it < maxiter) & (err > tol) & ~stalled & (since < _PATIENCE)

  def body(carry):
    x, it, _, best_x, best_err, since, _, last = carry
    tm = _terms(x, prob)

    def search(step, slope, weight_path=False):
      """(displacement, step length, f's change, Armijo's test per length)."""
      step = jnp.where(active, step, 0.0)
      if weight_path:
        # The displacement -α log(1 - u/α) of a shrinking weight is at most
        # _MAX_WEIGHT_STEP for u up to this size.
        size = jnp.max(-step)
        limit = prob.alpha * jnp.expm1(
            jnp.minimum(_MAX_WEIGHT_STEP / prob.alpha, 80.0))
      else:
        size, limit = jnp.max(jnp.abs(step)), _MAX_STEP
      shrink = jnp.minimum(1.0, limit / jnp.maximum(size, 1e-30))
      step, slope = step * shrink, slope * shrink
      change = _merit_change(step, ts, prob, tm, weight_path)
      ok = _sufficient_decrease(change, ts, slope)
      first = jnp.argmax(ok)
      t = jnp.where(jnp.any(ok), ts[first], 0.0)
      move = _weight_path(t * step, prob.alpha) if weight_path else t * step
      return (move, t, jnp.where(jnp.any(ok), change[first], jnp.inf), ok)

    newton = _newton_step(tm)
    # Three candidates, each with its own backtracking search; the one that
    # lowers f most is taken (every one is an Armijo step on f, so the
    # iteration stays globally convergent): Newton's step on f in
    # log-weights, the same direction along the weight path, and Newton's
    # step on the equation in logarithms where every y_i > 0.
    candidates = [search(*newton), search(*newton, weight_path=True),
                  search(*_log_newton_step(tm, prob))]
    usable = jnp.array([True, True, jnp.all(tm.y_pos | ~active)])
    changes = jnp.where(usable, jnp.stack([c[2] for c in candidates]),
                        jnp.inf)
    best = jnp.argmin(changes)
    move = jnp.stack([c[0] for c in candidates])[best]
    t = jnp.stack([c[1] for c in candidates])[best]
    ok = jnp.any(jnp.stack([jnp.any(c[3]) for c in candidates]) & usable)
    x_new = jnp.clip(x + move, -_X_BOUND, _X_BOUND)
    finite = jnp.all(jnp.isfinite(x_new))
    x_new = jnp.where(finite, x_new, x)
    # After a full step moving no log-weight by more than
    # _SECOND_STEP_RANGE, a second Newton step from the new point, kept when
    # it is no longer than the first and passes Armijo's test on f at unit
    # length (two damped Newton steps for one trip of the loop, which on an
    # accelerator costs a host round trip for its predicate).
    step_size = jnp.max(jnp.abs(move))

    def second(x_new):
      tm_new = _terms(x_new, prob)
      step, slope = _newton_step(tm_new)
      step = jnp.where(active, step, 0.0)
      change = _merit_change(step, ts[:1], prob, tm_new)[0]
      take = (_sufficient_decrease(change, 1.0, slope)
              & (jnp.max(jnp.abs(step)) <= step_size)
              & jnp.all(jnp.isfinite(step)))
      x_second = jnp.clip(x_new + jnp.where(take, step, 0.0), -_X_BOUND,
                          _X_BOUND)
      return x_second, take, jnp.max(jnp.abs(step))

    x_new, take, second_size = jax.lax.cond(
        (t == 1.0) & finite & (step_size <= _SECOND_STEP_RANGE), second,
        lambda x_new: (x_new, jnp.zeros((), jnp.bool_), jnp.zeros((), dtype)),
        x_new)
    moved = jnp.max(jnp.abs(x_new - x))
    # Stop when no step length decreases f, or when the step no longer moves
    # any weight by more than a fraction of tol (Newton's step is then the
    # distance to the root).
    stalled = ~jnp.any(ok) | ~finite | (moved <= step_tol)
    # Done once the weights' remaining error is below tol, whatever the
    # residual's round-off (a task whose (GᵀG w)_i cancels has a residual
    # that float weights cannot bring below eps times the cancellation
    # factor). From two full Newton steps s then s' with contraction
    # θ = |s'| / |s|: in Newton's quadratic phase (θ <= _QUADRATIC) the next
    # correction is about (ω/2) |s'|² with ω ≈ 2 |s'| / |s|² (Deuflhard's
    # estimate of the affine-invariant Lipschitz constant), that is θ² |s'|;
    # otherwise θ |s'| bounds what is left of a linearly contracting
    # sequence. Two pairs give an estimate: s' this iteration's move and s
    # the last one's, and, with a second step this iteration, its two steps
    # (the second taken from where the first ended, so the estimate is for
    # the point returned); the loop is done when either is below tol. (At
    # the residual's round-off floor the two steps of one iteration are
    # both noise of one size, while this iteration's move is still far
    # below the last's.) last = 0: the previous step was not a full one, θ
    # counts as 1 (a full step below tol is itself the distance to the
    # root, to first order).
    full = finite & (t == 1.0)

    def remaining_error(step, previous):
      theta = jnp.minimum(1.0, step / previous)
      return step * jnp.where(theta <= _QUADRATIC, theta * theta, theta)

    remaining = jnp.minimum(
        remaining_error(moved, last),
        jnp.where(take, remaining_error(second_size,
                                        jnp.maximum(step_size, 1e-30)),
                  jnp.inf))
    settled = full & (remaining <= tol)
    err = worst(_terms(x_new, prob).rel)
    # In Newton's quadratic phase a full step cuts the residual many-fold;
    # one that does not halve it is at the round-off floor.
    better = err < _PROGRESS * best_err
    # Close to the root, full Newton steps that do not lower the residual
    # mean its round-off floor.
    return (x_new, it + 1, jnp.where(settled, 0.0, err),
            jnp.where((err < best_err) | settled, x_new, best_x),
            jnp.where(settled, 0.0, jnp.minimum(err, best_err)),
            jnp.where(better | (t < 1.0) | (moved > _LOCAL), 0, since + 1),
            stalled, jnp.where(full, moved, 0.0))

  x0 = _rescale(x0, prob, active)
  err0 = worst(_terms(x0, prob).rel)
  carry = (x0, jnp.zeros((), jnp.int32), err0, x0, err0,
           jnp.zeros((), jnp.int32), jnp.zeros((), jnp.bool_),
           jnp.zeros((), dtype))  # last full step: none yet
  _, it, _, best_x, _, _, _, _ = jax.lax.while_loop(cond, body, carry)
  return best_x, it


def _rescale(x, prob, active):
  """x + c on the active tasks, with c minimising f(x + c) in closed form.

  Along x + c·1, f = ½ e^(2c) qᵀC_λq - e^(pc) Σ r_i / p, whose minimiser is
  c = log(Σ r_i / qᵀC_λq) / (2 - p): the best common scale of the weights,
  one matrix-vector product. From the orthogonal closed form this fixes the
  overall size of the weights when the gradients are correlated (or
  conflicting), which saves Newton's damped phase an iteration or two.
  """
  p = 1.0 - 1.0 / prob.alpha
  lq = jnp.where(active, 0.5 * prob.log_b + x, -jnp.inf)
  lr = jnp.where(active, prob.log_b + p * x, -jnp.inf)
  lq_max = jnp.max(lq)
  q = jnp.exp(lq - lq_max)
  quad = jnp.dot(q, prob.corr @ q)
  log_r = jax.nn.logsumexp(lr)
  c = (log_r - 2.0 * lq_max - jnp.log(quad)) / (2.0 - p)
  ok = jnp.isfinite(c) & (quad > 0)
  return jnp.where(active & ok, x + jnp.clip(c, -_MAX_STEP, _MAX_STEP), x)


def _polish(weights, x, gram, prob, active, alpha):
  """Newton steps on the equation as given; returns (weights, residuals).

  The loop solves the regularized equation in log-weights: the result is
  O(λ + tol) away from the root of GᵀG w = w^(-1/α) itself, its log-domain
  residual is only as accurate as the logarithms, and exp(x + log
  a_i^(-α/(1+α))) rounds. Newton steps on the relative residual of the
  weights themselves, computed from the Gram matrix as given (inactive tasks
  zeroed) with an error-free matrix-vector product, correct all three to
  the dtype's round-off: Newton converges quadratically from an O(λ) error.
  A step δ (in log-weights) is applied as w + w δ, Newton's step in w
  itself, which rounds once to the float nearest the corrected weight;
  w e^δ rounds twice (e^δ to a multiple of 1 + 2^-24), so it could not move
  a weight by a fraction of an ulp, and where GᵀG w cancels one ulp changes
  the residual by several times its floor. The steps use the unregularized
  Newton matrix at x (``prob`` has λ = 0). Each is kept only when it is
  finite, moves no weight by more than about 1% (``_POLISH_MAX_STEP``) and
  lowers the relative residual ‖GᵀG w - w^(-1/α)‖ / ‖w^(-1/α)‖ (the one
  reported); a step refused is retried at half the length. Near a
  rank-deficient Gram matrix, where the unregularized equation has no
  root, the regularized root stays. Where the
  weights span too many decades for GᵀG w to be formed in the dtype, the
  steps are skipped (the log-domain residual of the loop stands).

  Returns the weights, the relative residual ‖GᵀG w - w^(-1/α)‖ /
  ‖w^(-1/α)‖ over the active tasks, the largest per-task one, and the
  largest relative correction of the last Newton step computed (an
  estimate of the weights' remaining relative error; inf if the accurate
  residual could not be formed), and the largest excess of a task's
  relative residual over its round-off floor (inf likewise).
  """
  def scaled(w):
    """w^(-1/α), and powers of two that bring GᵀG and w to O(1)."""
    target = jnp.where(active, jnp.where(active, w, 1.0) ** (-1.0 / alpha),
                       1.0)
    return (target, _common.power_of_two(jnp.max(jnp.abs(gram))),
            _common.power_of_two(jnp.max(w)))

  def relative(w):
    target, gs, ws = scaled(w)
    # Powers of two bring both factors to O(1) first: Dekker's splitting
    # leaves low parts 2^-12 below an entry, which the CPU flushes to zero
    # (and the product loses them) once they fall below float's normal range.
    aw = _common.accurate_matvec(gram / gs, w / ws)
    return jnp.where(active, aw * (gs * ws) / target - 1.0, 0.0)

  def worst(rel):
    return jnp.max(jnp.abs(rel))

  def norm(w, rel):
    """‖rel ⊙ t‖ / ‖t‖, t = w^(-1/α) scaled to max 1 (no overflow)."""
    log_w = jnp.where(active, jnp.log(jnp.where(active, w, 1.0)), 0.0)
    lt = jnp.where(active, -log_w / alpha, -jnp.inf)
    t = jnp.where(active, jnp.exp(lt - jnp.max(lt)), 0.0)
    v = jnp.where(active, jnp.nan_to_num(rel * t), 0.0)
    big = jnp.maximum(jnp.max(jnp.abs(v)), jnp.finfo(v.dtype).tiny)
    return big * jnp.linalg.norm(v / big) / jnp.linalg.norm(t)

  tm = _terms(x, prob)
  rel = relative(weights)
  usable = jnp.all(jnp.isfinite(rel))
  rel = jnp.where(usable, rel, jnp.where(active, tm.rel, 0.0))
  # In the Newton system the residual enters as ∇f_i/√h_i = rel_i r_i/√h_i.
  lg = tm.lr - 0.5 * tm.lh
  lg_max = jnp.max(jnp.where(active, lg, -jnp.inf))
  scale = jnp.exp(lg - lg_max)
  step_est = jnp.asarray(jnp.inf, weights.dtype)
  # The steps share the Newton matrix at x, factored with the least jitter
  # that keeps it finite: at the floor the steps are fractions of an ulp,
  # and the loop's jitter damped them enough (5x more with K = 2 padded
  # to 10) to walk between neighbouring floats instead of landing on the
  # nearest (random K = 2, α = 10, seven decades: 2.6x the floor).
  fine, lower = _factor(tm, _POLISH_JITTER)
  chol = (jax.lax.cond(jnp.all(jnp.isfinite(fine)), lambda: fine,
                       lambda: _factor(tm)[0]), lower)
  length = jnp.ones((), weights.dtype)
  residual = norm(weights, rel)
  for _ in range(_POLISH_STEPS):
    step, _ = _newton_step(tm._replace(g_hat=rel * scale, norm=lg_max), chol)
    step = jnp.where(active, step, 0.0)
    finite_step = jnp.all(jnp.isfinite(step))
    size = worst(step)
    step_est = jnp.where(finite_step, size, jnp.inf)
    polished = weights + weights * (length * step)
    rel_polished = relative(polished)
    residual_polished = norm(polished, rel_polished)
    ok = (usable & finite_step & jnp.all(jnp.isfinite(rel_polished))
          & (size <= _POLISH_MAX_STEP) & (residual_polished < residual))
    weights = jnp.where(ok, polished, weights)
    rel = jnp.where(ok, rel_polished, rel)
    residual = jnp.where(ok, residual_polished, residual)
    length = jnp.where(ok, length, 0.5 * length)
  # The residual's floor: rounding each weight to the dtype (a relative
  # error of eps/2) moves (GᵀG w)_i by up to eps/2 Σ_j |GᵀG_ij| w_j, which
  # conflicting tasks' cancellation makes large against w_i^(-1/α). Twice
  # that bound, relative to the target, per task.
  target, gs, ws = scaled(weights)
  floor = (jnp.finfo(weights.dtype).eps * ((jnp.abs(gram) / gs)
                                           @ (weights / ws)) * (gs * ws)
           / target)
  above_floor = jnp.max(jnp.where(active, jnp.abs(rel) - floor, -jnp.inf))
  return (weights, jnp.where(jnp.any(active), residual, 0.0), worst(rel),
          jnp.where(usable, step_est, jnp.inf),
          jnp.where(usable & jnp.isfinite(above_floor), above_floor, jnp.inf))


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
  callbacks. ``maxiter`` is static; ``alpha``, ``tol`` and
  ``regularization`` may be traced arrays (e.g. an α schedule). The weights
  are differentiable with respect to ``gram`` and ``alpha`` by implicit
  differentiation of the equation (jaxopt's ``custom_root``; the loop itself
  is never differentiated), e.g. for meta-learning through the weights.

  Args:
    gram: (K, K) Gram matrix GᵀG of the task gradients (symmetric PSD).
    alpha: fairness level α >= 0 (0: linear scalarization, every weight 1;
      1: proportional fairness; 2: minimum potential delay; large: max-min).
      A Python number is checked here (``ValueError``); a traced α that is
      negative or not finite gives NaN weights.
    init: optional (K,) starting weights (e.g. the previous step's); entries
      that are not positive and finite fall back to the default start.
    maxiter: maximum iterations of the Newton loop (each one or two Newton
      steps). Cold starts take a median of 0–5
      per (K, α) on issue 11's hard set (up to 16 with conflicting tasks,
      norms over seven decades and α = 10); warm starts from weights 1% off
      the root 1–2 (3 where cancellation in GᵀG w leaves float32 a residual
      far above ``tol``), more where the weights move by tens of percent
      per step. Up to two polishing Newton steps follow, not counted.
    tol: stop once every task's relative residual
      |(GᵀG w)_i - w_i^(-1/α)| / w_i^(-1/α) is at most ``tol``, or a full
      Newton step changed no weight by more than ``tol`` relatively; the
      polishing steps then usually bring the weights to round-off (e.g.
      ``tol=1e-8`` gives float64 round-off under x64).
    regularization: λ >= 0 in GᵀG + λ diag(GᵀG); bounds the weights when the
      gradients are linearly dependent (see the module docstring). Default:
      10 × the machine epsilon of the solve (1.2e-6 in float32, 2.2e-15 in
      float64), the level of round-off in the Gram matrix itself.

  Returns:
    A :class:`FairGradSolution`. Weights are NaN (and ``converged`` False)
    when ``gram`` is not finite or has a negative diagonal entry; finite
    Gram matrices always give finite weights (clipped to the dtype's range
    if the root lies outside it, which ``converged`` then reports).

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> gram = jnp.array([[4.0, 0.0], [0.0, 1.0]])
    >>> sol = fairgrad_jax.fairgrad_solve(gram, alpha=1.0)
    >>> sol.weights.round(4)  # w_i = a_i^(-1/2) for orthogonal gradients
    Array([0.5, 1. ], dtype=float32)
    >>> bool(sol.converged), bool(sol.relative_residual < 1e-5)
    (True, True)

  References:
    Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024,
    arXiv:2402.15638, Section 4, eq. (4).
  """
  traced = is_traced(alpha)
  if not traced:
    alpha = check_alpha(alpha)
  _checks.int_hyperparameter("maxiter", maxiter, minimum=1)
  check_tol_and_regularization(tol, regularization)
  gram = _common.as_gram(gram, differentiable=True)
  dtype = gram.dtype
  if regularization is None:
    regularization = 10 * float(jnp.finfo(dtype).eps)
  k = gram.shape[0]

  if not traced and alpha == 0.0:
    # Linear scalarization: (g_iᵀd)^0 = 1 for every task (Section 4).
    return FairGradSolution(
        weights=jnp.ones((k,), dtype),
        num_iterations=jnp.zeros((), jnp.int32),
        relative_residual=jnp.zeros((), dtype),
        converged=jnp.ones((), jnp.bool_),
    )

  if init is not None:
    init = jnp.asarray(init, dtype)
    if init.shape != (k,):
      raise ValueError(f"init must have shape ({k},), got {init.shape}.")
    init = jax.lax.stop_gradient(init)

  alpha = jnp.asarray(alpha, dtype)
  # A traced α (e.g. optax.inject_hyperparams under jit) cannot be checked
  # or branched on: α = 0 is selected after the solve (which runs at α = 1
  # then), and an α that is negative or not finite gives NaN weights, so
  # that apply_if_finite skips the step.
  valid = (alpha >= 0) & jnp.isfinite(alpha)
  positive = alpha > 0
  solve_alpha = jnp.where(positive & valid, alpha, 1.0)

  def solver(start, gram, alpha):
    del start  # the loop starts from init or the closed form
    gram = jax.lax.stop_gradient(gram)
    return _solve_weights(gram, jax.lax.stop_gradient(alpha), init, maxiter,
                          tol, regularization)

  weights, (iters, rel_norm, converged) = _jaxopt.implicit_root(
      _optimality, solver)(jnp.zeros((k,), dtype), gram, solve_alpha)
  if traced:
    nan = jnp.asarray(jnp.nan, dtype)
    weights = jnp.where(valid, jnp.where(positive, weights, 1.0), nan)
    iters = jnp.where(positive, iters, 0)
    rel_norm = jnp.where(valid, jnp.where(positive, rel_norm, 0.0), nan)
    converged = valid & (converged | ~positive)
  return FairGradSolution(weights=weights, num_iterations=iters,
                          relative_residual=rel_norm, converged=converged)


def is_traced(x) -> bool:
  """Whether ``x`` is a JAX tracer (a hyperparameter traced under jit)."""
  return isinstance(x, jax.core.Tracer)


def check_tol_and_regularization(tol, regularization):
  """Raises for a concrete ``tol`` not finite and > 0, or a
  ``regularization`` not None and not finite and >= 0 (traced values are
  not checked): the package's one rule, :func:`_checks.real_hyperparameter`."""
  _checks.real_hyperparameter("tol", tol, minimum=0.0, strict=True)
  if regularization is not None:
    _checks.real_hyperparameter("regularization", regularization,
                                minimum=0.0)


def _active(gram):
  diag = jnp.diagonal(gram)
  return diag > _INACTIVE_RATIO * jnp.max(diag)


def _optimality(weights, gram, alpha):
  """GᵀG w - w^(-1/α) on the active tasks (w itself on the others).

  The equation whose root :func:`_jaxopt.implicit_root` differentiates:
  dw = -(GᵀG + diag(w^(-1/α-1)/α))⁻¹ (dGᵀG w + ∂_α(-w^(-1/α)) dα), so the
  weights are differentiable with respect to the Gram matrix and α (a
  regularized root near rank deficiency is differentiated as if it were the
  root).
  """
  active = _active(jax.lax.stop_gradient(gram))
  both = active[:, None] & active[None, :]
  safe = jnp.where(active, weights, 1.0)
  return jnp.where(active,
                   jnp.where(both, gram, 0.0) @ weights - safe ** (-1.0 / alpha),
                   weights)


def _solve_weights(gram, alpha, init, maxiter, tol, regularization):
  """The solve itself: (weights, (iterations, residual, converged))."""
  k = gram.shape[0]
  dtype = gram.dtype
  # A Gram matrix has a non-negative diagonal (squared norms); a negative
  # one is not a Gram matrix and, like a non-finite one, gives NaN weights
  # (under jit a value cannot raise), so apply_if_finite skips the step.
  finite = jnp.all(jnp.isfinite(gram)) & jnp.all(jnp.diagonal(gram) >= 0)
  gram = jnp.where(finite, gram, 0.0)
  active = _active(gram)
  prob, log_diag = _problem(gram, alpha, regularization, active)
  # w_i = a_i^(-α/(1+α)) e^(x_i).
  log_scale = jnp.where(active, -(alpha / (1.0 + alpha)) * log_diag, 0.0)

  x0 = jnp.zeros((k,), dtype)
  if init is not None:
    usable = (init > 0) & jnp.isfinite(init) & active
    x0 = jnp.where(usable, jnp.log(jnp.where(usable, init, 1.0)) - log_scale,
                   x0)
    x0 = jnp.clip(x0, -_X_BOUND, _X_BOUND)

  x, iters = _solve(x0, prob, active, maxiter, tol)
  log_w = x + log_scale
  # Weights outside the normal range of the dtype are clipped into it (never
  # 0 for a live task, never inf); ``converged`` then says False.
  low = float(np.log(jnp.finfo(dtype).tiny)) + 1.0
  high = float(np.log(jnp.finfo(dtype).max)) - 1.0
  weights = jnp.where(active, jnp.exp(jnp.clip(log_w, low, high)), 0.0)
  in_range = jnp.all(jnp.where(active, (log_w >= low) & (log_w <= high),
                               True))
  weights, rel_norm, rel_max, step_est, above_floor = _polish(
      weights, x, jnp.where(active[:, None] & active[None, :], gram, 0.0),
      _problem(gram, alpha, 0.0, active)[0], active, alpha)
  # Converged: the residual meets tol, or the last Newton correction (from
  # the accurate residual) changes no weight by more than tol relatively.
  # Or: every task's residual is within tol of its floor (what rounding
  # the weights to the dtype alone can leave, see _polish), so no weights of
  # this dtype do measurably better, and the last Newton correction, which
  # that round-off then dominates, is at most _FLOOR_STEPS · tol (a
  # regularized root near rank deficiency, whose unregularized correction
  # is over _POLISH_MAX_STEP, stays unconverged).
  at_floor = (above_floor <= tol) & (step_est <= _FLOOR_STEPS * tol)
  converged = ((rel_max <= tol) | (step_est <= tol) | at_floor) & in_range

  nan = jnp.asarray(jnp.nan, dtype)
  return jnp.where(finite, weights, nan), (
      iters, jnp.where(finite, rel_norm, nan), finite & converged)


class FairGradInfo(NamedTuple):
  """Diagnostics of the last weight solve (FairGrad's and Nash-MTL's state).

  Attributes:
    num_iterations: Newton iterations of the last solve (int32).
    relative_residual: ‖GᵀG w - w^(-1/α)‖ / ‖w^(-1/α)‖ of the last weights.
    converged: whether the last solve met its tolerance (bool; False before
      the first update). Log it: a False means the weights are the best the
      solver found, not the root (see :func:`fairgrad_solve`).
  """

  num_iterations: jax.Array
  relative_residual: jax.Array
  converged: jax.Array


def alpha_fair_weighting(name, alpha, *, maxiter, tol, regularization,
                         weight_heads, hyperparams) -> _aggregator.Weighting:
  """The :class:`Weighting` of the α-fair solve (FairGrad; Nash-MTL at α = 1).

  Warm-started from the previous step's weights (``init``); its state is the
  last solve's :class:`FairGradInfo`.
  """
  maxiter = _checks.int_hyperparameter("maxiter", maxiter, minimum=1)
  check_tol_and_regularization(tol, regularization)
  traced = is_traced(alpha)

  def init(num_tasks):
    del num_tasks
    return FairGradInfo(num_iterations=jnp.zeros((), jnp.int32),
                        relative_residual=jnp.zeros((), jnp.float32),
                        converged=jnp.zeros((), jnp.bool_))

  def apply(gram, state, *, losses, key, init):
    del state, losses, key
    sol = fairgrad_solve(gram, alpha, init=init, maxiter=maxiter, tol=tol,
                         regularization=regularization)
    return sol.weights, FairGradInfo(
        num_iterations=sol.num_iterations,
        relative_residual=sol.relative_residual.astype(jnp.float32),
        converged=sol.converged)

  # w(cGᵀG) = c^(-α/(1+α)) w(GᵀG), so d(σG) = σ^((1-α)/(1+α)) d(G).
  return _aggregator.Weighting(
      name=name, apply=apply, init=init, hyperparams=hyperparams,
      degree=(1.0 - alpha) / (1.0 + alpha), weight_heads=weight_heads,
      needs_gram=traced or alpha > 0,
      # α = 0 is linear scalarization, whose Σ g_i may conflict.
      zero_at_stationary=alpha > 0)
