"""Stacked per-task gradients (fairgrad_jax.task_gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fairgrad_jax

K = 5


@pytest.fixture(autouse=True)
def _full_precision_matmuls():
  with jax.default_matmul_precision("highest"):
    yield


def _losses(params, x, y):
  """K regression tasks on a shared tanh layer, one head per task."""
  h = jnp.tanh(x @ params["shared"]["w"] + params["shared"]["b"])
  pred = jnp.einsum("bh,khy->kby", h, params["heads"])
  return jnp.mean((pred - y) ** 2, axis=(1, 2))


def _problem(seed=0):
  k1, k2, k3, k4, k5 = jax.random.split(jax.random.key(seed), 5)
  params = {
      "shared": {"w": jax.random.normal(k1, (3, 6)),
                 "b": 0.1 * jax.random.normal(k2, (6,))},
      "heads": jax.random.normal(k3, (K, 6, 2)),
  }
  x = jax.random.normal(k4, (7, 3))
  y = jax.random.normal(k5, (K, 7, 2))
  return params, x, y


@pytest.mark.parametrize("batch_size", [None, 1, 2, 3, K, 2 * K])
def test_matches_jacrev(batch_size):
  params, x, y = _problem()
  losses, grads = jax.jit(fairgrad_jax.task_gradients(
      _losses, batch_size=batch_size))(params, x, y)
  np.testing.assert_allclose(losses, _losses(params, x, y), rtol=1e-6)
  expected = jax.jacrev(_losses)(params, x, y)
  assert jax.tree.structure(grads) == jax.tree.structure(params)
  jax.tree.map(lambda g, e: np.testing.assert_allclose(g, e, rtol=1e-5,
                                                       atol=1e-6),
               grads, expected)


def test_feeds_an_aggregator_like_jacrev():
  params, x, y = _problem(1)
  agg = fairgrad_jax.fairgrad(alpha=2.0, num_tasks=K,
                              shared={"shared": True, "heads": False})
  _, grads = fairgrad_jax.task_gradients(_losses)(params, x, y)
  out, _ = agg.update(grads, agg.init(params))
  ref, _ = agg.update(jax.jacrev(_losses)(params, x, y), agg.init(params))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-7), out, ref)


def test_single_task_and_default_batch_size():
  params, x, y = _problem(2)
  one = lambda p, x, y: _losses(p, x, y)[:1]
  losses, grads = fairgrad_jax.task_gradients(one)(params, x, y)
  assert losses.shape == (1,)
  assert grads["heads"].shape == (1, K, 6, 2)
  from fairgrad_jax import _task_gradients
  assert 1 <= _task_gradients.default_batch_size(40) <= 40


def test_bad_arguments():
  for bad in (0, -1, 1.5, True, "2"):
    with pytest.raises(ValueError, match="batch_size"):
      fairgrad_jax.task_gradients(_losses, batch_size=bad)
  with pytest.raises(TypeError, match="losses_fn"):
    fairgrad_jax.task_gradients(None)
  params, x, y = _problem()
  scalar = fairgrad_jax.task_gradients(lambda *a: _losses(*a).sum())
  with pytest.raises(ValueError, match="vector of K"):
    scalar(params, x, y)


@pytest.mark.parametrize("batch_size", [1, 2, K])
def test_has_aux_returns_the_aux_beside_the_losses(batch_size):
  """``has_aux=True``: ``((losses, aux), grads)``, grads as without aux."""
  params, x, y = _problem(3)

  def with_aux(p, x, y):
    losses = _losses(p, x, y)
    return losses, {"total": jnp.sum(losses), "h": jnp.tanh(x)}

  (losses, aux), grads = jax.jit(fairgrad_jax.task_gradients(
      with_aux, has_aux=True, batch_size=batch_size))(params, x, y)
  np.testing.assert_allclose(losses, _losses(params, x, y), rtol=1e-6)
  np.testing.assert_allclose(aux["total"], jnp.sum(losses), rtol=1e-6)
  np.testing.assert_allclose(aux["h"], jnp.tanh(x), rtol=1e-6)
  expected = jax.jacrev(_losses)(params, x, y)
  jax.tree.map(lambda g, e: np.testing.assert_allclose(g, e, rtol=1e-5,
                                                       atol=1e-6),
               grads, expected)


def _conv_losses(params, x):
  """Two tasks on a small convolution (NHWC), then global means."""
  h = jax.lax.conv_general_dilated(
      x, params["kernel"], (1, 1), "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  h = jnp.tanh(h)
  return jnp.stack([jnp.mean(h[..., 0] ** 2), jnp.mean(h[..., 1])])


def test_convolutions_on_a_cpu_are_written_out_not_looped():
  """XLA's CPU convolutions run 8-80x slower inside a loop body: on a CPU,
  one task at a time means a straight-line program for a model with
  convolutions (no while loop in the compiled HLO), a loop otherwise; the
  gradients equal jax.jacrev's either way."""
  from fairgrad_jax import _task_gradients  # pylint: disable=g-import-not-at-top
  params = {"kernel": jax.random.normal(jax.random.key(0), (3, 3, 2, 2))}
  x = jax.random.normal(jax.random.key(1), (2, 5, 5, 2))
  grads_fn = fairgrad_jax.task_gradients(_conv_losses, batch_size=1)
  _, grads = jax.jit(grads_fn)(params, x)
  np.testing.assert_allclose(grads["kernel"],
                             jax.jacrev(_conv_losses)(params, x)["kernel"],
                             rtol=1e-5, atol=1e-6)
  conv_hlo = jax.jit(grads_fn).lower(params, x).as_text()
  dense_params, dx, dy = _problem()
  dense_hlo = jax.jit(fairgrad_jax.task_gradients(
      _losses, batch_size=1)).lower(dense_params, dx, dy).as_text()
  assert "while" in dense_hlo  # positive control: the dense model loops
  if jax.default_backend() == "cpu":
    assert "while" not in conv_hlo
  # The detector itself, on jaxprs with and without a convolution, nested.
  nested = jax.make_jaxpr(lambda p, x: jax.lax.map(
      lambda xi: _conv_losses(p, xi[None]), x))(params, x)
  assert _task_gradients._has_convolution(nested.jaxpr)
  assert not _task_gradients._has_convolution(
      jax.make_jaxpr(_losses)(dense_params, dx, dy).jaxpr)


@pytest.mark.parametrize("unroll", [True, False])
def test_unroll_forces_the_choice(unroll):
  params, x, y = _problem(4)
  grads_fn = fairgrad_jax.task_gradients(_losses, batch_size=2,
                                         unroll=unroll)
  _, grads = jax.jit(grads_fn)(params, x, y)
  expected = jax.jacrev(_losses)(params, x, y)
  jax.tree.map(lambda g, e: np.testing.assert_allclose(g, e, rtol=1e-5,
                                                       atol=1e-6),
               grads, expected)
  hlo = jax.jit(grads_fn).lower(params, x, y).as_text()
  assert ("while" in hlo) == (not unroll)
  with pytest.raises(TypeError, match="unroll"):
    fairgrad_jax.task_gradients(_losses, unroll=1)
