"""bf16 params and activations: Gram matrix and weight solve in float32."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fairgrad_jax

K = 3


def _encoder(params, x):
  return jax.nn.relu(x.astype(params["w"].dtype) @ params["w"])


def _heads(params, z, x):
  pred = jnp.einsum("bh,kh->kb", z, params["heads"])  # activations: bf16
  return jnp.mean(pred.astype(jnp.float32) ** 2, axis=1) + jnp.arange(K)


def _losses(params, x):
  return _heads(params, _encoder(params, x), x)


def _problem():
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  params = {"w": jax.random.normal(k1, (4, 8)) / 2,
            "heads": jax.random.normal(k2, (K, 8)) / 3}
  return params, jax.random.normal(k3, (16, 4))


_seen_dtypes = []


def _fairgrad(gram, **kwargs):
  _seen_dtypes.append(gram.dtype)
  return fairgrad_jax.fairgrad_weights(gram, alpha=2.0, **kwargs)


@pytest.mark.parametrize("kind", ["jvp", "vjp", "representation"])
def test_bf16_params_f32_solve(kind):
  params, x = _problem()
  if kind == "representation":
    make = functools.partial(fairgrad_jax.representation_grad, _encoder,
                             _heads)
  else:
    make = functools.partial(fairgrad_jax.weighted_grad, _losses,
                             chunk_size=1, mode=kind)
  step = jax.jit(make(_fairgrad))
  ref = step(params, x)
  bf16 = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
  del _seen_dtypes[:]
  out = step(bf16, x, init=ref.weights)
  assert _seen_dtypes and all(d == jnp.float32 for d in _seen_dtypes)
  assert out.weights.dtype == jnp.float32
  for name in params:
    u, r = out.update[name], ref.update[name]
    assert u.dtype == jnp.bfloat16
    assert np.all(np.isfinite(np.asarray(u, np.float32)))
    err = np.linalg.norm(np.asarray(u, np.float32) - r) / np.linalg.norm(r)
    assert err < 5e-2, (name, err)
  np.testing.assert_allclose(out.weights, ref.weights, rtol=5e-2)


def test_bf16_losses():
  """Losses returned in bf16: the cotangents follow, the solve stays f32."""
  params, x = _problem()
  bf16 = jax.tree.map(lambda p: p.astype(jnp.bfloat16), params)
  fn = lambda p, x: _losses(p, x).astype(jnp.bfloat16)
  out = jax.jit(fairgrad_jax.weighted_grad(
      fn, functools.partial(fairgrad_jax.fairgrad_weights, alpha=2.0),
      chunk_size=2))(bf16, x)
  assert out.losses.dtype == jnp.bfloat16
  assert out.weights.dtype == jnp.float32
  assert jax.tree.map(lambda u: u.dtype, out.update) == {
      "w": jnp.bfloat16, "heads": jnp.bfloat16}
  assert np.all(np.isfinite(np.asarray(out.weights)))
