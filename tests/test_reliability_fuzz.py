"""Seeded random search over every method (issue 12, fuzz item).

For each method, a few (K, dtype) combinations drawn from K ∈ {1, 2, 7, 64}
and float32/bfloat16, each compiled once and fed gradients of random scale
(1e-38 … 3e38), signs, rank and zero tasks. Checked: a clear error
(ValueError/TypeError) or an update with the params' shapes and dtypes; no
NaN from finite gradients (the README's promise, checked rather than
promised), and a finite update wherever its true value is representable
(gradients between 1e-30 and 1e30).
"""

import functools
import zlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fairgrad_jax as fj

FACTORIES = {
    "linear_scalarization": lambda k: fj.linear_scalarization(num_tasks=k),
    "fairgrad_0": lambda k: fj.fairgrad(0.0, num_tasks=k),
    "fairgrad_1": lambda k: fj.fairgrad(1.0, num_tasks=k),
    "fairgrad_1e6": lambda k: fj.fairgrad(1e6, num_tasks=k),
    "mgda": lambda k: fj.mgda(num_tasks=k),
    "mgda_l2": lambda k: fj.mgda("l2", num_tasks=k),
    "mgda_loss+": lambda k: fj.mgda("loss+", num_tasks=k),
    "pcgrad": lambda k: fj.pcgrad(num_tasks=k),
    "cagrad": lambda k: fj.cagrad(num_tasks=k),
    "cagrad_2": lambda k: fj.cagrad(2.0, num_tasks=k),
    "imtl_g": lambda k: fj.imtl_g(num_tasks=k),
    "nash_mtl": lambda k: fj.nash_mtl(num_tasks=k),
    "graddrop": lambda k: fj.graddrop(num_tasks=k),
    "rlw": lambda k: fj.rlw(num_tasks=k),
    "dwa": lambda k: fj.dwa(num_tasks=k),
    "uw": lambda k: fj.uw(num_tasks=k),
    "scale_invariant": lambda k: fj.scale_invariant(num_tasks=k),
    "famo": lambda k: fj.famo(num_tasks=k),
}
NAMES = sorted(FACTORIES)
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
SHAPES = {"a": (3,), "b": (2, 2)}


def _combos():
  """Two (K, dtype) draws per method, seeded; K = 64 a few times."""
  rng = np.random.default_rng(12)
  out = []
  for i, name in enumerate(NAMES):
    ks = rng.choice([1, 2, 7], size=2, replace=False).tolist()
    if i % 6 == 0:
      ks[1] = 64
    out += [(name, ks[0], "float32"), (name, ks[1], "bfloat16")]
  return out


@functools.lru_cache(maxsize=None)
def _compiled(name, k):
  agg = FACTORIES[name](k)
  return agg, jax.jit(agg.update)


def _draw(rng, k, dtype):
  """Stacked gradients of random scale, signs, rank and zero tasks."""
  log_scale = rng.uniform(-38.0, 38.5)
  scale = min(10.0 ** log_scale, 3e38)
  size = sum(int(np.prod(s)) for s in SHAPES.values())
  rank = int(rng.integers(1, min(k, size) + 1))
  g = rng.normal(size=(k, rank)) @ rng.normal(size=(rank, size))
  g *= rng.choice([-1.0, 1.0], size=(k, 1))
  g *= np.exp(rng.uniform(-3.0, 0.0, size=(k, 1)))  # task scales
  if k > 1 and rng.uniform() < 0.3:
    g[rng.integers(k)] = 0.0
  g = g / max(np.abs(g).max(), 1e-300) * scale
  g = np.clip(g, -3e38, 3e38)
  leaves, start = {}, 0
  for key, shape in SHAPES.items():
    n = int(np.prod(shape))
    leaves[key] = jnp.asarray(g[:, start:start + n].reshape((k,) + shape),
                              dtype)
    start += n
  return leaves, scale


# d(σG) = σ^p d(G) from the same state and losses (nash_mtl clips at
# max_norm=1 by default: not homogeneous).
DEGREE = {name: 1.0 for name in NAMES}
DEGREE.update({"fairgrad_1": 0.0, "fairgrad_1e6": (1 - 1e6) / (1 + 1e6),
               "nash_mtl": None})


def _check(name, out, dtype, scale):
  for key, shape in SHAPES.items():
    assert out[key].shape == shape and out[key].dtype == dtype, (
        name, key, out[key].shape, out[key].dtype)
  flat = np.concatenate([np.asarray(x, np.float64).ravel()
                         for x in out.values()])
  assert not np.any(np.isnan(flat)), (name, scale, flat)
  if 1e-30 <= scale <= 1e30:
    assert np.all(np.isfinite(flat)), (name, scale, flat)
  return flat


@pytest.mark.parametrize("name, k, dtype", _combos())
def test_fuzz_finite_in_finite_out(name, k, dtype):
  agg, update = _compiled(name, k)
  rng = np.random.default_rng(zlib.crc32(f"{name} {k} {dtype}".encode()))
  dtype = DTYPES[dtype]
  state = agg.init(None)
  for _ in range(6):
    grads, scale = _draw(rng, k, dtype)
    assert all(np.all(np.isfinite(np.asarray(x, np.float32)))
               for x in grads.values())
    losses = jnp.asarray(rng.uniform(0.5, 2.0, k), jnp.float32)
    try:
      out, new_state = update(grads, state, losses=losses)
    except (ValueError, TypeError) as e:  # a clear error is an answer
      assert str(e), name
      continue
    _check(name, out, dtype, scale)
    if state.weights is not None:
      assert not np.any(np.isnan(np.asarray(new_state.weights))), name
    # The same gradients at max |entry| = 1 and scaled by 2^n (exact in
    # binary floating point) out to the ends of float32's range.
    degree = DEGREE[name]
    unit = jax.tree.map(lambda x: x / jnp.asarray(scale, x.dtype), grads)
    top = max(float(jnp.max(jnp.abs(x.astype(jnp.float32))))
              for x in unit.values())
    if degree is None or not 0.5 <= top <= 2.0:
      state = new_state
      continue
    fresh = agg.init(None)  # no warm start from another draw's scale
    base = _check(name, update(unit, fresh, losses=losses)[0], dtype, 1.0)
    for n in (127, -100):
      scaled = jax.tree.map(lambda x, n=n: x * jnp.asarray(2.0 ** n, x.dtype),
                            unit)
      got = _check(name, update(scaled, fresh, losses=losses)[0], dtype,
                   2.0 ** n)
      expected = base * 2.0 ** (n * degree)
      ok = (np.abs(expected) < 3e38) & (np.abs(expected) > 1e-37)
      np.testing.assert_allclose(
          got[ok], expected[ok], rtol=1e-4,
          atol=1e-4 * np.max(np.abs(expected[ok]), initial=0.0),
          err_msg=f"{name} K={k} 2^{n}")
    state = new_state
