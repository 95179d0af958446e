"""GradNorm, MoCo and ExcessMTL: LibMTL's values, closed forms, bad inputs,
extremes.

The peer values come from ``tools/peer_reference_more.py``, which
reproduces LibMTL's ``GradNorm.backward`` (torch float64, its autograd and
Adam), ``MoCo.backward`` and ``ExcessMTL.backward`` (NumPy float64) and
writes
``tests/data/peer_more_methods.json``. Here the aggregators run in float32
under one jitted ``lax.scan`` per setting and K.
"""

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fairgrad_jax as fj

DATA = json.loads((pathlib.Path(__file__).parent / "data" /
                   "peer_more_methods.json").read_text())
CASES = DATA["cases"]


@functools.lru_cache(maxsize=None)
def _runner(factory, k, p):
  """A jitted scan of ``update`` over (T, K) losses and (T, K, P) grads."""
  agg = factory(k)

  @jax.jit
  def run(losses_seq, grads_seq):
    def step(state, xs):
      losses, grads = xs
      d, state = agg.update({"w": grads}, state, losses=losses)
      return state, (d["w"], state.weights, state.extra)
    return jax.lax.scan(step, agg.init({"w": jnp.zeros(p)}),
                        (losses_seq, grads_seq))

  return run


def _run(factory, losses_seq, grads_seq):
  losses_seq = jnp.asarray(np.asarray(losses_seq, np.float32))
  grads_seq = jnp.asarray(np.asarray(grads_seq, np.float32))
  steps, k, p = grads_seq.shape
  return _runner(factory, k, p)(losses_seq, grads_seq)


def _fixed(grads, steps):
  return np.broadcast_to(np.asarray(grads), (steps,) + np.shape(grads))


@functools.lru_cache(maxsize=None)
def _gradnorm(alpha, lr, weight_decay, warmup_steps):
  # LibMTL steps s with the model's optimizer: torch Adam with L2 decay.
  return lambda k: fj.gradnorm(
      alpha, warmup_steps=warmup_steps,
      optimizer=optax.chain(optax.add_decayed_weights(weight_decay),
                            optax.adam(lr)), num_tasks=k)


@functools.lru_cache(maxsize=None)
def _moco(*hyperparams):
  return lambda k: fj.moco(*hyperparams, num_tasks=k)


@functools.lru_cache(maxsize=None)
def _excess(step_size, eps):
  return lambda k: fj.excess_mtl(step_size, eps=eps, num_tasks=k)


def _relative(ours, ref):
  """max over steps of max |ours − ref| / max |ref| (per step)."""
  ref = np.asarray(ref)
  return float(np.max(np.max(np.abs(np.asarray(ours) - ref), axis=-1)
                      / np.max(np.abs(ref), axis=-1)))


# --- LibMTL's values -------------------------------------------------------


# One compile per setting and K: over the default suite's budget.
@pytest.mark.slow
def test_gradnorm_matches_libmtl():
  for case in CASES:
    steps = len(case["losses"])
    for ref in case["gradnorm"]:
      factory = _gradnorm(ref["alpha"], ref["lr"], ref["weight_decay"],
                          ref["steps_per_epoch"])
      _, (d, weights, extra) = _run(factory, case["losses"],
                                    _fixed(case["jacobian"], steps))
      msg = f"{case['k']} {case['family']} {ref['alpha']} {ref['lr']}"
      np.testing.assert_allclose(weights, ref["weights"], rtol=2e-5,
                                 err_msg=msg)
      np.testing.assert_allclose(extra.loss_scale, ref["loss_scale"],
                                 rtol=2e-5, err_msg=msg)
      assert _relative(d, ref["updates"]) < 2e-5, msg
      # The weights move (s is learned), and sum to K throughout.
      assert not np.allclose(weights[-1], 1.0, atol=1e-5), msg
      np.testing.assert_allclose(np.sum(weights, axis=1), case["k"],
                                 rtol=1e-5)


# One compile per setting and K: over the default suite's budget.
@pytest.mark.slow
def test_moco_matches_libmtl():
  for case in CASES:
    for ref in case["moco"]:
      factory = _moco(ref["beta"], ref["beta_sigma"], ref["gamma"],
                      ref["gamma_sigma"], ref["rho"])
      _, (d, lambdas, _) = _run(factory, case["losses"],
                                case["moving_jacobians"])
      msg = f"{case['k']} {case['family']} {ref['beta']}"
      # (atol: λ_i below float32's normal range, 1.2e-38, are 0 here.)
      np.testing.assert_allclose(lambdas, ref["lambdas"], rtol=2e-5,
                                 atol=1e-37, err_msg=msg)
      assert _relative(d, ref["updates"]) < 2e-5, msg


# One compile per setting and K: over the default suite's budget.
@pytest.mark.slow
def test_excess_mtl_matches_libmtl():
  for case in CASES:
    for ref in case["excess_mtl"]:
      # eps = 1e-7: LibMTL's √(S + 1e-7).
      _, (d, weights, _) = _run(_excess(ref["robust_step_size"], 1e-7),
                                case["losses"], case["moving_jacobians"])
      msg = f"{case['k']} {case['family']} {ref['robust_step_size']}"
      # (atol: weights below float32's normal range are 0 here.)
      np.testing.assert_allclose(weights, ref["weights"], rtol=2e-5,
                                 atol=1e-37, err_msg=msg)
      assert _relative(d, ref["updates"]) < 2e-5, msg
  # The weights move away from 1 at the larger step.
  assert not np.allclose(CASES[0]["excess_mtl"][1]["weights"][-1], 1.0,
                         atol=1e-2)


def test_peer_file_covers_the_cases():
  assert {c["k"] for c in CASES} == {2, 3, 5}
  assert {c["family"] for c in CASES} == {"random", "scaled"}
  ref = CASES[0]["gradnorm"]
  # Every GradNorm setting gets past its first epoch within the sequence.
  assert all(r["steps_per_epoch"] < len(CASES[0]["losses"]) - 2 for r in ref)
  assert {r["weight_decay"] for r in ref} == {0.0, 1e-5}
  assert len(CASES[0]["moco"]) == 2
  assert [r["robust_step_size"] for r in CASES[0]["excess_mtl"]] == [1e-2,
                                                                     1.0]


# --- GradNorm --------------------------------------------------------------


def test_gradnorm_warmup_then_balancing():
  g = np.array([[1.0, 0.0], [0.0, 3.0]], np.float32)
  seq = [[2.0, 4.0], [4.0, 2.0], [3.0, 3.0], [3.0, 3.0]]
  _, (d, w, extra) = _run(_gradnorm(1.5, 0.1, 0.0, 2), seq, _fixed(g, 4))
  # Two warm-up calls: the plain sum, s and Adam untouched, l(0) averaged.
  np.testing.assert_array_equal(w[:3], 1.0)
  np.testing.assert_array_equal(extra.loss_scale[:2], 1.0)
  np.testing.assert_array_equal(extra.count, [1, 2, 2, 2])
  np.testing.assert_allclose(extra.initial_losses[-1], [3.0, 3.0])
  # Third call: l(0) = (3, 3), so r = 1; w‖g‖ = (1, 3) against the target
  # mean = 2: v = (−1, 3), ∂/∂s = K p (v − pᵀv) = (−2, 2); Adam's first
  # step is −lr sign: task 0's s goes up.
  np.testing.assert_allclose(extra.loss_scale[2], [1.1, 0.9], rtol=1e-6)
  np.testing.assert_allclose(w[3], 2 * jax.nn.softmax(jnp.array([1.1, 0.9])),
                             rtol=1e-6)
  np.testing.assert_allclose(d[3], w[3] * np.array([1.0, 3.0]), rtol=1e-6)


def test_gradnorm_restoring_force_follows_the_training_rates():
  # Equal gradient norms; task 1's loss has fallen least (r_1 > 1): with
  # α > 0 its weight grows; with α = 0 (and equal norms) nothing moves.
  g = np.eye(2, dtype=np.float32)
  seq = [[1.0, 1.0], [0.2, 0.8], [0.2, 0.8]]
  _, (_, w, _) = _run(_gradnorm(1.5, 0.1, 0.0, 1), seq, _fixed(g, 3))
  assert w[2, 1] > 1.0 > w[2, 0]
  _, (_, w, _) = _run(_gradnorm(0.0, 0.1, 0.0, 1), seq, _fixed(g, 3))
  np.testing.assert_array_equal(w[2], [1.0, 1.0])


def test_gradnorm_is_invariant_to_powers_of_two_of_the_gradients():
  # The builders' σ is a power of two: the s-steps see the same numbers.
  case = CASES[0]
  ref = case["gradnorm"][1]
  factory = _gradnorm(ref["alpha"], ref["lr"], ref["weight_decay"],
                      ref["steps_per_epoch"])
  jac = _fixed(case["jacobian"], len(case["losses"]))
  _, (_, w1, _) = _run(factory, case["losses"], jac)
  _, (_, w2, _) = _run(factory, case["losses"], jac * 2.0 ** 40)
  np.testing.assert_array_equal(w1, w2)


def test_gradnorm_zero_initial_loss_gives_nan_as_documented():
  g = _fixed(np.eye(2, dtype=np.float32), 3)
  _, (d, _, extra) = _run(_gradnorm(1.5, 0.1, 0.0, 1),
                          [[0.0, 1.0], [1.0, 1.0], [1.0, 1.0]], g)
  assert np.all(np.isfinite(d[0]))
  assert np.all(np.isnan(d[1:]))
  np.testing.assert_array_equal(extra.loss_scale[-1], [1.0, 1.0])


def test_gradnorm_finite_on_zero_and_huge_losses_and_gradients():
  seq = [[1.0, 2.0, 3.0], [0.0, 0.0, 0.0], [3e38, 1e-30, 0.0],
         [1e-30, 3e38, 1.0]]
  for scale in (1.0, 1e-30, 1e30):
    g = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], np.float32) * scale
    _, (d, w, extra) = _run(_gradnorm(1.5, 0.1, 0.0, 1), seq, _fixed(g, 4))
    assert np.all(np.isfinite(d)) and np.all(np.isfinite(w)), (scale, d)
    assert np.all(np.isfinite(extra.loss_scale))
  # A zero gradient: its ‖g‖ = 0 term has no gradient in s; finite.
  g = np.array([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]], np.float32)
  _, (d, w, _) = _run(_gradnorm(1.5, 0.1, 0.0, 1), seq, _fixed(g, 4))
  assert np.all(np.isfinite(d)) and np.all(np.isfinite(w))


# --- MoCo ------------------------------------------------------------------


def test_moco_closed_form_steps():
  g = np.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
  l = np.array([1.0, 3.0], np.float32)
  _, (d, lam, extra) = _run(_moco(0.5, 0.0, 0.1, 0.0, 0.0), [l, l],
                            _fixed(g, 2))
  ghat = np.array([[1.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
  y1, y2 = 0.5 * ghat, 0.75 * ghat  # y ← y − β (y − ĝ)
  np.testing.assert_allclose(extra.tracked[0][0], y1, rtol=1e-5)
  np.testing.assert_allclose(extra.tracked[0][1], y2, rtol=1e-5)
  lam1 = jax.nn.softmax(0.5 - 0.1 * (y1 @ y1.T) @ np.array([0.5, 0.5]))
  lam2 = jax.nn.softmax(lam1 - 0.1 * (y2 @ y2.T) @ lam1)
  np.testing.assert_allclose(lam, [lam1, lam2], rtol=1e-5)
  np.testing.assert_allclose(d[1], lam2 @ y2, rtol=1e-5)


def test_moco_heads_get_the_sum_and_init_none_is_init_params():
  grads = {"s": jnp.array([[1.0, 2.0], [3.0, -1.0]]),
           "h": jnp.array([[0.5], [2.0]])}
  params = {"s": jnp.zeros(2), "h": jnp.zeros(1)}
  agg = fj.moco(num_tasks=2, shared={"s": True, "h": False})
  losses = jnp.array([1.0, 2.0])
  d1, s1 = agg.update(grads, agg.init(params), losses=losses)
  d2, s2 = agg.update(grads, agg.init(None), losses=losses)
  np.testing.assert_allclose(d1["h"], [2.5])
  assert len(s1.extra.tracked) == 1 and s1.extra.tracked[0].shape == (2, 2)
  for a, b in zip(jax.tree.leaves((d1, s1)), jax.tree.leaves((d2, s2))):
    np.testing.assert_array_equal(a, b)


def test_moco_zero_gradient_task_and_degree_zero():
  g = np.array([[0.0, 0.0], [0.0, 4.0]], np.float32)
  l = [[2.0, 1.0]] * 3
  _, (d, _, extra) = _run(_moco(0.5, 0.5, 0.1, 0.5, 0.0), l, _fixed(g, 3))
  np.testing.assert_array_equal(extra.tracked[0][:, 0], 0.0)  # ĝ_0 = 0
  assert np.all(np.isfinite(d)) and np.all(d[:, 1] > 0)
  # Degree 0: any gradient scale gives the same update.
  for scale in (1e-30, 1e30):
    _, (d_s, _, _) = _run(_moco(0.5, 0.5, 0.1, 0.5, 0.0), l,
                          _fixed(g * scale, 3))
    np.testing.assert_allclose(d_s, d, rtol=1e-5)


def test_moco_finite_on_huge_and_zero_losses():
  g = _fixed(np.array([[1.0, 0.5], [-1.0, 2.0], [0.3, 0.0]], np.float32), 3)
  for seq in ([[3e38, 1.0, 1e30]] * 3, [[0.0, 0.0, 0.0]] * 3,
              [[1e30, 1e30, 1e-30]] * 3):
    _, (d, lam, _) = _run(_moco(0.5, 0.5, 0.1, 0.5, 0.0), seq, g)
    assert np.all(np.isfinite(d)) and np.all(np.isfinite(lam)), (seq, d)
  # γ ‖y‖² beyond float32: λ's softmax saturates on the smallest (YYᵀλ)_i.
  _, (_, lam, _) = _run(_moco(0.5, 0.5, 0.1, 0.5, 0.0),
                        [[1e30, 1e30, 1e-30]] * 3, g)
  np.testing.assert_allclose(lam[-1], [0.0, 0.0, 1.0], atol=1e-6)


# --- ExcessMTL -------------------------------------------------------------


def test_excess_mtl_closed_form_steps():
  g1 = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
  g2 = np.array([[1.0, 0.0], [0.0, 3.0]], np.float32)
  g3 = np.array([[2.0, 2.0], [0.0, 1.0]], np.float32)
  _, (d, w, extra) = _run(_excess(0.5, 0.0), [[1.0, 1.0]] * 3, [g1, g2, g3])
  # First call: w = 1, ε⁽¹⁾ = Σ g²/√(g²) = Σ |g| = (1, 1).
  np.testing.assert_array_equal(w[0], [1.0, 1.0])
  np.testing.assert_allclose(d[0], [1.0, 1.0])
  # Then ε = Σ_p g_p² / √S_p with S the running sums of squares.
  s = g1 ** 2 + g2 ** 2
  eps2 = np.sum(np.where(s > 0, g2 ** 2 / np.sqrt(np.where(s > 0, s, 1)),
                         0), axis=1)
  w2 = 2 * jax.nn.softmax(0.5 * eps2)
  np.testing.assert_allclose(w[1], w2, rtol=1e-5)
  s = s + g3 ** 2
  eps3 = np.sum(np.where(s > 0, g3 ** 2 / np.sqrt(np.where(s > 0, s, 1)),
                         0), axis=1)
  w3 = 2 * jax.nn.softmax(np.log(w2) + 0.5 * eps3)
  np.testing.assert_allclose(w[2], w3, rtol=1e-5)
  # The state keeps the logits normalised: z = log(w/K) - max, max z = 0.
  np.testing.assert_array_equal(np.max(extra.logits, axis=1), 0.0)
  np.testing.assert_allclose(extra.logits[2],
                             np.log(w3) - np.max(np.log(w3)), atol=1e-5)
  np.testing.assert_allclose(d[2], w3 @ g3, rtol=1e-5)


def test_excess_mtl_scale_free_without_eps_and_heads_weighted():
  rng = np.random.default_rng(0)
  seq = rng.standard_normal((4, 3, 5)).astype(np.float32)
  seq[2] *= 64.0  # the scale jumps mid-run: S is rescaled exactly
  _, (_, w, _) = _run(_excess(1.0, 0.0), [[1.0] * 3] * 4, seq)
  for scale in (1e-30, 1e30):
    _, (_, w_s, _) = _run(_excess(1.0, 0.0), [[1.0] * 3] * 4, seq * scale)
    # (atol: weights of 1e-7 and below carry float32's error on exp of
    # an exponent near −16 and below.)
    np.testing.assert_allclose(w_s, w, rtol=1e-5, atol=3e-7)
  assert not np.allclose(w[-1], 1.0, atol=1e-3)
  agg = fj.excess_mtl(num_tasks=2, shared={"s": True, "h": False})
  grads = {"s": jnp.array([[1.0, 2.0], [3.0, -1.0]]),
           "h": jnp.array([[0.5], [2.0]])}
  state = agg.init(None)
  for scale in (1.0, [[1.0], [4.0]]):
    d, state = agg.update(jax.tree.map(lambda g: g * jnp.array(scale), grads),
                          state)
  np.testing.assert_allclose(d["h"], state.weights @ (
      grads["h"] * jnp.array([[1.0], [4.0]])), rtol=1e-5)
  assert not np.allclose(state.weights, 1.0)


def test_excess_mtl_zero_gradient_task_and_bad_gradients():
  g = np.array([[0.0, 0.0], [1.0, 2.0]], np.float32)
  _, (d, w, _) = _run(_excess(1.0, 0.0), [[1.0, 1.0]] * 3, _fixed(g, 3))
  assert np.all(np.isfinite(d)) and np.all(np.isfinite(w))
  # ε⁽¹⁾ = 0 for task 0: its ratio is 0; task 1's, with S = t g², is
  # Σ|g|/√t over Σ|g|: 1/√2 at the second call.
  np.testing.assert_allclose(
      w[1], 2 * jax.nn.softmax(np.array([0.0, 2 ** -0.5])), rtol=1e-5)
  # A NaN gradient entry: a non-finite update, the state kept.
  good = np.array([[1.0, 0.5], [-0.5, 2.0]], np.float32)
  bad = good.copy()
  bad[0, 0] = np.nan
  _, (d, w, extra) = _run(_excess(1.0, 0.0), [[1.0, 1.0]] * 4,
                          [good, good, bad, good])
  assert np.isnan(d[2][0])
  _, (d_ref, _, extra_ref) = _run(_excess(1.0, 0.0), [[1.0, 1.0]] * 3,
                                  [good, good, good])
  np.testing.assert_allclose(d[3], d_ref[2], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(extra), jax.tree.leaves(extra_ref)):
    np.testing.assert_array_equal(np.asarray(a)[3], np.asarray(b)[2])


# --- Bad inputs ------------------------------------------------------------


@pytest.mark.parametrize("make, error, match", [
    (lambda: fj.gradnorm(-1.0, num_tasks=2), ValueError, "alpha"),
    (lambda: fj.gradnorm(1.5, 0.0, num_tasks=2), ValueError,
     "learning_rate"),
    (lambda: fj.gradnorm(warmup_steps=0, num_tasks=2), ValueError,
     "warmup_steps"),
    (lambda: fj.gradnorm(warmup_steps=1.5, num_tasks=2), ValueError,
     "warmup_steps"),
    (lambda: fj.gradnorm(), ValueError, "gradnorm keeps per-task state"),
    (lambda: fj.aggregator(fj.gradnorm_weighting()), ValueError,
     "gradnorm keeps per-task state"),
    (lambda: fj.moco(0.0, num_tasks=2), ValueError, "beta"),
    (lambda: fj.moco(1.5, num_tasks=2), ValueError, "beta"),
    (lambda: fj.moco(0.5, -1.0, num_tasks=2), ValueError, "beta_sigma"),
    (lambda: fj.moco(gamma=0.0, num_tasks=2), ValueError, "gamma"),
    (lambda: fj.moco(gamma_sigma=float("inf"), num_tasks=2), ValueError,
     "gamma_sigma"),
    (lambda: fj.moco(rho=-0.1, num_tasks=2), ValueError, "rho"),
    (lambda: fj.moco(), ValueError, "moco keeps per-task state"),
    (lambda: fj.moco(num_tasks=0), ValueError, "num_tasks"),
    (lambda: fj.excess_mtl(0.0, num_tasks=2), ValueError, "robust_step_size"),
    (lambda: fj.excess_mtl(eps=-1.0, num_tasks=2), ValueError, "eps"),
    (lambda: fj.excess_mtl(), ValueError, "excess_mtl keeps per-task state"),
])
def test_bad_hyperparameters_are_refused_by_name(make, error, match):
  with pytest.raises((error, TypeError), match=match):
    make()


@pytest.mark.parametrize("factory", [_gradnorm(1.5, 0.1, 0.0, 1),
                                     _moco(0.5, 0.5, 0.1, 0.5, 0.0)],
                         ids=["gradnorm", "moco"])
def test_losses_are_required(factory):
  agg = factory(2)
  with pytest.raises(ValueError, match="needs the task losses"):
    agg.update({"w": jnp.eye(2)}, agg.init(None))
  with pytest.raises(ValueError, match=r"losses must have shape \(2,\)"):
    agg.update({"w": jnp.eye(2)}, agg.init(None), losses=jnp.ones(3))


def test_moco_refuses_other_shapes_and_task_counts():
  agg = fj.moco(num_tasks=2)
  with pytest.raises(ValueError, match="tracks shared leaves of shapes"):
    agg.update({"w": jnp.eye(2)}, agg.init({"w": jnp.zeros(3)}),
               losses=jnp.ones(2))
  with pytest.raises(ValueError, match="num_tasks=2 but the gradients have"
                     " a task axis of size 3"):
    agg.update({"w": jnp.eye(3)}, agg.init(None), losses=jnp.ones(3))


@pytest.mark.parametrize("factory", [_gradnorm(1.5, 0.1, 0.0, 1),
                                     _moco(0.5, 0.5, 0.1, 0.5, 0.0)],
                         ids=["gradnorm", "moco"])
@pytest.mark.parametrize("bad", [-1.0, np.nan, np.inf])
def test_bad_losses_give_nan_and_keep_the_state(factory, bad):
  g = np.array([[1.0, 0.5], [-0.5, 2.0]], np.float32)
  good, after = [1.0, 2.0], [0.5, 3.0]
  _, (d, w, extra) = _run(factory, [good, good, [bad, 2.0], after],
                          _fixed(g, 4))
  assert np.all(np.isnan(d[2]))
  np.testing.assert_array_equal(w[2], w[1])
  # The bad step left no trace: the next step is as if it never happened.
  _, (d_ref, _, extra_ref) = _run(factory, [good, good, after], _fixed(g, 3))
  np.testing.assert_allclose(d[3], d_ref[2], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(extra), jax.tree.leaves(extra_ref)):
    np.testing.assert_array_equal(np.asarray(a)[3], np.asarray(b)[2])


def test_reprs():
  assert repr(fj.gradnorm(num_tasks=2)) == (
      "gradnorm(alpha=1.5, learning_rate=0.0001, warmup_steps=100,"
      " num_tasks=2)")
  assert repr(fj.excess_mtl(num_tasks=2)) == (
      "excess_mtl(robust_step_size=0.01, eps=0.0, num_tasks=2)")
  assert repr(fj.moco(num_tasks=3)) == (
      "moco(beta=0.5, beta_sigma=0.5, gamma=0.1, gamma_sigma=0.5, rho=0.0,"
      " num_tasks=3)")
