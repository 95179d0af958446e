"""Gram-only weighted gradients (fairgrad_jax.weighted_grad)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fairgrad_jax

K = 5


@pytest.fixture(autouse=True)
def _full_precision_matmuls():
  """Exact comparisons: no TF32/bf16 passes in the models' matmuls on GPU/TPU
  (``mode="jvp"`` computes the Gram matrix at the model's own precision)."""
  with jax.default_matmul_precision("highest"):
    yield


def _losses(params, x, y):
  """K regression tasks on a shared tanh layer, with one head per task."""
  h = jnp.tanh(x @ params["shared"]["w"] + params["shared"]["b"])
  pred = jnp.einsum("bh,khy->kby", h, params["heads"])
  return jnp.mean((pred - y) ** 2, axis=(1, 2))


def _problem(seed=0, scale=1.0):
  k1, k2, k3, k4, k5 = jax.random.split(jax.random.key(seed), 5)
  params = {
      "shared": {"w": jax.random.normal(k1, (3, 6)),
                 "b": 0.1 * jax.random.normal(k2, (6,))},
      "heads": jax.random.normal(k3, (K, 6, 2)),
  }
  x = jax.random.normal(k4, (7, 3))
  y = scale * jax.random.normal(k5, (K, 7, 2))
  return params, x, y


def _stacked(params, x, y, mask_shared=False):
  jac = jax.jacrev(_losses)(params, x, y)
  leaves = jax.tree.leaves(jac["shared"] if mask_shared else jac)
  gram = sum(jnp.einsum("k...,l...->kl", g, g,
                        precision=jax.lax.Precision.HIGHEST) for g in leaves)
  return jac, gram


def _gram_probe(gram):
  """Weights that depend on every entry of the Gram matrix."""
  return gram @ jnp.arange(1.0, K + 1) + jnp.diag(gram)


_fairgrad2 = functools.partial(fairgrad_jax.fairgrad_weights, alpha=2.0)
_fairgrad2_jit = jax.jit(_fairgrad2)


@functools.cache
def _jitted(mode, chunk_size, weights_fn=_gram_probe, **kwargs):
  return jax.jit(fairgrad_jax.weighted_grad(
      _losses, weights_fn, chunk_size=chunk_size, mode=mode, **kwargs))


def _assert_tree_close(a, b, rtol=1e-5, atol=1e-6):
  jax.tree.map(lambda u, v: np.testing.assert_allclose(
      u, v, rtol=rtol, atol=atol), a, b)


@pytest.mark.parametrize("mode", ["jvp", "vjp"])
@pytest.mark.parametrize("chunk_size", [None, 1, 2])
def test_matches_stacked_jacobian(mode, chunk_size):
  params, x, y = _problem()
  jac, gram = _stacked(params, x, y)
  w_ref = _gram_probe(gram)
  out = _jitted(mode, chunk_size)(params, x, y)
  np.testing.assert_allclose(out.losses, _losses(params, x, y), rtol=1e-6)
  np.testing.assert_allclose(out.weights, w_ref, rtol=2e-5)
  _assert_tree_close(out.update,
                     jax.tree.map(lambda g: jnp.tensordot(w_ref, g, 1), jac),
                     rtol=2e-5, atol=1e-5)


def test_unpacks_as_three_tuple():
  params, x, y = _problem()
  losses, update, weights = _jitted("jvp", 2)(params, x, y)
  assert losses.shape == weights.shape == (K,)
  assert jax.tree.structure(update) == jax.tree.structure(params)


def test_fairgrad_equals_the_stacked_aggregator():
  params, x, y = _problem(1)
  jac, _ = _stacked(params, x, y)
  agg = fairgrad_jax.fairgrad(alpha=2.0)
  expected, _ = jax.jit(agg.update)(jac, agg.init(params))
  out = _jitted("jvp", 1, _fairgrad2)(params, x, y)
  _assert_tree_close(out.update, expected, rtol=1e-4, atol=1e-6)


def test_shared_mask_and_plain_heads_equal_the_aggregator():
  params, x, y = _problem(2)
  jac, gram = _stacked(params, x, y, mask_shared=True)
  shared = {"shared": True, "heads": False}
  agg = fairgrad_jax.fairgrad(alpha=2.0, shared=shared)
  expected, _ = jax.jit(agg.update)(jac, agg.init(params))
  out = jax.jit(fairgrad_jax.weighted_grad(
      _losses, _fairgrad2, chunk_size=2, mode="vjp", shared=shared,
      weight_heads=False))(params, x, y)
  np.testing.assert_allclose(out.weights, _fairgrad2_jit(gram), rtol=1e-4)
  _assert_tree_close(out.update, expected, rtol=1e-4, atol=1e-6)


def test_warm_start_reaches_the_same_weights():
  params, x, y = _problem(3)
  solve = jax.jit(fairgrad_jax.weighted_grad(
      _losses, functools.partial(fairgrad_jax.fairgrad_solve, alpha=2.0)))
  cold = solve(params, x, y)
  warm = solve(params, x, y, init=cold.weights)
  np.testing.assert_allclose(warm.weights, cold.weights, rtol=1e-4)
  with pytest.raises(ValueError, match="init"):
    fairgrad_jax.weighted_grad(_losses, _gram_probe)(params, x, y,
                                                     init=cold.weights)


@functools.cache
def _scaled_grad_fn(fn, mode):
  return jax.jit(fairgrad_jax.weighted_grad(fn, _fairgrad2, chunk_size=2,
                                            mode=mode))


def test_huge_and_tiny_gradients():
  params, x, y = _problem(4)
  jac, gram = _stacked(params, x, y)
  w = _fairgrad2_jit(gram)
  fn = lambda p, x, y, scale: scale * _losses(p, x, y)
  # 1e-17: squared norms below 2^-100, the vjp mode's rescaled fallback.
  for mode, scale in (("jvp", 1e-17), ("jvp", 1e15), ("vjp", 1e-17),
                      ("vjp", 1e15)):
    grad_fn = _scaled_grad_fn(fn, mode)
    out = grad_fn(params, x, y, scale)
    # Gradients times s: FairGrad's update scales as s^((1-α)/(1+α)).
    factor = scale ** ((1 - 2.0) / (1 + 2.0))
    expected = jax.tree.map(lambda g: factor * jnp.tensordot(w, g, 1), jac)
    _assert_tree_close(out.update, expected, rtol=1e-3, atol=0)


@pytest.mark.slow
def test_other_gram_weightings():
  """Any ``gram -> (K,)`` weighting: the package's own, a hand-written one."""
  params, x, y = _problem(5)
  _, gram = _stacked(params, x, y)
  key = jax.random.key(0)
  fns = [fairgrad_jax.mgda_weights, fairgrad_jax.nash_mtl_weights,
         fairgrad_jax.cagrad_weights, fairgrad_jax.imtl_g_weights,
         # A weighting that needs a key: build weighted_grad inside the step.
         functools.partial(fairgrad_jax.pcgrad_weights, key=key)]
  fns.append(lambda g: 1.0 / jnp.sqrt(jnp.diag(g)))  # unit-norm averaging
  for fn in fns:
    out = jax.jit(fairgrad_jax.weighted_grad(_losses, fn, chunk_size=2))(
        params, x, y)
    np.testing.assert_allclose(out.weights, jax.jit(fn)(gram), rtol=1e-3,
                               atol=1e-6)


def test_peak_memory_below_the_stacked_jacobian():
  """chunk_size=1 never holds the K×P Jacobian (XLA's compiled temp size)."""
  k, width = 16, 256

  def losses(params, x):
    h = jnp.tanh(x @ params)
    return jnp.mean(h[:, :k] ** 2, axis=0) + jnp.mean(h ** 2)

  params = jnp.zeros((width, width))
  x = jnp.zeros((4, width))
  p_bytes = params.size * 4

  def stacked(params, x):
    jac = jax.jacrev(losses)(params, x)
    gram = jnp.einsum("kij,lij->kl", jac, jac)
    return jnp.tensordot(_gram_probe(gram[:K, :K]).sum() * jnp.ones(k), jac, 1)

  gram_only = fairgrad_jax.weighted_grad(
      losses, lambda g: _gram_probe(g[:K, :K]).sum() * jnp.ones(k),
      chunk_size=1)
  temp = lambda f: jax.jit(f).lower(params, x).compile().memory_analysis(
      ).temp_size_in_bytes
  assert temp(stacked) >= k * p_bytes
  assert temp(gram_only) <= 4 * p_bytes


def test_bad_arguments():
  with pytest.raises(ValueError, match="chunk_size"):
    fairgrad_jax.weighted_grad(_losses, _gram_probe, chunk_size=0)
  with pytest.raises(ValueError, match="mode"):
    fairgrad_jax.weighted_grad(_losses, _gram_probe, mode="jacobian")
  params, x, y = _problem()
  scalar = fairgrad_jax.weighted_grad(lambda *a: _losses(*a).sum(),
                                      _gram_probe)
  with pytest.raises(ValueError, match="vector of K"):
    scalar(params, x, y)
  wrong = fairgrad_jax.weighted_grad(_losses, lambda g: g)
  with pytest.raises(ValueError, match=r"\(5,\) weights"):
    wrong(params, x, y)


def _mlp_losses(params, x, y):
  """A ReLU MLP trunk with one linear head per task, MSE per task."""
  h = jax.nn.relu(x @ params["trunk"]["w1"] + params["trunk"]["b1"])
  h = jax.nn.relu(h @ params["trunk"]["w2"] + params["trunk"]["b2"])
  pred = h @ params["heads"]["w"].T + params["heads"]["b"]
  return jnp.mean((pred - y) ** 2, axis=0)


def _mlp_problem(k, width=32, din=8, batch=256, seed=0):
  keys = jax.random.split(jax.random.key(seed), 5)
  params = {
      "trunk": {"w1": jax.random.normal(keys[0], (din, width)) / din ** 0.5,
                "b1": jnp.zeros(width),
                "w2": jax.random.normal(keys[1], (width, width)) / width ** 0.5,
                "b2": jnp.zeros(width)},
      "heads": {"w": jax.random.normal(keys[2], (k, width)) / width ** 0.5,
                "b": jnp.zeros(k)},
  }
  x = jax.random.normal(keys[3], (batch, din))
  y = jax.random.normal(keys[4], (batch, k))
  return params, x, y


@pytest.mark.parametrize("k", [2, 4, 10, 40])
def test_default_path_with_shared_heads_is_finite(k):
  """Issue 12: the default path (jvp, one chunk) with ``shared=`` gave NaN
  weights on XLA's CPU backend from K = 4 (batch 256): the other leaves'
  zero tangents became products with a broadcast constant zero, which the
  CPU dot fusion gets wrong. The weights must equal the stacked ones."""
  params, x, y = _mlp_problem(k)
  shared = {"trunk": True, "heads": False}
  out = jax.jit(fairgrad_jax.weighted_grad(_mlp_losses, _fairgrad2,
                                           shared=shared))(params, x, y)
  jac = jax.jacrev(_mlp_losses)(params, x, y)
  w_ref = _fairgrad2_jit(fairgrad_jax.gram_matrix(jac, shared=shared))
  assert np.all(np.isfinite(out.weights))
  np.testing.assert_allclose(out.weights, w_ref, rtol=1e-4)
  _assert_tree_close(out.update,
                     jax.tree.map(lambda g: jnp.tensordot(w_ref, g, 1), jac),
                     rtol=1e-3, atol=1e-6)
