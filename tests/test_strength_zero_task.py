"""A task with a zero gradient, for every Gram weighting: values, not finiteness.

What each method should give when g_z = 0 (K = 4, z = 1), against the
(K-1)-task problem without task z:

* FairGrad (any α) and Nash-MTL: task z drops out of the equation (its
  (g_zᵀd)^(-α) is infinite) and gets weight 0; the other weights are those of
  the K-1 problem, which also satisfy GᵀG w = w^(-1/α) (checked directly).
* IMTL-G: (GᵀG)⁺n has a zero entry z (row z of GᵀG is zero and n_z = 0), so
  the weights are the K-1 problem's; the weight of task z is round-off.
* PCGrad: nobody is projected against g_z = 0 and g_z's copy stays 0: the
  update is the K-1 problem's with the same orders less task z (the NumPy
  reference of test_strength_pcgrad); w_z = 1 (the untouched g_z' = g_z).
* MGDA: 0 is in the convex hull, so the min-norm point is 0 — not the K-1
  problem: w = e_z and d = 0 (a Pareto-stationary point, as documented).
* CAGrad: g0 is (K-1)/K times the K-1 mean, and w = (1-t)w' + t e_z in the
  dual scales the objective by (1-t): when the K-1 dual's minimum F' is
  negative, w' is the K-1 dual's answer (t = 0) and λ_{-z} = (K-1)/K λ'
  (λ_z = 1/(K(1+c²)), the mean's share); when F' >= 0 every d of the ball
  with g_jᵀd >= 0 is optimal (the worst task, z, improves by 0 whatever d),
  so the test checks d is one of them. The sign of F' comes from scipy's
  SLSQP in float64 (the authors' solver), independent of the package.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize

import fairgrad_jax
import test_strength_pcgrad as pcgrad_ref

K, P, Z = 4, 7, 1
KEEP = [i for i in range(K) if i != Z]
SEEDS = range(4)
C = 0.4  # CAGrad's default


def grads(seed):
  """K gradients with conflicts (tasks 2, 3 lean against 0), g_Z = 0."""
  rng = np.random.default_rng(seed)
  g = rng.normal(size=(K, P))
  g[2] -= 1.2 * g[0]
  g[3] -= 1.0 * g[0]
  g[Z] = 0.0
  return g.astype(np.float32)


def gram(g):
  return jnp.asarray(g @ g.T)


WEIGHTINGS = {
    "fairgrad_2": jax.jit(functools.partial(fairgrad_jax.fairgrad_weights,
                                            alpha=2.0)),
    "fairgrad_10": jax.jit(functools.partial(fairgrad_jax.fairgrad_weights,
                                             alpha=10.0)),
    "nash_mtl": jax.jit(fairgrad_jax.nash_mtl_weights),
}
# (nash_mtl_weights is fairgrad_weights at α = 1.)
ALPHA = {"fairgrad_2": 2.0, "fairgrad_10": 10.0,
         "nash_mtl": 1.0}
imtl_g_weights = jax.jit(fairgrad_jax.imtl_g_weights)
mgda_weights = jax.jit(fairgrad_jax.mgda_weights)
cagrad_weights = jax.jit(fairgrad_jax.cagrad_weights)
pcgrad_weights = jax.jit(fairgrad_jax.pcgrad_weights)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", sorted(WEIGHTINGS))
def test_fairgrad_family_drops_the_task(name, seed):
  g = grads(seed)
  w = np.asarray(WEIGHTINGS[name](gram(g)), np.float64)
  w1 = np.asarray(WEIGHTINGS[name](gram(g[KEEP])), np.float64)
  assert w[Z] == 0.0, w
  # Measured: <= 1.4e-7 relative.
  np.testing.assert_allclose(w[KEEP], w1, rtol=1e-5)
  # The other tasks' equation holds (independent of the solver).
  h = g[KEEP].astype(np.float64)
  lhs = h @ h.T @ w[KEEP]
  np.testing.assert_allclose(lhs, w[KEEP] ** (-1.0 / ALPHA[name]), rtol=1e-4)


@pytest.mark.parametrize("seed", SEEDS)
def test_imtl_g_equals_the_smaller_problem(seed):
  g = grads(seed)
  w = np.asarray(imtl_g_weights(gram(g)), np.float64)
  w1 = np.asarray(imtl_g_weights(gram(g[KEEP])), np.float64)
  # Measured: |w_z| <= 4.3e-6, others within 5.2e-6 relative.
  assert abs(w[Z]) <= 5e-5, w
  np.testing.assert_allclose(w[KEEP], w1, rtol=5e-5)
  # Equal projections of d on the unit gradients of the live tasks.
  h = g[KEEP].astype(np.float64)
  proj = h @ (w @ g.astype(np.float64)) / np.linalg.norm(h, axis=1)
  np.testing.assert_allclose(proj, proj[0], rtol=1e-4)


@pytest.mark.parametrize("seed", SEEDS)
def test_pcgrad_equals_the_smaller_problem(seed):
  g = grads(seed)
  key = jax.random.PRNGKey(seed)
  w = np.asarray(pcgrad_weights(gram(g), key), np.float64)
  orders = pcgrad_ref.orders_of(key, K)
  # The same orders with task z removed, renumbered for the K-1 tasks.
  smaller = np.array([[KEEP.index(j) for j in order if j != Z]
                      for i, order in enumerate(orders) if i != Z])
  want = pcgrad_ref.reference(g[KEEP], smaller)
  got = w @ g.astype(np.float64)
  np.testing.assert_allclose(got, want, rtol=1e-5,
                             atol=1e-5 * np.linalg.norm(want))
  assert w[Z] == 1.0, w


@pytest.mark.parametrize("seed", SEEDS)
def test_mgda_is_zero(seed):
  g = grads(seed)
  w = np.asarray(mgda_weights(gram(g)), np.float64)
  np.testing.assert_array_equal(w, np.eye(K)[Z])


def _cagrad_dual_min(h):
  """min over the simplex of g_wᵀg0 + c‖g0‖‖g_w‖, float64 SLSQP."""
  g0 = h.mean(0)
  k = len(h)
  res = optimize.minimize(
      lambda w: (w @ h) @ g0 + C * np.linalg.norm(g0) * np.linalg.norm(w @ h),
      np.full(k, 1.0 / k), method="SLSQP", bounds=[(0.0, 1.0)] * k,
      constraints={"type": "eq", "fun": lambda w: np.sum(w) - 1.0})
  assert res.success, res
  return res.fun


@pytest.mark.parametrize("seed", SEEDS)
def test_cagrad_against_the_smaller_problem(seed):
  g = grads(seed)
  g64 = g.astype(np.float64)
  lam = np.asarray(cagrad_weights(gram(g)), np.float64)
  if _cagrad_dual_min(g64[KEEP]) < 0:  # seeds 0, 2, 3: -0.79, -1.04, -3.36
    lam1 = np.asarray(cagrad_weights(gram(g[KEEP])), np.float64)
    # Measured: <= 8.5e-8 relative.
    np.testing.assert_allclose(lam[KEEP], (K - 1) / K * lam1, rtol=1e-5)
    np.testing.assert_allclose(lam[Z], 1.0 / (K * (1 + C**2)), rtol=1e-6)
  else:  # seed 1: F' = 0.66, every d of the ball with g_jᵀd >= 0 is optimal
    d = (1 + C**2) * lam @ g64
    g0 = g64.mean(0)
    assert np.linalg.norm(d - g0) <= C * np.linalg.norm(g0) * (1 + 1e-6)
    # Measured: min_j g_jᵀd = -4.8e-5 (‖g_j‖‖d‖ ~ 7), the dual's accuracy.
    slack = 1e-4 * np.linalg.norm(g64, axis=1) * np.linalg.norm(d)
    assert np.all(g64 @ d >= -slack), g64 @ d


def test_cagrad_covers_both_regimes():
  signs = {_cagrad_dual_min(grads(s).astype(np.float64)[KEEP]) < 0
           for s in SEEDS}
  assert signs == {True, False}


AGGREGATORS = {
    "fairgrad": lambda k: fairgrad_jax.fairgrad(2.0, num_tasks=k),
    "nash_mtl": lambda k: fairgrad_jax.nash_mtl(num_tasks=k),
    "imtl_g": lambda k: fairgrad_jax.imtl_g(num_tasks=k),
}


@pytest.mark.parametrize("name", [
    pytest.param("fairgrad", marks=pytest.mark.slow),
    pytest.param("nash_mtl", marks=pytest.mark.slow), "imtl_g"])
def test_aggregator_update_equals_the_smaller_problem(name):
  """Through the aggregators (scaling, masks): same update as K-1 tasks."""
  g = grads(0)
  tree = lambda x: {"a": jnp.asarray(x[:, :3]), "b": jnp.asarray(x[:, 3:])}
  outs = []
  for x in (g, g[KEEP]):
    agg = AGGREGATORS[name](len(x))
    out, _ = agg.update(tree(x), agg.init(None))
    outs.append(np.concatenate([np.ravel(out["a"]), np.ravel(out["b"])]))
  np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5,
                             atol=1e-5 * np.linalg.norm(outs[1]))


def test_mgda_aggregator_update_is_zero():
  agg = fairgrad_jax.mgda(num_tasks=K)
  out, state = agg.update({"a": jnp.asarray(grads(0))}, agg.init(None))
  np.testing.assert_array_equal(out["a"], 0.0)
  np.testing.assert_array_equal(state.weights, np.eye(K)[Z])
