"""Hard Gram matrices for FairGrad's weight solve, with float64 roots.

The set of issue 11: K ∈ {2, 10, 40, 64}, α ∈ {0.5, 1, 2, 5, 10}, gradient
norms spread over 2 to 7 decades, and three kinds of directions:

* ``random``: independent Gaussian directions;
* ``correlated``: a common direction plus task noise (cosines ≈ 0.9);
* ``conflicting``: half the tasks along +u, half along -u, plus a low-rank
  perturbation and noise (cosines ≈ -0.8 across the two groups, +0.8
  within them: the update must trade the groups off, where fairness at
  large α matters most).

Every Gram matrix is rounded to float32 and kept as float64 numbers: the
float64 root is then the root of exactly the matrix a float32 solve sees, so
the weight error measures the solver, not the rounding of its input (near a
Pareto-stationary point that rounding alone moves the root by more than
1e-4).

The float64 root is found independently of the package: the authors' scipy
call (``least_squares`` from 1/K), then float64 Newton steps on
GᵀG w = w^(-1/α) in log-weights with a backtracking search on the residual,
from the better of scipy's answer and the orthogonal closed form
w_i = a_i^(-α/(1+α)). A root counts only if its relative residual is
≤ 1e-10 (``root_residual`` says what was reached).

Used by ``benchmarks.solver_speed --hard`` and by the tests.
"""

import dataclasses
import itertools

import numpy as np

KS = (2, 10, 40, 64)
ALPHAS = (0.5, 1.0, 2.0, 5.0, 10.0)
KINDS = ("random", "correlated", "conflicting")
DECADES = (2, 7)
ROOT_TOL = 1e-10


@dataclasses.dataclass(frozen=True)
class HardCase:
  kind: str
  k: int
  alpha: float
  decades: int
  gram: np.ndarray          # (K, K) float64, max diagonal 1
  root: np.ndarray | None   # float64 weights, or None if none was certified
  root_residual: float

  @property
  def name(self):
    return f"{self.kind} K={self.k} α={self.alpha:g} {self.decades}dec"


def gradients(kind, k, decades, seed, dim=None):
  """(K, dim) task gradients of the given kind, norms over ``decades``."""
  rng = np.random.default_rng(seed)
  dim = dim or max(2 * k, 32)
  if kind == "random":
    g = rng.normal(size=(k, dim))
  elif kind == "correlated":
    g = rng.normal(size=dim) + 0.5 * rng.normal(size=(k, dim)) / np.sqrt(1)
  elif kind == "conflicting":
    u = rng.normal(size=dim)
    signs = np.where(np.arange(k) % 2 == 0, 1.0, -1.0)
    low_rank = rng.normal(size=(k, 2)) @ rng.normal(size=(2, dim))
    g = (signs[:, None] * u + 0.3 * low_rank / np.sqrt(2)
         + 0.3 * rng.normal(size=(k, dim)))
  else:
    raise ValueError(f"unknown kind {kind!r}")
  g = g / np.linalg.norm(g, axis=1, keepdims=True)
  scales = 10.0 ** -np.linspace(0.0, decades, k) if k > 1 else np.ones(1)
  return g * rng.permutation(scales)[:, None]


def relative_residual(gram, w, alpha):
  gram, w = np.asarray(gram, np.float64), np.asarray(w, np.float64)
  target = w ** (-1.0 / alpha)
  return float(np.linalg.norm(gram @ w - target) / np.linalg.norm(target))


def scipy_weights(gram, alpha):
  """The authors' exact call (FairGrad repo, methods/weight_methods.py)."""
  from scipy.optimize import least_squares  # pylint: disable=g-import-not-at-top
  a = np.asarray(gram, np.float32)
  k = a.shape[0]
  res = least_squares(lambda x: a @ x - np.power(1 / x, 1 / alpha),
                      np.ones(k) / k, bounds=(0, np.inf))
  return res.x


def _trust_region_root(gram, alpha, w0):
  """scipy's trust-region Newton ('trust-exact') on the convex potential.

  GᵀG w = w^(-1/α) is ∇f(w) = 0 for f(w) = ½ wᵀGᵀGw - Σ_i w_i^p / p
  (p = 1 - 1/α; -Σ log w_i at α = 1). In x = log(w / w0), f is smooth and
  its only stationary point is the root; we hand scipy f, its gradient and
  its exact Hessian in x, scaled by f's size at w0.
  """
  from scipy.optimize import minimize  # pylint: disable=g-import-not-at-top
  a = np.asarray(gram, np.float64)
  p = 1.0 - 1.0 / alpha
  w0 = np.asarray(w0, np.float64)
  scale = float(np.sum(w0 ** p)) if p != 0 else float(len(w0))

  def parts(x):
    w = w0 * np.exp(x)
    aw = a @ w
    barrier = -np.log(w) if p == 0 else -(w ** p) / p
    f = 0.5 * w @ aw + np.sum(barrier)
    grad = w * aw - w ** p        # w ⊙ ∇_w f
    hess = (w[:, None] * a * w[None, :]
            + np.diag(w * aw + (1.0 / alpha - 1.0) * w ** p + w ** p / alpha
                      - w ** p * (1.0 / alpha)))
    return f / scale, grad / scale, hess / scale

  def hess_fn(x):
    w = w0 * np.exp(x)
    aw = a @ w
    # ∂²f/∂x_i∂x_j = w_i a_ij w_j + δ_ij (w_i (a w)_i - p w_i^p)
    return (w[:, None] * a * w[None, :] + np.diag(w * aw - p * w ** p)) / scale

  res = minimize(lambda x: parts(x)[0], np.zeros_like(w0),
                 jac=lambda x: parts(x)[1], hess=hess_fn,
                 method="trust-exact", options={"gtol": 1e-13,
                                                "maxiter": 2000})
  return w0 * np.exp(res.x)


def newton_polish(gram, alpha, w, maxiter=50):
  """Float64 Newton on the relative residual (A w) w^(1/α) - 1 in log w."""
  a = np.asarray(gram, np.float64)

  def resid(u):
    w = np.exp(u)
    return (a @ w) * w ** (1.0 / alpha) - 1.0

  u = np.log(w)
  r = resid(u)
  for _ in range(maxiter):
    if np.max(np.abs(r)) < 1e-15:
      break
    w = np.exp(u)
    wp = w ** (1.0 / alpha)
    jac = wp[:, None] * a * w[None, :] + np.diag((a @ w) * wp / alpha)
    try:
      step = np.linalg.solve(jac, -r)
    except np.linalg.LinAlgError:
      break
    t, norm = 1.0, np.linalg.norm(r)
    while t > 1e-6:
      r_new = resid(u + t * step)
      if np.all(np.isfinite(r_new)) and np.linalg.norm(r_new) < norm:
        break
      t /= 2
    else:
      break
    u, r = u + t * step, r_new
  return np.exp(u)


def float64_root(gram, alpha, with_scipy=True):
  """(root or None, its relative residual).

  From the better start of the authors' scipy call (``with_scipy``) and the
  orthogonal closed form, scipy's trust-region Newton on the convex
  potential, then Newton polishing on the residual.
  """
  a = np.asarray(gram, np.float64)
  starts = [np.diag(a) ** (-alpha / (1 + alpha))]
  if with_scipy:
    w = scipy_weights(a, alpha)
    if np.all(w > 0) and np.all(np.isfinite(w)):
      starts.append(w)
  best, best_res = None, np.inf
  for w0 in starts:
    with np.errstate(all="ignore"):
      w = newton_polish(a, alpha, _trust_region_root(a, alpha, w0))
      res = relative_residual(a, w, alpha) if np.all(w > 0) else np.inf
    if res < best_res:
      best, best_res = w, res
  return (best if best_res <= ROOT_TOL else None), float(best_res)


def _gram(kind, k, decades, seed):
  g = gradients(kind, k, decades, seed=seed)
  gram = g @ g.T
  return (gram / np.max(np.diag(gram))).astype(np.float32).astype(np.float64)


def full_set_gram(kind, k, decades):
  """The Gram matrix of one case of the full set (``hard_cases()``)."""
  n = list(itertools.product(KINDS, KS, DECADES)).index((kind, k, decades))
  return _gram(kind, k, decades, n)


def hard_cases(ks=KS, alphas=ALPHAS, kinds=KINDS, decades=DECADES, seed=0,
               with_scipy=True):
  """Every (kind, K, α, decades) case, with its float64 root."""
  out = []
  for n, (kind, k, dec) in enumerate(itertools.product(kinds, ks, decades)):
    gram = _gram(kind, k, dec, seed + n)
    for alpha in alphas:
      root, res = float64_root(gram, alpha, with_scipy)
      out.append(HardCase(kind, k, alpha, dec, gram, root, res))
  return out
