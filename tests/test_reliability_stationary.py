"""Pareto-stationary inputs (issue 12, item 10), in TorchJD's suite's style.

At a Pareto-stationary point some convex combination of the task gradients
vanishes; methods that promise a non-conflicting update (MGDA, CAGrad with
c >= 1, IMTL-G, whose equal projections must then be 0) must return 0 or an
update with g_iᵀd >= 0 up to round-off. Before, CAGrad (c >= 1) returned
‖d‖ up to 0.35‖g‖ with cosines down to -1 (its dual direction is 0/0 there)
and IMTL-G updates several times larger than the gradients, conflicting.
Inputs: Jacobians of controlled rank, strongly stationary (w > 0 with
wᵀG = 0), weakly stationary (w >= 0, some w_i = 0), more tasks than
dimensions, and zero matrices; non-stationary ones check that the rule
does not fire where it should not.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fairgrad_jax as fj

METHODS = {
    "mgda": lambda: fj.mgda(),
    "cagrad_1": lambda: fj.cagrad(1.0),
    "cagrad_2": lambda: fj.cagrad(2.0),
    "cagrad_10": lambda: fj.cagrad(10.0),
    "imtl_g": lambda: fj.imtl_g(),
}
NAMES = sorted(METHODS)
# (K, P, rank) of the stationary Jacobians (TorchJD's 20×10 and 20×100
# shapes, ranks 1 to K-1, and small ones).
SHAPES = [(20, 10, 1), (20, 10, 5), (20, 10, 9), (20, 100, 1), (20, 100, 10),
          (20, 100, 19), (5, 3, 2), (2, 3, 1)]
# Non-conflict up to round-off, relative to the gradients' scale (TorchJD's
# atol on O(1) matrices).
TOL = 1e-4


@functools.lru_cache(maxsize=None)
def _update(name):
  agg = METHODS[name]()
  return agg, jax.jit(agg.update)


def _run(name, g):
  agg, update = _update(name)
  d = update({"w": jnp.asarray(g, jnp.float32)}, agg.init(None))[0]["w"]
  return np.asarray(d, np.float64)


def _stationary(k, p, rank, weak, seed):
  """A (K, P) float32 Jacobian of rank <= ``rank`` with wᵀG = 0, w >= 0."""
  rng = np.random.default_rng(seed)
  w = rng.uniform(0.2, 1.0, k)
  if weak:
    w[: k // 3] = 0.0  # those tasks take no part in the combination
  g = rng.normal(size=(k, rank)) @ rng.normal(size=(rank, p))
  g -= np.outer(w, w @ g) / (w @ w)
  g *= rng.uniform(0.5, 2.0, (k, 1))  # task scales (w rescaled alike)
  return g.astype(np.float32)


def _assert_non_conflicting(g, d):
  g = np.asarray(g, np.float64)
  norms = np.linalg.norm(g, axis=1)
  products = g @ d
  assert np.all(products >= -TOL * norms.max() ** 2), (
      np.min(products) / norms.max() ** 2)


@pytest.mark.parametrize("weak", [False, True], ids=["strong", "weak"])
@pytest.mark.parametrize("k, p, rank", SHAPES)
@pytest.mark.parametrize("name", NAMES)
def test_stationary_update_is_zero_or_non_conflicting(name, k, p, rank, weak):
  g = _stationary(k, p, rank, weak, seed=k * 1000 + p * 10 + rank)
  d = _run(name, g)
  assert np.all(np.isfinite(d))
  _assert_non_conflicting(g, d)
  # 0 up to round-off: the update of a stationary point is no step.
  assert np.linalg.norm(d) <= 1e-3 * np.linalg.norm(g, axis=1).max()


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("k, p", [(20, 100), (5, 3), (3, 10)])
@pytest.mark.parametrize("name", NAMES)
def test_non_stationary_update_is_kept(name, k, p, seed):
  # Gradients in one open half-space (all have a positive component along
  # a common direction): not stationary, so the methods' own non-zero,
  # non-conflicting updates come back.
  rng = np.random.default_rng(seed)
  g = rng.normal(size=(k, p))
  g[:, 0] = np.abs(g[:, 0]) + 1.0
  g = g.astype(np.float32)
  d = _run(name, g)
  _assert_non_conflicting(g, d)
  assert np.linalg.norm(d) > 1e-2 * np.linalg.norm(g, axis=1).max()


@pytest.mark.parametrize("shape", [(1, 3), (2, 5), (20, 10), (5, 1)])
@pytest.mark.parametrize("name", NAMES)
def test_zero_matrix_gives_zero(name, shape):
  d = _run(name, np.zeros(shape, np.float32))
  np.testing.assert_array_equal(d, 0.0)


def _rank_deficient(seed):
  """6 tasks in a rank-3 subspace, one open half-space: IMTL-G's pinv."""
  rng = np.random.default_rng(seed)
  basis = rng.normal(size=(3, 12))
  coef = rng.normal(size=(6, 3))
  coef[:, 0] = np.abs(coef[:, 0]) + 2.0
  return (coef @ basis).astype(np.float32)


@pytest.mark.parametrize("seed", range(3))
def test_imtl_g_permutation_invariant_on_rank_deficient_gram(seed):
  g = _rank_deficient(seed)
  gram = jnp.asarray(g) @ jnp.asarray(g).T
  weights = jax.jit(fj.imtl_g_weights)
  d = np.asarray(weights(gram), np.float64) @ g
  rng = np.random.default_rng(100 + seed)
  for _ in range(4):
    perm = rng.permutation(6)
    d_p = np.asarray(weights(gram[perm][:, perm]), np.float64) @ g[perm]
    np.testing.assert_allclose(d_p, d, rtol=1e-4,
                               atol=1e-4 * np.abs(d).max())


def test_imtl_g_keeps_its_answer_when_not_stationary_even_if_conflicting():
  # Three independent gradients whose equal-projection d has a negative
  # common projection (IMTL-G's own answer, not a stationary point).
  rng = np.random.default_rng(1)
  found = 0
  for _ in range(1000):
    g = rng.normal(size=(3, 3))
    gram = g @ g.T
    if np.linalg.cond(gram) > 300:  # well-conditioned cases only
      continue
    n = np.sqrt(np.diag(gram))
    v = np.linalg.solve(gram, n)
    if v.sum() < 0:  # c = 1/Σv < 0
      found += 1
      gf = g.astype(np.float32)
      w = np.asarray(fj.imtl_g_weights(jnp.asarray(gf) @ jnp.asarray(gf).T))
      np.testing.assert_allclose(w, v / v.sum(), rtol=1e-3, atol=1e-5)
  assert found >= 1


def test_an_unconverged_solve_gets_no_round_off_allowance():
  """Huge weights cancelling (a root running off to infinity at a
  Pareto-stationary point) make the sum's round-off bound ν large; an
  update of a converged solve may conflict within it, one of an
  unconverged solve may not: its weights are no root. Measured on an
  AVX-512 CPU: FairGrad α = 5 on a weakly stationary input stopped
  unconverged with a cosine of -0.11 to a task while ν / ‖d‖ = 0.13."""
  from fairgrad_jax import _aggregator  # pylint: disable=g-import-not-at-top
  gram = jnp.array([[1.0, -0.99], [-0.99, 1.0]])
  w = jnp.array([4e5, 4e5])  # ν = ε · 8e5 ≈ 0.1 against ‖d‖ = 1
  d_norm = jnp.asarray(1.0)
  gd = jnp.array([0.5, -0.05])  # task 2: cosine -0.05
  args = (gram, w, gd, d_norm, 0.0, 100)
  assert not bool(_aggregator.conflicts(*args))
  assert not bool(_aggregator.conflicts(*args, unconverged=jnp.array(False)))
  assert bool(_aggregator.conflicts(*args, unconverged=jnp.array(True)))
  # Within the angle bound (4√ε ≈ 1.4e-3) it is kept either way.
  near = (gram, w, jnp.array([0.5, -1e-4]), d_norm, 0.0, 100)
  assert not bool(_aggregator.conflicts(*near, unconverged=jnp.array(True)))
  # FairGrad's state carries the flag the aggregator reads.
  assert hasattr(fj.fairgrad(5.0).init(None).extra, "converged")
  assert _aggregator.unconverged(fj.linear_scalarization().init(None)) is False
