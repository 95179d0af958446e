"""Stacked per-task gradients: task count, shared masks, Gram matrices, sums.

Every aggregator receives a pytree shaped like the params in which each leaf
has a leading task axis of size K (from ``jax.vmap(jax.grad(...))`` over tasks
or ``jax.jacrev`` of a vector of losses). These helpers work on such trees.
"""

from typing import Any

import jax
import jax.numpy as jnp

Mask = Any  # a pytree of bools, a prefix of it, a callable returning one, None

_HIGHEST = jax.lax.Precision.HIGHEST
# Largest |log2| of the largest gradient entry for which the Gram matrix is
# formed from the gradients as they are (no scaled copy).
_DIRECT_RANGE = 40


def num_tasks_of(stacked_grads) -> int:
  """The size K of the leading task axis, checked to be the same everywhere."""
  leaves = jax.tree.leaves(stacked_grads)
  if not leaves:
    raise ValueError("The per-task gradients have no leaves.")
  sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in leaves}
  if None in sizes or len(sizes) != 1:
    shapes = [jnp.shape(x) for x in leaves]
    raise ValueError(
        "Every leaf of the per-task gradients needs the same leading task"
        f" axis (K, ...), as made by jax.vmap(jax.grad(...)); got shapes"
        f" {shapes}."
    )
  return sizes.pop()


def _broadcast_prefix(mask, tree):
  """Expands a mask that is a prefix of ``tree`` to one bool per leaf."""
  flat = []

  def expand(m, subtree):
    flat.extend([m] * len(jax.tree.leaves(subtree)))

  jax.tree.map(expand, mask, tree, is_leaf=lambda x: isinstance(x, bool))
  return flat


def shared_leaves(shared: Mask, stacked_grads) -> list[bool]:
  """One static bool per leaf of ``stacked_grads``: is that leaf shared?

  Args:
    shared: None (every leaf shared), a pytree of Python bools with the
      structure of the params or a prefix of it (as in ``optax.masked``), or a
      callable that returns one when given the per-task gradient tree.
    stacked_grads: the per-task gradients.

  Returns:
    A list of bools in ``jax.tree.leaves`` order.
  """
  n = len(jax.tree.leaves(stacked_grads))
  if shared is None:
    return [True] * n
  if callable(shared):
    shared = shared(stacked_grads)
  try:
    flat = _broadcast_prefix(shared, stacked_grads)
  except ValueError as e:
    from fairgrad_jax._masks import mask_mismatch_hint  # pylint: disable=g-import-not-at-top
    raise ValueError(
        "`shared` must be a pytree of bools with the structure of the params"
        " (or a prefix of it); it does not match the gradients."
        f"{mask_mismatch_hint(shared, stacked_grads)} Details: {e}"
    ) from None
  if not all(isinstance(b, bool) for b in flat):
    raise ValueError(
        "`shared` must hold Python bools (static), not arrays; got"
        f" {sorted({type(b).__name__ for b in flat})}."
    )
  if not any(flat):
    raise ValueError("`shared` marks no leaf as shared.")
  return flat


def solve_dtype(leaves) -> jnp.dtype:
  """float32, or float64 when the gradients are float64 (x64 enabled)."""
  dtype = jnp.result_type(*leaves) if leaves else jnp.float32
  return jnp.promote_types(dtype, jnp.float32)


def log2_scale(leaves, dtype) -> jax.Array:
  """e = log2 σ, σ the power of two nearest max |leaves| (0 if 0 or not finite)."""
  max_abs = jnp.max(jnp.stack([jnp.max(jnp.abs(x)).astype(dtype)
                               for x in leaves]))
  ok = jnp.isfinite(max_abs) & (max_abs > 0)
  return jnp.where(ok, jnp.round(jnp.log2(jnp.where(ok, max_abs, 1.0))), 0.0)


def scaled_gram(leaves: list[jax.Array]) -> tuple[jax.Array, jax.Array]:
  """Gram matrix of the gradients scaled by a power of two, and that power.

  Squared gradient norms overflow float32 from norms of about 1e19 and
  underflow below 1e-19. Dividing every gradient by σ = 2^e, the power of two
  nearest the largest entry, is exact in binary floating point and keeps the
  Gram matrix in range whatever the gradients' scale.

  Args:
    leaves: the shared leaves, each (K, ...).

  Returns:
    ``(gram, log2_sigma)``: the (K, K) Gram matrix of g_i / σ in at least
    float32, and e = log2 σ (so that GᵀG = 4^e * gram).
  """
  dtype = solve_dtype(leaves)
  log2_sigma = log2_scale(leaves, dtype)

  def gram_of(scale):
    return sum(
        jnp.einsum("i...,j...->ij", scale(x), scale(x), precision=_HIGHEST,
                   preferred_element_type=dtype)
        for x in leaves
    )

  def direct():
    # Products of entries below 2^40 cannot overflow: no scaled copy of the
    # gradients is needed; scaling the K×K result by 4^-e is exact.
    return gram_of(lambda x: x) * jnp.exp2(-2 * log2_sigma)

  def scaled():
    inv_sigma = jnp.exp2(-log2_sigma)
    return gram_of(lambda x: x.astype(dtype) * inv_sigma)

  in_range = jnp.abs(log2_sigma) <= _DIRECT_RANGE  # e = 0 for zero or inf
  gram = jax.lax.cond(in_range, direct, scaled)
  return gram, log2_sigma


def gram_matrix(stacked_grads, shared: Mask = None) -> jax.Array:
  """The (K, K) Gram matrix GᵀG of stacked per-task gradients.

  Args:
    stacked_grads: a pytree whose leaves all have a leading task axis K.
    shared: which leaves enter the Gram matrix (see :func:`fairgrad`).

  Returns:
    GᵀG with (GᵀG)_ij = Σ_leaves <g_i, g_j>, in float32 (float64 for float64
    gradients), computed at full matmul precision on every backend.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> grads = {"w": jnp.array([[1.0, 0.0], [1.0, 1.0]])}
    >>> fairgrad_jax.gram_matrix(grads)
    Array([[1., 1.],
           [1., 2.]], dtype=float32)
  """
  num_tasks_of(stacked_grads)
  mask = shared_leaves(shared, stacked_grads)
  leaves = [x for x, m in zip(jax.tree.leaves(stacked_grads), mask) if m]
  gram, log2_sigma = scaled_gram(leaves)
  return gram * jnp.exp2(2 * log2_sigma)


def weighted_sum(weights: jax.Array, x: jax.Array, *scales) -> jax.Array:
  """``Σ_i weights_i x_i`` over the leading axis, times ``scales`` in turn.

  Accumulates and scales in at least float32, then casts to x's dtype, so
  bf16/f16 gradients are summed in float32 and only the result is rounded.
  """
  dtype = jnp.promote_types(x.dtype, jnp.float32)
  out = jnp.tensordot(weights.astype(dtype), x.astype(dtype), axes=1,
                      precision=_HIGHEST)
  for scale in scales:
    out = out * scale
  return out.astype(x.dtype)
