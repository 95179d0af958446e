"""Aligned-MTL and ConFIG: TorchJD's values, closed forms, non-conflict, edges.

The peer values come from ``tools/peer_reference_aligned_config.py``
(TorchJD 0.18's ``AlignedMTLWeighting`` on JJᵀ and ``ConFIG`` on J, in
float64), stored in ``tests/data/peer_aligned_mtl_config.json``; torch is
not needed here. TorchJD's ConFIG works on the Jacobian and does not form
weights: its updates are compared (and, where J has full row rank and the
weights are unique, the weights that give them).
"""

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fairgrad_jax as fj
from fairgrad_jax._methods import aligned_mtl as aligned_module
from fairgrad_jax._methods import config as config_module

_DATA = json.loads((pathlib.Path(__file__).parent / "data"
                    / "peer_aligned_mtl_config.json").read_text())
CASES = _DATA["cases"]
KS = sorted({c["k"] for c in CASES})
MODES = ("min", "median", "rmse")
# float32: the Gram matrix's eigenvalues are known to ~ε λ_max; for row
# norms over four decades (``scaled``, λ_min/λ_max down to 1e-8) Aligned-
# MTL's B = √λ_min V Λ^{-1/2} Vᵀ then carries ~1e-3 of error (float64
# agrees to 1e-10 on every family, below). ConFIG works on the unit
# gradients' Gram matrix, which the norms do not condition.
RTOL_F32 = {"random": 1e-4, "conflicting": 1e-4, "rank_deficient": 1e-4,
            "zero_row": 1e-4, "scaled": 1e-2}
RTOL_F64 = 1e-9
WORST = {}  # (method, family, precision) -> max relative difference seen


def _by_k(k):
  return [c for c in CASES if c["k"] == k]


@functools.lru_cache(maxsize=None)
def _peer_fn(k, x64):
  """Jitted (grams, prefs) -> Aligned-MTL (3 modes, mean; min, pref), ConFIG.

  The preference vector is a traced input (one compile per K and
  precision); the public weightings take it as a hyperparameter and are
  checked against this path (test_public_weightings_match_the_kernels).
  """
  del k, x64  # cache keys

  def one(gram, pref):
    mean = jnp.full(gram.shape[:1], 1.0 / gram.shape[0], gram.dtype)
    aligned = {m: aligned_module.balance_transformation(gram, scale_mode=m)
               @ mean for m in MODES}
    aligned["min_pref"] = aligned_module.balance_transformation(gram) @ pref
    config = {"default": config_module.conflict_free_weights(gram, mean),
              "pref": config_module.conflict_free_weights(gram, pref)}
    return aligned, config

  return jax.jit(jax.vmap(one))


def _run(k, x64):
  dtype = np.float64 if x64 else np.float32
  cases = _by_k(k)
  grams = np.stack([np.asarray(c["gram"], dtype) for c in cases])
  prefs = np.stack([np.asarray(c["pref_vector"], dtype) for c in cases])
  aligned, config = _peer_fn(k, x64)(grams, prefs)
  return cases, jax.tree.map(np.asarray, aligned), jax.tree.map(np.asarray,
                                                                config)


# TorchJD's update below this fraction of the largest gradient is a
# Pareto-stationary point (K = 2, rank 1: opposite gradients): its value is
# round-off there (ConFIG: 2e-8, from pinv's discarded direction), ours is 0;
# both are compared to the gradients' norm with this tolerance.
STATIONARY = 1e-6


def _update_diff(w, jac, ref):
  """‖wJ − ref‖ relative to ‖ref‖ (to the gradients where ref ~ 0)."""
  scale = max(np.linalg.norm(ref), np.linalg.norm(jac, axis=1).max()
              if _stationary(jac, ref) else 0.0)
  return np.linalg.norm(np.asarray(w, np.float64) @ jac - ref) / scale


def _stationary(jac, ref):
  return np.linalg.norm(ref) <= STATIONARY * np.linalg.norm(jac,
                                                            axis=1).max()


def _compare(k, x64):
  cases, aligned, config = _run(k, x64)
  precision = "f64" if x64 else "f32"
  for i, case in enumerate(cases):
    family = case["family"]
    tol = RTOL_F64 if x64 else RTOL_F32[family]
    jac = np.asarray(case["jacobian"])
    diffs = {}
    for mode, ref in case["aligned_mtl"].items():
      ref_w = np.asarray(ref["weights"])
      w = aligned[mode][i]
      rel = np.max(np.abs(w - ref_w)) / np.max(np.abs(ref_w))
      diffs[("aligned_mtl", mode, "weights")] = rel
      diffs[("aligned_mtl", mode, "update")] = _update_diff(
          w, jac, np.asarray(ref["update"]))
    stationary = False
    for key, ref in case["config_update"].items():
      ref = np.asarray(ref)
      w = config[key][i]
      diffs[("config", key, "update")] = _update_diff(w, jac, ref)
      stationary |= _stationary(jac, ref)
      if np.linalg.matrix_rank(jac) == k and family != "zero_row":
        # Full row rank: the weights of TorchJD's update are unique.
        ref_w = np.linalg.lstsq(jac.T, ref, rcond=None)[0]
        diffs[("config", key, "weights")] = (
            np.max(np.abs(w - ref_w)) / np.max(np.abs(ref_w)))
    for what, rel in diffs.items():
      key = (what[0], family, precision)
      WORST[key] = max(WORST.get(key, 0.0), rel)
      assert rel <= (max(tol, STATIONARY) if stationary else tol), (
          k, family, what, rel)


@pytest.mark.parametrize("k", KS)
def test_peer_agreement_float32(k):
  _compare(k, x64=False)


@pytest.mark.parametrize("k", KS)
def test_peer_agreement_float64(k):
  with jax.enable_x64(True):
    _compare(k, x64=True)


def test_public_weightings_match_the_kernels():
  """The public weightings = the kernels of the peer tests (pref or not)."""
  case = _by_k(5)[0]
  gram = jnp.asarray(case["gram"], jnp.float32)
  pref = case["pref_vector"]
  np.testing.assert_allclose(
      fj.aligned_mtl_weights(gram, pref_vector=pref),
      case["aligned_mtl"]["min_pref"]["weights"], rtol=1e-4, atol=1e-7)
  for mode in MODES:
    w, state = fj.aligned_mtl_weighting(scale_mode=mode)(gram)
    assert state is None
    np.testing.assert_allclose(w, case["aligned_mtl"][mode]["weights"],
                               rtol=1e-4, atol=1e-7)
  jac = np.asarray(case["jacobian"])
  for key, p in (("default", None), ("pref", pref)):
    w = fj.config_weights(gram, pref_vector=p)
    assert _update_diff(w, jac, np.asarray(case["config_update"][key])) < 1e-4


# --- closed forms ------------------------------------------------------------

_NORMS = np.array([1.0, 2.0, 3.0, 4.0])
_ORTHO = np.diag(_NORMS ** 2).astype(np.float32)


@pytest.mark.parametrize("mode,scale", [("min", 1.0), ("median", 4.0),
                                        ("rmse", 7.5)])
def test_aligned_mtl_orthogonal_closed_form(mode, scale):
  """Orthogonal g_i: B = diag(√s/‖g_i‖), s = 1 (min), the lower median 4 of
  {1, 4, 9, 16} (torch.median), or their mean 7.5 (rmse)."""
  pref = [0.1, 0.2, 0.3, 0.4]
  w = fj.aligned_mtl_weights(jnp.asarray(_ORTHO), pref_vector=pref,
                             scale_mode=mode)
  np.testing.assert_allclose(w, np.sqrt(scale) / _NORMS * pref, rtol=1e-6)


def test_aligned_mtl_aligned_jacobian_has_equal_singular_values():
  """BJ has J's singular vectors and all singular values = the smallest."""
  jac = np.random.default_rng(0).standard_normal((4, 7))
  b = np.asarray(aligned_module.balance_transformation(
      jnp.asarray(jac @ jac.T, jnp.float32)))
  s = np.linalg.svd(jac, compute_uv=False)
  np.testing.assert_allclose(np.linalg.svd(b @ jac, compute_uv=False),
                             np.full(4, s[-1]), rtol=1e-4)
  # The default weights are B 1/K: the mean of BJ's rows.
  w = fj.aligned_mtl_weights(jnp.asarray(jac @ jac.T, jnp.float32))
  np.testing.assert_allclose(w, b.mean(axis=1), rtol=1e-5)


def test_aligned_mtl_drops_the_null_space():
  """Rank 2 of 4 tasks: only the two non-zero eigenvalues are used."""
  rng = np.random.default_rng(1)
  jac = rng.standard_normal((4, 2)) @ rng.standard_normal((2, 6))
  gram = jac @ jac.T
  lam, vecs = np.linalg.eigh(gram)
  lam, vecs = lam[2:], vecs[:, 2:]
  expected = np.sqrt(lam[0]) * (vecs / np.sqrt(lam)) @ vecs.T @ np.full(
      4, 0.25)
  w = fj.aligned_mtl_weights(jnp.asarray(gram, jnp.float32))
  np.testing.assert_allclose(w, expected, rtol=1e-3, atol=1e-5)


def test_config_orthogonal_closed_form():
  """Orthogonal g_i: Ĝ = I, c = p, w_i = p_i/‖g_i‖ · (nᵀp)/(pᵀp)."""
  pref = np.array([0.1, 0.2, 0.3, 0.4])
  w = fj.config_weights(jnp.asarray(_ORTHO), pref_vector=pref)
  np.testing.assert_allclose(w, pref / _NORMS * (_NORMS @ pref)
                             / (pref @ pref), rtol=1e-6)
  # Only the ratios of p matter (TorchJD's default is ones).
  np.testing.assert_allclose(fj.config_weights(jnp.asarray(_ORTHO),
                                               pref_vector=10 * pref), w,
                             rtol=1e-6)


def test_config_two_tasks_bisector():
  """K = 2: u is the bisector of the unit gradients, d = (Σ g_iᵀu) u."""
  g = np.array([[3.0, 0.0], [-1.0, 1.0]])
  units = g / np.linalg.norm(g, axis=1, keepdims=True)
  u = units.sum(axis=0)
  u /= np.linalg.norm(u)
  expected = np.sum(g @ u) * u
  w = fj.config_weights(jnp.asarray(g @ g.T, jnp.float32))
  np.testing.assert_allclose(np.asarray(w) @ g, expected, rtol=1e-5)


# --- non-conflict (ConFIG) ---------------------------------------------------


def _conflicting_jacobians(k, n=6, p=12, seed=0):
  """n K×P Jacobians where half the tasks oppose a common direction."""
  rng = np.random.default_rng(seed)
  base = rng.standard_normal((n, 1, p))
  signs = np.where(np.arange(k) % 2 == 0, 1.0, -1.0)[None, :, None]
  scales = 10.0 ** rng.uniform(-1.0, 1.0, (n, k, 1))
  return (scales * signs * (base + 0.7 * rng.standard_normal((n, k, p)))
          ).astype(np.float32)


@functools.lru_cache(maxsize=None)
def _jitted(name, pref=None):
  weighting = getattr(fj, f"{name}_weighting")(pref_vector=pref)
  return jax.jit(jax.vmap(lambda gram: weighting(gram)[0]))


@pytest.mark.parametrize("pref", [None, (0.1, 0.5, 0.2, 1.0, 0.3)])
def test_config_non_conflicting_with_equal_unit_projections(pref):
  jac = _conflicting_jacobians(5)
  grams = jnp.einsum("nkp,nlp->nkl", jac, jac)
  w = np.asarray(_jitted("config", pref)(grams), np.float64)
  d = np.einsum("nk,nkp->np", w, jac)
  norms = np.linalg.norm(jac, axis=2)
  # The mean conflicts on these (so the test can fail) ...
  mean = jac.mean(axis=1)
  assert np.any(np.einsum("nkp,np->nk", jac, mean) < -0.1 * norms
                * np.linalg.norm(mean, axis=1)[:, None])
  # ... ConFIG does not: ûᵢᵀd = c p_i with c > 0 for every task.
  p = np.ones(5) if pref is None else np.asarray(pref)
  proj = np.einsum("nkp,np->nk", jac, d) / norms
  np.testing.assert_allclose(proj / p, (proj / p)[:, :1] * np.ones(5),
                             rtol=1e-3)
  assert np.all(proj > 0), proj


def test_aligned_mtl_may_conflict():
  """Aligned-MTL promises balance, not non-conflict (module docstring)."""
  jac = _conflicting_jacobians(5, seed=1)
  grams = jnp.einsum("nkp,nlp->nkl", jac, jac)
  w = np.asarray(_jitted("aligned_mtl")(grams), np.float64)
  gd = np.einsum("nkp,np->nk", jac, np.einsum("nk,nkp->np", w, jac))
  assert np.any(gd < 0)


# --- degenerate and extreme inputs -------------------------------------------


def _edge_grams():
  g = np.random.default_rng(3).standard_normal((4, 6)).astype(np.float32)
  dup = g.copy()
  dup[1] = dup[0]
  opp = g.copy()
  opp[1] = -opp[0]
  low = (g[:2].T @ np.random.default_rng(4).standard_normal((2, 4)).astype(
      np.float32)).T  # rank 2, four tasks
  one_zero = g.copy()
  one_zero[2] = 0.0
  grams = {name: x @ x.T for name, x in (("duplicate", dup),
                                          ("opposite", opp),
                                          ("rank_2", low),
                                          ("zero_task", one_zero))}
  grams["zero"] = np.zeros((4, 4), np.float32)
  grams["tiny"] = 1e-20 * (g @ g.T)
  grams["huge"] = 1e20 * (g @ g.T)
  grams["near_max"] = (g @ g.T) / np.max(g @ g.T) * np.float32(3e37)
  return grams


@pytest.mark.parametrize("name", ["aligned_mtl", "config"])
def test_finite_on_degenerate_and_extreme_grams(name):
  grams = _edge_grams()
  w = np.asarray(_jitted(name)(jnp.asarray(np.stack(list(grams.values())))))
  assert np.all(np.isfinite(w)), dict(zip(grams, w))
  w = dict(zip(grams, w))
  # All-zero gradients: TorchJD's B = I (the mean) / d = 0 (ConFIG).
  zero = np.full(4, 0.25) if name == "aligned_mtl" else np.zeros(4)
  np.testing.assert_array_equal(w["zero"], zero)
  # A zero gradient gets weight 0 in ConFIG (TorchJD's nan_to_num row).
  # ... and the others get the weights of ConFIG without it (Ĝ⁺ has a zero
  # row and column there).
  if name == "config":
    assert w["zero_task"][2] == 0.0
    rest = np.delete(np.delete(grams["zero_task"], 2, 0), 2, 1)
    np.testing.assert_allclose(np.delete(w["zero_task"], 2),
                               fj.config_weights(jnp.asarray(rest)),
                               rtol=1e-5)
  # Scale-free weights: 1e±20 G gives G's weights.
  base = np.asarray(getattr(fj, f"{name}_weights")(jnp.asarray(
      grams["huge"] / 1e20)))
  for key in ("tiny", "huge", "near_max"):
    np.testing.assert_allclose(w[key], base, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["aligned_mtl", "config"])
def test_nan_gram_gives_nan_weights(name):
  gram = jnp.array([[1.0, jnp.nan], [jnp.nan, 1.0]])
  assert np.all(np.isnan(np.asarray(getattr(fj, f"{name}_weights")(gram))))


@pytest.mark.parametrize("name", ["aligned_mtl", "config"])
def test_aggregator_homogeneous_at_extreme_scales(name):
  """d(σJ) = σ d(J) for σ = 1e±20, and d = 0 for zero gradients."""
  jac = _conflicting_jacobians(3, n=1, seed=5)[0]
  agg = getattr(fj, name)(num_tasks=3)
  update = jax.jit(agg.update)
  d1 = np.asarray(update({"w": jnp.asarray(jac)}, agg.init(None))[0]["w"])
  for scale in (1e-20, 1e20):
    d = np.asarray(update({"w": jnp.asarray(jac * np.float32(scale))},
                          agg.init(None))[0]["w"])
    np.testing.assert_allclose(d / np.float32(scale), d1, rtol=1e-5,
                               atol=1e-6 * np.abs(d1).max())
  d, state = update({"w": jnp.zeros_like(jac)}, agg.init(None))
  assert np.all(np.asarray(d["w"]) == 0.0)
  assert np.all(np.isfinite(np.asarray(state.weights)))


@pytest.mark.parametrize("name", ["aligned_mtl", "config"])
def test_jit_and_vmap_agree_with_eager(name):
  jac = _conflicting_jacobians(4, n=3, seed=6)
  grams = jnp.einsum("nkp,nlp->nkl", jac, jac)
  batched = np.asarray(_jitted(name)(grams))
  for i in (0, 2):
    np.testing.assert_allclose(
        batched[i], getattr(fj, f"{name}_weights")(grams[i]), rtol=1e-5,
        atol=1e-7)


def test_rank_tol_is_a_relative_eigenvalue_cut_off():
  """An eigenvalue 1e-3 λ_max is kept by default and dropped at 1e-2."""
  gram = jnp.diag(jnp.array([1.0, 1e-3]))
  np.testing.assert_allclose(fj.aligned_mtl_weights(gram),
                             [np.sqrt(1e-3) / 2, 0.5], rtol=1e-5)
  np.testing.assert_allclose(fj.aligned_mtl_weights(gram, rank_tol=1e-2),
                             [0.5, 0.0], atol=1e-7)
  near = jnp.array([[1.0, 0.9999], [0.9999, 1.0]])  # unit Gram, λ_2 = 1e-4
  # p = 1/2 lies along the kept eigenvector: d = (g_1ᵀu + g_2ᵀu) u either
  # way, w = 2p (the unit gradients are almost equal).
  for rank_tol in (None, 1e-3):
    np.testing.assert_allclose(
        fj.config_weights(near, rank_tol=rank_tol), [1.0, 1.0], rtol=1e-3)
  # Where p is not, the cut-off decides the direction.
  p = (1.0, 0.2)
  assert not np.allclose(fj.config_weights(near, pref_vector=p),
                         fj.config_weights(near, pref_vector=p,
                                           rank_tol=1e-3), rtol=1e-2)


@pytest.mark.parametrize("make", [fj.aligned_mtl_weighting, fj.aligned_mtl,
                                  fj.config_weighting, fj.config])
def test_hyperparameter_errors(make):
  with pytest.raises(ValueError, match="pref_vector"):
    make(pref_vector=[0.5, -0.1])
  with pytest.raises(TypeError, match="pref_vector"):
    make(pref_vector="mean")
  with pytest.raises(ValueError, match="rank_tol"):
    make(rank_tol=-1e-3)
  with pytest.raises(ValueError, match="rank_tol"):
    make(rank_tol=float("nan"))
  with pytest.raises(TypeError, match="rank_tol"):
    make(rank_tol="auto")


@pytest.mark.parametrize("make", [fj.aligned_mtl_weighting, fj.aligned_mtl])
def test_scale_mode_error(make):
  with pytest.raises(ValueError, match="scale_mode must be one of"):
    make(scale_mode="max")


@pytest.mark.parametrize("name", ["aligned_mtl", "config"])
def test_pref_vector_length_must_match(name):
  weighting = getattr(fj, f"{name}_weighting")(pref_vector=[1.0, 2.0])
  with pytest.raises(ValueError, match="pref_vector has 2 entries"):
    weighting(jnp.eye(3))


def test_repr_shows_the_hyperparameters():
  assert repr(fj.aligned_mtl(scale_mode="rmse", num_tasks=2)) == (
      "aligned_mtl(pref_vector=None, scale_mode='rmse', rank_tol=None,"
      " num_tasks=2)")
  assert repr(fj.config_weighting(pref_vector=(1, 2))) == (
      "config_weighting(pref_vector=(1.0, 2.0), rank_tol=None)")

