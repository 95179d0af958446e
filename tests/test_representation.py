"""Representation-level weighting (fairgrad_jax.representation_grad)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fairgrad_jax

K = 4


@pytest.fixture(autouse=True)
def _full_precision_matmuls():
  """Exact comparisons: no TF32/bf16 passes in the models' matmuls on GPU/TPU
  (``mode="jvp"`` computes the Gram matrix at the model's own precision)."""
  with jax.default_matmul_precision("highest"):
    yield


def _encoder(params, x, y):
  return jnp.tanh(x @ params["encoder"])  # z: (B, 5)


def _heads(params, z, x, y):
  pred = jnp.einsum("bh,khy->kby", z, params["heads"])
  return jnp.mean((pred - y) ** 2, axis=(1, 2))


def _losses(params, x, y):
  return _heads(params, _encoder(params, x, y), x, y)


def _problem(seed=0):
  k1, k2, k3, k4 = jax.random.split(jax.random.key(seed), 4)
  params = {"encoder": jax.random.normal(k1, (3, 5)),
            "heads": jax.random.normal(k2, (K, 5, 2))}
  return (params, jax.random.normal(k3, (6, 3)),
          jax.random.normal(k4, (K, 6, 2)))


def _z_gram(params, x, y):
  z = _encoder(params, x, y)
  jac = jax.jacrev(_heads, argnums=1)(params, z, x, y)  # (K, B, 5)
  return jnp.einsum("kbh,lbh->kl", jac, jac,
                    precision=jax.lax.Precision.HIGHEST)


def _probe(gram):
  return gram @ jnp.arange(1.0, K + 1) + jnp.diag(gram)


def _task_head(params, z, task, x, y):
  """One task's loss: its own head only (``num_tasks=K``)."""
  pred = z @ params["heads"][task]
  return jnp.mean((pred - y[task]) ** 2)


@functools.cache
def _jitted(weights_fn=_probe, chunk_size=None, mode="jvp", per_task=False):
  if per_task:
    return jax.jit(fairgrad_jax.representation_grad(
        _encoder, _task_head, weights_fn, chunk_size=chunk_size, mode=mode,
        num_tasks=K))
  return jax.jit(fairgrad_jax.representation_grad(
      _encoder, _heads, weights_fn, chunk_size=chunk_size, mode=mode))


@pytest.mark.parametrize("chunk_size,mode,per_task", [
    (None, "jvp", False), (1, "jvp", False), (None, "vjp", False),
    (3, "vjp", False), (None, "jvp", True), (3, "jvp", True),
    (None, "vjp", True)])
def test_matches_the_definition(chunk_size, mode, per_task):
  params, x, y = _problem()
  w = _probe(_z_gram(params, x, y))
  expected = jax.grad(lambda p: jnp.dot(w, _losses(p, x, y)))(params)
  losses, update, weights = _jitted(_probe, chunk_size, mode, per_task)(
      params, x, y)
  np.testing.assert_allclose(losses, _losses(params, x, y), rtol=1e-6)
  np.testing.assert_allclose(weights, w, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5,
                                                       atol=1e-6),
               update, expected)


def test_fairgrad_solves_its_equation_on_the_representation():
  params, x, y = _problem(1)
  out = _jitted(functools.partial(fairgrad_jax.fairgrad_weights,
                                  alpha=2.0))(params, x, y)
  gram = _z_gram(params, x, y)
  np.testing.assert_allclose(gram @ out.weights, out.weights ** (-1 / 2.0),
                             rtol=1e-4)
  warm = _jitted(functools.partial(fairgrad_jax.fairgrad_weights,
                                   alpha=2.0))(params, x, y, init=out.weights)
  np.testing.assert_allclose(warm.weights, out.weights, rtol=1e-4)


def test_one_backward_pass_through_the_encoder():
  """The step's cost does not grow with K: no K-fold encoder backward."""
  params, x, y = _problem()
  hlo = _jitted().lower(params, x, y).as_text()
  # K = 4 VJPs through the encoder would show up as a (4, ...) batch of
  # encoder cotangents of shape (K, 3, 5); only the update's (3, 5) exists.
  assert "tensor<4x3x5xf32>" not in hlo


def test_per_task_heads_run_their_own_head_only():
  """With num_tasks, no z-gradient is a VJP through all K heads at once."""
  params, x, y = _problem()
  # mode="vjp": the only products with the heads are the z-gradients (in
  # "jvp" mode the K JVPs run every head, as GEMMs, by design).
  hlo_all = _jitted(mode="vjp").lower(params, x, y).as_text()
  hlo_own = _jitted(mode="vjp", per_task=True).lower(params, x, y).as_text()
  # All heads' cotangents under a vmap over K one-hot cotangents: (K, K, B, 2).
  assert "tensor<4x4x6x2xf32>" in hlo_all
  assert "tensor<4x4x6x2xf32>" not in hlo_own


def test_bad_arguments():
  with pytest.raises(ValueError, match="chunk_size"):
    fairgrad_jax.representation_grad(_encoder, _heads, _probe, chunk_size=-1)
  with pytest.raises(ValueError, match="callables"):
    fairgrad_jax.representation_grad(_encoder, None, _probe)
  with pytest.raises(ValueError, match="mode"):
    fairgrad_jax.representation_grad(_encoder, _heads, _probe, mode="fwd")
  with pytest.raises(ValueError, match="num_tasks"):
    fairgrad_jax.representation_grad(_encoder, _task_head, _probe,
                                     num_tasks=0)
  params, x, y = _problem()
  every_head = lambda p, z, task, x, y: _heads(p, z, x, y)  # (K,), not one
  wrong = fairgrad_jax.representation_grad(_encoder, every_head, _probe,
                                           num_tasks=K)
  with pytest.raises(ValueError, match="scalar loss of one task"):
    wrong(params, x, y)
