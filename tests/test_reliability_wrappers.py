"""optax wrappers around an aggregator (issue 12, cryptic errors).

``optax.MultiSteps`` and ``optax.apply_if_finite`` around a whole chain that
starts with an aggregator used to fail inside ``lax.cond`` ("a task axis of
the wrong size", "cond branches must have equal output types"). They now
raise a ValueError naming the wrapper and what to do instead; the supported
placements work.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fairgrad_jax as fj

PARAMS = {"w": jnp.ones((3,)), "b": jnp.ones((2,))}
GRADS = jax.tree.map(lambda x: jnp.stack([x, -0.5 * x, 2.0 * x]), PARAMS)
LOSSES = jnp.array([1.0, 2.0, 3.0])
FACTORIES = {
    "mgda": lambda: fj.mgda(num_tasks=3),
    "fairgrad": lambda: fj.fairgrad(2.0, num_tasks=3),
    "famo": lambda: fj.famo(num_tasks=3),
    "graddrop": lambda: fj.graddrop(num_tasks=3),
}


def _step(opt):
  state = opt.init(PARAMS)
  return jax.jit(lambda g, s: opt.update(g, s, PARAMS, losses=LOSSES))(
      GRADS, state)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_multisteps_around_an_aggregator_is_refused(name):
  opt = optax.MultiSteps(optax.chain(FACTORIES[name](), optax.sgd(0.1)), 2)
  with pytest.raises(ValueError, match="optax.MultiSteps cannot wrap.*"
                     "task_gradients"):
    _step(opt)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_apply_if_finite_around_an_aggregator_is_refused(name):
  opt = optax.apply_if_finite(optax.chain(FACTORIES[name](), optax.sgd(0.1)),
                              2)
  with pytest.raises(ValueError, match=r"optax.apply_if_finite cannot wrap.*"
                     r"optax.chain\(aggregator, optax.apply_if_finite"):
    _step(opt)


def test_apply_if_finite_after_the_aggregator_skips_a_bad_step():
  opt = optax.chain(fj.mgda(num_tasks=3),
                    optax.apply_if_finite(optax.sgd(0.1), 2))
  state = opt.init(PARAMS)
  update = jax.jit(lambda g, s: opt.update(g, s, PARAMS))
  good, state = update(GRADS, state)
  bad_grads = jax.tree.map(lambda x: x.at[0, 0].set(jnp.nan), GRADS)
  skipped, bad_state = update(bad_grads, state)
  assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(skipped))
  np.testing.assert_array_equal(bad_state[0].weights, state[0].weights)
  again, _ = update(GRADS, bad_state)
  for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(good)):
    np.testing.assert_array_equal(a, b)


def test_multisteps_after_the_aggregator_works():
  inner = optax.MultiSteps(optax.sgd(0.1), 2).gradient_transformation()
  opt = optax.chain(fj.mgda(num_tasks=3), inner)
  out, _ = _step(opt)
  assert jax.tree.map(jnp.shape, out) == jax.tree.map(jnp.shape, PARAMS)
