"""Tests that kill mutants surviving the seed-4 mutation sample (issue 17).

The sample is ``python tools/mutation.py --modules all --sample 8 --seed 4``
(mutmut 3.8 names, on the sources of 2026-11-28). Each test names the
mutants it kills and the documented behaviour it pins; the expected values
are worked by hand from the docstrings' formulas (in the comments), never
taken from the function under test. The survivors that no test can kill
(equivalent mutants) go, with their reasons, to tools/mutation.py's
EQUIVALENT.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fairgrad_jax as fj


# --- Error messages name the argument (or the method) as the user wrote it.


def test_aligned_mtl_rank_tol_error_names_rank_tol():
  """Kills aligned_mtl.x__check_rank_tol__mutmut_8 ("XXrank_tolXX")."""
  with pytest.raises(ValueError, match=r"^rank_tol must be a finite real"):
    fj.aligned_mtl_weighting(rank_tol=-1.0)


def test_excess_mtl_eps_error_names_eps():
  """Kills excess_mtl.x_excess_mtl__mutmut_23 ("XXepsXX")."""
  with pytest.raises(ValueError, match=r"^eps must be a finite real"):
    fj.excess_mtl(eps=-1.0, num_tasks=2)


def test_sdmgrad_momentum_error_names_momentum():
  """Kills sdmgrad.x_sdmgrad_weighting__mutmut_35 ("XXmomentumXX")."""
  with pytest.raises(ValueError, match=r"^momentum must be a finite real"):
    fj.sdmgrad_weighting(momentum=-1.0)


@pytest.mark.parametrize("name", ["dwa", "uw"])
def test_factory_without_num_tasks_error_names_the_method(name):
  """Kills dwa.x_dwa__mutmut_7 ("DWA keeps...") and uw.x_uw__mutmut_7
  ("UW keeps..."): the factory's error names the method as it is called."""
  with pytest.raises(ValueError, match=rf"^{name} keeps per-task state"):
    getattr(fj, name)()


def test_gradvac_accepts_beta_one():
  """Kills gradvac.x_gradvac_weighting__mutmut_15 (β = 1 refused): the
  docstring's β in [0, 1] includes 1; only β > 1 is an error."""
  assert repr(fj.gradvac_weighting(beta=1.0)) == (
      "gradvac_weighting(beta=1.0, eps=1e-08, seed=0)")
  with pytest.raises(ValueError, match=r"^beta must be in \[0, 1\]"):
    fj.gradvac_weighting(beta=1.5)


# --- Hyperparameters show in the repr under their argument names.


def test_weighting_reprs_show_the_argument_names():
  """Kills cr_mogm.x_cr_mogm_weighting__mutmut_105 ("ALPHA=0.5"),
  rlw.x_rlw_weighting__mutmut_31 ("SEED=3") and
  modo.x_modo_weighting__mutmut_61 (no hyperparameters: "modo_weighting()")."""
  assert repr(fj.cr_mogm_weighting(alpha=0.5)) == (
      "cr_mogm_weighting(alpha=0.5)")
  assert repr(fj.rlw_weighting(seed=3)) == "rlw_weighting(seed=3)"
  assert repr(fj.modo_weighting(0.5, rho=0.2)) == (
      "modo_weighting(gamma=0.5, rho=0.2)")


def test_modo_factory_passes_gamma():
  """Kills modo.x_modo__mutmut_22 (``modo_weighting(rho)``: γ lost, and ρ
  given as γ)."""
  assert repr(fj.modo(gamma=0.5, rho=0.2, num_tasks=2)) == (
      "modo(gamma=0.5, rho=0.2, num_tasks=2)")


# --- The weights keep the Gram matrix's dtype (float32 in, float32 out),
# even with x64 on, where a dtype left to JAX's default is float64.


def test_config_weights_keep_float32_under_x64():
  """Kills config.x_config_weighting__mutmut_10 (preference of dtype None:
  a given pref_vector becomes float64 under x64, and so do the weights).

  Orthogonal unit gradients, p = (1, 2): b = p, u = b/√5 and
  d = (Σ_i g_iᵀu) u = (3/5)(g_1 + 2 g_2).
  """
  with jax.enable_x64(True):
    w = fj.config_weights(jnp.eye(2, dtype=jnp.float32),
                          pref_vector=[1.0, 2.0])
  assert w.dtype == jnp.float32
  np.testing.assert_allclose(w, [0.6, 1.2], rtol=1e-6)


def test_cosmos_weights_keep_float32_under_x64():
  """Kills cosmos.x_cosmos_weighting__mutmut_30 (losses cast to dtype None:
  float64 under x64).

  r = (1/2, 1/2), l = (3, 4): r̂ = (1, 1)/√2, l̂ = (3, 4)/5,
  cos = 7/(5√2), w = r − (1/5)(r̂ − cos l̂).
  """
  with jax.enable_x64(True):
    w, _ = fj.cosmos_weighting(1.0)(
        jnp.eye(2, dtype=jnp.float32),
        losses=jnp.array([3.0, 4.0], jnp.float32))
  assert w.dtype == jnp.float32
  r_hat = np.array([1.0, 1.0]) / np.sqrt(2.0)
  l_hat = np.array([3.0, 4.0]) / 5.0
  want = 0.5 - (r_hat - (r_hat @ l_hat) * l_hat) / 5.0
  np.testing.assert_allclose(w, want, rtol=1e-6)


def test_geometric_mean_weights_keep_float32_under_x64():
  """Kills geometric_mean.x_geometric_mean_weighting__mutmut_11 (log
  losses cast to dtype None: float64 under x64).

  l = (1, 4): (Π l)^{1/2} = 2, w_i = (Π l)^{1/K} / (K l_i) = (1, 1/4).
  """
  with jax.enable_x64(True):
    w, _ = fj.geometric_mean_weighting()(
        jnp.eye(2, dtype=jnp.float32),
        losses=jnp.array([1.0, 4.0], jnp.float32))
  assert w.dtype == jnp.float32
  np.testing.assert_allclose(w, [1.0, 0.25], rtol=1e-6)


@pytest.mark.parametrize("name,want", [
    ("linear_scalarization", [1.0, 1.0, 1.0]),
    ("mean", [1 / 3, 1 / 3, 1 / 3]),
])
def test_constant_weights_keep_float32_under_x64(name, want):
  """Kills linear_scalarization.x_linear_scalarization_weighting__mutmut_2
  and __mutmut_4 (``jnp.ones(k, None)``, ``jnp.ones(k)``) and
  mean.x_mean_weighting__mutmut_8 (``jnp.full((k,), 1 / k)``): float64
  weights under x64 for a float32 Gram matrix."""
  with jax.enable_x64(True):
    w, _ = getattr(fj, name + "_weighting")()(jnp.eye(3, dtype=jnp.float32))
  assert w.dtype == jnp.float32
  np.testing.assert_allclose(w, want, rtol=1e-6)


def test_rlw_weights_keep_float32_under_x64():
  """Kills rlw.x_rlw_weighting__mutmut_10 and __mutmut_13 (z drawn with
  dtype None or the default: float64 under x64): the weights softmax(z)
  keep the Gram matrix's dtype, positive and summing to 1."""
  with jax.enable_x64(True):
    w, _ = fj.rlw_weighting(seed=0)(jnp.eye(3, dtype=jnp.float32))
  assert w.dtype == jnp.float32
  assert np.all(np.asarray(w) > 0)
  np.testing.assert_allclose(np.sum(np.asarray(w, np.float64)), 1.0,
                             rtol=1e-6)


def test_graddrop_float32_result_does_not_depend_on_x64():
  """Kills graddrop.x_graddrop__mutmut_21 (``promote_types(x.dtype, None)``:
  float64 under x64, so the sign-dropout draws u ~ U(0, 1) in float64, other
  numbers than float32's from the same key).

  Float32 gradients are dropped in float32 whether x64 is on or off: the
  same seed gives the same update. Mixed signs (purity strictly between 0
  and 1) on 64 coordinates, so that the draws decide the result.
  """
  rng = np.random.default_rng(4)
  g = rng.normal(size=(3, 64)).astype(np.float32)
  agg = fj.graddrop(seed=0)

  def run():
    grads = {"w": jnp.asarray(g)}
    return np.asarray(agg.update(grads, agg.init(None))[0]["w"])

  want = run()
  with jax.enable_x64(True):
    got = run()
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, want)
  # Each coordinate is a sum of a subset of its column's entries.
  assert np.all(np.abs(want) <= np.sum(np.abs(g), axis=0) * (1 + 1e-6))


# --- State.


def test_cr_mogm_initialises_the_wrapped_state_for_k_tasks():
  """Kills cr_mogm.x_cr_mogm_weighting__mutmut_58 (the wrapped weighting's
  state initialised with ``init(None)``): a wrapped stateful method such as
  GradVac needs K, and gets the state it gets on its own."""
  inner = fj.gradvac_weighting()
  state = fj.cr_mogm_weighting(inner).init(3)
  np.testing.assert_array_equal(state.weights, np.zeros(3))
  jax.tree.map(np.testing.assert_array_equal, state.inner, inner.init(3))


def test_trimmed_mean_initial_weights_are_float32_under_x64():
  """Kills trimmed_mean.x_trimmed_mean__mutmut_36 (``jnp.zeros((K,))``:
  float64 under x64): ``state.weights`` is float32 from the start, as
  after an update (the docstring's example), so that the state's
  structure does not change across steps (as ``lax.scan`` requires)."""
  with jax.enable_x64(True):
    agg = fj.trimmed_mean(1, num_tasks=3)
    state = agg.init(None)
  assert state.weights.dtype == jnp.float32
  np.testing.assert_array_equal(state.weights, np.zeros(3))


def test_pbi_losses_on_the_ray_up_to_round_off_have_no_penalty_term():
  """Kills pbi.x_pbi_weighting__mutmut_89 (the on-the-line cut-off
  4ε√K / ‖f‖ instead of 4ε√K · ‖f‖).

  l = (1, 1, 1, 1 + 2⁻²⁰) in float32 (ε = 2⁻²³): off the ray of
  ŵ = (1, 1, 1, 1)/2 by ‖q‖ = 2⁻²⁰ √12/4 ≈ 6.9ε, below the round-off
  cut-off 4ε√K ‖f‖ = 16ε (above 8ε/‖f‖ = 4ε): d₂ has no gradient there and
  w = ŵ, without the θ term.
  """
  losses = jnp.array([1.0, 1.0, 1.0, 1.0 + 2.0**-20], jnp.float32)
  w, _ = fj.pbi_weighting(5.0)(jnp.eye(4, dtype=jnp.float32), losses=losses)
  np.testing.assert_allclose(w, [0.5, 0.5, 0.5, 0.5], rtol=1e-6)


def test_stch_skips_the_step_when_the_loss_average_overflows():
  """Kills stch.x_stch_weighting__mutmut_84 (``isfinite(z) | (z > 0)``: an
  infinite nadir estimate z passes as valid).

  Two averaging steps with l_1 = 3e38 make Σ l_1 = 6e38 overflow float32,
  so z_1 = inf: the scalarizing step that follows has no valid z and is
  skipped (NaN weights, the state kept), not given w_1 = 0.
  """
  weighting = fj.stch_weighting(warmup_steps=0, average_steps=2)
  gram = jnp.eye(2, dtype=jnp.float32)
  state = weighting.init(2)
  for _ in range(2):
    _, state = weighting(gram, state,
                         losses=jnp.array([3e38, 1.0], jnp.float32))
  w, new = weighting(gram, state, losses=jnp.array([1.0, 1.0], jnp.float32))
  assert np.all(np.isnan(np.asarray(w)))
  jax.tree.map(np.testing.assert_array_equal, new, state)


def test_db_mtl_zero_gradient_gets_weight_zero():
  """Kills db_mtl.x_db_mtl_weighting__mutmut_114 (weight 1 for a zero
  gradient): the docstring's "0 for a zero gradient".

  β = 0.9, l = (0.5, 1): c = (1 − β)/l = (0.2, 0.1); ‖g‖ = (0, 4):
  w_2 = max_j c_j ‖g_j‖ / ‖g_2‖ = 0.4/4 = 0.1, w_1 = 0.
  """
  weighting = fj.db_mtl_weighting()
  w, _ = weighting(jnp.diag(jnp.array([0.0, 16.0])), weighting.init(2),
                   losses=jnp.array([0.5, 1.0]))
  np.testing.assert_allclose(w, [0.0, 0.1], rtol=1e-5, atol=0.0)


def test_moco_state_weights_keep_float32_under_x64():
  """Kills moco.x_moco__mutmut_336 (state weights cast to dtype None:
  float64 under x64, so the state's dtype changes on the first update and
  a jitted training loop's carry no longer matches its input).

  The new weights themselves: one step from λ = (1/2, 1/2), y = 0, with
  orthogonal unit gradients and losses (1, 1): y = β ĝ = g / 2, Y Yᵀ = I / 4,
  λ ← softmax(λ − γ λ / 4) = (1/2, 1/2).
  """
  with jax.enable_x64(True):
    agg = fj.moco(num_tasks=2)
    params = {"w": jnp.zeros(2, jnp.float32)}
    state = agg.init(params)
    grads = {"w": jnp.eye(2, dtype=jnp.float32)}
    _, new_state = agg.update(grads, state, params,
                              losses=jnp.ones(2, jnp.float32))
  assert state.weights.dtype == jnp.float32
  assert new_state.weights.dtype == jnp.float32
  np.testing.assert_allclose(new_state.weights, [0.5, 0.5], rtol=1e-6)


def test_excess_mtl_initial_state_is_float32_under_x64():
  """Kills excess_mtl.x_excess_mtl__mutmut_66 (initial_excess of dtype
  None: float64 under x64, while the first update writes float32 there, so
  a jitted loop's carry changes dtype after one step)."""
  with jax.enable_x64(True):
    agg = fj.excess_mtl(num_tasks=3)
    state = agg.init({"w": jnp.zeros(4, jnp.float32)})
  extra = state.extra
  assert extra.initial_excess.dtype == jnp.float32
  assert extra.logits.dtype == jnp.float32
  assert extra.log2_scale.dtype == jnp.float32
  np.testing.assert_array_equal(extra.initial_excess, np.zeros(3))


def test_wolfe_minor_cycle_stops_at_the_first_weight_that_hits_zero():
  """Kills mgda.x__active_set__mutmut_187 (θ = 1 always: the minor cycle
  clips the affine minimiser at 0 instead of stepping to the boundary).

  g = (1, 0), (0, 1), (2, 2): the affine minimiser on all three tasks is
  v = (2/3, 2/3, -1/3) (the origin: α1 + 2α3 = α2 + 2α3 = 0, Σα = 1). From
  w = (0.6, 0.2, 0.2), Wolfe's minor cycle moves along v - w until the third
  weight hits 0: θ = 0.2 / (0.2 + 1/3) = 3/8, w + θ(v - w) = (0.625,
  0.375, 0). Clipping v would give (0.5, 0.5, 0), which is where the method
  ends (the min-norm point of the segment g1 g2), one iteration later.
  """
  from fairgrad_jax._solvers import mgda  # pylint: disable=g-import-not-at-top
  g = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])
  a = jnp.asarray(g @ g.T, jnp.float32)
  w0 = jnp.asarray([0.6, 0.2, 0.2], jnp.float32)
  w1, it1, _ = mgda._active_set(a, w0, 1)  # pylint: disable=protected-access
  assert int(it1) == 1
  np.testing.assert_allclose(w1, [0.625, 0.375, 0.0], atol=1e-6)
  w, _, converged = mgda._active_set(a, w0, 10)  # pylint: disable=protected-access
  assert bool(converged)
  np.testing.assert_allclose(w, [0.5, 0.5, 0.0], atol=1e-6)
