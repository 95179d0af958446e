"""Tests written against the mutants that survived tools/mutation.py.

Each test names the mutmut mutants it kills (mutmut 3.8 names, run of
2026-11-27 on fairgrad_jax/_weighting/{pcgrad,imtl_g,mgda}.py, since
moved to _methods/pcgrad.py, _methods/imtl_g.py, _solvers/mgda.py); the
mutants left alive as equivalent are listed in tools/mutation.py's notes.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fairgrad_jax

imtl_g_weights = jax.jit(fairgrad_jax.imtl_g_weights)


def _grads():
  rng = np.random.default_rng(7)
  g = rng.normal(size=(3, 6))
  g[2] -= 0.8 * g[0]
  return g


@pytest.mark.parametrize("scale", [1e-18, 1e-12, 1e12, 1e18])
def test_imtl_g_is_scale_invariant_over_the_float32_range(scale):
  """Gradients of norm 1e-18 … 1e18: GᵀG spans 1e-36 … 1e36 in float32.

  Kills x_imtl_g_weights__mutmut_17 (a = GᵀG · scale: overflows).
  __mutmut_14 (no normalisation when max diag <= 1) survives it: the
  pseudo-inverse is accurate down to GᵀG ~ 1e-36, and below float32's
  normal range (1.2e-38) the Gram matrix itself is lost, so it is
  equivalent on every Gram matrix float32 can hold.
  """
  g = _grads()
  want = np.asarray(imtl_g_weights(jnp.asarray(g @ g.T, jnp.float32)),
                    np.float64)
  gs = g * scale
  got = np.asarray(imtl_g_weights(jnp.asarray(gs @ gs.T, jnp.float32)),
                   np.float64)
  np.testing.assert_allclose(got, want, rtol=1e-4)
  np.testing.assert_allclose(np.sum(got), 1.0, rtol=1e-5)


def test_mgda_weights_passes_the_solver_options():
  """Kills x_mgda_weights__mutmut_3 (solver_kwargs dropped)."""
  g = _grads()
  gram = jnp.asarray(g @ g.T, jnp.float32)
  for kwargs in ({"maxiter": 1}, {"maxiter": 2}, {"tol": 0.5}):
    np.testing.assert_array_equal(
        fairgrad_jax.mgda_weights(gram, **kwargs),
        fairgrad_jax.mgda_solve(gram, **kwargs).weights)
  # ... and the options matter on this input.
  assert not np.allclose(fairgrad_jax.mgda_weights(gram, maxiter=1),
                         fairgrad_jax.mgda_weights(gram), atol=1e-4)


def test_imtl_g_all_zero_gradients_give_zero_weights():
  """The documented "all zero when 1ᵀ(GᵀG)⁺n vanishes" (every g_i = 0).

  Kills x_imtl_g_weights__mutmut_52 (weight 1 instead of 0 there).
  """
  np.testing.assert_array_equal(imtl_g_weights(jnp.zeros((3, 3))), 0.0)


def test_pcgrad_weights_keep_the_gram_dtype_under_x64():
  """float32 in, float32 out, even with x64 on (float64 in, float64 out).

  Kills x_pcgrad_weights__mutmut_3 (``jnp.eye(k, dtype=None)``: float64
  weights for a float32 Gram matrix under x64). __mutmut_5 (``k =
  gram.shape[1]``) is equivalent: the Gram matrix is checked square.
  """
  g = _grads()
  key = jax.random.PRNGKey(0)
  with jax.enable_x64(True):
    for dtype in (jnp.float32, jnp.float64):
      w = fairgrad_jax.pcgrad_weights(jnp.asarray(g @ g.T, dtype), key)
      assert w.dtype == dtype, (w.dtype, dtype)
