"""UPGrad and DualProj: TorchJD's values, non-conflict, the QP's status.

The peer values come from ``tools/peer_reference.py`` (TorchJD 0.18's
``UPGradWeighting`` / ``DualProjWeighting`` with quadprog in float64), stored
in ``tests/data/peer_upgrad_dualproj.json``; torch is not needed here.
"""

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fairgrad_jax as fj
from fairgrad_jax._solvers import qp

_DATA = json.loads((pathlib.Path(__file__).parent / "data"
                    / "peer_upgrad_dualproj.json").read_text())
CASES = _DATA["cases"]
KS = sorted({c["k"] for c in CASES})
METHODS = ("upgrad", "dualproj")
# The regularised QP's A = G/tr(G) + 1e-4 I is well conditioned for these
# (cond(A) ~ 10); for norms over four decades (``scaled``) or dependent
# gradients (``rank_deficient``) cond(A) reaches 1/reg_eps = 1e4, and
# float32's ε ≈ 1.2e-7 then allows ~1e-3 on the weights of the small or
# dependent tasks (in float64 every family agrees to 1e-13, see below).
WELL_CONDITIONED = ("random", "conflicting")
RTOL_F32 = {"random": 1e-5, "conflicting": 1e-5, "scaled": 5e-3,
            "rank_deficient": 5e-3}


def _by_k(k):
  return [c for c in CASES if c["k"] == k]


def _pref(case, dtype):
  k = case["k"]
  if case["pref_vector"] is None:
    return np.full((k,), 1.0 / k, dtype)
  return np.asarray(case["pref_vector"], dtype)


@functools.lru_cache(maxsize=None)
def _solver_weights(k, x64):
  """Jitted (grams, prefs) -> (UPGrad, DualProj) weights, vmapped over cases.

  The preference vector is a traced input here (one compile per K); the
  public weightings take it as a hyperparameter and are checked against
  this on one case each (test_public_weightings_match_the_solver).
  """
  del k, x64  # cache keys: one compile per K and precision

  def both(gram, p):
    up = qp.project_to_dual_cone(gram, jnp.diag(p))
    dp = qp.project_to_dual_cone(gram, p)
    return (jnp.sum(up.weights, axis=0), dp.weights,
            jnp.all(up.converged) & dp.converged,
            jnp.max(up.num_iterations), dp.num_iterations)

  return jax.jit(jax.vmap(both))


def _run(k, x64):
  dtype = np.float64 if x64 else np.float32
  cases = _by_k(k)
  grams = np.stack([np.asarray(c["gram"], dtype) for c in cases])
  prefs = np.stack([_pref(c, dtype) for c in cases])
  up, dp, conv, _, _ = _solver_weights(k, x64)(grams, prefs)
  return cases, {"upgrad": np.asarray(up), "dualproj": np.asarray(dp)}, conv


def _rel(w, ref):
  ref = np.asarray(ref)
  return np.max(np.abs(np.asarray(w, np.float64) - ref)) / np.max(np.abs(ref))


@pytest.mark.parametrize("k", KS)
def test_peer_agreement_float32(k):
  cases, weights, conv = _run(k, x64=False)
  assert np.all(np.asarray(conv))
  for i, case in enumerate(cases):
    for method in METHODS:
      rel = _rel(weights[method][i], case[method]["weights"])
      assert rel <= RTOL_F32[case["family"]], (method, case["family"], rel)
      # The update Jᵀw, relative to ‖Jᵀw‖ (or the gradients' norm at a
      # Pareto-stationary point, where the update is ~0).
      jac = np.asarray(case["jacobian"])
      ref = np.asarray(case[method]["update"])
      scale = max(np.linalg.norm(ref), 1e-3 * np.linalg.norm(jac, axis=1).max())
      diff = np.linalg.norm(weights[method][i] @ jac - ref) / scale
      assert diff <= RTOL_F32[case["family"]], (method, case["family"], diff)


@pytest.mark.parametrize("k", KS)
def test_peer_agreement_float64(k):
  with jax.enable_x64(True):
    cases, weights, conv = _run(k, x64=True)
  assert np.all(np.asarray(conv))
  for i, case in enumerate(cases):
    for method in METHODS:
      rel = _rel(weights[method][i], case[method]["weights"])
      assert rel <= 1e-10, (method, case["family"], rel)


@pytest.mark.parametrize("method", METHODS)
def test_public_weightings_match_the_solver(method):
  """The public weighting = the solver path of the peer tests, pref or not."""
  case = [c for c in _by_k(3) if c["pref_vector"] is not None][0]
  gram = jnp.asarray(case["gram"], jnp.float32)
  make = getattr(fj, f"{method}_weighting")
  w, info = make(pref_vector=case["pref_vector"])(gram)
  np.testing.assert_allclose(w, case[method]["weights"], rtol=1e-5,
                             atol=1e-7)
  assert bool(info.converged) and int(info.num_iterations) >= 1
  # None is the mean, 1/K (TorchJD's default).
  mean = [c for c in _by_k(3) if c["pref_vector"] is None][0]
  w = make()(jnp.asarray(mean["gram"], jnp.float32))[0]
  np.testing.assert_allclose(w, mean[method]["weights"], rtol=1e-5,
                             atol=1e-7)


# --- properties on their own -------------------------------------------------

_REG0 = {m: getattr(fj, f"{m}_weighting")(reg_eps=0.0) for m in METHODS}
_DEFAULT = {m: getattr(fj, f"{m}_weighting")() for m in METHODS}


@functools.lru_cache(maxsize=None)
def _jitted(method, default):
  weighting = (_DEFAULT if default else _REG0)[method]
  return jax.jit(jax.vmap(lambda gram: weighting(gram)))


def _conflicting_jacobians(k, n=6, p=12, seed=0):
  """n K×P Jacobians where half the tasks oppose a common direction."""
  rng = np.random.default_rng(seed)
  base = rng.standard_normal((n, 1, p))
  signs = np.where(np.arange(k) % 2 == 0, 1.0, -1.0)[None, :, None]
  jac = signs * (base + 0.7 * rng.standard_normal((n, k, p)))
  return jac.astype(np.float32)


@pytest.mark.parametrize("method", METHODS)
def test_non_conflicting_exactly_without_the_ridge(method):
  jac = _conflicting_jacobians(5)
  grams = jnp.einsum("nkp,nlp->nkl", jac, jac)
  w, info = _jitted(method, False)(grams)
  assert np.all(np.asarray(info.converged))
  d = np.einsum("nk,nkp->np", np.asarray(w), jac)
  norms = np.linalg.norm(jac, axis=2)
  gd = np.einsum("nkp,np->nk", jac, d)
  # The mean conflicts on these (so the test can fail) ...
  mean = jac.mean(axis=1)
  assert np.any(np.einsum("nkp,np->nk", jac, mean) < -0.1 * norms
                * np.linalg.norm(mean, axis=1)[:, None])
  # ... the projection does not, up to round-off.
  assert np.all(gd >= -1e-5 * norms * np.linalg.norm(d, axis=1)[:, None]), gd


@pytest.mark.parametrize("method", METHODS)
def test_conflict_bounded_by_the_ridge(method):
  """With TorchJD's reg_eps, g_jᵀd >= −reg_eps tr(G) w_j (KKT of its QP)."""
  jac = _conflicting_jacobians(5, seed=1)
  grams = np.einsum("nkp,nlp->nkl", jac, jac)
  w = np.asarray(_jitted(method, True)(jnp.asarray(grams))[0])
  gd = np.einsum("nkl,nl->nk", grams, w)
  trace = np.trace(grams, axis1=1, axis2=2)[:, None]
  bound = -1e-4 * trace * w
  slack = 1e-5 * trace * np.abs(w).sum(axis=1, keepdims=True)  # round-off
  assert np.all(gd >= bound - slack), (gd, bound)


@pytest.mark.parametrize("method", METHODS)
def test_orthogonal_gradients_give_the_preference(method):
  """No conflict: every projection is the gradient itself, w = p."""
  gram = jnp.diag(jnp.array([1.0, 4.0, 0.25]))
  pref = [0.2, 0.5, 0.3]
  w = getattr(fj, f"{method}_weights")(gram, pref_vector=pref)
  np.testing.assert_allclose(w, pref, rtol=1e-6)


def test_two_conflicting_tasks_closed_form():
  """K = 2, g_1ᵀg_2 < 0: π(g_i) = g_i − (g_iᵀg_j/‖g_j‖²) g_j (reg_eps = 0)."""
  g11, g12, g22 = 2.0, -1.5, 3.0
  gram = jnp.array([[g11, g12], [g12, g22]])
  p = np.array([0.25, 0.75])
  up = fj.upgrad_weights(gram, pref_vector=p, reg_eps=0.0)
  expected = p[0] * np.array([1.0, -g12 / g22]) + p[1] * np.array(
      [-g12 / g11, 1.0])
  np.testing.assert_allclose(up, expected, rtol=1e-5)
  # DualProj: the mean direction p_1 g_1 + p_2 g_2 has g_1ᵀ· = 0.5 − 1.125 < 0
  # and g_2ᵀ· > 0: w = (t, p_2) with (Gw)_1 = 0, t = −p_2 g12 / g11.
  dp = fj.dualproj_weights(gram, pref_vector=p, reg_eps=0.0)
  np.testing.assert_allclose(dp, [-p[1] * g12 / g11, p[1]], rtol=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_converged_flag_and_iterations(method):
  jac = _conflicting_jacobians(5, n=1, seed=2)[0]
  gram = jnp.asarray(jac @ jac.T)
  make = getattr(fj, f"{method}_weighting")
  _, info = make()(gram)
  assert bool(info.converged)
  assert 2 <= int(info.num_iterations) <= 2 * 5
  assert float(info.residual) < 1e-5
  # One active-set step frees one variable: not enough when two conflict.
  _, info = make(maxiter=1)(gram)
  assert not bool(info.converged) and int(info.num_iterations) == 1
  # The state before the first step says: not converged.
  assert not bool(make().init(5).converged)


def _edge_grams():
  g = np.random.default_rng(3).standard_normal((4, 6)).astype(np.float32)
  dup = g.copy()
  dup[1] = dup[0]
  opp = g.copy()
  opp[1] = -opp[0]
  low = g[:2].T @ np.random.default_rng(4).standard_normal((2, 4)).astype(
      np.float32)
  low = low.T  # rank 2, four tasks
  one_zero = g.copy()
  one_zero[2] = 0.0
  grams = {name: x @ x.T for name, x in (("duplicate", dup),
                                          ("opposite", opp),
                                          ("rank_2", low),
                                          ("zero_task", one_zero))}
  grams["zero"] = np.zeros((4, 4), np.float32)
  grams["tiny"] = 1e-20 * (g @ g.T)  # below norm_eps: the mean (TorchJD)
  grams["huge"] = 1e20 * (g @ g.T)
  grams["near_max"] = (g @ g.T) / np.max(g @ g.T) * np.float32(3e37)
  return grams


@pytest.mark.parametrize("default", [True, False])
@pytest.mark.parametrize("method", METHODS)
def test_finite_on_degenerate_and_extreme_grams(method, default):
  grams = _edge_grams()
  w, info = _jitted(method, default)(jnp.asarray(np.stack(list(
      grams.values()))))
  w = np.asarray(w)
  assert np.all(np.isfinite(w)), dict(zip(grams, w))
  assert np.all(np.asarray(info.converged)), dict(zip(grams, info.converged))
  names = list(grams)
  mean = np.full(4, 0.25)
  np.testing.assert_allclose(w[names.index("zero")], mean, rtol=1e-6)
  np.testing.assert_allclose(w[names.index("tiny")], mean, rtol=1e-6)
  # The weights depend on G only through G/tr(G): 1e20 G gives G's weights.
  base = np.asarray(getattr(fj, f"{method}_weights")(
      jnp.asarray(grams["huge"] / 1e20),
      reg_eps=1e-4 if default else 0.0))
  np.testing.assert_allclose(w[names.index("huge")], base, rtol=1e-4,
                             atol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_nan_gram_gives_nan_weights(method):
  gram = jnp.array([[1.0, jnp.nan], [jnp.nan, 1.0]])
  w, info = _DEFAULT[method](gram)
  assert np.all(np.isnan(np.asarray(w))) and not bool(info.converged)


@pytest.mark.parametrize("method", METHODS)
def test_aggregator_homogeneous_at_extreme_scales(method):
  """d(σJ) = σ d(J) for σ = 1e±20 (the builders' power-of-two scaling)."""
  jac = _conflicting_jacobians(3, n=1, seed=5)[0]
  agg = getattr(fj, method)(num_tasks=3)
  update = jax.jit(agg.update)
  d1 = np.asarray(update({"w": jnp.asarray(jac)}, agg.init(None))[0]["w"])
  for scale in (1e-20, 1e20):
    d = np.asarray(update({"w": jnp.asarray(jac * np.float32(scale))},
                          agg.init(None))[0]["w"])
    np.testing.assert_allclose(d / np.float32(scale), d1, rtol=1e-5,
                               atol=1e-6 * np.abs(d1).max())


@pytest.mark.parametrize("method", METHODS)
def test_jit_and_vmap_agree_with_eager(method):
  jac = _conflicting_jacobians(4, n=3, seed=6)
  grams = jnp.einsum("nkp,nlp->nkl", jac, jac)
  batched = np.asarray(_jitted(method, True)(grams)[0])
  for i in (0, 2):  # eager, one Gram matrix at a time
    np.testing.assert_allclose(batched[i], _DEFAULT[method](grams[i])[0],
                               rtol=1e-6, atol=1e-7)


def test_solver_vmaps_over_bounds_and_keeps_v_above_u():
  a = qp.regularized_gram(jnp.array([[2.0, -1.0, 0.5], [-1.0, 1.0, -0.8],
                                     [0.5, -0.8, 1.5]]), 1e-4, 1e-4)
  us = jnp.array([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.3, 0.3, 0.3]])
  batched = jax.vmap(lambda u: qp.lower_bounded_qp(a, u))(us)
  for i in range(3):
    one = qp.lower_bounded_qp(a, us[i])
    np.testing.assert_allclose(batched.weights[i], one.weights, rtol=1e-6)
    v = np.asarray(one.weights)
    assert np.all(v >= np.asarray(us[i]))
    # KKT: Av >= 0, and = 0 where v > u.
    grad = np.asarray(a) @ v
    assert np.all(grad >= -1e-6)
    free = v > np.asarray(us[i]) + 1e-7
    np.testing.assert_allclose(grad[free], 0.0, atol=1e-6)


@pytest.mark.parametrize("make", [fj.upgrad_weighting, fj.dualproj_weighting,
                                  fj.upgrad, fj.dualproj])
def test_hyperparameter_errors(make):
  with pytest.raises(ValueError, match="pref_vector"):
    make(pref_vector=[0.5, -0.1])
  with pytest.raises(ValueError, match="pref_vector"):
    make(pref_vector=[0.5, float("nan")])
  with pytest.raises(TypeError, match="pref_vector"):
    make(pref_vector="mean")
  with pytest.raises(TypeError, match="pref_vector"):
    make(pref_vector=[[0.5, 0.5]])
  with pytest.raises(ValueError, match="norm_eps"):
    make(norm_eps=-1.0)
  with pytest.raises(ValueError, match="reg_eps"):
    make(reg_eps=float("inf"))
  with pytest.raises(ValueError, match="maxiter"):
    make(maxiter=0)
  with pytest.raises(ValueError, match="tol"):
    make(tol=0.0)


@pytest.mark.parametrize("method", METHODS)
def test_pref_vector_length_must_match(method):
  weighting = getattr(fj, f"{method}_weighting")(pref_vector=[1.0, 2.0])
  with pytest.raises(ValueError, match="pref_vector has 2 entries"):
    weighting(jnp.eye(3))


@pytest.mark.parametrize("method", METHODS)
def test_repr_shows_torchjd_hyperparameters(method):
  agg = getattr(fj, method)(pref_vector=(1, 2), reg_eps=0.0, num_tasks=2)
  assert repr(agg) == (f"{method}(pref_vector=(1.0, 2.0), norm_eps=0.0001,"
                       " reg_eps=0.0, num_tasks=2)")
