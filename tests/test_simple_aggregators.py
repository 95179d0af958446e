"""Mean, Sum (= linear scalarization), Constant, Random (= RLW), Krum and
TrimmedMean: TorchJD's values, closed forms, bad arguments, extreme inputs.

The peer values come from ``tools/peer_reference_simple.py`` (TorchJD 0.18
in float64 on 20 seeded Jacobians, K in {2, 3, 5, 10}), stored in
``tests/data/peer_simple.json``; torch is not needed here. Krum's selection
is compared exactly except at ties of its scores, where TorchJD's order is
``torch.topk``'s (unspecified) and ours the lowest index.
"""

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fairgrad_jax as fj

_DATA = json.loads((pathlib.Path(__file__).parent / "data"
                    / "peer_simple.json").read_text())
CASES = _DATA["cases"]
KS = sorted({c["k"] for c in CASES})
# float32 updates against TorchJD's float64 ones, relative to the norm of
# the reference (the gradients' largest norm where it is ~0).
RTOL_F32 = 2e-6
# The stacked builder on every peer case costs a compile per K: K = 3 and 10
# in the default suite, 2 and 5 with the slow tests.
BUILDER_KS = [pytest.param(k, marks=pytest.mark.slow) if k in (2, 5) else k
              for k in KS]


def _by_k(k):
  return [c for c in CASES if c["k"] == k]


def _jacobians(k, dtype=np.float32):
  return np.stack([np.asarray(c["jacobian"], dtype) for c in _by_k(k)])


def _rel(ours, ref, jac):
  ref = np.asarray(ref, np.float64)
  scale = max(np.linalg.norm(ref), 1e-6 * np.linalg.norm(jac, axis=1).max())
  return np.linalg.norm(np.asarray(ours, np.float64) - ref) / scale


@functools.lru_cache(maxsize=None)
def _batched_update(factory, k, *args):
  """One jitted update per aggregator (K tasks), vmapped over a batch of
  Jacobians."""
  agg = getattr(fj, factory)(*args, num_tasks=k)

  def one(jac):
    d, state = agg.update({"w": jac}, agg.init(None))
    return d["w"], state.weights

  return jax.jit(jax.vmap(one))


def _krum_settings(k):
  return [(s["n_byzantine"], s["n_selected"]) for s in _by_k(k)[0]["krum"]]


def _trim_numbers(k):
  return [s["trim_number"] for s in _by_k(k)[0]["trimmed_mean"]]


@functools.lru_cache(maxsize=None)
def _peer_run(k):
  """Every aggregator of the peer file for K tasks, stacked, in float32: one
  jitted function vmapped over the cases (one compile per K)."""
  aggs = {"mean": fj.mean(num_tasks=k),
          "sum": fj.linear_scalarization(num_tasks=k),
          "constant": fj.constant(_by_k(k)[0]["constant_weights"],
                                  num_tasks=k)}
  aggs |= {f"trimmed_mean_{t}": fj.trimmed_mean(t, num_tasks=k)
           for t in _trim_numbers(k)}
  if k >= 3:  # the builder on Krum's last setting; all settings below
    f, m = _krum_settings(k)[-1]
    aggs[f"krum_{f}_{m}"] = fj.krum(f, m, num_tasks=k)

  def one(jac):
    out = {}
    for name, agg in aggs.items():
      d, state = agg.update({"w": jac}, agg.init(None))
      out[name] = (d["w"], state.weights)
    return out

  out = jax.jit(jax.vmap(one))(jnp.asarray(_jacobians(k)))
  return jax.tree.map(np.asarray, out)


# --- TorchJD's values ---------------------------------------------------------


@pytest.mark.parametrize("k", BUILDER_KS)
def test_mean_sum_constant_match_torchjd(k):
  """Mean: weights 1/K; Sum is linear scalarization (weights 1); Constant."""
  out = _peer_run(k)
  for i, case in enumerate(_by_k(k)):
    jac = np.asarray(case["jacobian"])
    for name in ("mean", "sum"):
      d, w = out[name][0][i], out[name][1][i]
      np.testing.assert_allclose(w, case[name]["weights"], rtol=1e-7)
      assert _rel(d, case[name]["update"], jac) <= RTOL_F32, (
          name, case["family"])
    d, w = out["constant"][0][i], out["constant"][1][i]
    np.testing.assert_array_equal(w, np.float32(case["constant_weights"]))
    assert _rel(d, case["constant_update"], jac) <= RTOL_F32, case["family"]


@pytest.mark.parametrize("k", BUILDER_KS)
def test_trimmed_mean_matches_torchjd(k):
  out = _peer_run(k)
  for i, case in enumerate(_by_k(k)):
    jac = np.asarray(case["jacobian"])
    for ref in case["trimmed_mean"]:
      t = ref["trim_number"]
      d = out[f"trimmed_mean_{t}"][0][i]
      assert _rel(d, ref["update"], jac) <= RTOL_F32, (case["family"], t)


def _check_krum_selection(w, ref_w, scores, m, rtol):
  """Same weights as TorchJD, or, where scores tie at the cut (to
  ``rtol``), a selection of m tasks among the tied ones. Returns whether
  the scores tie."""
  order = np.sort(scores)
  cut = order[m - 1]
  nxt = order[m] if m < len(scores) else np.inf
  tol = rtol * max(abs(cut), 1e-300)
  if nxt - cut > tol:
    np.testing.assert_array_equal(np.flatnonzero(w), np.flatnonzero(ref_w))
    np.testing.assert_allclose(w, ref_w, rtol=1e-7)
    return False
  selected = np.flatnonzero(w)
  assert len(selected) == m and np.allclose(w[selected], 1.0 / m)
  assert set(np.flatnonzero(scores < cut - tol)) <= set(selected)
  assert np.all(scores[selected] <= cut + tol)
  return True


@functools.lru_cache(maxsize=None)
def _krum_weights(k, x64):
  """Krum's weights on the cases' Gram matrices for every (f, m) setting:
  one jitted function per K and precision."""
  dtype = np.float64 if x64 else np.float32
  grams = np.stack([np.asarray(c["gram"], dtype) for c in _by_k(k)])
  with jax.enable_x64(x64):
    weightings = [fj.krum_weighting(f, m) for f, m in _krum_settings(k)]
    weights = jax.jit(jax.vmap(lambda g: [wt(g)[0] for wt in weightings]))(
        jnp.asarray(grams))
    return [np.asarray(w) for w in weights]


@pytest.mark.parametrize("x64", [False, True], ids=["f32", "f64"])
@pytest.mark.parametrize("k", [k for k in KS if k >= 3])
def test_krum_matches_torchjd(k, x64):
  """The same selection as TorchJD (float32 and float64 Gram matrices); at
  an exact tie (float64), the lowest indices."""
  cases = _by_k(k)
  weights = _krum_weights(k, x64)
  ties = 0
  for s, (f, m) in enumerate(_krum_settings(k)):
    for i, case in enumerate(cases):
      ref = case["krum"][s]
      scores = np.asarray(ref["scores"])
      w = weights[s][i]
      tied = _check_krum_selection(w, np.asarray(ref["weights"]), scores, m,
                                   1e-12 if x64 else 1e-5)
      ties += tied
      if tied and x64:
        cut = np.sort(scores)[m - 1]
        below = np.flatnonzero(scores < cut)
        tied_at_cut = np.flatnonzero(scores == cut)
        expected = np.sort(np.concatenate(
            [below, tied_at_cut[:m - len(below)]]))
        np.testing.assert_array_equal(np.flatnonzero(w), expected)
      elif not tied:
        jac = np.asarray(case["jacobian"])
        assert _rel(w.astype(np.float64) @ jac, ref["update"], jac) <= (
            1e-12 if x64 else 1e-7)
  if k == 3:  # K = f + 3: the closest pair always ties (module docstring)
    assert ties > 0


# Krum needs K > 2f + 2 tasks: the peer data have no Krum setting at K = 2.
@pytest.mark.parametrize(
    "k", [k for k in BUILDER_KS if getattr(k, "values", (k,))[0] != 2])
def test_krum_aggregator_matches_torchjd(k):
  """Through the stacked builder (float32, scaled Gram matrix), on the
  last setting."""
  f, m = _krum_settings(k)[-1]
  d, w = _peer_run(k)[f"krum_{f}_{m}"]
  for i, case in enumerate(_by_k(k)):
    ref = case["krum"][-1]
    if not _check_krum_selection(w[i], np.asarray(ref["weights"]),
                                 np.asarray(ref["scores"]), m, 1e-5):
      assert _rel(d[i], ref["update"], np.asarray(case["jacobian"])) <= (
          RTOL_F32), case["family"]


def test_rlw_is_torchjds_random():
  """RLW's weights have the distribution of TorchJD's Random (softmax of a
  standard normal draw): mean and variance of each weight over as many
  draws as the peer's, within 5 standard errors of the difference."""
  weighting = fj.rlw_weighting(seed=0)
  summaries = _DATA["random"]
  n = summaries[0]["draws"]
  keys = jax.random.split(jax.random.PRNGKey(1), n)
  draws = jax.jit(jax.vmap(lambda key: [
      weighting(jnp.zeros((s["k"], s["k"])), key=key)[0]
      for s in summaries]))(keys)
  for summary, w in zip(summaries, draws):
    assert summary["draws"] == n
    w = np.asarray(w, np.float64)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-5)
    var = np.asarray(summary["var"])
    se_mean = np.sqrt(2.0 * var / n)
    assert np.all(np.abs(w.mean(axis=0) - summary["mean"]) <= 5 * se_mean), (
        summary["k"], w.mean(axis=0), summary["mean"])
    se_var = np.sqrt(2.0 / n) * np.asarray(summary["std_of_squared_deviation"])
    assert np.all(np.abs(w.var(axis=0) - var) <= 5 * se_var), (
        summary["k"], w.var(axis=0), var)


# --- closed forms -------------------------------------------------------------


def test_krum_sums_distances_as_torchjd_not_their_squares():
  """Two neighbours each (K = 6, f = 2): g_1 = (0, 5) has them at 1 and 1
  (score 2; squares 2), g_2 = 0 at 0.1 and 1.8 (score 1.9; squares 3.25).
  TorchJD's Krum (distances) picks g_2; the paper's squares would pick
  g_1."""
  g = np.array([[0.0, 5.0], [0.0, 0.0], [0.1, 0.0], [-1.8, 0.0],
                [1.0, 5.0], [-1.0, 5.0]], np.float32)
  dist = np.linalg.norm(g[:, None] - g[None], axis=-1).astype(np.float64)
  nearest = np.sort(dist, axis=1)[:, 1:3]
  np.testing.assert_allclose(nearest.sum(axis=1), [2, 1.9, 2, 3.7, 3, 3],
                             rtol=1e-6)
  assert np.argmin((nearest ** 2).sum(axis=1)) == 0
  w, _ = fj.krum_weighting(n_byzantine=2)(jnp.asarray(g @ g.T))
  np.testing.assert_array_equal(w, np.eye(6)[1])


def test_krum_multi_krum_and_ties():
  g = jnp.array([[1.0, 0.0], [1.0, 0.1], [1.0, -0.1], [0.0, 5.0],
                 [0.0, -5.0]])
  gram = g @ g.T
  # f = 0: 3 nearest neighbours each: g_1 (0.1 + 0.1 + 5.1) is closest.
  w, _ = fj.krum_weighting(0)(gram)
  np.testing.assert_array_equal(w, [1.0, 0.0, 0.0, 0.0, 0.0])
  w, _ = fj.krum_weighting(0, n_selected=3)(gram)
  np.testing.assert_allclose(w, [1 / 3, 1 / 3, 1 / 3, 0.0, 0.0])
  # f = 2: one neighbour each; g_2 and g_3 tie with g_1 at 0.1: the first.
  w, _ = fj.krum_weighting(2)(gram)
  np.testing.assert_array_equal(w, [1.0, 0.0, 0.0, 0.0, 0.0])
  # Permuted, the same gradient is picked when there is no tie.
  perm = np.array([4, 2, 0, 3, 1])
  w, _ = fj.krum_weighting(0)(gram[perm][:, perm])
  np.testing.assert_array_equal(w, np.eye(5)[2])


def test_trimmed_mean_closed_forms():
  g = jnp.array([[3.0, -1.0, 0.0], [1.0, 7.0, 0.0], [2.0, 2.0, 0.0],
                 [100.0, -9.0, 0.0], [-50.0, 4.0, 0.0]])
  heads = jnp.arange(10.0).reshape(5, 2)
  agg = fj.trimmed_mean(2, shared={"w": True, "head": False})
  d, _ = agg.update({"w": g, "head": heads}, agg.init(None))
  np.testing.assert_array_equal(d["w"], [2.0, 2.0, 0.0])  # the medians
  np.testing.assert_array_equal(d["head"], heads.sum(axis=0))
  agg = fj.trimmed_mean(1, num_tasks=5, scale_by_num_tasks=True)
  d, state = agg.update({"w": g}, agg.init(None))
  np.testing.assert_allclose(d["w"], 5 * np.array([2.0, 5 / 3, 0.0]),
                             rtol=1e-6)
  # Kept shares of the 9 kept entries: tasks (2, 3, 1), (1, 3, 5) and, for
  # the tied zeros, the middle three of 1..5 (a stable sort).
  np.testing.assert_allclose(state.weights, np.array([2, 2, 3, 1, 1]) / 9,
                             rtol=1e-6)
  agg = fj.trimmed_mean(0, num_tasks=5)
  d, state = agg.update({"w": g}, agg.init(None))
  np.testing.assert_allclose(d["w"], np.mean(np.asarray(g), axis=0),
                             rtol=1e-6)
  np.testing.assert_allclose(state.weights, np.full(5, 0.2), rtol=1e-6)
  # K = 1, t = 0: the gradient itself.
  agg = fj.trimmed_mean(0)
  np.testing.assert_array_equal(
      agg.update({"w": g[:1]}, agg.init(None))[0]["w"], g[0])


def test_trimmed_mean_trims_a_nan_task_entry():
  """A NaN sorts last: one NaN entry is trimmed with t >= 1, as in torch."""
  g = jnp.array([[1.0, jnp.nan], [2.0, 1.0], [4.0, 2.0]])
  agg = fj.trimmed_mean(1)
  d, _ = agg.update({"w": g}, agg.init(None))
  np.testing.assert_array_equal(d["w"], [2.0, 2.0])


# --- bad arguments ------------------------------------------------------------


@pytest.mark.parametrize("weights, error, match", [
    ("ab", TypeError, "1-D sequence"),
    (2.0, TypeError, "1-D sequence"),
    ([[1.0, 2.0]], TypeError, "shape"),
    ([True, False], TypeError, "dtype bool"),
    ([], ValueError, "empty"),
    ([1.0, float("nan")], ValueError, "finite"),
    ([1.0, float("inf")], ValueError, "finite"),
])
def test_constant_refuses_bad_weights(weights, error, match):
  with pytest.raises(error, match=match):
    fj.constant(weights)
  with pytest.raises(error, match=match):
    fj.constant_weighting(weights)


def test_constant_refuses_another_task_count():
  with pytest.raises(ValueError, match="2 weights .* 3 tasks"):
    fj.constant([1.0, 2.0], num_tasks=3)
  agg = fj.constant([1.0, 2.0])
  with pytest.raises(ValueError, match="2 weights .* 3 tasks"):
    agg.update({"w": jnp.ones((3, 2))}, agg.init(None))
  with pytest.raises(ValueError, match="2 weights .* 3 tasks"):
    fj.constant_weighting([1.0, 2.0])(jnp.eye(3))


@pytest.mark.parametrize("kwargs, match", [
    ({"n_byzantine": -1}, "n_byzantine must be an int >= 0"),
    ({"n_byzantine": 1.0}, "n_byzantine must be an int >= 0"),
    ({"n_byzantine": True}, "n_byzantine must be an int >= 0"),
    ({"n_byzantine": 0, "n_selected": 0}, "n_selected must be an int >= 1"),
    ({"n_byzantine": 0, "n_selected": 1.5}, "n_selected must be an int"),
])
def test_krum_refuses_bad_hyperparameters(kwargs, match):
  with pytest.raises(ValueError, match=match):
    fj.krum(**kwargs)


def test_krum_refuses_too_few_tasks():
  with pytest.raises(ValueError, match="n_byzantine \\+ 3 = 4 tasks, got 3"):
    fj.krum(1, num_tasks=3)
  with pytest.raises(ValueError, match="n_selected = 4 tasks, got 3"):
    fj.krum(0, n_selected=4, num_tasks=3)
  agg = fj.krum(1)
  with pytest.raises(ValueError, match="n_byzantine \\+ 3 = 4 tasks, got 3"):
    agg.update({"w": jnp.ones((3, 2))}, agg.init(None))
  with pytest.raises(ValueError, match="n_selected = 4 tasks, got 3"):
    fj.krum_weighting(0, 4)(jnp.eye(3))


def test_trimmed_mean_refuses_bad_arguments():
  for bad in (-1, 1.0, True, None):
    with pytest.raises(ValueError, match="trim_number must be an int >= 0"):
      fj.trimmed_mean(bad)
  with pytest.raises(ValueError, match="5 tasks, got 4"):
    fj.trimmed_mean(2, num_tasks=4)
  agg = fj.trimmed_mean(2)
  with pytest.raises(ValueError, match="5 tasks, got 4"):
    agg.update({"w": jnp.ones((4, 2))}, agg.init(None))
  with pytest.raises(ValueError, match="num_tasks=5 but .* size 4"):
    fj.trimmed_mean(1, num_tasks=5).update({"w": jnp.ones((4, 2))},
                                           fj.trimmed_mean(1).init(None))
  with pytest.raises(TypeError, match="scale_by_num_tasks must be a bool"):
    fj.trimmed_mean(1, scale_by_num_tasks=1)


def test_reprs_show_the_hyperparameters():
  assert repr(fj.krum(1, num_tasks=5)) == (
      "krum(n_byzantine=1, n_selected=1, num_tasks=5)")
  assert repr(fj.krum_weighting(0, 2)) == (
      "krum_weighting(n_byzantine=0, n_selected=2)")
  assert repr(fj.trimmed_mean(1, num_tasks=3)) == (
      "trimmed_mean(trim_number=1, num_tasks=3)")
  assert repr(fj.constant_weighting([1, 2])) == (
      "constant_weighting(weights=(1.0, 2.0))")
  assert repr(fj.mean(num_tasks=2)) == "mean(num_tasks=2)"


# --- extreme inputs -----------------------------------------------------------

_K = 5
_G = np.asarray(jax.random.normal(jax.random.PRNGKey(3), (_K, 6)))
_EXTREME = {"mean": ("mean",), "constant": ("constant",
                                            (1.0, -0.5, 2.0, 0.0, 1.5)),
            "krum": ("krum", 1, 2), "trimmed_mean": ("trimmed_mean", 1)}


@pytest.mark.parametrize("scale", [0.0, 1e-20, 1e20])
@pytest.mark.parametrize("name", sorted(_EXTREME))
def test_extreme_scales(name, scale):
  """Zero gradients give 0; gradients at 1e±20 (float32) give the update
  at scale 1 times the scale (degree 1), to float32 precision."""
  factory, *args = _EXTREME[name]
  update = _batched_update(factory, _K, *args)
  d, weights = update(jnp.asarray(np.stack([_G, _G * scale]), jnp.float32))
  d, weights = np.asarray(d, np.float64), np.asarray(weights)
  assert np.all(np.isfinite(d)) and np.all(np.isfinite(weights))
  np.testing.assert_allclose(d[1], d[0] * scale, rtol=1e-5,
                             atol=1e-5 * scale * np.abs(d[0]).max())
  if scale == 0.0:
    np.testing.assert_array_equal(d[1], 0.0)


def test_mean_passes_shared_and_max_norm_and_needs_no_gram():
  """fj.mean's own arguments reach the builder, and Mean asks for no Gram
  matrix (mutation testing: dropping shared=, max_norm= or needs_gram=False
  in mean.py passed every other test)."""
  grads = {"trunk": jnp.array([[3.0, 0.0], [0.0, 4.0]]),
           "head": jnp.array([[1.0, 2.0], [3.0, 4.0]])}
  shared = {"trunk": True, "head": False}
  out, _ = fj.mean(shared=shared).update(grads, fj.mean().init(None))
  np.testing.assert_allclose(out["trunk"], [1.5, 2.0])  # (1/K) Σ g_i
  np.testing.assert_allclose(out["head"], [4.0, 6.0])  # Σ g_i
  clipped, _ = fj.mean(shared=shared, max_norm=0.5).update(
      grads, fj.mean().init(None))
  np.testing.assert_allclose(jnp.linalg.norm(clipped["trunk"]), 0.5,
                             rtol=1e-6)
  np.testing.assert_allclose(clipped["head"], [4.0, 6.0])
  assert fj.mean_weighting().needs_gram is False
