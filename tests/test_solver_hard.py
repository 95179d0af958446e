"""FairGrad's solve on hard Gram matrices (issue 11), against float64 roots.

The cases come from ``benchmarks._hard_set``: random, correlated and
conflicting gradient directions, norms over 2 and 7 decades, every α of the
paper. The float64 roots are found there independently of the package
(scipy's trust-region Newton on the convex potential, then Newton polishing)
and certified here by their own float64 residual.
"""

import functools
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fairgrad_jax as fj

_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # `benchmarks` lives next to the package
  sys.path.insert(0, _ROOT)
from benchmarks import _hard_set  # pylint: disable=g-import-not-at-top

PAD_K = 10
# A float32 weight vector can hold roots whose weights span up to ~1e76
# (normal range); we call a root representable below 1e36, where GᵀG w can
# also be formed without overflow.
MAX_DECADES = 36.0


@functools.lru_cache(maxsize=None)
def _cases():
  return _hard_set.hard_cases(ks=(2, 10), with_scipy=False)


@functools.partial(jax.jit, static_argnames=("alpha",))
def _batched(grams, alpha, init=None):
  if init is None:
    return jax.vmap(lambda a: fj.fairgrad_solve(a, alpha))(grams)
  return jax.vmap(lambda a, w: fj.fairgrad_solve(a, alpha, init=w))(
      grams, init)


# One compiled solve per α (an eager call retraces the loop every time: the
# warm-start sequence below took 5 minutes that way).
_solve = jax.jit(fj.fairgrad_solve, static_argnames=("alpha", "maxiter"))


def _padded(cases):
  grams = np.zeros((len(cases), PAD_K, PAD_K), np.float32)
  for n, c in enumerate(cases):
    grams[n, :c.k, :c.k] = c.gram
  return grams


@pytest.mark.parametrize("alpha", _hard_set.ALPHAS)
def test_hard_set_converges(alpha):
  cases = [c for c in _cases() if c.alpha == alpha]
  assert len(cases) == 12
  sols = _batched(_padded(cases), alpha)
  # Issue 11: a median of at most 5 cold iterations. Measured on this slice
  # (K = 2 and 10, padded to 10): medians 1-5, at most 7 (the solver of
  # stop 26, without the weight path: median 6 and up to 15 at α = 10).
  iters = np.asarray(sols.num_iterations)
  assert np.median(iters) <= 5, (alpha, sorted(iters.tolist()))
  assert iters.max() <= 8, (alpha, sorted(iters.tolist()))
  for n, c in enumerate(cases):
    w = np.asarray(sols.weights[n], np.float64)
    # Padding tasks have zero gradients: they drop out with weight 0.
    np.testing.assert_array_equal(w[c.k:], 0.0)
    w = w[:c.k]
    # Never NaN, never 0 for a live task, whatever the case.
    assert np.all(np.isfinite(w)) and np.all(w > 0), c.name
    assert np.isfinite(float(sols.relative_residual[n])), c.name
    iters = int(sols.num_iterations[n])
    assert iters <= 30, (c.name, iters)
    if c.root is None:
      continue  # no certified float64 root to compare with
    # The oracle's root is a root: certify it here, in float64.
    assert _hard_set.relative_residual(c.gram, c.root, alpha) <= 1e-10
    decades = np.log10(c.root.max() / c.root.min())
    if decades > MAX_DECADES:
      # float32 cannot hold these weights: clipped, and said so.
      assert not bool(sols.converged[n]), c.name
      continue
    err = np.max(np.abs(w / c.root - 1.0))
    if alpha <= 5.0 or bool(sols.converged[n]):
      assert err <= 1e-4, (c.name, err)
    else:
      # α = 10 with norms over seven decades and conflicting tasks: float32
      # does not always reach the root (the closing note of issue 11 lists
      # it); the solve must then say so (converged False).
      assert not bool(sols.converged[n]), c.name


@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_hard_set_converged_flag_means_weights_at_the_root(alpha):
  """converged ⇔ the weights are within tol of the float64 root.

  ``converged`` means: every task's relative residual is at most tol, or the
  last Newton correction (from the error-free residual) changes no weight by
  more than tol. The second clause matters: where a task's (GᵀG w)_i
  cancels (K = 2, conflicting, seven decades), the float64 root rounded to
  float32 already has a per-task residual of 7e-4, so a residual-only flag
  said False on weights accurate to 4e-8. Checked against the independent
  float64 roots, in both directions: every case here converges, and each
  converged answer is within 1e-4 of its root.
  """
  cases = [c for c in _cases() if c.alpha == alpha]
  sols = _batched(_padded(cases), alpha)
  for n, c in enumerate(cases):
    assert bool(sols.converged[n]), c.name
    w = np.asarray(sols.weights[n], np.float64)[:c.k]
    assert c.root is not None, c.name
    assert np.max(np.abs(w / c.root - 1.0)) <= 1e-4, c.name
  # The residual clause alone is not what made them converge everywhere.
  rel_max = []
  for n, c in enumerate(cases):
    w = np.asarray(sols.weights[n], np.float64)[:c.k]
    rel_max.append(np.max(np.abs((c.gram @ w) * w ** (1 / alpha) - 1.0)))
  assert max(rel_max) > 1e-5, rel_max


@pytest.mark.parametrize("alpha", _hard_set.ALPHAS)
def test_hard_set_residual_at_the_float32_floor(alpha):
  """The residual is what the float64 root rounded to float32 leaves.

  Issue 11 asks for a relative residual ≤ 1e-5 (evaluated exactly, here in
  float64) wherever float32 can represent the root. Where conflicting tasks
  make GᵀG w cancel, rounding the float64 root to float32 alone can leave
  more (up to 2.4e-3 on this slice), and neighbouring floats differ by
  several times that: the rounded root's residual is the measure there.
  Measured on this slice: at most 2.05x it (conflicting K = 10, α = 2,
  seven decades, whose floor is 2e-5), below it on two cases, ≤ 1e-5
  wherever it is. Before, the polish divided by a "power of two" built with XLA's
  inexact exp2, which rounded every weight in the error-free residual, and
  its multiplicative correction w e^δ could not move a weight by a fraction
  of an ulp: random K = 2, α = 10, seven decades ended at 12.8x its floor
  (3e-2), conflicting K = 2, α = 2, seven decades at 3.7x.
  """
  cases = [c for c in _cases() if c.alpha == alpha]
  sols = _batched(_padded(cases), alpha)
  checked = 0
  for n, c in enumerate(cases):
    if c.root is None or np.log10(c.root.max() / c.root.min()) > MAX_DECADES:
      continue
    checked += 1
    w = np.asarray(sols.weights[n])[:c.k]
    res = _hard_set.relative_residual(c.gram, w, alpha)
    floor = _hard_set.relative_residual(c.gram, c.root.astype(np.float32),
                                        alpha)
    assert res <= max(1e-5, 3.0 * floor), (c.name, res, floor)
    if floor <= 0.5e-5:
      assert res <= 1e-5, (c.name, res, floor)
  assert checked >= 8


def test_converged_flag_at_the_float32_floor():
  """converged is True for weights at the root whose correction is noise.

  Conflicting tasks, K = 64, norms over seven decades, α = 5: float32's
  answer is 7e-6 from the float64 root, but (GᵀG w)_i cancels so much
  that rounding the weights to float32 alone leaves residuals up to 0.5,
  and the last Newton correction computed from them (1.25e-5) is just over
  tol = 1e-5: the flag used to say False. Every residual is within its
  round-off floor (what rounding each weight to float32 can move GᵀG w by),
  so the answer is as close as float32 can certify. A solve stopped early on
  the same matrix must still say False.
  """
  gram = _hard_set.full_set_gram("conflicting", 64, 7)
  root, res = _hard_set.float64_root(gram, 5.0, with_scipy=False)
  assert root is not None, res
  a32 = jnp.asarray(gram, jnp.float32)
  sol = _solve(a32, alpha=5.0)
  w = np.asarray(sol.weights, np.float64)
  assert np.max(np.abs(w / root - 1.0)) <= 1e-4
  rel = (gram @ w) * w ** (1 / 5.0) - 1.0
  assert np.max(np.abs(rel)) > 1e-2  # no residual clause made it converge
  assert bool(sol.converged)
  for maxiter in (2, 5):
    early = _solve(a32, alpha=5.0, maxiter=maxiter)
    assert not bool(early.converged), maxiter
    assert np.max(np.abs(np.asarray(early.weights) / root - 1.0)) > 1e-3


def test_warm_start_on_a_drifting_sequence():
  """Warm-started from the last weights, a slowly drifting problem takes at
  most 2 iterations (issue 11) and matches the cold solve. (The weights move
  up to 10% per step here at α = 5: the first Newton step brings them to
  ~3e-3, the second to ~1e-5, and two full steps contracting by θ ≤ 1/4
  leave about θ² times the last one to go; the solver of stop 26 took 3.)"""
  rng = np.random.default_rng(0)
  g = _hard_set.gradients("conflicting", PAD_K, 2, seed=3)
  drift = rng.normal(size=g.shape) * 1e-3 * np.linalg.norm(g, axis=1,
                                                           keepdims=True)
  grams = []
  for step in range(20):
    gs = g + step * drift
    grams.append(gs @ gs.T)
  grams = np.asarray(grams, np.float32)
  for alpha in (1.0, 2.0, 5.0):
    cold = _batched(grams, alpha)
    warm_iters = []
    w = cold.weights[0]
    for step in range(1, len(grams)):
      sol = _solve(grams[step], alpha, init=w)
      warm_iters.append(int(sol.num_iterations))
      np.testing.assert_allclose(sol.weights, cold.weights[step], rtol=1e-4)
      w = sol.weights
    cold_median = np.median(np.asarray(cold.num_iterations))
    assert max(warm_iters) <= 2, (alpha, warm_iters)
    assert np.median(warm_iters) < cold_median, (alpha, warm_iters)


_NO_NAN_CHECK = """
import numpy as np, jax
import fairgrad_jax as fj
rng = np.random.default_rng(1)
grams = []
for n in range(24):
  k = {k}
  rank = 1 + n % k
  g = rng.normal(size=(k, rank)) @ rng.normal(size=(rank, 3 * k))
  g *= 10.0 ** rng.uniform(-6, 6, size=(k, 1))  # a over 24 decades
  grams.append((g @ g.T).astype(np.float32))
grams = np.asarray(grams)
for alpha in (0.5, 2.0, 10.0):
  sols = jax.vmap(lambda a: fj.fairgrad_solve(a, alpha))(grams)
  assert np.all(np.isfinite(np.asarray(sols.weights))), alpha
  assert np.all(np.asarray(sols.weights) > 0), alpha
  assert np.all(np.isfinite(np.asarray(sols.relative_residual))), alpha
print("ok")
"""


def test_no_nan_from_finite_psd_input():
  """Random PSD matrices of every rank, scale and α: finite weights.

  Run in a fresh interpreter: inside a long-lived pytest-xdist worker that
  has compiled hundreds of other programs, XLA's CPU compiler has twice
  crashed (SIGSEGV in backend_compile_and_load) while compiling this
  vmapped solve; the same program compiles and passes in a fresh process
  and alone. The check itself is unchanged.
  """
  out = subprocess.run(
      [sys.executable, "-c", _NO_NAN_CHECK.format(k=PAD_K)],
      capture_output=True, text=True, timeout=900, check=False,
      cwd=pathlib.Path(__file__).resolve().parents[1])
  assert out.returncode == 0 and out.stdout.strip().endswith("ok"), (
      out.returncode, out.stdout[-2000:], out.stderr[-4000:])


def test_benchmark_hard_table_runs():
  """`python -m benchmarks.solver_speed --hard` on its smallest slice."""
  from benchmarks import solver_speed  # pylint: disable=g-import-not-at-top
  table = solver_speed.hard_table((2,), calls=1, per_case=True)
  rows = [line for line in table.splitlines()[2:] if line.startswith("| 2 ")]
  assert len(rows) == len(_hard_set.ALPHAS)
  worst_of = {}
  for row in rows:
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == 12
    median, worst = (float(v) for v in cells[2].split(" / "))
    assert 0 <= median <= worst <= 30
    worst_of[float(cells[1])] = worst
  # The per-case table: one row per case, its iterations the summary's.
  cases = [line.strip("|").split("|") for line in table.splitlines()
           if " K=2 " in line]
  assert len(cases) == len(_hard_set.KINDS) * len(_hard_set.DECADES) * len(
      _hard_set.ALPHAS)
  for alpha, worst in worst_of.items():
    cold = [int(c[1]) for c in cases if f" α={alpha:g} " in c[0]]
    assert len(cold) == len(_hard_set.KINDS) * len(_hard_set.DECADES)
    assert max(cold) == worst, (alpha, cold)
  for c in cases:
    assert c[2].strip() in ("True", "False")
    if c[3].strip() not in ("not representable", "no certified root"):
      assert float(c[3]) <= 1e-4 and 0 <= int(c[4]) <= 30, c
