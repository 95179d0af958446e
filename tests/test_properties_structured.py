"""Properties on structured inputs, in the style of TorchJD's test suite (#12).

Jacobians of controlled rank, more tasks than dimensions, strongly and weakly
Pareto-stationary matrices; non-conflict where a method promises it, several
permutations on rank-deficient and many-task inputs, linearity of linear
scalarization under per-task scaling, MGDA's KKT conditions on a wide
shape, and a reset check for every stateful method.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fairgrad_jax as fj


def _jacobian(seed, k, n, rank):
  """A (k, n) float32 Jacobian of the given rank."""
  rng = np.random.default_rng(seed)
  return (rng.standard_normal((k, rank)) @ rng.standard_normal((rank, n))
          ).astype(np.float32)


def _stationary(seed, k, n, rank, strong):
  """Rows with Σ_i c_i g_i = 0, c > 0 (strong) or c >= 0 with zeros (weak).

  The first k - 1 rows span a rank - 1 space, and the last row is minus a
  positive combination of some of them, so 0 is in their convex hull.
  """
  rng = np.random.default_rng(seed)
  j = _jacobian(seed, k - 1, n, rank)
  c = rng.uniform(0.5, 2.0, k - 1)
  if not strong:
    c[: (k - 1) // 2] = 0.0  # only some tasks take part in the cancellation
  last = -(c @ j)
  return np.concatenate([j, last[None]], axis=0).astype(np.float32)


@jax.jit
def _step_mgda(g):
  agg = fj.mgda(num_tasks=g.shape[0])
  return agg.update({"w": g}, agg.init(None))


@jax.jit
def _step_cagrad(g):
  agg = fj.cagrad(c=1.0, num_tasks=g.shape[0])
  return agg.update({"w": g}, agg.init(None))


@jax.jit
def _step_imtl_g(g):
  agg = fj.imtl_g(num_tasks=g.shape[0])
  return agg.update({"w": g}, agg.init(None))


# FairGrad has its own test below (its d has degree (1-α)/(1+α), so its
# round-off is not measured against Σ‖g_j‖).
NON_CONFLICTING = {"mgda": _step_mgda, "cagrad_c1": _step_cagrad}
SHAPES = [(5, 100, 3), (20, 10, 5), (10, 10, 10)]  # (K, n, rank)


def _worst_conflict(g, d):
  """min_i g_iᵀd relative to round-off scale ‖g_i‖ Σ_j ‖g_j‖ (as TorchJD)."""
  g = np.asarray(g, np.float64)
  d = np.asarray(d, np.float64)
  norms = np.linalg.norm(g, axis=1)
  return np.min(g @ d / (norms * norms.sum() + 1e-30))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", ["plain", "strong", "weak"])
@pytest.mark.parametrize("name", sorted(NON_CONFLICTING))
def test_non_conflicting_on_structured_inputs(name, kind, shape):
  k, n, rank = shape
  if kind == "plain":
    g = _jacobian(0, k, n, rank)
  else:
    g = _stationary(0, k, n, min(rank, n), strong=kind == "strong")
  d, _ = NON_CONFLICTING[name](jnp.asarray(g))
  d = d["w"]
  assert np.all(np.isfinite(d))
  # g_iᵀd >= 0 up to float32 round-off of the products (K ε ‖g_i‖ Σ‖g_j‖).
  assert _worst_conflict(g, d) >= -64 * k * np.finfo(np.float32).eps, (
      _worst_conflict(g, d))


@pytest.mark.parametrize("alpha", [1.0, 2.0, 5.0])
def test_fairgrad_is_zero_or_non_conflicting_on_structured_inputs(alpha):
  """At Pareto-stationary inputs FairGrad has no root: d = 0, no conflict.

  Before the zero_at_stationary rule, 45 of these 54 updates conflicted with
  a task, cosines down to -0.97 (the regularized root's cancellation, or a
  solve stopped short of a root that does not exist). Every update is now
  either exactly 0 or within 2e-3 of conflict-free in cosine, and the
  updates of the full-rank square inputs (not stationary) are kept.
  """
  weighting = fj.fairgrad_weighting(alpha=alpha)
  step = jax.jit(lambda g: fj.aggregator(weighting).update(
      {"w": g}, fj.aggregator(weighting).init(None))[0]["w"])
  kept = 0
  for seed in range(2):
    for kind in ("plain", "strong", "weak"):
      for k, n, rank in SHAPES:
        g = (_jacobian(seed, k, n, rank) if kind == "plain" else
             _stationary(seed, k, n, min(rank, n), strong=kind == "strong"))
        d = np.asarray(step(jnp.asarray(g)), np.float64)
        assert np.all(np.isfinite(d))
        if not np.any(d):
          continue
        g64 = g.astype(np.float64)
        cos = g64 @ d / (np.linalg.norm(g64, axis=1) * np.linalg.norm(d))
        assert cos.min() >= -2e-3, (kind, (k, n, rank), seed, cos.min())
        kept += kind == "plain" and k == rank
  assert kept == 2  # the (10, 10, 10) plain inputs, both seeds


def test_fairgrad_alpha_zero_keeps_the_plain_sum():
  """α = 0 is linear scalarization: Σ g_i, conflicting or not, never zeroed.

  (The rule is for α > 0, whose root has every g_iᵀd > 0; with it on at
  α = 0 the toy figure's LS trajectories stopped at the first conflict.)
  Static and traced α.
  """
  g = jnp.asarray(_stationary(0, 5, 100, 3, strong=False))
  expected = np.asarray(g).sum(axis=0)
  agg = fj.fairgrad(0.0, num_tasks=5)
  d = agg.update({"w": g}, agg.init(None))[0]["w"]
  np.testing.assert_allclose(d, expected, rtol=1e-5, atol=1e-5)
  opt = optax.inject_hyperparams(
      fj.fairgrad, static_args=("num_tasks", "maxiter", "scale_by_num_tasks"))(
          alpha=0.0, num_tasks=5)
  state = opt.init({"w": jnp.zeros(100)})
  d = jax.jit(opt.update)({"w": g}, state)[0]["w"]
  np.testing.assert_allclose(d, expected, rtol=1e-5, atol=1e-5)
  state.hyperparams["alpha"] = jnp.asarray(2.0)  # the rule, traced
  assert not np.any(np.asarray(jax.jit(opt.update)({"w": g}, state)[0]["w"]))


@pytest.mark.parametrize("mode", ["jvp", "vjp"])
def test_fairgrad_zero_at_stationary_in_every_mode(mode):
  """Gram-only and representation-level apply the aggregator's rule.

  On a strongly stationary (5, 100) Jacobian (rows g_i = ∂l_i/∂w of linear
  losses) and a full-rank one: stacked, weighted_grad and
  representation_grad give the same update, 0 at the stationary one.
  """
  weighting = fj.fairgrad_weighting(alpha=2.0)
  agg = fj.aggregator(weighting, num_tasks=5, shared={"w": True, "b": False})
  for g, stationary in ((_stationary(0, 5, 100, 3, strong=True), True),
                        (_jacobian(0, 10, 10, 10)[:5], False)):
    jac = jnp.asarray(g)
    losses = lambda p, jac=jac: jac @ p["w"] + p["b"]
    params = {"w": jnp.zeros(jac.shape[1]), "b": jnp.zeros(())}
    stacked = agg.update({"w": jac, "b": jnp.ones(5)}, agg.init(None))[0]
    gram_only = fj.weighted_grad(losses, weighting, mode=mode,
                                 shared={"w": True, "b": False})
    out, _ = gram_only(params, state=gram_only.init(5))
    rep = fj.representation_grad(
        lambda p: p["w"], lambda p, z: jac @ z + p["b"], weighting,
        mode=mode)
    out_rep, _ = rep(params, state=rep.init(5))
    for d in (stacked["w"], out.update["w"], out_rep.update["w"]):
      if stationary:
        assert not np.any(np.asarray(d))
      else:
        assert np.all(np.asarray(jac @ d) > 0)
        np.testing.assert_allclose(d, stacked["w"], rtol=1e-4, atol=1e-6)
    # FairGrad's heads get the plain Σ g_i (weight_heads=False) either way.
    assert float(out.update["b"]) == pytest.approx(5.0)
    assert float(stacked["b"]) == pytest.approx(5.0)


@pytest.mark.parametrize("kind", ["strong", "weak"])
@pytest.mark.parametrize("shape", SHAPES)
def test_imtl_g_never_conflicts_at_stationary_points(kind, shape):
  """IMTL-G's equal projections are 0 there: d = 0, not a conflict."""
  k, n, rank = shape
  g = _stationary(1, k, n, min(rank, n), strong=kind == "strong")
  d = _step_imtl_g(jnp.asarray(g))[0]["w"]
  assert np.all(np.isfinite(d))
  assert _worst_conflict(g, d) >= -64 * k * np.finfo(np.float32).eps


@pytest.mark.parametrize("shape", [(20, 10, 5), (6, 30, 3)])
@pytest.mark.parametrize("name", ["mgda", "imtl_g", "fairgrad", "cagrad"])
def test_permutation_invariance_rank_deficient(name, shape):
  k, n, rank = shape
  g = jnp.asarray(_jacobian(2, k, n, rank))
  step = {"mgda": _step_mgda, "imtl_g": _step_imtl_g,
          "cagrad": _step_cagrad, "fairgrad": _step_fairgrad}[name]
  d = step(g)[0]["w"]
  scale = float(jnp.max(jnp.abs(d))) + 1e-30
  for seed in range(3):
    perm = np.random.default_rng(seed).permutation(k)
    d_perm = step(g[perm])[0]["w"]
    # Same update up to the solvers' tolerance, relative to ‖d‖_∞.
    np.testing.assert_allclose(d_perm / scale, d / scale, atol=2e-3)


@jax.jit
def _step_fairgrad(g):
  agg = fj.fairgrad(2.0, num_tasks=g.shape[0])
  return agg.update({"w": g}, agg.init(None))


def test_linear_scalarization_is_linear_in_each_task():
  g = jnp.asarray(_jacobian(3, 4, 7, 4))
  agg = fj.linear_scalarization(num_tasks=4)
  c = jnp.array([0.5, 2.0, -1.0, 3.0])
  d = agg.update({"w": c[:, None] * g}, agg.init(None))[0]["w"]
  np.testing.assert_allclose(d, c @ g, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("k", [10, 50])
def test_mgda_kkt_on_a_wide_shape(k):
  """KKT of min_{w ∈ Δ} wᵀAw on a (k, 100) Jacobian of full rank.

  Primal feasibility (w >= 0, Σ w = 1); stationarity and complementary
  slackness: (Aw)_i >= wᵀAw for every i (the dual multipliers
  μ_i = 2((Aw)_i - wᵀAw) are >= 0), with equality where w_i > 0.
  """
  g = jnp.asarray(_jacobian(4, k, 100, k))
  a = np.asarray(g @ g.T, np.float64)
  w = np.asarray(fj.mgda_weights(g @ g.T), np.float64)  # the defaults
  assert np.all(w >= 0) and abs(w.sum() - 1) < 1e-5
  aw, waw = a @ w, w @ a @ w
  scale = np.max(np.diag(a))
  # Dual feasibility: no vertex improves on the current point.
  assert np.min(aw - waw) / scale >= -1e-3, np.min(aw - waw) / scale
  # Complementary slackness on the support.
  support = w > 1e-3
  assert np.max(np.abs(aw[support] - waw)) / scale <= 1e-3


_STATEFUL = {
    "fairgrad": lambda k: fj.fairgrad(5.0, num_tasks=k),
    "nash_mtl": lambda k: fj.nash_mtl(num_tasks=k),
    "pcgrad": lambda k: fj.pcgrad(seed=1, num_tasks=k),
    "graddrop": lambda k: fj.graddrop(seed=1, num_tasks=k),
    "rlw": lambda k: fj.rlw(seed=1, num_tasks=k),
    "dwa": lambda k: fj.dwa(num_tasks=k),
    "uw": lambda k: fj.uw(num_tasks=k),
    "famo": lambda k: fj.famo(num_tasks=k),
    "mgda": lambda k: fj.mgda(num_tasks=k),
    "cagrad": lambda k: fj.cagrad(num_tasks=k),
}


@pytest.mark.parametrize("name", sorted(_STATEFUL))
def test_reset_reproduces_the_trajectory(name):
  """Re-initialising the state replays the same updates (no hidden state)."""
  k = 3
  agg = _STATEFUL[name](k)
  update = jax.jit(agg.update)
  grads = [{"w": jnp.asarray(_jacobian(s, k, 6, 3))} for s in range(4)]
  losses = [jnp.array([1.0, 2.0, 3.0]) * f for f in (1.0, 0.9, 0.7, 0.6)]

  def run():
    state, out = agg.init(None), []
    for g, l in zip(grads, losses):
      d, state = update(g, state, losses=l)
      out.append(np.asarray(d["w"]))
    return out, state

  first, state1 = run()
  second, state2 = run()
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(state1), jax.tree.leaves(state2)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The steps differ from one another (the state or the input moved).
  assert not np.array_equal(first[0], first[-1])


def test_zero_jacobians_of_another_shape():
  """Every method: zero gradients give a zero, finite update.

  tests/test_properties.py checks K = 3 tasks of its random shapes; here
  K = 7 tasks in 3 dimensions (more tasks than dimensions) and a bias.
  """
  import test_properties  # pylint: disable=g-import-not-at-top
  k, n = 7, 3
  grads = {"w": jnp.zeros((k, n)), "b": jnp.zeros((k,))}
  losses = jnp.linspace(1.0, 2.0, k)
  for name in test_properties.NAMES:
    agg = test_properties.METHODS[name][0](k)
    update = jax.jit(agg.update)
    state = agg.init(None)
    for _ in range(2):
      d, state = update(grads, state, losses=losses)
    for leaf in jax.tree.leaves(d):
      assert np.all(np.asarray(leaf) == 0), (name, leaf)
