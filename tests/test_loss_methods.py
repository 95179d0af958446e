"""STCH, IMTL-L, GLS (geometric_mean) and DB-MTL: LibMTL's values, closed
forms, bad inputs and extreme losses.

The peer values come from ``tools/peer_reference_loss.py``, which reproduces
LibMTL's code in NumPy float64 (torch is not a dependency) and writes
``tests/data/peer_loss_methods.json``: the weights of each step are the
derivatives of the loss LibMTL back-propagates with respect to the task
losses. Here the aggregators run in float32 on identity gradients (so the
update is the weight vector), jitted once per setting.
"""

import functools
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fairgrad_jax as fj

DATA = json.loads((pathlib.Path(__file__).parent / "data" /
                   "peer_loss_methods.json").read_text())
CASES = DATA["cases"]
RTOL = 2e-5  # float32 against float64


@functools.lru_cache(maxsize=None)
def _runner(factory, k):
  """A jitted scan of ``update`` over a (T, K) loss sequence on G = I."""
  agg = factory(k)

  @jax.jit
  def run(losses_seq):
    def step(state, losses):
      d, state = agg.update({"w": jnp.eye(k)}, state, losses=losses)
      return state, (d["w"], state.weights, state.extra)
    return jax.lax.scan(step, agg.init(None), losses_seq)

  return run


def _run(factory, losses_seq):
  losses_seq = jnp.asarray(np.asarray(losses_seq, np.float32))
  return _runner(factory, losses_seq.shape[1])(losses_seq)


@functools.lru_cache(maxsize=None)
def _stch(mu, warmup_steps, average_steps):
  return lambda k: fj.stch(mu, warmup_steps=warmup_steps,
                           average_steps=average_steps, num_tasks=k)


@functools.lru_cache(maxsize=None)
def _imtl_l(lr, weight_decay):
  # LibMTL trains s with the model's optimizer: torch Adam with L2 decay.
  return lambda k: fj.imtl_l(
      optimizer=optax.chain(optax.add_decayed_weights(weight_decay),
                            optax.adam(lr)), num_tasks=k)


def _gls(k):
  return fj.geometric_mean(num_tasks=k)


def _imtl_l_default(k):
  return fj.imtl_l(num_tasks=k)


@functools.lru_cache(maxsize=None)
def _db_mtl(beta, beta_sigma):
  return lambda k: fj.db_mtl(beta, beta_sigma, num_tasks=k)


@functools.lru_cache(maxsize=None)
def _grads_runner(factory, k):
  """A jitted scan of ``update`` over (T, K) losses and (T, K, P) grads."""
  agg = factory(k)

  @jax.jit
  def run(losses_seq, grads_seq):
    def step(state, xs):
      losses, grads = xs
      d, state = agg.update({"w": grads}, state, losses=losses)
      return state, (d["w"], state.weights)
    return jax.lax.scan(step, agg.init(None), (losses_seq, grads_seq))

  return run


def _run_grads(factory, losses_seq, grads_seq):
  losses_seq = jnp.asarray(np.asarray(losses_seq, np.float32))
  grads_seq = jnp.asarray(np.asarray(grads_seq, np.float32))
  return _grads_runner(factory, losses_seq.shape[1])(losses_seq, grads_seq)


# --- LibMTL's values -------------------------------------------------------


def test_stch_matches_libmtl():
  for case in CASES:
    for ref in case["stch"]:
      # LibMTL: warmup_epoch epochs of log loss, one more averaged into z.
      per_epoch = ref["steps_per_epoch"]
      factory = _stch(ref["mu"], ref["warmup_epoch"] * per_epoch, per_epoch)
      _, (d, weights, _) = _run(factory, case["losses"])
      np.testing.assert_allclose(weights, ref["weights"], rtol=RTOL,
                                 err_msg=f"{case['family']} {ref}")
      np.testing.assert_array_equal(d, weights)


def test_imtl_l_matches_libmtl():
  for case in CASES:
    for ref in case["imtl_l"]:
      factory = _imtl_l(ref["lr"], ref["weight_decay"])
      _, (_, weights, extra) = _run(factory, case["losses"])
      np.testing.assert_allclose(weights, ref["weights"], rtol=RTOL,
                                 err_msg=f"{case['family']} {ref['lr']}")
      np.testing.assert_allclose(extra.log_scales, ref["log_scales"],
                                 rtol=1e-4, atol=1e-7)


def test_imtl_l_default_is_libmtl_adam_without_its_weight_decay():
  # LibMTL's default optimizer is Adam at lr 1e-4 (+ weight decay 1e-5,
  # which moves s by less than 1e-9 here): the default factory follows it.
  case = CASES[0]
  ref = next(r for r in case["imtl_l"] if r["lr"] == 1e-4)
  _, (_, weights, extra) = _run(_imtl_l_default, case["losses"])
  np.testing.assert_allclose(weights, ref["weights"], rtol=RTOL)
  np.testing.assert_allclose(extra.log_scales, ref["log_scales"], rtol=1e-4)


def test_gls_matches_the_gradient_of_libmtls_loss_not_its_log():
  for case in CASES:
    _, (_, weights, _) = _run(_gls, case["losses"])
    np.testing.assert_allclose(weights, case["gls"]["weights"], rtol=RTOL,
                               err_msg=case["family"])
    # LibMTL's returned batch_weight, l_i / (K Π l), is not what it applies
    # (documented in geometric_mean): the file shows the two differ.
    assert not np.allclose(case["gls"]["logged"], case["gls"]["weights"],
                           rtol=1e-2)


def test_db_mtl_matches_libmtl_on_fixed_gradients():
  # LibMTL keeps a K×P buffer of past log-loss gradients; with the same
  # gradients at every step (only the losses change) it is c_i g_i.
  for case in CASES:
    for ref in case["db_mtl"]:
      steps = len(case["losses"])
      grads = np.broadcast_to(np.asarray(ref["grads"]),
                              (steps,) + np.shape(ref["grads"]))
      _, (d, _) = _run_grads(_db_mtl(ref["beta"], ref["beta_sigma"]),
                             case["losses"], grads)
      expected = np.asarray(ref["updates"])
      scale = np.linalg.norm(expected, axis=-1, keepdims=True)
      np.testing.assert_allclose(d / scale, expected / scale, atol=2e-5,
                                 err_msg=f"{case['family']} {ref['beta']}")


def test_db_mtl_matches_libmtl_without_buffer_on_moving_gradients():
  for case in CASES:
    ref = case["db_mtl_moving"]
    _, (d, _) = _run_grads(_db_mtl(0.0, 0.0), case["losses"], ref["grads"])
    expected = np.asarray(ref["updates"])
    scale = np.linalg.norm(expected, axis=-1, keepdims=True)
    np.testing.assert_allclose(d / scale, expected / scale, atol=2e-5)


def test_db_mtl_terms_have_the_largest_norm():
  g = np.array([[3.0, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.0]],
               np.float32)
  l = np.array([1.0, 0.25, 2.0], np.float32)
  _, (d, w) = _run_grads(_db_mtl(0.9, 0.0), [l, l], [g, g])
  # c = (1 − β^t) / l; max_j c_j ‖g_j‖ is task 0's 3 c_0 (c_1 ‖g_1‖ = 2 c_0).
  for t in range(2):
    c0 = (1 - 0.9 ** (t + 1)) / 1.0
    np.testing.assert_allclose(d[t], [3 * c0, 3 * c0, 0.0], rtol=1e-5)
    np.testing.assert_allclose(w[t], [c0, 6 * c0, 0.0], rtol=1e-5)


def test_peer_file_covers_the_cases():
  assert {c["k"] for c in CASES} == {2, 3, 5}
  assert {c["family"] for c in CASES} == {"random", "decreasing", "scaled"}
  # Every STCH setting reaches the scalarization within the sequence.
  for ref in CASES[0]["stch"]:
    assert (ref["warmup_epoch"] + 1) * ref["steps_per_epoch"] < len(
        CASES[0]["losses"])


# --- Closed forms ----------------------------------------------------------


def test_gls_closed_forms():
  w, _ = fj.geometric_mean_weighting()(jnp.zeros((4, 4)),
                                       losses=jnp.full((4,), 3.7))
  np.testing.assert_allclose(w, np.full(4, 0.25), rtol=1e-6)
  l = np.array([4.0, 1.0, 0.5], np.float32)
  w, _ = fj.geometric_mean_weighting()(jnp.zeros((3, 3)), losses=l)
  np.testing.assert_allclose(w, np.prod(l) ** (1 / 3) / (3 * l), rtol=1e-6)
  # Unchanged when every loss is scaled by the same factor.
  w2, _ = fj.geometric_mean_weighting()(jnp.zeros((3, 3)), losses=1e6 * l)
  np.testing.assert_allclose(w2, w, rtol=1e-5)


def test_stch_warmup_average_and_scalarization():
  l1, l2, l3 = [2.0, 4.0, 1.0], [4.0, 2.0, 3.0], [1.5, 3.0, 4.0]
  _, (_, w, extra) = _run(_stch(1.0, 1, 2), [l1, l2, l3, l3])
  # Warm-up and averaging calls: the gradient of Σ log l_i.
  np.testing.assert_allclose(w[:3], 1.0 / np.array([l1, l2, l3]), rtol=1e-6)
  np.testing.assert_array_equal(extra.count, [1, 2, 3, 3])
  # Only the averaging calls (the 2nd and 3rd) enter the nadir vector.
  np.testing.assert_allclose(extra.loss_sum[-1], np.add(l2, l3), rtol=1e-6)
  z = (np.array(l2) + np.array(l3)) / 2
  u = np.log(np.array(l3) / z)
  expected = 3 * np.exp(u) / np.exp(u).sum() / np.array(l3)
  np.testing.assert_allclose(w[3], expected, rtol=1e-5)


def test_stch_mu_limits():
  seq = [[1.0, 1.0, 1.0], [2.0, 1.0, 4.0]]  # z = 1: u = log(2, 1, 4)
  _, (_, w, _) = _run(_stch(1e-3, 0, 1), seq)
  # μ → 0: the Tchebycheff scalarization, all the weight on max l_i/z_i.
  np.testing.assert_allclose(w[1], [0.0, 0.0, 3 / 4.0], atol=1e-6)
  _, (_, w, _) = _run(_stch(1e4, 0, 1), seq)
  # μ → ∞: softmax uniform, w_i → 1/l_i.
  np.testing.assert_allclose(w[1], [0.5, 1.0, 0.25], rtol=1e-3)


def test_imtl_l_learns_the_inverse_losses():
  # The optimum of e^s l − s is e^s = 1/l: with a large learning rate s
  # gets there, so the scaled losses e^{s_i} l_i all reach 1.
  l = np.array([4.0, 0.5], np.float32)
  _, (_, w, _) = _run(_imtl_l(0.05, 0.0), np.tile(l, (400, 1)))
  np.testing.assert_allclose(w[-1] * l, [1.0, 1.0], rtol=2e-2)


def test_imtl_l_is_uw_with_the_opposite_log_scale():
  # e^s l − s is UW's e^{−s'} l + s' at s' = −s: the same weights.
  l = np.array([[3.0, 0.2, 1.0], [2.0, 0.3, 1.5], [1.0, 0.1, 2.0]],
               np.float32)
  _, (_, w_imtl, extra_imtl) = _run(_imtl_l_default, l)
  _, (_, w_uw, extra_uw) = _run(lambda k: fj.uw(1e-4, num_tasks=k), l)
  np.testing.assert_allclose(w_imtl, w_uw, rtol=1e-6)
  np.testing.assert_allclose(extra_imtl.log_scales, -extra_uw.log_variances,
                             rtol=1e-6)
  assert not np.allclose(w_imtl[-1], 1.0)  # s has moved


# --- Bad inputs ------------------------------------------------------------


@pytest.mark.parametrize("make, match", [
    (lambda: fj.stch(0.0, num_tasks=2), "mu"),
    (lambda: fj.stch(float("nan"), num_tasks=2), "mu"),
    (lambda: fj.stch(warmup_steps=-1, num_tasks=2), "warmup_steps"),
    (lambda: fj.stch(warmup_steps=2.0, num_tasks=2), "warmup_steps"),
    (lambda: fj.stch(average_steps=0, num_tasks=2), "average_steps"),
    (lambda: fj.stch(average_steps=True, num_tasks=2), "average_steps"),
    (lambda: fj.stch(), "stch keeps per-task state"),
    (lambda: fj.imtl_l(0.0, num_tasks=2), "learning_rate"),
    (lambda: fj.imtl_l(-1.0, num_tasks=2), "learning_rate"),
    (lambda: fj.imtl_l(), "imtl_l keeps per-task state"),
    (lambda: fj.aggregator(fj.stch_weighting()), "stch keeps per-task"),
    (lambda: fj.db_mtl(1.0, num_tasks=2), "beta"),
    (lambda: fj.db_mtl(-0.1, num_tasks=2), "beta"),
    (lambda: fj.db_mtl(0.9, -1.0, num_tasks=2), "beta_sigma"),
    (lambda: fj.db_mtl(), "db_mtl keeps per-task state"),
])
def test_bad_hyperparameters_are_refused_by_name(make, match):
  with pytest.raises(ValueError, match=match):
    make()


@pytest.mark.parametrize("factory", [
    _stch(1.0, 0, 1), _imtl_l_default, _gls, _db_mtl(0.9, 0.0)])
def test_losses_are_required(factory):
  agg = factory(2)
  with pytest.raises(ValueError, match="needs the task losses"):
    agg.update({"w": jnp.eye(2)}, agg.init(None))
  with pytest.raises(ValueError, match=r"losses must have shape \(2,\)"):
    agg.update({"w": jnp.eye(2)}, agg.init(None), losses=jnp.ones(3))


@pytest.mark.parametrize("factory, bad", [
    (_stch(1.0, 0, 1), -1.0), (_stch(1.0, 0, 1), np.nan),
    (_stch(1.0, 0, 1), np.inf),
    (_imtl_l_default, -1.0), (_imtl_l_default, np.nan),
    (_gls, 0.0), (_gls, -1.0), (_gls, np.inf),
    (_db_mtl(0.9, 0.0), -1.0), (_db_mtl(0.9, 0.0), np.nan),
])
def test_bad_losses_give_nan_and_keep_the_state(factory, bad):
  good = [1.0, 2.0]
  seq = [good, [bad, 2.0], [0.5, 3.0]]
  _, (d, w, extra) = _run(factory, seq)
  assert np.all(np.isnan(d[1]))
  np.testing.assert_array_equal(w[1], w[0])  # last good weights kept
  # The bad step left no trace: the next step is as if it never happened.
  _, (d_ref, _, extra_ref) = _run(factory, [good, [0.5, 3.0]])
  np.testing.assert_allclose(d[2], d_ref[1], rtol=1e-6)
  for a, b in zip(jax.tree.leaves(extra), jax.tree.leaves(extra_ref)):
    np.testing.assert_array_equal(np.asarray(a)[2], np.asarray(b)[1])


def test_stch_zero_nadir_gives_nan_as_documented():
  _, (d, _, extra) = _run(_stch(1.0, 0, 1), [[0.0, 1.0], [1.0, 1.0]])
  assert np.all(np.isfinite(d[0]))  # warm-up at l = 0: 1/1e-20
  assert np.all(np.isnan(d[1]))
  np.testing.assert_array_equal(extra.count, [1, 1])


# --- Extreme losses --------------------------------------------------------


def test_finite_on_zero_and_huge_losses():
  huge = [[3e38, 1e30, 1.0], [2e38, 1e-30, 1.0], [3e38, 0.0, 1e-30]]
  for factory in (_stch(1.0, 0, 1), _stch(1.0, 1, 1), _stch(0.01, 1, 1),
                  _imtl_l_default, _db_mtl(0.9, 0.0)):
    _, (d, _, _) = _run(factory, huge)
    assert np.all(np.isfinite(d)), (factory, d)
  _, (d, _, _) = _run(_stch(1.0, 1, 1), huge)
  np.testing.assert_allclose(d[1, 1], 1e20, rtol=1e-6)  # 1/(1e-30 + ε)
  # z = the second losses; at μ = 1, w_i = K / (z_i Σ_j (l_j/z_j + ε)):
  # finite although l_2 = 0 and ε z_2 = 1e-50 underflows float32.
  z = np.array(huge[1])
  expected = 3 / (z * np.sum(np.array(huge[2]) / z + 1e-20))
  np.testing.assert_allclose(d[2], expected, rtol=1e-5, atol=1e-37)
  # GLS: l > 0 over 76 decades, computed in logs (the product of five
  # losses of 1e30 overflows float32, and of 1e-30 underflows to 0).
  for scale in (1e30, 1e-30):
    _, (d, _, _) = _run(_gls, [[scale] * 5])
    np.testing.assert_allclose(d[0], np.full(5, 0.2), rtol=1e-5)
  # (1e-37, not 1e-38: XLA on CPU flushes subnormal float32 to 0.)
  l = [3e38, 1e-37, 1.0]
  _, (d, _, _) = _run(_gls, [l])
  assert np.all(np.isfinite(d))
  expected = math.exp(sum(map(math.log, l)) / 3) / (3 * np.array(l))
  # w_0 = 3.5e-39 is subnormal too (hence the atol).
  np.testing.assert_allclose(d[0], expected, rtol=1e-4, atol=1e-37)


def test_reprs():
  assert repr(fj.stch(num_tasks=2)) == (
      "stch(mu=1.0, warmup_steps=400, average_steps=100, num_tasks=2)")
  assert repr(fj.imtl_l(num_tasks=2)) == (
      "imtl_l(learning_rate=0.0001, num_tasks=2)")
  assert repr(fj.geometric_mean()) == "geometric_mean(num_tasks=None)"
  assert repr(fj.geometric_mean_weighting()) == "geometric_mean_weighting()"
  assert repr(fj.db_mtl(num_tasks=2)) == (
      "db_mtl(beta=0.9, beta_sigma=0.0, num_tasks=2)")
