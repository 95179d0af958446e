"""bf16/f16 gradients on a long gradient (P = 1e5): Gram in float32, checked.

The gradients are the rows of a fixed (K, P) matrix C in bf16/f16 (the losses
are linear, l = C θ, so every path sees exactly these values); the reference
Gram matrix is C Cᵀ in float64 from the same low-precision values. Measured
max |error| / max diag (jax 0.10.2, CPU):

==========================  ==========  ==========
path                        bfloat16    float16
==========================  ==========  ==========
fj.gram_matrix (stacked)    4.7e-6      1.8e-6
weighted_grad vjp, chunk 1  3.4e-8      7.6e-8
weighted_grad vjp, None     4.7e-6      1.8e-6
weighted_grad jvp           1.6e-3      4.5e-4
products in the leaf dtype  1.0e-3      inf
==========================  ==========  ==========

The last row is what accumulating in bf16/f16 gives (``einsum`` with
``preferred_element_type`` the leaf dtype): the 2e-5 tolerance below is 4-10x
the float32 paths' error and 50x below it. ``mode="jvp"`` forms the products
with the model's own JVP, in the model's dtype (documented in
``fairgrad_jax._autogram``: "at the model's matmul precision"), so its Gram
matrix has bf16/f16 precision: bounded here by 5e-3, not the 2e-5 of float32
(the README's "the Gram matrix and the solve run in float32" holds for the
stacked aggregators and ``mode="vjp"`` only).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fairgrad_jax

K, P, SPLIT = 3, 100_000, 60_000
DTYPES = {"bfloat16": jnp.bfloat16, "float16": jnp.float16}
F32_TOL = 2e-5
JVP_TOL = 5e-3
UNIT_ROUNDOFF = {"bfloat16": 2.0**-8, "float16": 2.0**-11}


def _c(dtype):
  rng = np.random.default_rng(0)
  base = rng.normal(size=P)
  c = np.stack([base + 0.5 * rng.normal(size=P),
                -0.7 * base + 0.6 * rng.normal(size=P),
                0.2 * base + 0.1 * rng.normal(size=P)])
  return jnp.asarray(c, dtype)


def _stacked(c):
  return {"a": c[:, :SPLIT].reshape(K, 300, 200), "b": c[:, SPLIT:]}


def _reference(c):
  c64 = np.asarray(c.astype(jnp.float32), np.float64)
  return c64, c64 @ c64.T


def _error(gram, ref):
  return (np.max(np.abs(np.asarray(gram, np.float64) - ref))
          / np.max(np.diag(ref)))


@pytest.mark.parametrize("name", sorted(DTYPES))
def test_gram_matrix_accumulates_in_float32(name):
  c = _c(DTYPES[name])
  gram = jax.jit(fairgrad_jax.gram_matrix)(_stacked(c))
  assert gram.dtype == jnp.float32
  assert _error(gram, _reference(c)[1]) <= F32_TOL


def _weighted_grad_gram(c, mode, chunk_size):
  """The Gram matrix weighted_grad hands to weights_fn, for l = C θ."""
  stacked = _stacked(c)
  params = jax.tree.map(lambda x: jnp.zeros(x.shape[1:], x.dtype), stacked)

  def losses(p):
    return (jnp.einsum("kij,ij->k", stacked["a"], p["a"])
            + stacked["b"] @ p["b"])

  seen = {}

  def weights_fn(gram):
    jax.debug.callback(lambda g: seen.__setitem__("gram", np.asarray(g)),
                       gram)
    return jnp.ones(gram.shape[:1], gram.dtype)

  jax.jit(fairgrad_jax.weighted_grad(losses, weights_fn, mode=mode,
                                     chunk_size=chunk_size))(params)
  jax.effects_barrier()
  return seen["gram"]


@pytest.mark.parametrize("chunk_size", [1, None])
@pytest.mark.parametrize("name", sorted(DTYPES))
def test_weighted_grad_vjp_accumulates_in_float32(name, chunk_size):
  c = _c(DTYPES[name])
  gram = _weighted_grad_gram(c, "vjp", chunk_size)
  assert gram.dtype == np.float32
  assert _error(gram, _reference(c)[1]) <= F32_TOL


@pytest.mark.parametrize("name", sorted(DTYPES))
def test_weighted_grad_jvp_is_at_the_model_precision(name):
  c = _c(DTYPES[name])
  gram = _weighted_grad_gram(c, "jvp", 1)
  assert gram.dtype == np.float32
  assert _error(gram, _reference(c)[1]) <= JVP_TOL


@functools.lru_cache(maxsize=None)
def _fairgrad_update():
  agg = fairgrad_jax.fairgrad(2.0, num_tasks=K)
  return agg, jax.jit(agg.update)


@pytest.mark.parametrize("name", sorted(DTYPES))
def test_aggregator_weights_and_update(name):
  """Weights of the exact Gram matrix; the update rounded once."""
  c = _c(DTYPES[name])
  c64, ref = _reference(c)
  agg, update = _fairgrad_update()
  out, state = update(_stacked(c), agg.init(None))
  want_w = np.asarray(fairgrad_jax.fairgrad_weights(
      jnp.asarray(ref, jnp.float32), alpha=2.0), np.float64)
  # Measured: 2.6e-6 (bf16), 1.3e-6 (f16) relative.
  np.testing.assert_allclose(state.weights, want_w, rtol=2e-5)
  # Σ_i w_i g_i in float32, rounded to the gradients' dtype once: within
  # one rounding of the exact sum (relative u, or half the smallest
  # subnormal: f16 updates of 1e-6 are subnormal), plus float32 round-off
  # of the sum (1e-6 of Σ|w_i g_i|; measured excess 8.6e-9 of it in bf16).
  # Summing in the gradients' dtype adds up to u Σ|w_i g_i| and fails.
  w = np.asarray(state.weights, np.float64)
  exact = w @ c64
  magnitude = np.abs(w) @ np.abs(c64)
  got = np.concatenate([np.ravel(np.asarray(out["a"], np.float64)),
                        np.asarray(out["b"], np.float64)])
  assert out["a"].dtype == DTYPES[name]
  finfo = jnp.finfo(DTYPES[name])
  bound = (UNIT_ROUNDOFF[name] * np.abs(exact)
           + float(finfo.smallest_subnormal) / 2 + 1e-6 * magnitude)
  assert np.all(np.abs(got - exact) <= bound)
