"""What the stacked-only methods with per-parameter state share (MoCo,
ExcessMTL).

Their state holds K arrays per shared leaf (a K×P buffer, as LibMTL's), which
no Gram matrix summarises; so they are aggregators of stacked gradients
only, not :class:`~fairgrad_jax.Weighting`\\ s. ``init(params)`` allocates the
buffer (the shared leaves are ``shared`` applied to the params);
``init(None)`` leaves it None until the first update, which allocates it
from the gradients (the state's structure then changes after one step:
fine in a Python loop, not as a ``lax.scan`` carry).
"""

import jax
import jax.numpy as jnp

from fairgrad_jax import _aggregator
from fairgrad_jax import _gram


def zeros_per_task(leaves, mask, num_tasks: int | None, *, stacked: bool):
  """(K, ...) zeros in at least float32 for each shared leaf; the leaves are
  stacked gradients (``stacked``) or params (then K = ``num_tasks``)."""
  lead = () if stacked else (num_tasks,)
  return [jnp.zeros(lead + x.shape, jnp.promote_types(x.dtype, jnp.float32))
          for x, m in zip(leaves, mask) if m]


def initial_buffer(params, shared, num_tasks: int):
  """The buffer ``init(params)`` starts from (None without params)."""
  if params is None:
    return None
  return zeros_per_task(jax.tree.leaves(params),
                        _gram.shared_leaves(shared, params), num_tasks,
                        stacked=False)


def check_update(name: str, grads, params, num_tasks: int, shared,
                 buffer, losses=None, needs_losses: bool = False):
  """The update's inputs, checked: (leaves, treedef, mask, shared leaves,
  the buffer (zeros if None), losses as an array or None)."""
  k = _gram.check_stacked(grads, params, name)
  if k != num_tasks:
    raise ValueError(
        f"{name} was built with num_tasks={num_tasks} but the gradients"
        f" have a task axis of size {k}.")
  if losses is None and needs_losses:
    raise ValueError(
        f"{name} needs the task losses: update(grads, state, params,"
        " losses=...) with losses of shape (K,).")
  if losses is not None:
    losses = jnp.asarray(losses)
    if losses.shape != (k,):
      raise ValueError(f"losses must have shape ({k},), got {losses.shape}.")
  leaves, treedef = jax.tree.flatten(grads)
  mask = _gram.shared_leaves(shared, grads)
  shared_leaves = [x for x, m in zip(leaves, mask) if m]
  if buffer is None:
    buffer = zeros_per_task(leaves, mask, k, stacked=True)
  if [y.shape for y in buffer] != [x.shape for x in shared_leaves]:
    raise ValueError(
        f"{name}: the state tracks shared leaves of shapes"
        f" {[y.shape for y in buffer]} but the shared gradients have"
        f" shapes {[x.shape for x in shared_leaves]}: init with the"
        " params of these gradients (or None).")
  return leaves, treedef, mask, shared_leaves, buffer, losses


def keep_if_bad(updates, new_state, old_state):
  """``old_state`` where the update is not finite (a step to skip)."""
  good = _aggregator.all_finite(updates)
  return jax.tree.map(lambda a, b: jnp.where(good, a, b), new_state,
                      old_state)
