"""Representation-level weighting (MGDA-UB): the Gram matrix of ∂l_i/∂z.

Sener & Koltun (2018), Section 3.3: with a model l_i = h_i(θ_h, z),
z = f(θ_sh, x), the task gradients on the shared parameters factor as
∇_θsh l_i = (∂z/∂θ_sh)ᵀ ∇_z l_i, so ‖Σ_i w_i ∇_θsh l_i‖ is at most
‖∂z/∂θ_sh‖ ‖Σ_i w_i ∇_z l_i‖ and the Gram matrix of the ∇_z l_i
(K × dim z, dim z = batch × features) stands in for that of the parameter
gradients (MGDA-UB; their Theorem 1 gives Pareto stationarity when
∂z/∂θ_sh has full rank). Computing it costs one
forward pass and K VJPs and K JVPs through the heads only; the update is then
one VJP of Σ_i w_i l_i through the whole model, so a step costs a
linear-scalarization step plus the heads' share. Any Gram-based weighting
works: FairGrad, MGDA, Nash-MTL, ...

The weights solve the weighting's equation for the representation
gradients, not for the parameter gradients: an approximation of the
parameter-level method (exact when ∂z/∂θ_sh has orthonormal rows).

Cost: the z-gradients of ``chunk_size`` tasks are held at once (K of them by
default), K · dim z floats, and the Gram products take O(K² dim z) flops;
with a large batch and many tasks, pool z or pass ``chunk_size``. Give the
heads one task at a time (``task_heads=K``) so that each z-gradient runs
its own head only: with a (K,)-valued heads function every z-gradient runs all K
heads, which at K = 40 costs more than the encoder.
"""

from typing import Any, Callable
import warnings

import jax
import jax.numpy as jnp

from fairgrad_jax import _aggregator
from fairgrad_jax import _autogram
from fairgrad_jax import _checks


def representation_grad(
    encoder_fn: Callable[..., Any],
    heads_fn: Callable[..., jax.Array],
    weights_fn: "_aggregator.Weighting | Callable[..., jax.Array]",
    *,
    chunk_size: int | None = None,
    mode: _autogram.Mode = "jvp",
    task_heads: int | None = None,
    num_tasks: int | None = None,
) -> Callable[..., Any]:
  r"""Σ_i w_i ∇l_i with the weights of the Gram matrix of ∂l_i/∂z.

  Returns ``grad_fn(params, *args, init=None, state=None)`` like
  :func:`weighted_grad` (a :class:`WeightedGrad`, or ``(WeightedGrad,
  state)`` with ``state=``; ``grad_fn.init(K)`` gives the first state), for
  a model split in two:

  * ``encoder_fn(params, *args) -> z``, the shared representation (any
    pytree of arrays, e.g. the (B, d) features of a batch);
  * ``heads_fn(params, z, *args) -> (K,)`` task losses; or, with
    ``task_heads=K``, one task at a time: ``heads_fn(params, z, task, *args)
    -> scalar``, the loss of task ``task`` (an int32 index, traced: index
    the task's head with it, e.g. ``params["heads"][task]``).

  Both take the whole params (each uses its own part); ``args`` (batch,
  PRNG keys) pass through to both. The function runs the encoder once,
  forms (GᵀG)_ij = Σ <∂l_i/∂z, ∂l_j/∂z> (summed over every entry of z,
  batch included), computes the weights of ``weights_fn`` (a
  :class:`Weighting` of any method, with its state, or a plain ``gram ->
  weights``; constants: stop_gradient) and returns the gradient of
  Σ_i w_i l_i with respect to every parameter (heads included): one
  backward pass through the encoder. ``init=`` warm-starts the solve and
  ``state=`` carries the weighting's state, as in :func:`weighted_grad`.

  Cost of the Gram matrix: K z-gradients, each one backward pass through the
  heads. With a (K,)-valued ``heads_fn`` each of these passes runs every
  head (XLA does not skip the zero cotangents), O(K²) head passes; with
  ``num_tasks`` each runs its own head only, O(K). The products
  <∂l_i/∂z, ∂l_j/∂z> are then, in ``mode="jvp"`` (default), K JVPs through
  the heads (GEMM-shaped, fast on every backend; at the model's matmul
  precision: see :func:`weighted_grad`), or in ``mode="vjp"`` explicit
  products at ``Precision.HIGHEST``.

  Args:
    encoder_fn: ``(params, *args) -> z``.
    heads_fn: ``(params, z, *args) -> (K,)`` losses.
    weights_fn: a :class:`Weighting`, or ``gram -> (K,)`` weights (may take
      ``init=``).
    chunk_size: tasks whose z-gradients are held at once (None: all K; the
      K × dim z block is usually small).
    mode: ``"jvp"`` or ``"vjp"``, how the Gram products are formed (above).
    task_heads: K when ``heads_fn`` gives one task's loss at a time,
      ``heads_fn(params, z, task, *args)`` (above); None when it returns the
      (K,) losses.
    num_tasks: the former name of ``task_heads`` (deprecated: it does not
      set the number of tasks but how ``heads_fn`` is called).

  Returns:
    ``grad_fn(params, *args, init=None, state=None)``.

  Examples:
    >>> import functools, jax, jax.numpy as jnp
    >>> import fairgrad_jax
    >>> from fairgrad_jax.models import MultiTaskMLP
    >>> model = MultiTaskMLP(num_tasks=3, output_dim=1, hidden=8, num_layers=2)
    >>> x, y = jnp.ones((4, 5)), jnp.zeros((3, 4, 1))
    >>> params = model.init(jax.random.key(0), x)
    >>> def encoder(params, x, y):
    ...   return model.apply(params, x, method=model.encode)
    >>> def heads(params, z, x, y):
    ...   pred = model.apply(params, z, method=model.decode)  # (K, B, 1)
    ...   return jnp.mean((pred - y) ** 2, axis=(1, 2))
    >>> grad_fn = fairgrad_jax.representation_grad(
    ...     encoder, heads, fairgrad_jax.fairgrad_weighting(alpha=1.0))
    >>> losses, update, weights = jax.jit(grad_fn)(params, x, y)
    >>> weights.shape, jax.tree.structure(update) == jax.tree.structure(params)
    ((3,), True)
    >>> out, state = jax.jit(grad_fn)(params, x, y, state=grad_fn.init(3))
    >>> bool(state.extra.converged)
    True

  References:
    Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization",
    NeurIPS 2018, arXiv:1810.04650, Section 3.3 (MGDA-UB).
    Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024,
    arXiv:2402.15638.
  """
  _autogram.check_options(chunk_size, mode)
  _autogram.check_weights_fn(weights_fn)
  if not all(callable(f) for f in (encoder_fn, heads_fn, weights_fn)):
    raise ValueError("encoder_fn, heads_fn and weights_fn must be callables.")
  if num_tasks is not None:
    if task_heads is not None:
      raise ValueError("give task_heads=K only (num_tasks is its deprecated"
                       " name).")
    warnings.warn(
        "representation_grad(num_tasks=K) is now task_heads=K (it switches"
        " heads_fn to one task at a time); num_tasks will be removed in the"
        " next minor release.", DeprecationWarning, stacklevel=2)
    task_heads = _checks.num_tasks(num_tasks)
  else:
    try:
      task_heads = _checks.num_tasks(task_heads)
    except ValueError:
      raise ValueError(f"task_heads must be a positive int or None, got"
                       f" {task_heads!r}.") from None
  num_tasks = task_heads

  def grad_fn(params, *args, init=None, state=None):
    z, encoder_vjp = jax.vjp(lambda p: encoder_fn(p, *args), params)
    if num_tasks is None:
      losses_of = lambda p, z: heads_fn(p, z, *args)
      task_grad = None
    else:
      def task_loss(p, z, task):
        loss = heads_fn(p, z, task, *args)
        if jnp.shape(loss) != ():
          raise ValueError(
              "with task_heads given, heads_fn(params, z, task, *args) must"
              f" return the scalar loss of one task, got shape"
              f" {jnp.shape(loss)}.")
        return loss

      tasks = jnp.arange(num_tasks)
      losses_of = lambda p, z: jax.vmap(
          lambda t: task_loss(p, z, t))(tasks)
      task_grad = lambda t: jax.grad(
          lambda z: task_loss(params, z, t))(z)
    losses, heads_vjp = jax.vjp(losses_of, params, z)
    k = _autogram.check_losses(losses, "heads_fn")
    # The z-derivatives alone (XLA shares the heads' forward pass with the
    # VJP above).
    if mode == "jvp":
      _, jvp_fn = jax.linearize(lambda z: losses_of(params, z), z)
      z_vjp = jax.linear_transpose(jvp_fn, z)
    else:
      _, z_vjp = jax.vjp(lambda z: losses_of(params, z), z)
      jvp_fn = None
    mask = [True] * len(jax.tree.leaves(z))
    gram_of = lambda: _autogram.gram_from_vjp(
        lambda ct: z_vjp(ct)[0], k, losses.dtype, mask,
        chunk_size=chunk_size, jvp_fn=jvp_fn, params=z,
        task_grad_fn=task_grad)
    weights, new_state, check = _autogram.gram_solve(
        weights_fn, gram_of, losses, k, init=init, state=state)
    d_heads, d_z = heads_vjp(weights.astype(losses.dtype))
    if check is not None:
      z_treedef = jax.tree.structure(z)

      def gd_of(u):  # (∂l/∂z) u: one JVP along u
        tangent = jax.tree.unflatten(
            z_treedef, [x.astype(t.dtype) for x, t in
                        zip(u, jax.tree.leaves(z))])
        if jvp_fn is not None:
          return jvp_fn(tangent)
        return jax.linear_transpose(lambda ct: z_vjp(ct)[0], losses)(
            tangent)[0]

      zero = check(jax.tree.leaves(d_z), gd_of)
      weights, d_heads, d_z = _aggregator.zero_where(zero,
                                                     (weights, d_heads, d_z))
    (d_encoder,) = encoder_vjp(d_z)
    update = jax.tree.map(lambda a, b: (a + b).astype(a.dtype), d_heads,
                          d_encoder)
    out = _autogram.WeightedGrad(losses=losses, update=update,
                                 weights=weights)
    if state is None:
      return out
    return out, _aggregator.keep_if_bad_step(weights_fn, update, new_state,
                                             state)

  return _autogram.with_init(grad_fn, weights_fn)
