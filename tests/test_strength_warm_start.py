"""The ``init=`` warm start of ``weighted_grad`` and ``representation_grad``.

Measured through the solver's own diagnostics: the weights function is
FairGrad's ``fairgrad_solve`` wrapped to record ``num_iterations`` with
``jax.debug.callback`` (the gradient functions are jitted).
A warm start from the previous weights must take fewer iterations than the
cold start on the same problem, and ``init`` must reach the weights function
unchanged. Both fail when a gradient function drops ``init`` (checked by
mutating ``call_weights_fn``'s ``init`` argument to None at each call site).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fairgrad_jax

K = 4
A = jax.random.normal(jax.random.PRNGKey(2), (K, 6, 6))
SCALE = jnp.array([1.0, 10.0, 0.1, 3.0])  # gradient norms over two decades
X = jax.random.normal(jax.random.PRNGKey(1), (8, 6))
PARAMS = {"w": 0.3 * jax.random.normal(jax.random.PRNGKey(0), (6, 6)),
          "v": jnp.zeros(())}


def encoder(params, x):
  return jnp.tanh(x @ params["w"])


def heads(params, z, x):
  del x
  y = jnp.einsum("bi,kij->kbj", z, A) + params["v"]
  return SCALE * jnp.mean((y - 1.0) ** 2, axis=(1, 2))


def head(params, z, task, x):
  return heads(params, z, x)[task]


def losses(params, x):
  return heads(params, encoder(params, x), x)


def recording_solve(alpha, log):
  def weights_fn(gram, init=None):
    sol = fairgrad_jax.fairgrad_solve(gram, alpha, init=init)
    jax.debug.callback(lambda n: log.append(int(n)), sol.num_iterations)
    return sol
  return weights_fn


def echo(gram, init=None):
  """Returns init when given (the warm start reaches weights_fn as is)."""
  return jnp.full(gram.shape[:1], -1.0) if init is None else 3.0 * init


BUILDERS = {
    "weighted_grad": lambda wfn: fairgrad_jax.weighted_grad(losses, wfn),
    "weighted_grad_vjp_chunk": lambda wfn: fairgrad_jax.weighted_grad(
        losses, wfn, mode="vjp", chunk_size=2),
    "representation_grad": lambda wfn: fairgrad_jax.representation_grad(
        encoder, heads, wfn),
    "representation_grad_per_task": lambda wfn:
        fairgrad_jax.representation_grad(encoder, head, wfn, task_heads=K),
}


ALPHA = 10.0  # the widest gap: measured 6 iterations cold, 1 warm


@pytest.mark.parametrize("builder", [
    "weighted_grad", "representation_grad",
    pytest.param("weighted_grad_vjp_chunk", marks=pytest.mark.slow),
    pytest.param("representation_grad_per_task", marks=pytest.mark.slow)])
def test_warm_start_takes_fewer_iterations(builder):
  log = []
  # One compilation: init = 0 is the documented cold start ("entries that
  # are not positive and finite fall back to the default start").
  grad_fn = jax.jit(BUILDERS[builder](recording_solve(ALPHA, log)))
  cold_init = jnp.zeros((K,))
  cold = grad_fn(PARAMS, X, init=cold_init)
  grad_fn(PARAMS, X, init=cold.weights)  # same problem, from its answer
  drifted = jax.tree.map(lambda p, u: p - 1e-3 * u, PARAMS, cold.update)
  grad_fn(drifted, X, init=cold_init)  # cold on the next step's problem
  grad_fn(drifted, X, init=cold.weights)  # warm from the previous step
  jax.effects_barrier()
  cold_same, warm_same, cold_next, warm_next = log
  # Measured with the damped-Newton solve: 6, 1, 6, 2.
  assert cold_same >= 2 and cold_next >= 2, log
  assert warm_same < cold_same and warm_same <= 1, log
  assert warm_next < cold_next, log


@pytest.mark.parametrize("builder", sorted(BUILDERS))
def test_init_reaches_weights_fn(builder):
  grad_fn = jax.jit(BUILDERS[builder](echo))
  init = jnp.array([0.5, 2.0, 0.25, 1.0])
  np.testing.assert_array_equal(grad_fn(PARAMS, X).weights, -1.0)
  out = grad_fn(PARAMS, X, init=init)
  np.testing.assert_array_equal(out.weights, 3.0 * init)
  # ... and the update is Σ_i w_i ∇l_i with those weights.
  want = jax.grad(lambda p: jnp.dot(3.0 * init, losses(p, X)))(PARAMS)
  for leaf, ref in zip(jax.tree.leaves(out.update), jax.tree.leaves(want)):
    np.testing.assert_allclose(leaf, ref, rtol=1e-5, atol=1e-6)
