"""Property assertions shared by every aggregator's tests (TorchJD style).

Each assertion takes ``step(grads, losses_seq) -> (update, state)``, which
runs a method from its initial state over a short sequence of calls (the
same stacked gradients, one loss vector per call) and returns the last
update; the properties are checked on that update.
"""

import jax
import jax.numpy as jnp
import numpy as np


def flat(tree):
  return np.concatenate([np.ravel(np.asarray(x, np.float64))
                         for x in jax.tree.leaves(tree)])


def flat_tasks(grads):
  """(K, P) matrix of the stacked per-task gradients."""
  leaves = jax.tree.leaves(grads)
  k = leaves[0].shape[0]
  return np.concatenate([np.asarray(x, np.float64).reshape(k, -1)
                         for x in leaves], axis=1)


def assert_structure(step, grads, losses_seq):
  """The update has the params' structure, shapes and dtypes."""
  out, _ = step(grads, losses_seq)
  assert jax.tree.structure(out) == jax.tree.structure(grads)
  for o, g in zip(jax.tree.leaves(out), jax.tree.leaves(grads)):
    assert o.shape == g.shape[1:], (o.shape, g.shape)
    assert o.dtype == g.dtype, (o.dtype, g.dtype)


def assert_finite(step, grads, losses_seq):
  out, state = step(grads, losses_seq)
  assert np.all(np.isfinite(flat(out))), flat(out)
  if state.weights is not None:
    assert np.all(np.isfinite(np.asarray(state.weights)))
  return out


def assert_permutation_equivariant(step, grads, losses_seq, perm, rtol=1e-4):
  """Permuting the tasks (gradients and losses alike) leaves d unchanged."""
  out, _ = step(grads, losses_seq)
  perm_grads = jax.tree.map(lambda x: x[perm], grads)
  perm_losses = [l[perm] for l in losses_seq]
  out_p, _ = step(perm_grads, perm_losses)
  a, b = flat(out), flat(out_p)
  np.testing.assert_allclose(b, a, rtol=rtol,
                             atol=rtol * np.max(np.abs(a)) + 1e-30)


def assert_scaling(step, grads, losses_seq, degree, scale, rtol=1e-4):
  """d(σ g) = σ^degree d(g): e.g. degree 1 for linear methods."""
  out, _ = step(grads, losses_seq)
  out_s, _ = step(jax.tree.map(lambda x: x * scale, grads), losses_seq)
  expected = flat(out) * float(scale) ** degree
  np.testing.assert_allclose(flat(out_s), expected, rtol=rtol,
                             atol=rtol * np.max(np.abs(expected)) + 1e-30)


def assert_non_conflicting(step, grads, losses_seq, atol=1e-5):
  """g_iᵀd >= 0 for every task (up to round-off relative to the norms)."""
  out, _ = step(grads, losses_seq)
  g, d = flat_tasks(grads), flat(out)
  slack = atol * np.linalg.norm(g, axis=1) * np.linalg.norm(d)
  assert np.all(g @ d >= -slack), g @ d


def assert_single_task_parallel(step, grads, losses_seq):
  """With K = 1 the update is a positive multiple of the only gradient."""
  out, _ = step(grads, losses_seq)
  g, d = flat_tasks(grads)[0], flat(out)
  cos = g @ d / (np.linalg.norm(g) * np.linalg.norm(d))
  np.testing.assert_allclose(cos, 1.0, rtol=1e-5)


def assert_zero(step, grads, losses_seq):
  """All-zero gradients give a zero update."""
  out, _ = step(grads, losses_seq)
  np.testing.assert_array_equal(flat(out), 0.0)


def random_grads(key, k, dtype=jnp.float32):
  """Stacked per-task gradients on a two-leaf tree, K tasks."""
  ka, kb = jax.random.split(key)
  return {"a": jax.random.normal(ka, (k, 4), dtype),
          "b": jax.random.normal(kb, (k, 2, 3), dtype)}


def count_runs(monkeypatch, module, name):
  """Counts, at run time, the executions of ``module.name`` inside jitted
  code (a ``jax.debug.callback`` per call; a call in an untaken
  ``lax.cond`` branch does not count). Returns the list the runs append to;
  read it after ``jax.effects_barrier()``."""
  calls = []
  fn = getattr(module, name)

  def counting(*args, **kwargs):
    jax.debug.callback(lambda: calls.append(1))
    return fn(*args, **kwargs)

  monkeypatch.setattr(module, name, counting)
  return calls
