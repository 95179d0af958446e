"""Stacked per-task gradients: task count, shared masks, Gram matrices, sums.

Every aggregator receives a pytree shaped like the params in which each leaf
has a leading task axis of size K (from ``jax.vmap(jax.grad(...))`` over tasks
or ``jax.jacrev`` of a vector of losses). These helpers work on such trees.
"""

import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Mask = Any  # a pytree of bools, a prefix of it, a callable returning one, None

_HIGHEST = jax.lax.Precision.HIGHEST
# Largest |log2| of the largest gradient entry for which the Gram matrix is
# formed from the gradients as they are (no scaled copy).
_DIRECT_RANGE = 40


def num_tasks_of(stacked_grads) -> int:
  """The size K >= 1 of the leading task axis, the same on every leaf.

  Also checks that the gradients are real floating-point arrays: integer or
  bool "gradients" would give an update cast back to their dtype (zeros),
  and complex ones have no Gram matrix of real inner products here.
  """
  leaves = jax.tree.leaves(stacked_grads)
  if not leaves:
    raise ValueError("The per-task gradients have no leaves.")
  for x in leaves:
    dtype = jnp.result_type(x)
    if not jnp.issubdtype(dtype, jnp.floating):
      kind = ("complex" if jnp.issubdtype(dtype, jnp.complexfloating)
              else "integer/bool")
      article = "a" if kind == "complex" else "an"
      raise TypeError(
          "The per-task gradients must be real floating-point arrays"
          f" (float32, bfloat16...), got {article} {kind} leaf of dtype"
          f" {dtype} and shape {jnp.shape(x)}."
          + (" Split complex parameters into real and imaginary parts."
             if kind == "complex" else ""))
  sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in leaves}
  if None in sizes or len(sizes) != 1:
    shapes = [jnp.shape(x) for x in leaves]
    raise ValueError(
        "Every leaf of the per-task gradients needs the same leading task"
        f" axis (K, ...), as made by jax.vmap(jax.grad(...)); got shapes"
        f" {shapes}."
    )
  k = sizes.pop()
  if k == 0:
    raise ValueError(
        "The per-task gradients have a task axis of size K = 0 (no tasks);"
        " an aggregator needs at least one task's gradient.")
  return k


def _optax_wrapper() -> str | None:
  """The optax wrapper this call runs inside that cannot hold stacked grads.

  ``optax.MultiSteps`` accumulates gradients in buffers shaped like the
  params and ``optax.apply_if_finite`` returns zeros shaped like its input
  on a rejected step; neither fits an aggregator, which maps (K, ...)
  per-task gradients to a params-shaped update. Both fail deep inside
  ``lax.cond`` with a shape mismatch; the caller's frames tell them apart.
  """
  frame = sys._getframe(1)  # pylint: disable=protected-access
  for _ in range(64):
    frame = frame.f_back
    if frame is None:
      return None
    if not str(frame.f_globals.get("__name__", "")).startswith("optax"):
      continue
    qualname = getattr(frame.f_code, "co_qualname", frame.f_code.co_name)
    if "MultiSteps." in qualname:
      return "optax.MultiSteps"
    if "apply_if_finite." in qualname:
      return "optax.apply_if_finite"
  return None


_WRAPPER_HINTS = {
    "optax.MultiSteps": (
        "optax.MultiSteps cannot wrap a chain with an aggregator: it"
        " accumulates gradients shaped like the params, while the"
        " aggregator needs the K stacked per-task gradients (K, ...)."
        " Accumulate the per-task gradients yourself instead (sum the"
        " (losses, grads) of fairgrad_jax.task_gradients over the"
        " micro-batches, then call the optimizer once), or compute them on"
        " the whole batch with fairgrad_jax.task_gradients /"
        " fairgrad_jax.weighted_grad."),
    "optax.apply_if_finite": (
        "optax.apply_if_finite cannot wrap a chain with an aggregator: on a"
        " rejected step it returns zeros shaped like its input, the (K, ...)"
        " per-task gradients, not like the params. Put it after the"
        " aggregator: optax.chain(aggregator, optax.apply_if_finite("
        "optax.adam(...), max_consecutive_errors)); a non-finite gradient"
        " gives a NaN update there and the aggregator keeps its state."),
}


def check_stacked(stacked_grads, params, name: str) -> int:
  """:func:`num_tasks_of`, and each leaf (K, *shape) of the params' leaf.

  A plain gradient (shaped like the params) whose every leaf happens to have
  a leading size K would otherwise pass for K stacked gradients; with the
  params at hand (``update(grads, state, params)``) it is refused.

  Args:
    stacked_grads: the per-task gradients given to ``update``.
    params: the params given to ``update``, or None (nothing to compare).
    name: the aggregator's name, for the message.

  Returns:
    K.
  """
  wrapper = _optax_wrapper()
  if wrapper is not None:
    raise ValueError(f"{name}: {_WRAPPER_HINTS[wrapper]}")
  k = num_tasks_of(stacked_grads)
  if params is None:
    return k
  g_leaves, g_def = jax.tree.flatten(stacked_grads)
  p_leaves, p_def = jax.tree.flatten(params)
  if g_def != p_def:
    return k  # optax reports structure mismatches where they matter
  bad = [(jnp.shape(g), jnp.shape(p)) for g, p in zip(g_leaves, p_leaves)
         if tuple(jnp.shape(g)[1:]) != tuple(jnp.shape(p))]
  if bad:
    plain = all(gs == ps for gs, ps in bad)
    hint = (" They look like one plain gradient shaped like the params, not"
            " K stacked per-task gradients: stack them with"
            " jax.jacrev(losses_fn)(params) or fairgrad_jax.task_gradients."
            if plain else "")
    raise ValueError(
        f"{name}: every gradient leaf must have shape (K, *param.shape) with"
        f" K = {k}, the per-task gradients stacked on a leading task axis;"
        f" got (gradient, param) shapes {bad[:4]}"
        f"{' ...' if len(bad) > 4 else ''}."
        + hint)
  return k


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


def _log2_of(max_abs):
  """round(log2 max_abs), or 0 when max_abs is 0 or not finite."""
  ok = jnp.isfinite(max_abs) & (max_abs > 0)
  return jnp.where(ok, jnp.round(jnp.log2(jnp.where(ok, max_abs, 1.0))), 0.0)


def _pow2_int(n, dtype):
  """2^n exactly, for an integer-valued n with 2^n a normal number of dtype."""
  return jnp.ldexp(jnp.ones((), dtype), jnp.asarray(n).astype(jnp.int32))


def times_pow2(x, t):
  """x · 2^t, exact for an integer-valued t when the result is normal.

  ``jnp.exp2`` is neither exact (XLA's CPU exp2 is off by an ulp for most
  integer exponents beyond ±12) nor in range: the scale σ = 2^e of float32
  gradients runs from 2^-149 to 2^128, and 2^-126 and below flush to zero,
  2^128 overflows. So 2^round(t) is applied as two exact factors 2^⌊n/2⌋ and
  2^⌈n/2⌉ (each within ±75, both of one sign, so every intermediate lies
  between x and the result), then the fractional part 2^(t - round(t)),
  |t - round(t)| <= 1/2 (1 exactly when t is an integer).

  Args:
    x: an array (any float dtype).
    t: a real exponent (array or Python number).

  Returns:
    x · 2^t in x's dtype.
  """
  x = jnp.asarray(x)
  t = jnp.asarray(t, jnp.promote_types(jnp.result_type(t), jnp.float32))
  n = jnp.round(t)
  # Far beyond any float range: clamp (the result is 0 or inf as it should).
  n = jnp.clip(jnp.where(jnp.isfinite(n), n, 0.0), -600.0, 600.0)
  half = jnp.floor(n / 2)
  out = x * _pow2_int(half, x.dtype) * _pow2_int(n - half, x.dtype)
  frac = t - jnp.round(t)
  return jnp.where(frac == 0, out, out * jnp.exp2(frac).astype(x.dtype))


def fold_pow2(v, t):
  """v · 2^t where that is exact for every entry (a normal number or 0, as
  v_i is), NaN everywhere otherwise: a power of two to move from a large
  operand onto a small one only where the move changes no product."""
  out = times_pow2(v, t)
  tiny = jnp.finfo(out.dtype).tiny
  exact = jnp.all(jnp.isfinite(out) & jnp.isfinite(v)
                  & jnp.where(v == 0, True, jnp.abs(out) >= tiny))
  return jnp.where(exact, out, jnp.nan)


def log2_scale(leaves, dtype) -> jax.Array:
  """e = log2 σ, σ the power of two nearest max |leaves| (0 if 0 or not finite)."""
  return _log2_of(jnp.max(jnp.stack([jnp.max(jnp.abs(x)).astype(dtype)
                                     for x in leaves])))


# Leaves of at most this many entries per task (biases, norm scales, small
# kernels) are concatenated into one block before a product: each leaf's
# own product, max, scaling and tests cost XLA a compile of their own
# (160 small leaves: 14 s of compile for a weighted sum, issue 13), and a
# copy of such leaves costs nothing that shows.
_TINY_COLUMNS = 1 << 12


def packed(leaves, dtype=None):
  """(K, columns) blocks of ``leaves`` and the inverse for per-column results.

  Every leaf with more than ``_TINY_COLUMNS`` entries per task is its own
  block; the others are concatenated, in order, into one (K, columns) block
  per dtype. A block of one leaf is that leaf as it is (its shape kept, so
  that a tree of one leaf gives XLA the very program it had before packing,
  to the last bit). ``dtype`` (optional) casts every block; with
  ``dtype=None`` each keeps its leaves' dtype.

  Returns:
    ``(blocks, unpack)``: ``unpack`` takes one array per block whose trailing
    axes are the block's (its columns, or the one leaf's ``shape[1:]``) and
    returns one per leaf, shaped ``(..., *leaf.shape[1:])`` in the order of
    ``leaves``.
  """
  leaves = list(leaves)
  groups, order = [], {}
  for i, x in enumerate(leaves):
    cols = int(np.prod(x.shape[1:], dtype=np.int64))
    if cols > _TINY_COLUMNS:
      groups.append([i])
    else:
      key = jnp.dtype(x.dtype)
      if key not in order:
        order[key] = len(groups)
        groups.append([])
      groups[order[key]].append(i)

  def block(group):
    if len(group) == 1:
      x = leaves[group[0]]
      return x if dtype is None else x.astype(dtype)
    parts = [leaves[i].reshape(leaves[i].shape[0], -1) for i in group]
    if dtype is not None:
      parts = [x.astype(dtype) for x in parts]
    return jnp.concatenate(parts, axis=1)

  blocks = [block(g) for g in groups]

  def unpack(results):
    out = [None] * len(leaves)
    for group, r in zip(groups, results):
      if len(group) == 1:
        out[group[0]] = r
        continue
      start = 0
      for i in group:
        shape = leaves[i].shape[1:]
        size = int(np.prod(shape, dtype=np.int64))
        out[i] = r[..., start:start + size].reshape(r.shape[:-1] + shape)
        start += size
    return out

  return blocks, unpack


# On a CPU, XLA's plain J Jᵀ for a short, very wide J (K rows, P ≈ 1M
# columns) runs several times below the machine's matmul speed; the same
# product summed over column chunks of about this many entries (K rows ×
# columns, ~1 MiB of float32, so a chunk stays in cache while it is
# multiplied and its max |entry| taken) runs at it.
_CPU_CHUNK_ENTRIES = 1 << 18
_CPU_CHUNKS_PER_STEP = 4


def chunked_products() -> bool:
  """Whether Gram products are summed over column chunks (the CPU backend).

  GPUs and TPUs keep one fused product: their GEMMs are fast at any shape
  and a loop only adds launches.
  """
  return jax.default_backend() == "cpu"


def _chunk_columns(k, dtype):
  entries = _CPU_CHUNK_ENTRIES * 4 // jnp.dtype(dtype).itemsize
  return int(min(1 << 16, max(1024, 2 ** round(np.log2(entries / max(k, 1))))))


def by_columns(fn, *xs, reduce=False):
  """``fn`` over column chunks of (rows, cols) arrays, in a ``fori_loop``.

  For the rare paths that need the gradients scaled (times a power of two
  that cannot go onto the K weights): scaling a chunk at a time holds one
  chunk rather than a K×P copy. XLA allocates a ``lax.cond`` branch's
  buffers whether or not it runs, so a scaled copy in a rare branch costs
  its memory on every step (a (40, 1M) float32 Jacobian: 160 MiB per copy;
  issue 13). ``fn`` maps chunks of ``xs`` (same columns, cut alike) to an
  array whose last axis is the chunk's columns, concatenated in order, or
  with ``reduce`` to arrays of one shape, summed.
  """
  cols = xs[0].shape[-1]
  chunk = _chunk_columns(sum(x.shape[0] for x in xs), xs[0].dtype)
  n = cols // chunk
  if n < 2:
    return fn(*xs)

  def piece(j):
    return fn(*(jax.lax.dynamic_slice_in_dim(x, j * chunk, chunk, axis=-1)
                for x in xs))

  out = jax.eval_shape(piece, 0)
  tail = [x[..., n * chunk:] for x in xs] if n * chunk < cols else None
  if reduce:
    total = jax.lax.fori_loop(0, n, lambda j, acc: acc + piece(j),
                              jnp.zeros(out.shape, out.dtype))
    return total if tail is None else total + fn(*tail)
  full = jnp.zeros(out.shape[:-1] + (cols,), out.dtype)
  full = jax.lax.fori_loop(
      0, n, lambda j, acc: jax.lax.dynamic_update_slice_in_dim(
          acc, piece(j), j * chunk, axis=-1), full)
  if tail is not None:
    full = jax.lax.dynamic_update_slice_in_dim(full, fn(*tail), n * chunk,
                                               axis=-1)
  return full


# Up to this many rows, a chunk's Gram matrix on a CPU is its K(K+1)/2 row
# dot products rather than one matrix product: XLA's product of two or three
# very wide rows runs at a third of memory speed, its dot products at it
# (P = 1M: K = 2, 2.7 ms against 8.6 ms, torch's J @ J.T 2.2 ms; K = 4, 6.9
# against 8.4 ms; K = 10, the product is the faster; issue 13).
_CPU_ROW_DOTS_MAX_K = 6


def _row_dots(rows, dtype):
  """x xᵀ as the dot products of the rows of x (a list of vectors), each
  computed once."""
  k = len(rows)
  out = [[None] * k for _ in range(k)]
  for i in range(k):
    for j in range(i, k):
      out[i][j] = out[j][i] = jnp.dot(
          rows[i], rows[j], precision=_HIGHEST, preferred_element_type=dtype)
  return jnp.stack([jnp.stack(row) for row in out])


def product_and_max(a_leaves, b_leaves, dtype, log2_scale_by=None):
  """(Σ_leaves A Bᵀ, max |entry| of A and B) for (k, ...) leaves, in one pass.

  With ``log2_scale_by`` = e, each chunk (each leaf off the CPU) is
  multiplied by 2^e (:func:`times_pow2`) just before its product: the
  product of the scaled gradients without a scaled copy of them.

  The products are at ``Precision.HIGHEST``, accumulated in ``dtype``. On a
  CPU each leaf is cut into column chunks (a ``fori_loop``), each chunk
  multiplied and its max taken while it is in cache: one read of the
  gradients in all; a Gram matrix (A is B) of at most
  ``_CPU_ROW_DOTS_MAX_K`` rows is then formed from the chunk's row dot
  products. Elsewhere, one fused product and a max per leaf.
  """
  same = a_leaves is b_leaves
  if not same:
    b_leaves = list(b_leaves)
  gram, max_abs = 0.0, jnp.zeros((), dtype)
  for i, x in enumerate(a_leaves):
    x = x.reshape(x.shape[0], -1)
    y = x if same else b_leaves[i].reshape(b_leaves[i].shape[0], -1)

    cols = x.shape[1]
    chunk = _chunk_columns(x.shape[0] + (0 if same else y.shape[0]), x.dtype)
    n = cols // chunk if chunked_products() else 0
    row_dots = same and n >= 2 and x.shape[0] <= _CPU_ROW_DOTS_MAX_K
    if n >= 2:
      # A whole number of loop steps of `per_step` chunks, each chunk near
      # the cache-sized one and a multiple of 128 columns: the tail left
      # (under 128 columns per chunk) is small, as its copy and product
      # are (P = 1M, K = 2: 576 columns rather than three chunks).
      per_step = min(_CPU_CHUNKS_PER_STEP, n)
      n = per_step * max(1, round(cols / (chunk * per_step)))
      chunk = cols // n // 128 * 128

    def step(xc, yc, row_dots=row_dots):
      # xc: a (rows, columns) chunk, or with row_dots its rows, each sliced
      # from the gradients on its own (one copy of a contiguous segment;
      # a chunk sliced first, then its rows, was two copies).
      if row_dots:
        if log2_scale_by is not None:
          xc = [times_pow2(r.astype(dtype), log2_scale_by) for r in xc]
        m = jnp.max(jnp.stack([jnp.max(jnp.abs(r)) for r in xc])).astype(dtype)
        return _row_dots(xc, dtype), m
      if log2_scale_by is not None:
        xc = times_pow2(xc.astype(dtype), log2_scale_by)
        yc = xc if same else times_pow2(yc.astype(dtype), log2_scale_by)
      prod = jnp.dot(xc, yc.T, precision=_HIGHEST,
                     preferred_element_type=dtype)
      m = jnp.max(jnp.abs(xc)).astype(dtype)
      if not same:
        m = jnp.maximum(m, jnp.max(jnp.abs(yc)).astype(dtype))
      return prod, m

    if n >= 2:
      # Each iteration takes `per_step` chunks, one per quarter of the
      # columns: independent products, which XLA's CPU runtime runs side
      # by side on its threads (one product of a short, wide chunk uses
      # one; K = 40, P = 1M on 2 cores: 45 -> 37 ms).
      steps = n // per_step

      def chunk_at(start, x=x, y=y, chunk=chunk, row_dots=row_dots):
        if row_dots:
          return [jax.lax.dynamic_slice(x, (r, start), (1, chunk))[0]
                  for r in range(x.shape[0])], None
        xc = jax.lax.dynamic_slice_in_dim(x, start, chunk, axis=1)
        return xc, xc if same else jax.lax.dynamic_slice_in_dim(
            y, start, chunk, axis=1)

      def body(j, carry, chunk=chunk, steps=steps, per_step=per_step):
        prod, m = carry
        for part in range(per_step):
          p, mc = step(*chunk_at((part * steps + j) * chunk))
          prod, m = prod + p, jnp.maximum(m, mc)
        return prod, m

      init = (jnp.zeros((x.shape[0], y.shape[0]), dtype),
              jnp.zeros((), dtype))
      prod, m = jax.lax.fori_loop(0, steps, body, init)
      done = steps * per_step * chunk
      if done < cols:  # the tail
        tail = step(list(x[:, done:]) if row_dots else x[:, done:],
                    y[:, done:])
        prod, m = prod + tail[0], jnp.maximum(m, tail[1])
    else:
      prod, m = step(x, y)
    gram = gram + prod
    max_abs = jnp.maximum(max_abs, m)
  return gram, max_abs


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
  leaves, _ = packed(leaves)

  def scaled(log2_sigma):
    return sum(
        jnp.einsum("i...,j...->ij", times_pow2(x.astype(dtype), -log2_sigma),
                   times_pow2(x.astype(dtype), -log2_sigma),
                   precision=_HIGHEST, preferred_element_type=dtype)
        for x in leaves
    )

  if chunked_products():
    # One pass over the gradients: the product and the largest entry
    # together. Products of entries below 2^40 cannot overflow, so in that
    # case (nearly always) the product of the gradients as they are is
    # used and its K×K result scaled by 4^-e (exact); otherwise the same
    # product is redone on the scaled gradients (same summation order: the
    # Gram matrix of 2^n G is exactly 4^n that of G).
    plain, max_abs = product_and_max(leaves, leaves, dtype)
    log2_sigma = _log2_of(max_abs)
    in_range = jnp.abs(log2_sigma) <= _DIRECT_RANGE  # e = 0 for zero or inf

    def scaled_chunked(e):
      return product_and_max(leaves, leaves, dtype, log2_scale_by=-e)[0]

    gram = jax.lax.cond(
        in_range, lambda e: times_pow2(plain, -2 * e), scaled_chunked,
        log2_sigma)
    return gram, log2_sigma

  log2_sigma = log2_scale(leaves, dtype)

  def direct(e):
    # Products of entries below 2^40 cannot overflow: no scaled copy of the
    # gradients is needed; scaling the K×K result by 4^-e is exact.
    return times_pow2(sum(
        jnp.einsum("i...,j...->ij", x, x, precision=_HIGHEST,
                   preferred_element_type=dtype)
        for x in leaves
    ), -2 * e)

  in_range = jnp.abs(log2_sigma) <= _DIRECT_RANGE  # e = 0 for zero or inf
  gram = jax.lax.cond(in_range, direct, scaled, log2_sigma)
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
  return times_pow2(gram, 2 * log2_sigma)


def weighted_sum(weights: jax.Array, x: jax.Array, *, log2_in=None,
                 log2_out=None, factor=None) -> jax.Array:
  """``2^log2_out · factor · Σ_i weights_i (2^log2_in x_i)`` over the task axis.

  One leaf of :func:`weighted_sums`.
  """
  return weighted_sums(weights, [x], log2_in=log2_in, log2_out=log2_out,
                       factor=factor)[0]


def weighted_sums(weights: jax.Array, leaves, *, log2_in=None,
                  log2_out=None, factor=None, bound=None,
                  cast=True) -> list[jax.Array]:
  """``2^log2_out · factor · Σ_i weights_i (2^log2_in x_i)`` for each leaf x.

  The powers of two are applied exactly (:func:`times_pow2`): x scaled to
  O(1) before the sum cannot overflow in it, and a result that is finite in
  x's dtype comes out finite. Accumulates and scales in at least float32,
  then casts to x's dtype, so bf16/f16 gradients are summed in float32 and
  only the result is rounded.

  The rare paths (weights that cannot take the power of two exactly, partial
  sums that overflow) are chosen once for all the leaves, by two
  ``lax.cond``: two per leaf made a model with 160 leaves compile for 14 s
  rather than 1.

  ``bound`` (optional): a scalar B with |2^log2_in x_ij| <= B for every
  entry, NaN or inf when the caller cannot tell (e.g. non-finite
  gradients). Where B Σ_i |weights_i| is far below the dtype's largest
  number no partial sum can overflow, and where the weights also take
  2^log2_in exactly the sums are the products as they are: no finiteness
  pass over the sums, no rescue branch (whose unchanged-sums side costs a
  copy of them: XLA gives a conditional's result a buffer of its own).
  Otherwise, the careful path above. ``cast=False`` returns the sums in
  the accumulation dtype (at least float32) rather than in x's dtype.
  """
  leaves = list(leaves)
  if not leaves:
    return []
  blocks, unpack = packed(leaves)
  ys = [x.astype(jnp.promote_types(x.dtype, jnp.float32)) for x in blocks]

  def tensordot(w, z):
    return jnp.tensordot(w, z, axes=1, precision=_HIGHEST)

  def products(w, zs):
    return [tensordot(w.astype(z.dtype), z) for z in zs]

  def scaled_in(z):
    return z if log2_in is None else times_pow2(z, log2_in)

  def by_column_chunks(fn):
    # fn(weights, (K, c) chunk of the scaled input) -> (c,), on each block
    # a chunk at a time (see by_columns: no K×P copy).
    return [by_columns(lambda z: fn(weights.astype(z.dtype), scaled_in(z)),
                       y.reshape(y.shape[0], -1)).reshape(y.shape[1:])
            for y in ys]

  acc_dtype = jnp.result_type(*ys)
  if log2_in is None:
    folded = weights.astype(acc_dtype)
  else:
    # 2^log2_in goes into the K weights rather than the K×P gradients (on a
    # CPU, scaling those costs more than the product itself): the terms
    # (w_i 2^t) x_ij and w_i (2^t x_ij) are one rounding of the same number
    # while w_i 2^t is a normal number or 0, so the sum is the same.
    folded = fold_pow2(weights.astype(acc_dtype), log2_in)

  def careful():
    if log2_in is None:
      outs = products(folded, ys)
    else:
      outs = jax.lax.cond(
          jnp.all(jnp.isfinite(folded)),
          lambda _: products(folded, ys),
          lambda _: by_column_chunks(tensordot), None)
    return jax.lax.cond(all_finite_leaves(outs), lambda _: outs, rescued,
                        None)

  def rescued(_):
    # Partial sums of entries near the top of the range overflow even when
    # the sum does not: redo them on y / 2^s, s from each coordinate's
    # largest entry over the tasks (only in that rare case; non-finite input
    # stays non-finite). Exact powers of two: a block that did not overflow
    # gets the same sum, up to entries 2^-126 below its largest.
    def one(w, z):
      s = _log2_of(jnp.max(jnp.abs(z), axis=0))
      return times_pow2(tensordot(w, times_pow2(z, -s)), s)

    return by_column_chunks(one)

  if bound is None:
    outs = careful()
  else:
    total = jnp.asarray(bound, acc_dtype) * jnp.sum(
        jnp.abs(weights.astype(acc_dtype)))
    safe = (jnp.all(jnp.isfinite(folded)) & jnp.isfinite(total)
            & (total <= jnp.finfo(acc_dtype).max / 4))
    outs = jax.lax.cond(safe, lambda: products(folded, ys), careful)
  outs = scaled_out(outs, log2_out, factor)
  return [o if not cast else o.astype(x.dtype)
          for o, x in zip(unpack(outs), leaves)]


def scaled_out(xs, log2_out=None, factor=None) -> list[jax.Array]:
  """``2^log2_out · factor · x`` for each x (exact power of two first)."""
  if log2_out is not None:
    xs = [times_pow2(x, log2_out) for x in xs]
  if factor is not None:
    xs = [x * factor for x in xs]
  return xs


def all_finite_leaves(leaves) -> jax.Array:
  """Whether every entry of every array in ``leaves`` is finite (True if none)."""
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]
                           or [jnp.array(True)]))


def task_products(leaves, v_leaves, log2_x, log2_v, dtype) -> jax.Array:
  """(K,) products Σ_leaves (2^log2_x x_i) · (2^log2_v v) in ``dtype``.

  For (K, ...) leaves x and v leaves of one task's shape (e.g. the gradients
  and the update, each scaled to O(1) by its power of two, so that no
  product overflows). Both powers go onto v where that is exact (one pass
  over the K×P gradients instead of two); otherwise each factor is scaled as
  written.
  """
  leaves, _ = packed([x.astype(dtype) for x in leaves])
  v_leaves, _ = packed([v.astype(dtype)[None] for v in v_leaves])

  def scaled(_):
    # A chunk at a time (by_columns): no scaled copy of the gradients.
    return sum(by_columns(
        lambda xc, vc: jnp.tensordot(times_pow2(xc, log2_x),
                                     times_pow2(vc[0], log2_v), axes=1,
                                     precision=_HIGHEST),
        x.reshape(x.shape[0], -1), v.reshape(1, -1), reduce=True)
               for x, v in zip(leaves, v_leaves))

  folded = [times_pow2(v[0], log2_x + log2_v) for v in v_leaves]

  def fast(_):
    return sum(jnp.tensordot(x.reshape(x.shape[0], -1), f.reshape(-1),
                             axes=1, precision=_HIGHEST)
               for x, f in zip(leaves, folded))

  # Exact where the folded entries are normal. Entries of v that the fold
  # makes subnormal lose bits, but below 2^-149 absolute: harmless while the
  # largest is at least tiny / eps (their error is then under eps^2 times
  # the largest); a v that is all zeros gives 0 either way.
  finfo = jnp.finfo(dtype)
  big = jnp.max(jnp.stack([jnp.max(jnp.abs(f)) for f in folded]))
  zero = jnp.all(jnp.stack([jnp.all(v == 0) for v in v_leaves]))
  ok = jnp.isfinite(big) & ((big >= finfo.tiny / finfo.eps) | zero)
  return jax.lax.cond(ok, fast, scaled, None)
