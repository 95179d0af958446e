"""The fairgrad aggregator inside optax: chains, process, jit, scan, vmap."""

import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax.experimental import aggregating
import pytest

import fairgrad_jax as fj

K = 3


def losses_fn(params, x):
  """Three regression tasks on a shared trunk with one head per task."""
  h = jnp.tanh(x @ params["trunk"])  # (n, 4)
  preds = jnp.einsum("nh,kh->kn", h, params["heads"])  # (K, n)
  targets = jnp.stack([x[:, 0], -x[:, 0], 10.0 * x[:, 1]])
  return jnp.mean((preds - targets) ** 2, axis=1)


def init_params():
  k1, k2 = jax.random.split(jax.random.key(0))
  return {"trunk": 0.5 * jax.random.normal(k1, (2, 4)),
          "heads": 0.5 * jax.random.normal(k2, (K, 4))}


X = jax.random.normal(jax.random.key(1), (16, 2))
PARAMS = init_params()
GRADS = jax.jacrev(losses_fn)(PARAMS, X)  # leaves (K, ...)
HEADS_MASK = {"trunk": True, "heads": False}


def make_step(opt):
  @jax.jit
  def step(params, state):
    losses, vjp = jax.vjp(lambda p: losses_fn(p, X), params)
    grads = jax.vmap(vjp)(jnp.eye(K))[0]  # per-task gradients, (K, ...)
    updates, state = opt.update(grads, state, params, losses=losses)
    return optax.apply_updates(params, updates), state, losses
  return step


def test_chain_with_adam_trains_every_task():
  opt = optax.chain(fj.fairgrad(alpha=2.0, num_tasks=K, shared=HEADS_MASK),
                    optax.adam(1e-2))
  step = make_step(opt)
  params, state = PARAMS, opt.init(PARAMS)
  structure = jax.tree.structure(state)
  _, first_state, first = step(params, state)
  assert float(first_state[0].extra.relative_residual) < 1e-4
  for _ in range(150):
    params, state, losses = step(params, state)
    assert jax.tree.structure(state) == structure
  assert np.all(np.asarray(losses) < np.asarray(first))
  agg_state = state[0]
  assert isinstance(agg_state, fj.AggregatorState)
  assert agg_state.weights.shape == (K,)
  assert np.all(agg_state.weights > 0)
  # Tasks 0 and 1 conflict: after 150 steps the trunk is near a Pareto
  # stationary point, where the weights grow and the residual is limited by
  # float32 round-off and the regularization.
  assert np.isfinite(float(agg_state.extra.relative_residual))
  assert 1 <= int(agg_state.extra.num_iterations) <= 100


def test_update_matches_weights_and_heads_get_plain_sum():
  agg = fj.fairgrad(alpha=1.0, num_tasks=K, shared=HEADS_MASK)
  updates, state = jax.jit(agg.update)(GRADS, agg.init(PARAMS))
  g = GRADS["trunk"].reshape(K, -1)
  w_ref = fj.fairgrad_weights(g @ g.T, 1.0)
  np.testing.assert_allclose(state.weights, w_ref, rtol=1e-4)
  np.testing.assert_allclose(updates["trunk"].ravel(), w_ref @ g, rtol=1e-4,
                             atol=1e-7)
  np.testing.assert_allclose(updates["heads"], GRADS["heads"].sum(0),
                             rtol=1e-6)


def test_mask_forms():
  """A full mask, a prefix mask and a callable mask agree."""
  full = {"trunk": True, "heads": False}
  fn = lambda grads: jax.tree.map(lambda _: True, grads) | {"heads": False}
  outs = []
  for shared in [full, fn]:
    agg = fj.fairgrad(alpha=2.0, shared=shared)
    outs.append(agg.update(GRADS, agg.init(PARAMS))[0])
  nested = {"a": GRADS, "b": GRADS["trunk"]}
  agg = fj.fairgrad(alpha=2.0, shared={"a": full, "b": True})
  out = agg.update(nested, agg.init(None))[0]
  for o in outs:
    np.testing.assert_allclose(o["trunk"], outs[0]["trunk"], rtol=1e-6)
    np.testing.assert_allclose(o["heads"], outs[0]["heads"], rtol=1e-6)
  assert out["b"].shape == GRADS["trunk"].shape[1:]


def test_default_mask_uses_every_leaf():
  agg = fj.fairgrad(alpha=2.0, num_tasks=K)
  _, state = agg.update(GRADS, agg.init(PARAMS))
  g = jnp.concatenate([GRADS["trunk"].reshape(K, -1),
                       GRADS["heads"].reshape(K, -1)], axis=1)
  np.testing.assert_allclose(state.weights,
                             fj.fairgrad_weights(g @ g.T, 2.0), rtol=1e-4)


def test_bad_masks():
  with pytest.raises(ValueError, match="no leaf"):
    agg = fj.fairgrad(shared={"trunk": False, "heads": False})
    agg.update(GRADS, agg.init(None))
  with pytest.raises(ValueError, match="Python bools"):
    agg = fj.fairgrad(shared={"trunk": jnp.array(True), "heads": False})
    agg.update(GRADS, agg.init(None))
  with pytest.raises(ValueError, match="structure"):
    agg = fj.fairgrad(shared={"other": True})
    agg.update(GRADS, agg.init(None))


def test_authors_options_scale_and_clip():
  base = fj.fairgrad(alpha=1.0, shared=HEADS_MASK)
  scaled = fj.fairgrad(alpha=1.0, shared=HEADS_MASK, scale_by_num_tasks=True)
  clipped = fj.fairgrad(alpha=1.0, shared=HEADS_MASK,
                        scale_by_num_tasks=True, max_norm=1e-3)
  u0 = base.update(GRADS, base.init(None))[0]
  u1 = scaled.update(GRADS, scaled.init(None))[0]
  u2 = clipped.update(GRADS, clipped.init(None))[0]
  np.testing.assert_allclose(u1["trunk"], K * u0["trunk"], rtol=1e-5)
  np.testing.assert_allclose(jnp.linalg.norm(u2["trunk"]), 1e-3, rtol=1e-5)
  np.testing.assert_allclose(u2["trunk"] / jnp.linalg.norm(u2["trunk"]),
                             u0["trunk"] / jnp.linalg.norm(u0["trunk"]),
                             rtol=1e-5, atol=1e-7)
  # Heads are neither scaled nor clipped (the authors clip shared parameters).
  np.testing.assert_allclose(u2["heads"], u0["heads"], rtol=1e-6)


def test_inside_process_scan_and_vmap():
  agg = fj.fairgrad(alpha=2.0, num_tasks=K)
  opt = aggregating.process(optax.identity(), agg, optax.sgd(1e-2))
  assert isinstance(opt, aggregating.Aggregator)

  def body(carry, _):
    params, state = carry
    grads = jax.jacrev(losses_fn)(params, X)
    updates, state = opt.update(grads, state, params)
    return (optax.apply_updates(params, updates), state), losses_fn(params, X)

  (_, state), losses = jax.jit(
      lambda p, s: jax.lax.scan(body, (p, s), length=20))(PARAMS,
                                                          opt.init(PARAMS))
  assert np.all(np.isfinite(losses))
  assert np.all(losses[-1] < losses[0])
  assert state[1].weights.shape == (K,)

  # vmap over independent problems (e.g. several seeds at once).
  grads = jax.tree.map(lambda g: jnp.stack([g, 2 * g]), GRADS)
  states = jax.vmap(agg.init)(jax.tree.map(lambda p: jnp.stack([p, p]),
                                           PARAMS))
  updates, new = jax.jit(jax.vmap(agg.update))(grads, states)
  # d(σG) = σ^((1-α)/(1+α)) d(G) with σ = 2, α = 2.
  np.testing.assert_allclose(updates["trunk"][1],
                             2 ** (-1 / 3) * updates["trunk"][0], rtol=1e-4)
  assert new.weights.shape == (2, K)


def test_no_host_callbacks_in_the_compiled_step():
  agg = fj.fairgrad(alpha=2.0, num_tasks=K)
  jaxpr = str(jax.make_jaxpr(agg.update)(GRADS, agg.init(PARAMS)))
  for prim in ["callback", "pure_callback", "io_callback", "host"]:
    assert prim not in jaxpr
  assert "while" in jaxpr  # the Levenberg–Marquardt loop is in the graph


def test_without_num_tasks():
  agg = fj.fairgrad(alpha=2.0)
  state = agg.init(PARAMS)
  assert state.weights is None
  updates, state2 = jax.jit(agg.update)(GRADS, state)
  assert jax.tree.structure(state2) == jax.tree.structure(state)
  assert jax.tree.structure(updates) == jax.tree.structure(PARAMS)


def test_warm_start_is_used():
  agg = fj.fairgrad(alpha=2.0, num_tasks=K)
  update = jax.jit(agg.update)
  _, s1 = update(GRADS, agg.init(PARAMS))
  _, s2 = update(GRADS, s1)
  assert int(s2.extra.num_iterations) < int(s1.extra.num_iterations)
  np.testing.assert_allclose(s2.weights, s1.weights, rtol=1e-4)


@pytest.mark.parametrize("scale", [1e-30, 1e-6, 1e6, 1e30])
def test_gradient_scales(scale):
  """Finite, and exactly the scaling law d(cG) = c^((1-α)/(1+α)) d(G)."""
  agg = fj.fairgrad(alpha=2.0)
  u1 = agg.update(GRADS, agg.init(None))[0]
  grads = jax.tree.map(lambda g: g * jnp.float32(scale), GRADS)
  u = agg.update(grads, agg.init(None))[0]
  for leaf, ref in zip(jax.tree.leaves(u), jax.tree.leaves(u1)):
    assert np.all(np.isfinite(leaf))
    np.testing.assert_allclose(leaf, ref * scale ** (-1 / 3), rtol=2e-4,
                               atol=1e-6 * scale ** (-1 / 3))


def test_zero_gradient_task():
  grads = jax.tree.map(lambda g: g.at[1].set(0.0), GRADS)
  agg = fj.fairgrad(alpha=2.0, num_tasks=K)
  updates, state = agg.update(grads, agg.init(None))
  assert state.weights[1] == 0.0
  two = jax.tree.map(lambda g: g[jnp.array([0, 2])], GRADS)
  agg2 = fj.fairgrad(alpha=2.0, num_tasks=2)
  updates2, _ = agg2.update(two, agg2.init(None))
  for a, b in zip(jax.tree.leaves(updates), jax.tree.leaves(updates2)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_non_finite_gradients_skip_with_apply_if_finite():
  """NaN in, NaN update out; apply_if_finite after the aggregator skips it."""
  opt = optax.chain(fj.fairgrad(alpha=2.0, num_tasks=K),
                    optax.apply_if_finite(optax.sgd(0.1), 5))
  state = opt.init(PARAMS)
  _, state = opt.update(GRADS, state, PARAMS)
  weights = state[0].weights
  for bad_value in [jnp.nan, jnp.inf]:
    bad = jax.tree.map(lambda g: g.at[0].set(bad_value), GRADS)
    raw = fj.fairgrad(alpha=2.0, num_tasks=K)
    raw_updates, raw_state = raw.update(bad, raw.init(None))
    # Not silently cleaned: the update is non-finite; the state stays finite.
    assert not all(np.all(np.isfinite(x))
                   for x in jax.tree.leaves(raw_updates))
    assert np.all(np.isfinite(raw_state.weights))
    updates, state = opt.update(bad, state, PARAMS)
    assert all(np.all(x == 0) for x in jax.tree.leaves(updates))
    np.testing.assert_array_equal(state[0].weights, weights)
  assert int(state[1].notfinite_count) == 2


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_gradients(dtype):
  agg = fj.fairgrad(alpha=2.0, num_tasks=K)
  grads = jax.tree.map(lambda g: g.astype(dtype), GRADS)
  updates, state = agg.update(grads, agg.init(None))
  ref, _ = agg.update(GRADS, agg.init(None))
  assert state.weights.dtype == jnp.float32
  for leaf, r in zip(jax.tree.leaves(updates), jax.tree.leaves(ref)):
    assert leaf.dtype == dtype
    assert np.all(np.isfinite(np.asarray(leaf, np.float32)))
    tol = 3e-2 if dtype == jnp.bfloat16 else 3e-3
    np.testing.assert_allclose(np.asarray(leaf, np.float32), r, rtol=tol,
                               atol=tol * float(jnp.max(jnp.abs(r))))


def test_single_task_and_many_tasks():
  g1 = {"w": jnp.array([[3.0, 4.0]])}
  agg = fj.fairgrad(alpha=1.0, num_tasks=1)
  updates, state = agg.update(g1, agg.init(None))
  # K = 1: w = ‖g‖^(-1) at α = 1, so d = g / ‖g‖.
  np.testing.assert_allclose(updates["w"], [0.6, 0.8], rtol=1e-5)
  g64 = {"w": jax.random.normal(jax.random.key(3), (64, 128))}
  agg = fj.fairgrad(alpha=2.0, num_tasks=64)
  updates, state = jax.jit(agg.update)(g64, agg.init(None))
  assert np.all(np.isfinite(updates["w"]))
  assert np.all(g64["w"] @ updates["w"] > 0)
  assert float(state.extra.relative_residual) < 1e-4


def test_errors_and_repr():
  with pytest.raises(ValueError, match="alpha"):
    fj.fairgrad(alpha=-1.0)
  with pytest.raises(ValueError, match="num_tasks"):
    fj.fairgrad(num_tasks=0)
  with pytest.raises(ValueError, match="max_norm"):
    fj.fairgrad(max_norm=0.0)
  with pytest.raises(ValueError, match="maxiter"):
    fj.fairgrad(maxiter=0)
  agg = fj.fairgrad(alpha=2.0, num_tasks=2)
  with pytest.raises(ValueError, match="num_tasks=2"):
    agg.update(GRADS, agg.init(None))
  with pytest.raises(ValueError, match="leading task axis"):
    agg.update({"a": jnp.ones((2, 3)), "b": jnp.ones((3, 3))}, agg.init(None))
  with pytest.raises(ValueError, match="losses"):
    agg.update(jax.tree.map(lambda g: g[:2], GRADS), agg.init(None),
               losses=jnp.ones(3))
  assert repr(agg) == "fairgrad(alpha=2.0, num_tasks=2)"
  assert "linear_scalarization" in repr(fj.linear_scalarization())


def test_linear_scalarization_and_alpha_zero():
  ls = fj.linear_scalarization(num_tasks=K)
  f0 = fj.fairgrad(alpha=0.0, num_tasks=K)
  u_ls, s_ls = ls.update(GRADS, ls.init(None))
  u_f0, s_f0 = f0.update(GRADS, f0.init(None))
  for a, b, g in zip(jax.tree.leaves(u_ls), jax.tree.leaves(u_f0),
                     jax.tree.leaves(GRADS)):
    np.testing.assert_allclose(a, g.sum(0), rtol=1e-6)
    np.testing.assert_allclose(b, g.sum(0), rtol=1e-6)
  np.testing.assert_array_equal(s_ls.weights, 1.0)


def test_fair_loss():
  l = jnp.array([0.5, 2.0, 4.0])
  np.testing.assert_allclose(fj.fair_loss(l, 0.0), l)
  np.testing.assert_allclose(fj.fair_loss(l, 1.0), jnp.log(l))
  np.testing.assert_allclose(fj.fair_loss(l, 0.5), 2 * jnp.sqrt(l), rtol=1e-6)
  np.testing.assert_allclose(fj.fair_loss(l, 3.0), l ** -2 / -2, rtol=1e-6)
  for alpha in [-1.0, 0.5, 1.0, 2.0]:
    grad = jax.grad(lambda l: fj.fair_loss(l, alpha).sum())(l)
    np.testing.assert_allclose(grad, l ** -alpha, rtol=1e-6)
  with pytest.raises(ValueError):
    fj.fair_loss(l, float("inf"))


def test_fair_loss_in_front_of_fairgrad():
  """One line: the per-task gradients are g_i / l_i^α."""
  alpha = 0.5
  grads = jax.jacrev(lambda p: fj.fair_loss(losses_fn(p, X), alpha))(PARAMS)
  l = losses_fn(PARAMS, X)
  for g, g0 in zip(jax.tree.leaves(grads), jax.tree.leaves(GRADS)):
    scale = (l ** -alpha).reshape((K,) + (1,) * (g.ndim - 1))
    np.testing.assert_allclose(g, g0 * scale, rtol=1e-5, atol=1e-7)
  agg = fj.fairgrad(alpha=2.0, num_tasks=K)
  updates, _ = agg.update(grads, agg.init(None))
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(updates))


ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_jaxopt_stays_behind_one_module():
  importers = [p.relative_to(ROOT).as_posix()
               for p in (ROOT / "fairgrad_jax").rglob("*.py")
               if "import jaxopt" in p.read_text()]
  assert importers == ["fairgrad_jax/_jaxopt.py"]
  out = subprocess.run(
      [sys.executable, "-W", "error::DeprecationWarning", "-c",
       "import fairgrad_jax"], capture_output=True, text=True, check=False)
  assert out.returncode == 0, out.stderr


def test_inject_hyperparams_alpha_schedule():
  """Issue 12: optax.inject_hyperparams(fj.fairgrad, ...) runs under jit,
  and changing state.hyperparams['alpha'] changes the update exactly as
  rebuilding the aggregator with that α would (α = 0 included)."""
  a = jnp.array([[1.0, 0.0, 0.0, 0.0], [0.5, 2.0, 0.0, 0.0],
                 [-1.0, 0.2, 0.1, 3.0]])
  params = {"w": jnp.ones(4)}

  def losses(p):
    return (a @ p["w"]) ** 2

  injected = optax.inject_hyperparams(
      fj.fairgrad,
      static_args=("num_tasks", "maxiter", "scale_by_num_tasks"))(
          alpha=2.0, num_tasks=3)
  state = injected.init(params)
  grads = jax.jacrev(losses)(params)
  update = jax.jit(injected.update)
  for alpha in (2.0, 0.0, 1.0, 5.0):
    state.hyperparams["alpha"] = jnp.asarray(alpha)
    got, _ = update(grads, state, params)
    rebuilt = fj.fairgrad(alpha, num_tasks=3)
    want, _ = rebuilt.update(grads, rebuilt.init(params), params)
    np.testing.assert_allclose(got["w"], want["w"], rtol=1e-6)


@pytest.mark.parametrize("kwargs, name", [
    ({"tol": float("inf")}, "tol"), ({"tol": 0.0}, "tol"),
    ({"tol": float("nan")}, "tol"),
    ({"regularization": float("inf")}, "regularization"),
    ({"regularization": -1e-6}, "regularization"),
    ({"alpha": float("inf")}, "alpha"), ({"alpha": float("nan")}, "alpha"),
])
def test_solver_settings_refused_at_construction(kwargs, name):
  """Issue 12: tol = inf (which stopped the solve at its start) and
  regularization = inf (NaN weights) are refused, by the aggregator and by
  the solve, naming the argument."""
  with pytest.raises(ValueError, match=name):
    fj.fairgrad(**kwargs)
  solve_kwargs = dict(kwargs)
  alpha = solve_kwargs.pop("alpha", 2.0)
  with pytest.raises(ValueError, match=name):
    fj.fairgrad_solve(jnp.eye(2), alpha, **solve_kwargs)
