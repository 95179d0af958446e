"""Stacked per-task gradients, the input of every aggregator, made fast."""

from typing import Any, Callable

import jax
import jax.numpy as jnp

from fairgrad_jax import _autogram

# Tasks whose gradients one backward pass computes together on a CPU. There
# a batched pass costs about as much per task as one pass per task (the
# batched matmuls run no faster than plain ones; on the 2-core benchmark
# machine one task at a time measured 0.98-1.03x jax.jacrev's time at K = 10
# and 40), and one task at a time holds one task's intermediate values only.
_CPU_BATCH_SIZE = 1
# XLA's CPU backend runs a convolution inside a loop body (lax.map, scan,
# while) many times slower than the same convolution in straight-line code:
# the backward pass of one 3x3 convolution layer, 8 tasks, 62x (2.7 s
# against 44 ms); CelebA's CNN at widths / 4, batch 32, 40 tasks one at a
# time: 140 s in lax.map against 1.8 s unrolled, 78x; SegNet-MTAN at
# widths / 8, 3 tasks: 23 s against 2.7 s, 8.5x (jax 0.10.2). So on a CPU,
# a model with convolutions gets its backward passes as a straight-line
# sequence (at most this many of them, a bound on the program's size and
# compile time; a choice, not a measured crossover), other models the lean
# loop.
_MAX_UNROLLED = 64


def _has_convolution(jaxpr) -> bool:
  """Whether a (closed) jaxpr or any jaxpr nested in it convolves."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "conv_general_dilated":
      return True
    for value in eqn.params.values():  # scan, cond, pjit, custom_vjp...
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        sub = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr's Jaxpr
        if hasattr(sub, "eqns") and _has_convolution(sub):
          return True
  return False


def default_batch_size(num_tasks: int) -> int:
  """Tasks per backward pass: all of them on GPU/TPU, a few on a CPU."""
  if jax.default_backend() == "cpu":
    return min(_CPU_BATCH_SIZE, num_tasks)
  return num_tasks


def task_gradients(
    losses_fn: Callable[..., jax.Array],
    *,
    batch_size: int | None = None,
    has_aux: bool = False,
    unroll: bool | None = None,
) -> Callable[..., tuple[Any, Any]]:
  """The K task losses and their K gradients, stacked, in one function.

  Every aggregator of this package takes the gradients of the K task losses
  stacked along a leading task axis. ``task_gradients(losses_fn)`` returns
  ``fn(params, *args) -> (losses, stacked_grads)`` that computes them: one
  forward pass through the model, then backward passes that each give the
  gradients of ``batch_size`` tasks at once (all tasks at once is what
  ``jax.jacrev`` does). The gradients are the same either way; what
  changes is speed and memory:

  * on a GPU or TPU, one batched backward pass for all tasks keeps the
    accelerator busy: the default there;
  * on a CPU, batching gives no speed (the matmuls run at the same rate,
    batched or not) but its intermediate values take memory and fall out
    of cache: the default there is one task at a time, in a loop inside
    the compiled program (``jax.lax.map``), which is also the leanest;
    except for a model with convolutions (seen in the traced backward
    pass), whose passes are written out one after the other instead:
    XLA's CPU convolutions run 8-80x slower inside a loop body (measured:
    SegNet-MTAN 8.5x, CelebA's CNN 78x), so a straight-line program is the
    fast one there. It is not the lean one: XLA then keeps more
    intermediate values alive (CelebA's CNN at batch 256, 40 tasks: 20 GB
    of temporaries against 2.5 GB in the loop); ``unroll=False`` keeps the
    loop.

  ``batch_size`` overrides the choice (``batch_size=K`` is ``jax.jacrev``).
  Only the stacked gradients themselves (K copies of the params) are always
  held; to avoid even those, see :func:`weighted_grad`.

  Gradient accumulation: ``optax.MultiSteps`` cannot wrap a chain that
  starts with an aggregator (it accumulates params-shaped gradients; the
  aggregator refuses to run inside it, naming it). Average the stacked
  gradients of the micro-batches instead and call the optimizer once, as in
  the last lines of the example; the weights are then solved once, on the
  whole batch's gradients.

  Args:
    losses_fn: ``(params, *args) -> (K,)`` task losses; ``args`` (a batch,
      a PRNG key...) pass through unchanged and are not differentiated.
    batch_size: tasks per backward pass, a positive int; None chooses by
      backend (above). Values above K mean K.
    has_aux: ``losses_fn`` returns ``(losses, aux)`` (new batch-norm
      statistics, metrics...), as in ``jax.value_and_grad``; ``aux`` is not
      differentiated and comes back beside the losses.
    unroll: with ``batch_size`` < K, write the backward passes out one
      after the other (True) or loop over them (False, ``jax.lax.map``);
      None: unrolled on a CPU when the model convolves (see above), at most
      64 passes, a loop otherwise.

  Returns:
    ``fn(params, *args) -> (losses, stacked_grads)``: the (K,) losses and a
    pytree like ``params`` whose leaves have a leading task axis of size K
    (``stacked_grads[...][i]`` is the gradient of loss i); with
    ``has_aux``, ``((losses, aux), stacked_grads)``. Wrap it in
    ``jax.jit``, or call it inside a jitted step.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import fairgrad_jax
    >>> def losses(params, x):  # three tasks sharing a linear map
    ...   y = x @ params["w"]
    ...   return jnp.mean((y - jnp.arange(3.0)) ** 2, axis=0)
    >>> params = {"w": jnp.ones((4, 3))}
    >>> x = jnp.arange(8.0).reshape(2, 4) / 8
    >>> grads_fn = fairgrad_jax.task_gradients(losses)
    >>> loss_values, grads = jax.jit(grads_fn)(params, x)
    >>> grads["w"].shape  # (K, 4, 3)
    (3, 4, 3)
    >>> bool(jnp.allclose(grads["w"], jax.jacrev(losses)(params, x)["w"]))
    True
    >>> opt = optax.chain(fairgrad_jax.fairgrad(alpha=2.0, num_tasks=3),
    ...                   optax.adam(1e-3))
    >>> state = opt.init(params)
    >>> updates, state = opt.update(grads, state, params)
    >>> acc = None  # accumulation over two micro-batches, instead of MultiSteps
    >>> for xb in (x[:1], x[1:]):
    ...   _, g = grads_fn(params, xb)
    ...   acc = g if acc is None else jax.tree.map(jnp.add, acc, g)
    >>> acc = jax.tree.map(lambda a: a / 2, acc)  # the whole batch's mean
    >>> bool(jnp.allclose(acc["w"], grads["w"], atol=1e-6))
    True
    >>> updates, state = opt.update(acc, state, params)

    With an auxiliary output (here the mean prediction), ``has_aux=True``:

    >>> def losses_and_mean(params, x):
    ...   y = x @ params["w"]
    ...   return jnp.mean((y - jnp.arange(3.0)) ** 2, axis=0), jnp.mean(y)
    >>> fn = fairgrad_jax.task_gradients(losses_and_mean, has_aux=True)
    >>> (loss_values, mean), grads = jax.jit(fn)(params, x)
    >>> bool(jnp.allclose(grads["w"], jax.jacrev(losses)(params, x)["w"]))
    True
  """
  if not callable(losses_fn):
    raise TypeError(
        f"losses_fn must be a callable (params, *args) -> (K,) losses, got"
        f" {type(losses_fn).__name__}.")
  if batch_size is not None and (
      not isinstance(batch_size, int) or isinstance(batch_size, bool)
      or batch_size < 1):
    raise ValueError(
        f"batch_size must be a positive int or None (chosen by backend), got"
        f" {batch_size!r}.")
  if unroll is not None and not isinstance(unroll, bool):
    raise TypeError(f"unroll must be True, False or None, got {unroll!r}.")

  def fn(params, *args):
    if has_aux:
      losses, vjp_fn, aux = jax.vjp(lambda p: losses_fn(p, *args), params,
                                    has_aux=True)
    else:
      losses, vjp_fn = jax.vjp(lambda p: losses_fn(p, *args), params)
    # A (K,) float array, K >= 1 (not a tuple, not integers).
    k = _autogram.check_losses(losses)
    size = default_batch_size(k) if batch_size is None else min(batch_size, k)
    row = lambda ct: vjp_fn(ct)[0]
    cotangents = jnp.eye(k, dtype=losses.dtype)
    chunks = -(-k // size)
    if size >= k:
      grads = jax.vmap(row)(cotangents)
    elif unroll or (unroll is None and jax.default_backend() == "cpu"
                    and chunks <= _MAX_UNROLLED and _has_convolution(
                        jax.make_jaxpr(row)(cotangents[0]).jaxpr)):
      parts = [jax.vmap(row)(cotangents[i:i + size])
               for i in range(0, k, size)]
      grads = jax.tree.map(lambda *p: jnp.concatenate(p), *parts)
    else:
      grads = jax.lax.map(row, cotangents, batch_size=size)
    return ((losses, aux), grads) if has_aux else (losses, grads)

  return fn
