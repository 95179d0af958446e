"""Bad losses and bad hyperparameters (issue 12, items 2, 3 and 7).

A bad step (non-finite losses or gradients, losses outside a method's
domain) must give a non-finite update, so that ``optax.apply_if_finite``
skips it, and leave every piece of the aggregator's state as it was: the
trajectory with the bad step inserted is the trajectory without it.
"""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fairgrad_jax

INF, NAN = math.inf, math.nan

# Three good steps of K = 2 tasks on a 3-vector: losses and gradients.
GOOD_LOSSES = [[1.0, 2.0], [0.8, 1.5], [0.5, 1.4]]
GOOD_GRADS = [[[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]],
              [[0.5, 0.2, 1.0], [-0.3, 1.0, 0.0]],
              [[1.0, 1.0, 0.0], [0.0, 2.0, 1.0]]]

METHODS = {
    "rlw": lambda: fairgrad_jax.rlw(seed=3, num_tasks=2),
    "dwa": lambda: fairgrad_jax.dwa(num_tasks=2),
    "uw": lambda: fairgrad_jax.uw(num_tasks=2),
    "scale_invariant": lambda: fairgrad_jax.scale_invariant(num_tasks=2),
    "famo": lambda: fairgrad_jax.famo(num_tasks=2),
    "famo_min": lambda: fairgrad_jax.famo(min_losses=[0.3, 1.0],
                                          num_tasks=2),
}


def _run(agg, steps):
  """Jitted updates over ``steps`` = [(losses, grads)]; updates and states."""
  update = jax.jit(lambda g, s, l: agg.update({"w": g}, s, losses=l))
  state = agg.init(None)
  updates, states = [], []
  for losses, grads in steps:
    d, state = update(jnp.asarray(grads, jnp.float32), state,
                      jnp.asarray(losses, jnp.float32))
    updates.append(np.asarray(d["w"]))
    states.append(state)
  return updates, states


def _check_bad_step_is_skipped(method, bad_losses, bad_grads):
  good = list(zip(GOOD_LOSSES, GOOD_GRADS))
  with_bad = good[:2] + [(bad_losses, bad_grads)] + good[2:]
  ref_updates, ref_states = _run(METHODS[method](), good)
  updates, states = _run(METHODS[method](), with_bad)
  # The bad step's update is non-finite: apply_if_finite skips it.
  assert not np.all(np.isfinite(updates[2])), updates[2]
  # It leaves the whole state (weights and extra) as the last good step did.
  chex.assert_trees_all_equal(states[2], states[1])
  # The step after it is the one that would have come without it.
  np.testing.assert_array_equal(updates[3], ref_updates[2])
  chex.assert_trees_all_equal(states[3], ref_states[2])
  assert np.all(np.isfinite(updates[3]))


# Losses outside the method's domain: non-finite anywhere; DWA and SI take
# ratios/logs (> 0); UW needs >= 0; FAMO needs l >= min_losses.
BAD_LOSSES = [
    ("dwa", [INF, 1.0]), ("dwa", [NAN, 1.0]), ("dwa", [0.0, 1.0]),
    ("dwa", [-1.0, 1.0]),
    ("uw", [INF, 1.0]), ("uw", [NAN, 1.0]), ("uw", [-1.0, 1.0]),
    ("scale_invariant", [INF, 1.0]), ("scale_invariant", [-1.0, 1.0]),
    ("famo", [INF, 1.0]), ("famo", [NAN, 1.0]), ("famo", [-0.5, 1.0]),
    ("famo_min", [0.2, 1.5]), ("famo_min", [0.5, 0.9]),
]


@pytest.mark.parametrize("method,bad_losses", BAD_LOSSES)
def test_bad_losses_give_a_skipped_step_and_keep_the_state(method,
                                                           bad_losses):
  _check_bad_step_is_skipped(method, bad_losses, GOOD_GRADS[2])


@pytest.mark.parametrize("method", ["rlw", "dwa", "uw", "famo"])
def test_non_finite_gradients_keep_the_state(method):
  bad_grads = [[INF, 0.0, 1.0], [0.0, 1.0, 1.0]]
  _check_bad_step_is_skipped(method, [0.9, 1.2], bad_grads)


@pytest.mark.parametrize("method", ["famo", "uw"])
def test_apply_if_finite_chain_recovers_from_an_inf_loss(method):
  # The README's set-up: the step with an inf loss is skipped and training
  # goes on exactly as if it had not been there.
  def train(losses_seq):
    opt = optax.chain(METHODS[method](),
                      optax.apply_if_finite(optax.sgd(0.1), 5))
    params = {"w": jnp.zeros(3)}
    state = opt.init(params)
    for losses, grads in losses_seq:
      updates, state = opt.update({"w": jnp.asarray(grads)}, state, params,
                                  losses=jnp.asarray(losses))
      params = optax.apply_updates(params, updates)
    return np.asarray(params["w"])

  good = list(zip(GOOD_LOSSES, GOOD_GRADS))
  bad = good[:1] + [([1.0, INF], GOOD_GRADS[1])] + good[1:]
  after = train(bad)
  assert np.all(np.isfinite(after))
  np.testing.assert_allclose(after, train(good), rtol=1e-6)


def test_famo_at_its_lower_bound_is_finite():
  # l = l* is in FAMO's domain (the authors' +1e-8): almost all the weight
  # goes to that task.
  updates, states = _run(METHODS["famo_min"](),
                         [([0.3, 2.0], GOOD_GRADS[0])])
  assert np.all(np.isfinite(updates[0]))
  np.testing.assert_allclose(states[0].weights, [1.0, 0.0], atol=1e-6)


def test_famo_per_task_min_losses_shift_the_gaps():
  # w ∝ z / (l − l*), z uniform at the first step.
  _, states = _run(METHODS["famo_min"](), [([0.8, 3.0], GOOD_GRADS[0])])
  gaps = np.array([0.5, 2.0])
  np.testing.assert_allclose(states[0].weights, (1 / gaps) / np.sum(1 / gaps),
                             rtol=1e-5)


def test_uw_accepts_zero_losses():
  updates, _ = _run(METHODS["uw"](), [([0.0, 1.0], GOOD_GRADS[0])] * 2)
  assert np.all(np.isfinite(updates[1]))


@pytest.mark.parametrize("method", ["dwa", "uw", "scale_invariant", "famo"])
def test_complex_losses_are_refused_by_name(method):
  agg = METHODS[method]()
  with pytest.raises(TypeError, match=f"{method} needs real losses"):
    agg.update({"w": jnp.eye(2)}, agg.init(None),
               losses=jnp.ones(2, jnp.complex64))


def test_scale_invariant_never_ascends():
  # 1/l < 0 for a negative loss would ascend that task's loss.
  agg = fairgrad_jax.scale_invariant()
  d, _ = agg.update({"w": jnp.eye(2)}, agg.init(None),
                    losses=jnp.array([-2.0, 0.5]))
  assert np.all(np.isnan(d["w"]))


# fair_loss ------------------------------------------------------------------


def _value_and_grad(alpha, losses, jit=False):
  f = lambda l, a: fairgrad_jax.fair_loss(l, a)
  vg = jax.vmap(jax.value_and_grad(f), in_axes=(0, None))
  if jit:
    vg = jax.jit(vg)
  v, g = vg(jnp.asarray(losses, jnp.float32), alpha)
  return np.asarray(v), np.asarray(g)


@pytest.mark.parametrize("alpha", [-1.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("jit", [False, True])
def test_fair_loss_negative_losses_give_nan_gradients(alpha, jit):
  v, g = _value_and_grad(alpha, [-1.0, -0.25], jit)
  assert np.all(np.isnan(v)) and np.all(np.isnan(g)), (v, g)


@pytest.mark.parametrize("alpha", [-1.0, 0.0, 0.5, 1.0, 2.0])
def test_fair_loss_non_finite_losses_give_nan_gradients(alpha):
  v, g = _value_and_grad(alpha, [INF, NAN, -INF])
  assert np.all(np.isnan(g)), g


def test_fair_loss_zero_loss():
  # α < 0: the limit, value 0 and weight l^(-α) = 0; α > 0: infinite weight.
  v, g = _value_and_grad(-1.0, [0.0])
  np.testing.assert_array_equal([v[0], g[0]], [0.0, 0.0])
  for alpha in (0.5, 1.0, 2.0):
    _, g = _value_and_grad(alpha, [0.0])
    assert g[0] == np.inf


def test_fair_loss_alpha_zero_is_the_identity_everywhere():
  v, g = _value_and_grad(0.0, [-3.0, 0.0, 2.0])
  np.testing.assert_array_equal(v, [-3.0, 0.0, 2.0])
  np.testing.assert_array_equal(g, [1.0, 1.0, 1.0])


@pytest.mark.parametrize("alpha", [-2.0, -0.5, 0.0, 0.5, 1.0, 1.5, 5.0])
def test_fair_loss_traced_alpha_matches_static(alpha):
  losses = [0.25, 1.0, 3.0]
  v, g = _value_and_grad(alpha, losses)
  vt, gt = _value_and_grad(jnp.float32(alpha), losses, jit=True)
  np.testing.assert_allclose(vt, v, rtol=1e-6)
  np.testing.assert_allclose(gt, g, rtol=1e-6)
  # The gradient is l^(-α) (Ban & Ji, Section 6).
  np.testing.assert_allclose(g, np.power(losses, -alpha), rtol=1e-6)


def test_fair_loss_under_jit():
  l = jnp.array([0.5, 2.0])
  np.testing.assert_allclose(jax.jit(fairgrad_jax.fair_loss)(l, 0.5),
                             [2 ** 0.5, 2 * 2 ** 0.5], rtol=1e-6)
  static = jax.jit(fairgrad_jax.fair_loss, static_argnums=1)
  np.testing.assert_allclose(static(l, 1.0), np.log([0.5, 2.0]), rtol=1e-6)


def test_fair_loss_argument_errors():
  for alpha in (NAN, INF, -INF):
    with pytest.raises(ValueError, match="alpha must be a finite real"):
      fairgrad_jax.fair_loss(jnp.ones(2), alpha)
  with pytest.raises(TypeError, match="alpha must be a finite real"):
    fairgrad_jax.fair_loss(jnp.ones(2), jnp.ones(2))
  with pytest.raises(TypeError, match="alpha must be a real scalar"):
    jax.jit(fairgrad_jax.fair_loss)(jnp.ones(2), jnp.ones(2))
  with pytest.raises(TypeError, match="losses must be real"):
    fairgrad_jax.fair_loss(jnp.ones(2, jnp.complex64), 0.5)


# Hyperparameters ------------------------------------------------------------


@pytest.mark.parametrize("factory,kwargs,name", [
    (fairgrad_jax.cagrad, {"c": INF}, "c"),
    (fairgrad_jax.cagrad, {"c": "0.4"}, "c"),
    (fairgrad_jax.nash_mtl, {"tol": INF}, "tol"),
    (fairgrad_jax.nash_mtl, {"regularization": INF}, "regularization"),
    (fairgrad_jax.nash_mtl, {"max_norm": INF}, "max_norm"),
    (fairgrad_jax.dwa, {"temperature": INF, "num_tasks": 2}, "temperature"),
    (fairgrad_jax.uw, {"learning_rate": INF, "num_tasks": 2},
     "learning_rate"),
    (fairgrad_jax.famo, {"gamma": INF, "num_tasks": 2}, "gamma"),
    (fairgrad_jax.famo, {"w_lr": INF, "num_tasks": 2}, "w_lr"),
    (fairgrad_jax.famo, {"min_losses": NAN, "num_tasks": 2}, "min_losses"),
    (fairgrad_jax.famo, {"min_losses": [0.0, 0.0, 0.0], "num_tasks": 2},
     "min_losses"),
    (fairgrad_jax.cagrad, {"max_norm": INF}, "max_norm"),
    (fairgrad_jax.pcgrad, {"max_norm": INF}, "max_norm"),
    (fairgrad_jax.imtl_g, {"max_norm": INF}, "max_norm"),
    (fairgrad_jax.famo, {"max_norm": INF, "num_tasks": 2}, "max_norm"),
    (fairgrad_jax.rlw, {"max_norm": INF}, "max_norm"),
])
def test_bad_hyperparameters_are_refused_by_name(factory, kwargs, name):
  with pytest.raises((ValueError, TypeError), match=rf"^{name} must be"):
    factory(**kwargs)


def test_famo_repr_shows_min_losses():
  assert repr(fairgrad_jax.famo(min_losses=[0.5, 0.0], num_tasks=2)) == (
      "famo(gamma=0.001, w_lr=0.025, min_losses=[0.5, 0.0], num_tasks=2)")
