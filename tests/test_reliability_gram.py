"""Gram-path reliability at the ends of the float range (issue 12, item 4).

Every Gram method divides the gradients by σ = 2^e, the power of two nearest
their largest entry, solves on the O(1) problem and scales back. In float32
σ runs from 2^-149 to 2^128, beyond the range of one float32 factor; these
tests pin that the scaling is exact and never flushes to zero or overflows.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _asserts
import fairgrad_jax
from fairgrad_jax import _gram
from fairgrad_jax._solvers import _common

# name -> (factory, degree p of the update: d(σG) = σ^p d(G))
GRAM_METHODS = {
    "fairgrad_1": (lambda: fairgrad_jax.fairgrad(1.0), 0.0),
    "fairgrad_2": (lambda: fairgrad_jax.fairgrad(2.0), -1.0 / 3.0),
    "mgda": (lambda: fairgrad_jax.mgda(), 1.0),
    "mgda_l2": (lambda: fairgrad_jax.mgda("l2"), 1.0),
    "cagrad": (lambda: fairgrad_jax.cagrad(), 1.0),
    "imtl_g": (lambda: fairgrad_jax.imtl_g(), 1.0),
    "pcgrad": (lambda: fairgrad_jax.pcgrad(), 1.0),
    "nash_mtl": (lambda: fairgrad_jax.nash_mtl(max_norm=None), 0.0),
    "linear_scalarization": (lambda: fairgrad_jax.linear_scalarization(), 1.0),
}

# Two conflicting tasks with largest entry exactly 1.
G0 = np.array([[1.0, 0.25, -0.5], [-0.5, 0.75, 0.125]], np.float32)


@functools.lru_cache(maxsize=None)
def _update(name):
  agg = GRAM_METHODS[name][0]()
  return agg, jax.jit(agg.update)


def _run(name, g):
  agg, update = _update(name)
  return np.asarray(update({"w": jnp.asarray(g)}, agg.init(None))[0]["w"])


@pytest.mark.parametrize("scale", [6e37, 2.0 ** 126, 1e38, 3e38])
@pytest.mark.parametrize("name", sorted(GRAM_METHODS))
def test_top_of_float32_gives_the_scaled_update(name, scale):
  # Before: σ = 2^126..2^128 made the factor 2^-e flush to zero in float32,
  # so every Gram method returned an exact zero update (LS did not).
  degree = GRAM_METHODS[name][1]
  expected = _run(name, G0).astype(np.float64) * float(scale) ** degree
  got = _run(name, (G0.astype(np.float64) * scale).astype(np.float32))
  # An entry beyond float32's range overflows (PCGrad and LS sum two
  # gradients near 3e38); every other entry is the scaled update.
  overflow = np.abs(expected) > np.finfo(np.float32).max
  assert np.all(np.isinf(got[overflow])), got
  assert np.all(np.isfinite(got[~overflow])), got
  assert np.any(got != 0), got
  np.testing.assert_allclose(got[~overflow], expected[~overflow], rtol=2e-3,
                             atol=1e-6 * np.max(np.abs(expected)))


@pytest.mark.parametrize("scale", [1e-30, 2.0 ** -120])
@pytest.mark.parametrize("name", ["mgda", "imtl_g", "fairgrad_2"])
def test_bottom_of_float32_gives_the_scaled_update(name, scale):
  degree = GRAM_METHODS[name][1]
  expected = _run(name, G0).astype(np.float64) * float(scale) ** degree
  got = _run(name, (G0.astype(np.float64) * scale).astype(np.float32))
  np.testing.assert_allclose(got, expected, rtol=2e-3,
                             atol=1e-6 * np.max(np.abs(expected)))


def test_max_norm_clips_an_update_near_the_top_of_float32():
  # ‖d‖² overflows float32 for d near 1e38: the clip must not give 0.
  agg = fairgrad_jax.mgda(max_norm=1.0)
  g = jnp.asarray(G0 * np.float32(3e38))
  d = np.asarray(jax.jit(agg.update)({"w": g}, agg.init(None))[0]["w"])
  np.testing.assert_allclose(np.linalg.norm(d.astype(np.float64)), 1.0,
                             rtol=1e-5)
  direction = _run("mgda", G0).astype(np.float64)
  np.testing.assert_allclose(d, direction / np.linalg.norm(direction),
                             rtol=1e-4, atol=1e-6)


def test_times_pow2_is_exact_over_the_normal_float32_range():
  # XLA's exp2 is off by an ulp for most integer exponents beyond ±12, and
  # 2^-126 and below flush to zero.
  n = np.arange(-126, 128)
  expected = np.ldexp(np.float32(1.0), n).astype(np.float32)
  got = jax.jit(_gram.times_pow2)(jnp.ones(n.shape, jnp.float32),
                                  jnp.asarray(n, jnp.float32))
  np.testing.assert_array_equal(np.asarray(got), expected)
  # Scaling a huge value down by 2^128 (beyond one float32 factor).
  got = _gram.times_pow2(jnp.float32(3e38), -128.0)
  assert float(got) == float(np.float32(3e38)) / 2.0 ** 128


def test_power_of_two_is_exact_over_the_normal_float32_range():
  # The FairGrad residual divides by it before its error-free products; an
  # inexact "power of two" (XLA's exp2) rounded every weight there.
  n = np.arange(-126, 128)
  expected = np.ldexp(np.float32(1.0), n).astype(np.float32)
  for factor in (1.0, 1.5, 1.9999999):  # 2^n ... just below 2^(n + 1)
    x = (expected.astype(np.float64) * factor).astype(np.float32)
    x = x[np.isfinite(x)]
    got = jax.jit(_common.power_of_two)(jnp.asarray(x))
    np.testing.assert_array_equal(np.asarray(got), expected[:len(x)])
  for bad in (0.0, -2.0, np.inf, np.nan):
    assert float(_common.power_of_two(jnp.float32(bad))) == 1.0


@pytest.mark.parametrize("k", [21, 40, 60])
def test_gram_matrix_scales_exactly_by_powers_of_two(k):
  # GᵀG of 2^k G is 4^k GᵀG to the last bit: the scaling is exact.
  g = {"w": jnp.asarray(G0)}
  big = {"w": jnp.asarray(G0 * np.float32(2.0 ** k))}
  base = np.asarray(fairgrad_jax.gram_matrix(g), np.float64)
  got = np.asarray(fairgrad_jax.gram_matrix(big), np.float64)
  np.testing.assert_array_equal(got, base * 4.0 ** k)


@pytest.mark.parametrize("name", ["linear_scalarization", "pcgrad", "mgda"])
def test_partial_sums_near_the_top_do_not_overflow(name):
  # 3e38 + 3e38 overflows a float32 partial sum although the sum over the
  # three tasks, 3e38, is finite (before: inf, or NaN from inf - inf).
  g = np.array([[3e38, 1.0], [3e38, 1.0], [-3e38, 1.0]], np.float32)
  agg = {"linear_scalarization": fairgrad_jax.linear_scalarization,
         "pcgrad": fairgrad_jax.pcgrad, "mgda": fairgrad_jax.mgda}[name]()
  d = np.asarray(jax.jit(agg.update)({"w": jnp.asarray(g)},
                                     agg.init(None))[0]["w"])
  assert np.all(np.isfinite(d)), d
  if name == "linear_scalarization":
    np.testing.assert_allclose(d, [3e38, 3.0], rtol=1e-6)


def test_partial_sums_near_the_top_do_not_overflow_on_wide_gradients():
  # The rescue of the test above, a column chunk at a time: columns near
  # the top of float32 in the first and the last chunk and in the tail.
  rng = np.random.default_rng(3)
  g = rng.normal(size=(3, _WIDE_5)).astype(np.float32)
  top = [0, 65536, 2 * 65536 + 100]
  g[:, top] = np.array([[3e38], [3e38], [-2e38]], np.float32)
  w = np.array([1.0, 0.5, 2.0], np.float32)
  got = np.asarray(_weighted_sum_fn()(w, g, 0.0), np.float64)
  expected = w.astype(np.float64) @ g.astype(np.float64)
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


@functools.lru_cache(maxsize=None)
def _weighted_sum_fn():
  return jax.jit(lambda w, x, t: _gram.weighted_sum(w, x, log2_in=t))


@functools.lru_cache(maxsize=None)
def _task_products_fn():
  return jax.jit(lambda x, v, tx, tv: _gram.task_products(
      [x], [v], tx, tv, jnp.float32))


# Two column chunks of a 5-row rare path (_gram.by_columns) and a tail.
_WIDE_5 = 2 * 65536 + 333


@pytest.mark.parametrize("width", [3000, _WIDE_5])
@pytest.mark.parametrize("t", [0.0, -3.0, 60.0, -120.0, 140.0])
def test_weighted_sum_folds_the_power_of_two_without_changing_a_bit(t, width):
  """2^t moves onto the weights where that is exact (a normal product):
  the sum is bitwise the sum of the scaled gradients; where it is not
  (w_i 2^t overflows or turns subnormal), the gradients are scaled, a
  column chunk at a time on wide gradients."""
  rng = np.random.default_rng(0)
  x = (rng.normal(size=(5, width)) * 2.0 ** -t).astype(np.float32)
  x[:, :7] = 0.0
  w = rng.uniform(0.1, 3.0, size=5).astype(np.float32)
  w[2] = 2.0 ** -20  # 2^-20 · 2^-120 is subnormal: no fold at t = -120
  expected = jnp.tensordot(jnp.asarray(w), _gram.times_pow2(x, t), axes=1,
                           precision=jax.lax.Precision.HIGHEST)
  got = _weighted_sum_fn()(w, x, t)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))


@pytest.mark.parametrize("width", [2000, _WIDE_5])
@pytest.mark.parametrize("tx, tv", [(0.0, 0.0), (-20.0, 3.0), (-124.0, 0.0),
                                    (100.0, 10.0), (-100.0, -40.0)])
def test_task_products_match_float64_at_any_scale(tx, tv, width):
  """The gradients' and the update's powers of two go onto the update where
  the folded update stays normal; the products are float32-accurate either
  way (2^tx x_i and 2^tv v are O(1): x near 2^126 at tx = -124, where the
  fold would leave the update subnormal; XLA's CPU flushes subnormal inputs
  to zero, so none is used)."""
  rng = np.random.default_rng(1)
  x = (rng.normal(size=(4, width)) * 2.0 ** -tx).astype(np.float32)
  v = (rng.normal(size=width) * 2.0 ** -tv).astype(np.float32)
  got = np.asarray(_task_products_fn()(x, v, tx, tv), np.float64)
  xs = x.astype(np.float64) * 2.0 ** tx
  vs = v.astype(np.float64) * 2.0 ** tv
  expected = xs @ vs
  scale = np.linalg.norm(xs, axis=1) * np.linalg.norm(vs)
  assert np.all(np.abs(got - expected) <= 1e-5 * scale), (got, expected)


_WIDE = 2 * 65536 + 333  # two CPU chunks of a K <= 6 Gram product, and a tail
# Nine chunks (K <= 6; 18 for K = 7): several loop steps of four chunks each
# and a tail of whole chunks.
_WIDER = 9 * 65536 + 333


@functools.lru_cache(maxsize=None)
def _gram_fn():
  return jax.jit(fairgrad_jax.gram_matrix)


@pytest.mark.parametrize("width", [_WIDE, _WIDER])
@pytest.mark.parametrize("k", [2, 3, 6, 7])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_wide_gram_matrix_matches_float64(k, dtype, width):
  """Issue 13: on a CPU, leaves wider than two column chunks with K <= 6
  rows are multiplied as row dot products (K = 7 as one product); either
  way every entry is within float32 round-off (1e-5 relative to the norms,
  as in test_strength_mixed_precision; measured <= 2e-6) of the float64
  Gram matrix of the same (rounded) gradients, whose norms span three
  decades, also at a scale (2^-60) that takes the power-of-two rescaling."""
  rng = np.random.default_rng(k)
  wide = rng.normal(size=(k, width)) * np.logspace(0, 3, k)[:, None]
  wide[1] = -0.5 * wide[0] + wide[1] * 1e-2  # conflicting, nearly dependent
  small = rng.normal(size=(k, 7, 3))
  for scale in (1.0, 2.0 ** -60):
    grads = {"wide": jnp.asarray(wide * scale, dtype),
             "small": jnp.asarray(small * scale, dtype)}
    g64 = np.concatenate([np.asarray(v, np.float64).reshape(k, -1)
                          for v in jax.tree.leaves(grads)], axis=1)
    want = g64 @ g64.T
    got = np.asarray(_gram_fn()(grads), np.float64)
    norms = np.sqrt(np.diag(want))
    np.testing.assert_array_less(np.abs(got - want),
                                 1e-5 * np.outer(norms, norms))
    np.testing.assert_array_equal(got, got.T)


def _many_leaves(k, num_small, rng, dtypes=("float32", "bfloat16")):
  """A dict of ``num_small`` small leaves of alternating dtypes (tiny ones
  are concatenated into blocks) around one leaf too wide to be packed."""
  grads = {"wide": jnp.asarray(rng.normal(size=(k, 2 * _gram._TINY_COLUMNS
                                                 + 5)), "float32")}
  for i in range(num_small):
    shape = (k,) + [(3,), (2, 4), (5, 1, 2)][i % 3]
    grads[f"s{i:02d}"] = jnp.asarray(rng.normal(size=shape) * 10.0 ** (i % 4),
                                     dtypes[i % len(dtypes)])
  return grads


PACKED_WEIGHTINGS = {
    "fairgrad_2": lambda: fairgrad_jax.fairgrad_weighting(2.0),
    "mgda": fairgrad_jax.mgda_weighting,
    "pcgrad": fairgrad_jax.pcgrad_weighting,
    "linear_scalarization": fairgrad_jax.linear_scalarization_weighting,
}


@pytest.mark.parametrize("name", sorted(PACKED_WEIGHTINGS))
def test_many_small_leaves_of_two_dtypes_give_the_per_leaf_update(name):
  """Issue 13: the shared leaves are packed into a few blocks (small leaves
  concatenated per dtype) before the products; the Gram matrix is still
  that of all the shared leaves (float64 reference) and the update is
  Σ_i w_i g_i leaf by leaf, in each leaf's dtype and shape, with the
  task-specific leaf (s07, by the mask) weighted or summed as the method
  says."""
  k = 3
  grads = _many_leaves(k, 13, np.random.default_rng(5))
  shared = {key: key != "s07" for key in grads}
  g64 = {key: np.asarray(v, np.float64) for key, v in grads.items()}
  flat = np.concatenate([g64[key].reshape(k, -1) for key in sorted(grads)
                         if shared[key]], axis=1)
  want = flat @ flat.T
  norms = np.sqrt(np.diag(want))
  gram = jax.jit(lambda g: fairgrad_jax.gram_matrix(g, shared))(grads)
  np.testing.assert_array_less(np.abs(np.asarray(gram, np.float64) - want),
                               1e-5 * np.outer(norms, norms))
  weighting = PACKED_WEIGHTINGS[name]()
  agg = fairgrad_jax.aggregator(weighting, shared=shared, num_tasks=k)
  d, state = jax.jit(agg.update)(grads, agg.init(None))
  weights = np.asarray(state.weights, np.float64)
  assert np.all(np.isfinite(weights)) and np.any(weights != 1.0) == (
      name != "linear_scalarization")
  for key, g in g64.items():
    assert d[key].shape == g.shape[1:] and d[key].dtype == grads[key].dtype
    w = weights if shared[key] or weighting.weight_heads else np.ones(k)
    # float32 sums of float32 / bf16 entries, rounded to the leaf's dtype.
    tol = 2 ** -8 if grads[key].dtype == jnp.bfloat16 else 1e-5
    bound = tol * (np.abs(w) @ np.abs(g).reshape(k, -1)).reshape(g.shape[1:])
    np.testing.assert_array_less(
        np.abs(np.asarray(d[key], np.float64) - np.tensordot(w, g, axes=1)),
        bound + 1e-30, err_msg=key)


def _conditionals(fn, *args) -> int:
  text = jax.jit(fn).lower(*args).as_text()
  return text.count("stablehlo.case") + text.count("stablehlo.if")


def test_the_update_graph_does_not_grow_a_branch_per_leaf():
  """Issue 13: the rare paths of the weighted sum (unexact fold, overflowing
  partial sums) and of the Gram matrix are chosen once for all the leaves.
  One conditional per leaf made FairGrad's update on 160 small leaves take
  43 s of XLA compile (now 4 s); the count of conditionals in the lowered
  update must not depend on the number of leaves."""
  rng = np.random.default_rng(6)
  counts = {}
  for n in (4, 40):
    grads = _many_leaves(3, n, rng, dtypes=("float32",))
    del grads["wide"]
    for name in ("fairgrad_2", "linear_scalarization"):
      agg = fairgrad_jax.aggregator(PACKED_WEIGHTINGS[name]())
      counts[name, n] = _conditionals(agg.update, grads, agg.init(None))
  assert counts["fairgrad_2", 4] == counts["fairgrad_2", 40], counts
  assert counts["linear_scalarization", 4] == counts[
      "linear_scalarization", 40], counts
  assert counts["linear_scalarization", 4] <= 2, counts


@pytest.mark.parametrize("width", [7, 3000, _WIDE_5])
@pytest.mark.parametrize("t", [0.0, -3.0, 60.0])
def test_weighted_sum_with_a_bound_gives_the_careful_sums_bitwise(t, width):
  """``bound`` (the aggregator's: σ-free entries are at most 2^(1/2)) skips
  the finiteness pass and the rescue branch; where it applies the sums are
  the very products of the careful path."""
  rng = np.random.default_rng(int(t) + width)
  x = jnp.asarray(rng.uniform(-1.4, 1.4, (4, width)) * 2.0 ** -t, "float32")
  w = jnp.asarray(rng.normal(size=4) * 10.0, "float32")
  fn = jax.jit(lambda w, x, b: _gram.weighted_sums(w, [x], log2_in=t,
                                                   bound=b)[0])
  careful = np.asarray(fn(w, x, None))
  np.testing.assert_array_equal(np.asarray(fn(w, x, 2.0)), careful)
  # A bound that rules nothing in (non-finite gradients) or whose partial
  # sums could overflow takes the careful path: the same sums.
  np.testing.assert_array_equal(np.asarray(fn(w, x, jnp.nan)), careful)
  np.testing.assert_array_equal(np.asarray(fn(w, x, 1e38)), careful)


def test_weighted_sum_with_a_bound_still_rescues_overflowing_partial_sums():
  # Entries near the top (within a bound of 3e38): 3e38 + 3e38 overflows a
  # partial sum although the sum, 3e38, is finite. The bound times Σ|w|
  # rules the fast path out; the rescue runs, as without a bound.
  x = jnp.asarray([[3e38, 1.0], [3e38, 1.0], [-3e38, 1.0]], "float32")
  fn = jax.jit(lambda x, b: _gram.weighted_sums(jnp.ones(3), [x],
                                                bound=b)[0])
  got = np.asarray(fn(x, 3e38))
  np.testing.assert_allclose(got, [3e38, 3.0], rtol=1e-6)
  np.testing.assert_array_equal(got, np.asarray(fn(x, None)))


def test_fairgrad_update_makes_no_finiteness_pass_over_the_sum(monkeypatch):
  """Issue 13: the stacked FairGrad update sums the σ-free gradients, whose
  entries are bounded, so it checks the sum for overflow only where its
  bound cannot rule an overflow out (non-finite gradients); the update is
  the careful path's, bit for bit."""
  calls = _asserts.count_runs(monkeypatch, _gram, "all_finite_leaves")
  rng = np.random.default_rng(8)
  g = {"w": jnp.asarray(rng.normal(size=(3, 50)) + 1.0, "float32")}
  agg = fairgrad_jax.fairgrad(2.0)
  d = jax.jit(agg.update)(g, agg.init(None))[0]["w"]
  jax.block_until_ready(d)
  jax.effects_barrier()
  assert not calls
  bad = {"w": g["w"].at[0, 0].set(jnp.inf)}
  d_bad = jax.jit(agg.update)(bad, agg.init(None))[0]["w"]
  jax.block_until_ready(d_bad)
  jax.effects_barrier()
  assert len(calls) == 1  # the careful path, for non-finite gradients
  assert not np.all(np.isfinite(np.asarray(d_bad)))
  # Without the bound (the careful path throughout): the same update.
  weighted_sums = _gram.weighted_sums
  monkeypatch.setattr(_gram, "weighted_sums", lambda *a, bound=None, **kw:
                      weighted_sums(*a, **kw))
  agg = fairgrad_jax.fairgrad(2.0)
  np.testing.assert_array_equal(
      np.asarray(jax.jit(agg.update)(g, agg.init(None))[0]["w"]),
      np.asarray(d))
