"""Tests of the pure weight solve, fairgrad_solve / fairgrad_weights."""

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fairgrad_jax as fj

# A copy of shared/reference/fairgrad_weights.json (see the README beside it).
REFERENCE = pathlib.Path(__file__).with_name("data") / "fairgrad_weights.json"
PAD_K = 40  # every reference Gram matrix is padded to 40 tasks (see below)


@functools.partial(jax.jit, static_argnames=("alpha", "maxiter",
                                             "regularization"))
def solve(gram, alpha, init=None, maxiter=100, regularization=None):
  return fj.fairgrad_solve(gram, alpha, init=init, maxiter=maxiter,
                           regularization=regularization)


batched_solve = jax.jit(jax.vmap(fj.fairgrad_solve, in_axes=(0, None)),
                        static_argnums=1)


def relative_residual(gram, w, alpha):
  """‖A w - w^(-1/α)‖ / ‖w^(-1/α)‖ in float64, over the tasks with w > 0."""
  gram, w = np.asarray(gram, np.float64), np.asarray(w, np.float64)
  on = w > 0
  a, w = gram[np.ix_(on, on)], w[on]
  target = w ** (-1.0 / alpha)
  return np.linalg.norm(a @ w - target) / np.linalg.norm(target)


def random_gradients(rng, k, dim, *, rank=None, scales=None):
  g = rng.normal(size=(k, dim))
  if rank is not None:  # a common direction plus noise, in a rank-r subspace
    coef = 1.0 + 0.5 * rng.normal(size=(k, rank))
    g = coef @ rng.normal(size=(rank, dim))
  if scales is not None:
    g = g * np.asarray(scales)[:, None]
  return g


# ---------------------------------------------------------------- reference


def _reference_cases():
  return json.loads(REFERENCE.read_text())["cases"]


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 5.0, 10.0])
def test_matches_authors_solver(alpha):
  """The 120 Gram matrices solved by the authors' scipy call.

  Converged cases: weights to rtol 1e-3 in float32. Cases where scipy stopped
  far from the root: our relative residual is at most 1e-4. To compile once
  per α, every K×K matrix is padded to 40 tasks with zero rows; zero-gradient
  tasks drop out of the solve, so the padding must not change the weights.
  """
  cases = [c for c in _reference_cases() if c["alpha"] == alpha]
  assert len(cases) == 24
  grams = np.zeros((len(cases), PAD_K, PAD_K), np.float32)
  for n, c in enumerate(cases):
    k = c["k"]
    grams[n, :k, :k] = np.asarray(c["gram"], np.float32)
  sols = batched_solve(grams, alpha)
  weights = np.asarray(sols.weights, np.float64)
  for n, c in enumerate(cases):
    k = c["k"]
    w = weights[n]
    np.testing.assert_array_equal(w[k:], 0.0)
    w = w[:k]
    assert np.all(w > 0)
    res = relative_residual(c["gram"], w, alpha)
    if c["official_rel_residual"] <= 1e-6:
      np.testing.assert_allclose(w, c["weights"], rtol=1e-3,
                                 err_msg=f"{c['family']} K={k}")
      # The final Newton step removes the regularization's O(1e-6) bias:
      # a few float32 ulps, like scipy's weights rounded to float32 (≤ 3e-7).
      assert res <= 1e-6, (c["family"], k, res)
    else:
      assert res <= 1e-4, (c["family"], k, res, c["official_rel_residual"])
      assert res < c["official_rel_residual"]


def test_unpadded_reference_cases_agree():
  """A few reference cases solved at their own K give the padded answer."""
  cases = [c for c in _reference_cases() if c["k"] in (2, 5)][:6]
  for c in cases:
    w = solve(np.asarray(c["gram"], np.float32), c["alpha"]).weights
    np.testing.assert_allclose(w, c["weights"], rtol=1e-3)


# --------------------------------------------------------------- properties


@pytest.mark.parametrize("alpha", [1.0, 2.0, 5.0])
@pytest.mark.parametrize("seed", range(3))
def test_properties_on_random_gradients(alpha, seed):
  """Positive weights, g_iᵀd = w_i^(-1/α) > 0, permutation equivariance."""
  rng = np.random.default_rng(seed)
  k = 6
  for kind in ["full", "low_rank", "scales"]:
    if kind == "full":
      g = random_gradients(rng, k, 30)
    elif kind == "low_rank":  # 6 gradients in a 4-dimensional subspace,
      # not Pareto stationary (they share a direction), so a root exists.
      g = random_gradients(rng, k, 30, rank=4)
    else:  # norms over four decades
      g = random_gradients(rng, k, 30, scales=np.logspace(-2, 2, k))
    gram = (g @ g.T).astype(np.float32)
    sol = solve(gram, alpha)
    w = np.asarray(sol.weights, np.float64)
    assert np.all(np.isfinite(w)) and np.all(w > 0), kind
    d = w @ g
    # The defining property: every task's directional derivative is positive.
    np.testing.assert_allclose(g @ d, w ** (-1 / alpha), rtol=2e-3,
                               err_msg=kind)
    perm = rng.permutation(k)
    w_perm = np.asarray(solve(gram[np.ix_(perm, perm)], alpha).weights)
    np.testing.assert_allclose(w_perm, w[perm], rtol=1e-4, err_msg=kind)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0, 10.0])
def test_scaling_law(alpha):
  """GᵀG → c GᵀG multiplies w by c^(-α/(1+α)), for c over 24 decades."""
  rng = np.random.default_rng(1)
  g = random_gradients(rng, 5, 20)
  gram = g @ g.T
  w = np.asarray(solve(gram.astype(np.float32), alpha).weights, np.float64)
  for c in [1e-12, 1e-6, 1e6, 1e12]:
    w_c = np.asarray(solve((c * gram).astype(np.float32), alpha).weights)
    np.testing.assert_allclose(w_c, w * c ** (-alpha / (1 + alpha)),
                               rtol=1e-4)


def test_alpha_zero_is_linear_scalarization():
  sol = solve(jnp.array([[1.0, 0.3], [0.3, 4.0]]), 0.0)
  np.testing.assert_array_equal(sol.weights, [1.0, 1.0])


def test_orthogonal_gradients_closed_form():
  """Orthogonal gradients decouple: a_i w_i = w_i^(-1/α)."""
  a = np.array([0.01, 1.0, 100.0], np.float32)
  for alpha in [0.5, 1.0, 3.0]:
    w = solve(np.diag(a), alpha).weights
    np.testing.assert_allclose(w, a ** (-alpha / (1 + alpha)), rtol=1e-5)


@pytest.mark.parametrize("alpha", [-1.0, float("inf"), float("nan"), "two"])
def test_bad_alpha(alpha):
  with pytest.raises(ValueError, match="alpha"):
    fj.fairgrad_solve(jnp.eye(2), alpha)


def test_bad_shapes():
  with pytest.raises(ValueError, match=r"\(K, K\)"):
    fj.fairgrad_solve(jnp.ones((2, 3)), 1.0)
  with pytest.raises(ValueError, match="init"):
    fj.fairgrad_solve(jnp.eye(2), 1.0, init=jnp.ones(3))


# -------------------------------------------------------------- edge cases


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_zero_gradient_task_drops_out(alpha):
  rng = np.random.default_rng(2)
  g = random_gradients(rng, 3, 10)
  g0 = np.concatenate([g[:1], np.zeros((1, 10)), g[1:]])
  w = np.asarray(solve((g0 @ g0.T).astype(np.float32), alpha).weights)
  w_without = np.asarray(solve((g @ g.T).astype(np.float32), alpha).weights)
  assert w[1] == 0.0
  np.testing.assert_allclose(w[[0, 2, 3]], w_without, rtol=1e-5)


def test_all_zero_gradients():
  sol = solve(jnp.zeros((3, 3)), 2.0)
  np.testing.assert_array_equal(sol.weights, 0.0)
  assert np.isfinite(sol.relative_residual)


@pytest.mark.parametrize("alpha", [1.0, 2.0, 10.0])
def test_towards_pareto_stationarity(alpha):
  """g1 = e1, g2 = -e1 + δ e2: finite and bounded, and 0 at δ = 0."""
  norms = []
  for delta in [1e-1, 1e-2, 1e-3, 1e-4, 1e-6, 0.0]:
    g = np.array([[1.0, 0.0], [-1.0, delta]])
    w = np.asarray(solve((g @ g.T).astype(np.float32), alpha).weights)
    assert np.all(np.isfinite(w)) and np.all(w > 0)
    d = w @ g
    # Neither task gets worse to first order (up to float32 round-off of
    # weights that grow to 1e5 here).
    assert np.all(g @ d >= -1e-4 * np.linalg.norm(d))
    norms.append(np.linalg.norm(d))
  # Bounded by about λ^(-1/2) = 1e3 (unit gradients, λ = 1e-6)...
  assert max(norms) < 1e3
  # ...and shrinking to 0 as the point becomes exactly Pareto stationary.
  assert norms[3] > norms[4] > norms[5]
  assert norms[5] < 1e-6


def test_identical_gradients_split_evenly():
  g = np.array([[1.0, 2.0], [1.0, 2.0]])
  w = solve((g @ g.T).astype(np.float32), 2.0).weights
  np.testing.assert_allclose(w[0], w[1], rtol=1e-5)


def test_negative_diagonal_is_not_a_gram_matrix():
  """Issue 12 item 7: -I used to give weights 0 with residual 0."""
  sol = solve(-jnp.eye(2), 2.0)
  assert np.all(np.isnan(sol.weights))
  assert not bool(sol.converged)


def test_non_finite_gram_gives_nan_weights():
  gram = jnp.array([[1.0, jnp.nan], [jnp.nan, 1.0]])
  sol = solve(gram, 1.0)
  assert np.all(np.isnan(sol.weights))
  gram = jnp.array([[jnp.inf, 0.0], [0.0, 1.0]])
  assert np.all(np.isnan(solve(gram, 1.0).weights))


@pytest.mark.parametrize("k", [1, 64])
def test_extreme_task_counts(k):
  rng = np.random.default_rng(3)
  g = random_gradients(rng, k, 100)
  gram = (g @ g.T).astype(np.float32)
  sol = solve(gram, 2.0)
  assert sol.weights.shape == (k,)
  assert np.all(sol.weights > 0)
  assert relative_residual(gram, sol.weights, 2.0) < 1e-4


def test_float64_when_enabled():
  """Under x64 the solve reaches float64 round-off, like scipy's."""
  rng = np.random.default_rng(3)
  g = random_gradients(rng, 5, 20, scales=np.logspace(-1, 1, 5))
  with jax.enable_x64(True):
    gram = jnp.asarray(g @ g.T, jnp.float64)
    sol = fj.fairgrad_solve(gram, 2.0, tol=1e-8)
    assert sol.weights.dtype == jnp.float64
    # tol=1e-8 stops Levenberg–Marquardt early; the Newton step finishes.
    assert relative_residual(gram, sol.weights, 2.0) < 2e-15
    assert float(sol.relative_residual) < 2e-15


# ------------------------------------------------------- solver behaviour


def test_warm_start_needs_fewer_iterations():
  rng = np.random.default_rng(4)
  g = random_gradients(rng, 10, 50, scales=np.logspace(-1, 1, 10))
  gram = (g @ g.T).astype(np.float32)
  cold = solve(gram, 2.0)
  drifted = gram * 1.01 + 1e-3 * np.eye(10, dtype=np.float32)
  warm = solve(drifted, 2.0, init=cold.weights)
  recold = solve(drifted, 2.0)
  assert int(warm.num_iterations) < int(recold.num_iterations)
  np.testing.assert_allclose(warm.weights, recold.weights, rtol=1e-4)


def test_bad_warm_start_falls_back():
  gram = jnp.array([[2.0, 0.5], [0.5, 1.0]])
  ref = solve(gram, 2.0).weights
  for init in [jnp.array([0.0, -1.0]), jnp.array([jnp.nan, jnp.inf])]:
    np.testing.assert_allclose(solve(gram, 2.0, init=init).weights, ref,
                               rtol=1e-5)


def test_diagnostics_and_maxiter():
  rng = np.random.default_rng(5)
  g = random_gradients(rng, 5, 20, scales=np.logspace(-3, 3, 5))
  gram = (g @ g.T).astype(np.float32)
  # Six decades of gradient norms at α = 5: the slowest case we know.
  full = solve(gram, 5.0, maxiter=400)
  assert float(full.relative_residual) < 1e-4
  assert relative_residual(gram, full.weights, 5.0) < 1e-4
  one = solve(gram, 5.0, maxiter=1)
  assert int(one.num_iterations) == 1
  assert float(one.relative_residual) > float(full.relative_residual)


def test_jit_vmap_and_implicit_gradient():
  grams = jnp.stack([jnp.eye(3) * s for s in (1.0, 4.0)])
  w = jax.jit(jax.vmap(lambda a: fj.fairgrad_weights(a, 1.0)))(grams)
  np.testing.assert_allclose(w[1], w[0] / 2, rtol=1e-5)
  # Issue 12: the weights are differentiable (implicitly, through the
  # equation), no longer stop-gradiented. Orthogonal case in closed form:
  # w_i = a_i^(-1/2) at α = 1, so d(Σ w)/d a_ii = -a_ii^(-3/2) / 2.
  grad = jax.grad(lambda a: fj.fairgrad_weights(a, 1.0).sum())(
      jnp.diag(jnp.array([1.0, 4.0])))
  np.testing.assert_allclose(jnp.diagonal(grad), [-0.5, -0.5 / 8], rtol=1e-4)


@pytest.mark.parametrize("alpha", [0.5, 2.0, 5.0])
def test_weights_gradient_matches_finite_differences(alpha):
  """jax.grad through fairgrad_weights against float64 central differences
  of the float64 root (an independent oracle: numpy Newton)."""
  rng = np.random.default_rng(7)
  g = random_gradients(rng, 4, 12, scales=np.logspace(-1, 1, 4))
  gram = g @ g.T
  c = np.arange(1.0, 5.0)

  w32 = np.asarray(fj.fairgrad_weights(jnp.asarray(gram, jnp.float32),
                                       alpha), np.float64)

  def root64(a):
    # Newton on A w - w^(-1/α) in float64, from our float32 root (the root
    # is unique, so the start only saves Newton's damped phase).
    w = w32.copy()
    for _ in range(30):
      r = a @ w - w ** (-1 / alpha)
      jac = a + np.diag(w ** (-1 / alpha - 1) / alpha)
      w = w - np.linalg.solve(jac, r)
    return w

  grad = np.asarray(jax.grad(lambda a: fj.fairgrad_weights(a, alpha) @ c)(
      jnp.asarray(gram, jnp.float32)), np.float64)
  eps = 1e-5
  for i, j in [(0, 0), (0, 1), (2, 3), (3, 3)]:
    e = np.zeros_like(gram)
    e[i, j] = e[j, i] = eps
    fd = (root64(gram + e) @ c - root64(gram - e) @ c) / (2 * eps)
    ours = grad[i, j] + (grad[j, i] if i != j else 0.0)
    np.testing.assert_allclose(ours, fd, rtol=2e-3, atol=1e-5)


def test_scaling_law_at_the_edges_of_float32():
  """Gram matrices down to 1e-36 (squared norms near float32's smallest
  normal): the reported residual is the true one and the scaling law holds.
  Dekker's splitting used to lose its low parts to flush-to-zero there
  (claimed residual 3e-8, true 1.6e-5 at 1e-34)."""
  rng = np.random.default_rng(11)
  g = random_gradients(rng, 5, 20, scales=np.logspace(-0.5, 0.5, 5))
  gram = g @ g.T
  w = np.asarray(solve(gram.astype(np.float32), 2.0).weights, np.float64)
  for c in [1e-34, 1e-36, 1e30]:
    g32 = (c * gram).astype(np.float32)
    sol = solve(g32, 2.0)
    true = relative_residual(g32, sol.weights, 2.0)
    assert true < 5e-7 and float(sol.relative_residual) < 5e-7, (c, true)
    np.testing.assert_allclose(np.asarray(sol.weights, np.float64),
                               w * c ** (-2.0 / 3.0), rtol=2e-6)


def test_alpha_gradient_matches_finite_differences():
  """Issue 12: the weights are differentiable with respect to α too
  (implicitly: ∂w/∂α = -(GᵀG + diag(w^(-1/α-1)/α))⁻¹ ∂_α(-w^(-1/α)))."""
  rng = np.random.default_rng(3)
  g = random_gradients(rng, 3, 8, scales=np.logspace(-1, 1, 3))
  gram = g @ g.T
  c = np.array([1.0, -2.0, 0.5])

  def root64(alpha):
    w = np.asarray(fj.fairgrad_weights(jnp.asarray(gram, jnp.float32), 2.0),
                   np.float64)
    for _ in range(40):
      r = gram @ w - w ** (-1 / alpha)
      jac = gram + np.diag(w ** (-1 / alpha - 1) / alpha)
      w = w - np.linalg.solve(jac, r)
    return w

  grad = float(jax.grad(lambda a: fj.fairgrad_weights(
      jnp.asarray(gram, jnp.float32), a) @ c)(2.0))
  eps = 1e-5
  fd = (root64(2.0 + eps) @ c - root64(2.0 - eps) @ c) / (2 * eps)
  np.testing.assert_allclose(grad, fd, rtol=1e-3)


def test_traced_alpha_equals_static_alpha():
  """α as a traced array (an α schedule under jit) gives the weights of the
  static α, α = 0 included (no Python branch), and NaN for a bad value."""
  rng = np.random.default_rng(4)
  g = random_gradients(rng, 4, 10, scales=np.logspace(-1, 1, 4))
  gram = jnp.asarray(g @ g.T, jnp.float32)
  solve = jax.jit(lambda a, al: fj.fairgrad_solve(a, al))
  for alpha in (0.0, 0.5, 1.0, 2.0, 10.0):
    traced = solve(gram, jnp.float32(alpha))
    static = fj.fairgrad_solve(gram, alpha)
    np.testing.assert_allclose(traced.weights, static.weights, rtol=1e-6)
    assert bool(traced.converged) and bool(static.converged)
  for bad in (-1.0, float("inf"), float("nan")):
    sol = solve(gram, jnp.float32(bad))
    assert np.all(np.isnan(np.asarray(sol.weights))), bad
    assert not bool(sol.converged)
