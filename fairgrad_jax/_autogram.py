"""Gram-only weighted gradients: Σ_i w_i g_i without the K×P Jacobian.

Stacking K per-task gradients costs K copies of the model's gradient. Every
Gram-based method only needs the (K, K) matrix GᵀG = J Jᵀ (J the Jacobian of
the K losses with respect to the parameters) and then the update
d = Jᵀ w = Σ_i w_i g_i, which is *one* vector-Jacobian product with cotangent
w. This module forms J Jᵀ in chunks of ``chunk_size`` tasks, holding at most
O(chunk_size · P) gradient entries at a time, in one of two ways:

* ``mode="jvp"`` (default): for each chunk C of tasks, the rows V = J_C
  (a vmapped VJP of one-hot cotangents), then the columns (J Jᵀ)_{:,C} = J Vᵀ
  (a vmapped JVP). One linearization of the losses serves every product and
  the final update: cost ≈ 1 forward pass + K VJPs + K JVPs + 1 VJP, memory
  O(chunk_size · P) plus the activations. Needs forward-mode differentiable
  losses; the products J Vᵀ run at the model's own matmul precision (on
  GPU/TPU, f32 matmuls default to TF32/bf16 passes, about 1e-3 relative error
  in GᵀG; trace the step under ``jax.default_matmul_precision("highest")``
  or use ``mode="vjp"`` when that matters).
* ``mode="vjp"``: reverse mode only. Blocks (J Jᵀ)_{AB} = J_A J_Bᵀ for chunk
  pairs A <= B, each an explicit ``einsum`` at ``Precision.HIGHEST`` in at
  least float32; cost ≈ n + n(n-1)/2 chunked VJPs for n = ⌈K/chunk_size⌉
  chunks, memory O(2 · chunk_size · P).

Both loop over chunks with ``lax.scan``/``lax.map``, so XLA cannot schedule
the chunks side by side; ``chunk_size=K`` is the fastest, ``chunk_size=1``
the leanest. This is TorchJD's "autogram" idea (Gramian-only engine) in JAX.

Range: a product that overflows or underflows is recomputed on gradients
divided by a power of two (exact), and in ``mode="jvp"`` the tangents are
always so divided; the Gram matrix itself is returned unscaled, which in
float32 holds gradient norms from about 1e-18 to 1e18 (``weights_fn`` sees
the true GᵀG, so any weighting can be plugged in).
"""

import inspect
from typing import Any, Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fairgrad_jax import _aggregator
from fairgrad_jax import _checks
from fairgrad_jax import _gram

_HIGHEST = jax.lax.Precision.HIGHEST
Mode = Literal["jvp", "vjp"]
_MODES = ("jvp", "vjp")


class WeightedGrad(NamedTuple):
  """What a :func:`weighted_grad` function returns (unpacks as a 3-tuple).

  Attributes:
    losses: (K,) task losses at the params.
    update: Σ_i w_i g_i, a pytree like the params (their dtypes). Descend
      along it (pass it to an optax optimizer as the gradient).
    weights: (K,) weights w (float32, float64 with x64); pass them back as
      ``init=`` to warm-start the next solve.
  """

  losses: jax.Array
  update: Any
  weights: jax.Array


def check_options(chunk_size, mode):
  if chunk_size is not None and (
      not isinstance(chunk_size, int) or isinstance(chunk_size, bool)
      or chunk_size < 1):
    raise ValueError(
        f"chunk_size must be a positive int or None (all tasks in one chunk),"
        f" got {chunk_size!r}.")
  if mode not in _MODES:
    raise ValueError(f"mode must be one of {_MODES}, got {mode!r}.")


def _flat(x):
  """(chunk, ...) -> (chunk, size): a 2-D product is a plain GEMM for XLA."""
  return x.reshape(x.shape[0], -1)


def _one_hot_chunks(k, chunk, dtype):
  """(n, chunk, K) one-hot cotangents; padding rows (tasks >= K) are zero."""
  n = -(-k // chunk)
  eye = jnp.eye(n * chunk, k, dtype=dtype)
  return eye.reshape(n, chunk, k), n


def _masked(tree, mask):
  """The leaves of ``tree`` marked by ``mask`` (a list of bools)."""
  return [x for x, m in zip(jax.tree.leaves(tree), mask) if m]


def block_product(a_leaves, b_leaves, dtype):
  """Σ_leaves A Bᵀ for (chunk, ...) leaves, in ``dtype`` at HIGHEST precision.

  The plain product is used when it is safely in range (the common case);
  otherwise (an overflow, or squared norms below 2^-100 where float32 loses
  digits) it is recomputed on the gradients divided by a power of two σ,
  which is exact, and multiplied back by σ².
  """

  same = a_leaves is b_leaves  # a diagonal block: one operand, one copy
  # Small leaves concatenated into blocks (same shapes and dtypes on both
  # sides, so the same blocks): fewer products for XLA to compile.
  a_leaves = _gram.packed(a_leaves)[0]
  b_leaves = a_leaves if same else _gram.packed(b_leaves)[0]

  def product(scale_exp):
    out = 0.0
    for x, y in zip(a_leaves, b_leaves):
      x = _gram.times_pow2(_flat(x).astype(dtype), -scale_exp)
      y = x if same else _gram.times_pow2(_flat(y).astype(dtype), -scale_exp)
      out = out + jnp.dot(x, y.T, precision=_HIGHEST)
    return _gram.times_pow2(out, 2 * scale_exp)

  def rescaled():
    e = _gram.log2_scale(a_leaves, dtype)
    if not same:
      e = jnp.maximum(e, _gram.log2_scale(b_leaves, dtype))
    return product(e)

  if _gram.chunked_products():  # CPU: over column chunks, at matmul speed
    plain = _gram.product_and_max(
        a_leaves, a_leaves if same else b_leaves, dtype)[0]
  else:
    plain = product(jnp.zeros((), dtype))
  small = jnp.exp2(jnp.asarray(-100.0, dtype))
  # Exact zeros pass (orthogonal or zero gradients) unless every entry is
  # zero, which may be an underflow of tiny gradients.
  in_range = (jnp.all(jnp.isfinite(plain))
              & jnp.all((jnp.abs(plain) >= small) | (plain == 0))
              & (jnp.max(jnp.abs(plain)) >= small))
  return jax.lax.cond(in_range, lambda: plain, rescaled)


def restrict_jvp(jvp_fn, params, mask):
  """``jvp_fn`` as a function of the shared leaves' tangents alone.

  Returns ``shared_tangents (list, in leaf order) -> jvp_fn(t)`` where ``t``
  holds them on the shared leaves and zero elsewhere, without ever putting
  an array of zeros into the program: the linear map is linearized once
  more, at zero, in the shared tangents only, so JAX treats the other
  tangents as symbolic zeros and emits no product for them.

  Zeros built with ``jnp.zeros_like`` are not only wasted products (e.g.
  h @ 0 for every task head): XLA sees them as a broadcast constant, and its
  CPU backend (jaxlib 0.10, the YNNPACK dot fusion) can return NaN for a
  dot with such an operand fused with the elementwise ops and the reduction
  that follow, e.g. ``jax.jit(lambda a, p: ((a @ jnp.zeros((1024, 16)) + p)
  * p).sum(0))`` for a (256, 1024) ``a``. That gave NaN Gram matrices with
  ``shared=`` on an MLP of that width (issue 12).
  """
  leaves, treedef = jax.tree.flatten(params)
  if all(mask):
    return lambda shared: jvp_fn(jax.tree.unflatten(treedef, shared))
  # The primal leaves only give the tangents their shapes and dtypes; the
  # second linearization's primal output is never used (dead code).
  zeros = [jnp.zeros(jnp.shape(x), jnp.result_type(x)) for x in leaves]

  def full(shared):
    it = iter(shared)
    return jvp_fn(jax.tree.unflatten(
        treedef, [next(it) if m else z for z, m in zip(zeros, mask)]))

  _, shared_jvp = jax.linearize(full, _masked(zeros, mask))
  return shared_jvp


def gram_from_vjp(vjp_fn, k, loss_dtype, mask, *, chunk_size=None,
                  jvp_fn=None, params=None, task_grad_fn=None):
  """(K, K) Gram matrix J Jᵀ of a linearized function, chunk by chunk.

  Args:
    vjp_fn: cotangent (K,) -> pytree like the params (a VJP of the losses).
    k: number of losses K.
    loss_dtype: dtype of the losses (of the cotangents).
    mask: one static bool per params leaf: does it enter the Gram matrix?
    chunk_size: tasks per chunk (None: all K at once).
    jvp_fn: tangent pytree -> (K,) (the JVP of the same linearization); when
      given, ``mode="jvp"`` is used, else the block pairs of ``mode="vjp"``.
    params: a pytree like the params (for the tangent structure, jvp mode).
    task_grad_fn: optional int32 task index -> that task's gradient (a
      pytree like the params); when given, the rows come from it (vmapped over
      the chunk's tasks) instead of VJPs of one-hot cotangents, which is
      cheaper when each loss depends on a part of the model of its own.

  Returns:
    The Gram matrix in at least float32.
  """
  chunk = k if chunk_size is None else min(chunk_size, k)
  cotangents, n = _one_hot_chunks(k, chunk, loss_dtype)

  def rows(ct):  # (chunk, K) -> leaves (chunk, ...)
    if task_grad_fn is None:
      return jax.tree.leaves(jax.vmap(vjp_fn)(ct))
    # Task i's row is the gradient of loss i; padding rows (all-zero
    # cotangents, tasks >= K) stay zero.
    valid = jnp.any(ct != 0, axis=1)
    leaves = jax.tree.leaves(jax.vmap(task_grad_fn)(jnp.argmax(ct, axis=1)))
    return [jnp.where(valid.reshape((-1,) + (1,) * (x.ndim - 1)), x, 0)
            for x in leaves]

  probe = jax.eval_shape(rows, cotangents[0])
  dtype = _gram.solve_dtype(_masked(probe, mask))

  if jvp_fn is not None:
    shared_jvp = restrict_jvp(jvp_fn, params, mask)

    def columns(ct):
      shared = _masked(rows(ct), mask)
      e = _gram.log2_scale(shared, dtype)
      # Tangents: the chunk's gradients / σ on the shared leaves (exact).
      cols = jax.vmap(shared_jvp)([_gram.times_pow2(x, -e) for x in shared])
      return _gram.times_pow2(cols.astype(dtype), e)  # (chunk, K) = (J J_Cᵀ)ᵀ

    cols = jax.lax.map(columns, cotangents)  # (n, chunk, K)
    gram = cols.reshape(n * chunk, k)[:k]
    return 0.5 * (gram + gram.T)

  if n == 1:  # one chunk: a single product, no loop
    leaves = _masked(rows(cotangents[0]), mask)
    gram = block_product(leaves, leaves, dtype)[:k, :k]
    return 0.5 * (gram + gram.T)

  def block(a_leaves, b_leaves):
    a_masked = _masked(a_leaves, mask)
    b_masked = a_masked if b_leaves is a_leaves else _masked(b_leaves, mask)
    return block_product(a_masked, b_masked, dtype)

  def outer(a):
    a_leaves = rows(cotangents[a])

    def inner(b):
      # Only the upper triangle is computed; b == a reuses the chunk's rows.
      return jax.lax.switch(
          jnp.sign(b - a) + 1,
          [lambda: jnp.zeros((chunk, chunk), dtype),
           lambda: block(a_leaves, a_leaves),
           lambda: block(a_leaves, rows(cotangents[b]))])

    return jax.lax.map(inner, jnp.arange(n))  # (n, chunk, chunk)

  blocks = jax.lax.map(outer, jnp.arange(n))  # (n_a, n_b, chunk, chunk)
  upper = blocks.transpose(0, 2, 1, 3).reshape(n * chunk, n * chunk)[:k, :k]
  # Off-diagonal chunks were computed once; diagonal ones are symmetric.
  chunk_of = jnp.arange(k) // chunk
  diag_chunks = chunk_of[:, None] == chunk_of[None, :]
  return jnp.where(diag_chunks, 0.5 * (upper + upper.T), upper + upper.T)


def accepts_init(weights_fn) -> bool:
  """Whether ``weights_fn`` takes an ``init`` keyword (warm start)."""
  try:
    params = inspect.signature(weights_fn).parameters
  except (TypeError, ValueError):
    return False
  return "init" in params or any(
      p.kind == inspect.Parameter.VAR_KEYWORD for p in params.values())


def call_weights_fn(weights_fn, gram, init, k):
  """Runs a plain ``weights_fn(gram[, init=init])``; checks its (K,) output."""
  if init is not None:
    if not accepts_init(weights_fn):
      raise ValueError(
          "init= was given but weights_fn does not take an `init` keyword;"
          " use e.g. fairgrad_jax.fairgrad_weighting(alpha=2.0), or leave"
          " init out.")
    weights = weights_fn(gram, init=jnp.asarray(init, gram.dtype))
  else:
    weights = weights_fn(gram)
  weights = getattr(weights, "weights", weights)  # e.g. a FairGradSolution
  weights = jnp.asarray(weights)
  if weights.shape != (k,):
    raise ValueError(
        f"weights_fn must map a ({k}, {k}) Gram matrix to ({k},) weights; got"
        f" shape {weights.shape}.")
  return jax.lax.stop_gradient(weights.astype(gram.dtype))


def gram_solve(weights_fn, gram_of, losses, k, *, init, state):
  """Weights of a Gram-only step, and the next state.

  Args:
    weights_fn: a :class:`Weighting` or a plain ``gram -> weights``.
    gram_of: ``() -> (K, K)`` Gram matrix (called only if needed).
    losses: the (K,) losses.
    k: K.
    init: warm-start weights (true units) or None.
    state: an :class:`AggregatorState` or None.

  Returns:
    ``(weights, new_state, check)``: the weights of the true gradients
    (constants), the next state (None without a state), and None or, for a
    weighting with ``zero_at_stationary``, ``check(d_leaves, gd_of) ->
    bool``: whether the update d (its shared leaves) conflicts with a task
    beyond round-off (:func:`fairgrad_jax._aggregator.conflicts`), given
    ``gd_of(u_leaves) -> (K,)`` the products g_iᵀu (a JVP).
  """
  if not isinstance(weights_fn, _aggregator.Weighting):
    if state is not None:
      raise ValueError(
          "state= carries a Weighting's state between calls; weights_fn is a"
          " plain function (pass a fairgrad_jax.Weighting, e.g."
          " fairgrad_jax.fairgrad_weighting(alpha=2.0)).")
    return call_weights_fn(weights_fn, gram_of(), init, k), None, None
  weighting = weights_fn
  dtype = jnp.promote_types(losses.dtype, jnp.float32)
  if state is None:
    state = _aggregator.initial_state(weighting, k)
    if init is not None:
      init = jnp.asarray(init)
      if init.shape != (k,):
        raise ValueError(f"init must have shape ({k},), got {init.shape}.")
      state = state._replace(weights=init.astype(jnp.float32))
  elif init is not None:
    raise ValueError("give init= or state=, not both: state.weights is the"
                     " warm start.")
  elif state.weights is not None and jnp.shape(state.weights) != (k,):
    raise ValueError(f"state.weights has shape {jnp.shape(state.weights)},"
                     f" but the losses have K = {k}.")
  if weighting.needs_gram:
    gram = jax.lax.stop_gradient(gram_of())
    dtype = gram.dtype
    # Solve on GᵀG / σ² (σ² the power of two nearest its largest entry) as
    # the aggregator does: the same weights, in range at any scale.
    e = _gram.log2_scale([jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))],
                         dtype)
    gram = _gram.times_pow2(gram, -2 * e)
  else:
    gram = jnp.zeros((k, k), dtype)
    e = jnp.zeros((), dtype)
  losses = _aggregator.check_losses(weighting, jax.lax.stop_gradient(losses),
                                    k)
  w_scaled, weights, new_state = _aggregator.solve(weighting, gram, e, state,
                                                   losses)
  check = None
  if _aggregator.stationarity_rule(weighting):
    w_scaled = jax.lax.stop_gradient(w_scaled)

    def check(d_leaves, gd_of):
      num_entries = sum(x.size for x in d_leaves)

      def exact():
        # As the aggregator: on u = d / 2^s and the σ-free gradients
        # (G u / σ); the JVP only where the Gram matrix cannot rule a
        # conflict out.
        d_norm, s = _aggregator.norm_and_log2(d_leaves, dtype)
        u = [_gram.times_pow2(x.astype(dtype), -s) for x in d_leaves]
        gd = _gram.times_pow2(jnp.asarray(gd_of(u)).astype(dtype), -e)
        return _aggregator.conflicts(
            gram, w_scaled, gd, d_norm, e * weighting.degree - s,
            num_entries, unconverged=_aggregator.unconverged(new_state))

      return weighting.zero_at_stationary & _aggregator.conflicts_unless_clear(
          gram, w_scaled, num_entries, exact)
  return jax.lax.stop_gradient(weights), new_state, check


def check_losses(losses, what="losses_fn"):
  """Checks a (K,) vector of real floating-point losses, K >= 1; returns K."""
  if not isinstance(losses, jax.Array):
    raise TypeError(
        f"{what} must return one (K,) array of task losses, got a"
        f" {type(losses).__name__}"
        + (" (stack the losses: jnp.stack([l1, l2, ...]))."
           if isinstance(losses, (tuple, list, dict)) else "."))
  if jnp.ndim(losses) != 1:
    raise ValueError(
        f"{what} must return a vector of K task losses, got shape"
        f" {jnp.shape(losses)}.")
  if not jnp.issubdtype(losses.dtype, jnp.floating):
    raise TypeError(
        f"{what} must return real floating-point losses (they are"
        f" differentiated), got dtype {losses.dtype}; compute them from"
        " float arrays (e.g. x.astype(jnp.float32)).")
  if losses.shape[0] == 0:
    raise ValueError(f"{what} returned K = 0 losses; it needs at least one"
                     " task.")
  return losses.shape[0]


def _gram_weighting_for(factory):
  """For an aggregator factory of this package: (name, what to pass instead).

  Found by name: the factory ``fairgrad_jax.<name>`` of a method has the
  constructor ``fairgrad_jax.<name>_weighting`` (GradDrop, which is not a
  weighting, has none); None for anything else.
  """
  # pylint: disable=g-import-not-at-top
  import fairgrad_jax
  for name in fairgrad_jax.__all__:
    if getattr(fairgrad_jax, name) is not factory or not callable(factory):
      continue
    constructor = getattr(fairgrad_jax, f"{name}_weighting", None)
    if constructor is None:
      if name == "graddrop":
        return name, None
      return None
    instead = f"fairgrad_jax.{name}_weighting(...)"
    if not constructor().needs_gram:
      return name, (f"{instead} instead: it weights the losses, so there is"
                    " no Gram weighting to form (the Gram matrix is"
                    " skipped)")
    if hasattr(fairgrad_jax, f"{name}_weights"):
      instead += f" (or fairgrad_jax.{name}_weights, a plain function)"
    return name, instead
  return None


def check_weights_fn(weights_fn, what="weights_fn"):
  """Refuses an aggregator (or its factory) where a weighting is expected."""
  if isinstance(weights_fn, optax.GradientTransformation):
    raise TypeError(
        f"{what} must be a weighting (e.g. fairgrad_jax.mgda_weighting(),"
        " or a function gram -> (K,) weights), got an optax aggregator"
        f" {weights_fn!r}; aggregators take stacked per-task gradients:"
        " use them in an optax chain with fairgrad_jax.task_gradients.")
  if not callable(weights_fn):
    return  # the caller's own "must be callables" error
  found = _gram_weighting_for(weights_fn)
  if found is not None:
    name, weighting = found
    instead = (f" pass {weighting}" if weighting is not None else
               f" {name} drops the gradients' entries, it is not a weighting"
               " (it has no Gram weighting); use it as an optax aggregator on"
               " fairgrad_jax.task_gradients' output")
    raise TypeError(
        f"{what}=fairgrad_jax.{name} is an aggregator factory (an optax"
        f" transformation of stacked gradients), not a weighting gram ->"
        f" (K,) weights;{instead}.")


def weighted_grad(
    losses_fn: Callable[..., jax.Array],
    weights_fn: "_aggregator.Weighting | Callable[..., jax.Array]",
    *,
    chunk_size: int | None = None,
    mode: Mode = "jvp",
    shared: _gram.Mask = None,
    weight_heads: bool | None = None,
) -> Callable[..., Any]:
  r"""Σ_i w_i ∇l_i with the weights of a weighting, without stacking gradients.

  Returns ``grad_fn(params, *args, init=None, state=None)``.
  ``losses_fn(params, *args)`` returns the (K,) task losses; the extra
  arguments (batch, PRNG key...) pass through. The function:

  1. linearizes the losses once (one forward pass);
  2. forms GᵀG = J Jᵀ, J = ∂l/∂params, ``chunk_size`` tasks at a time (see
     the module docstring for ``mode``), never holding the K×P Jacobian
     (skipped for weightings that ignore it: the loss-weighting methods);
  3. computes the weights (constants: stop_gradient);
  4. returns ``update = Jᵀ w = Σ_i w_i g_i``, one more VJP of the same
     linearization.

  ``weights_fn`` is a :class:`Weighting` (any method: ``fairgrad_weighting(
  alpha=2.0)``, ``pcgrad_weighting(seed=0)``, ``famo_weighting()``...) or a
  plain function ``gram -> (K,) weights`` (which may take ``init=`` and may
  return an object with a ``.weights`` field, e.g. a
  :class:`FairGradSolution`).

  * Stateless call: ``grad_fn(params, *args)`` returns a
    :class:`WeightedGrad` (``losses, update, weights``); ``init=weights``
    warm-starts the solve (FairGrad), and a Weighting starts from its
    initial state every time.
  * Stateful call (a :class:`Weighting`): ``out, state = grad_fn(params,
    *args, state=state)``, starting from ``state = grad_fn.init(K)``, an
    :class:`AggregatorState` like the aggregator's: ``state.weights`` the
    last weights (FairGrad's warm start), ``state.extra`` the method's own
    state (PCGrad's and RLW's key, DWA's loss history, UW's and FAMO's
    learned parameters, the solvers' diagnostics). A sequence of stateful
    calls gives the updates that the method's aggregator gives on the
    stacked gradients.

  It is a pure function: wrap it in ``jax.jit``. Under ``jit`` with a batch
  sharded over devices, the per-task gradients are means over the whole
  batch, so XLA averages them across shards before the Gram matrix (see
  :func:`fairgrad_jax.sharding.data_parallel`).

  Args:
    losses_fn: ``(params, *args) -> (K,)`` task losses.
    weights_fn: a :class:`Weighting`, or ``gram -> (K,)`` weights (e.g.
      ``functools.partial(fairgrad_weights, alpha=2.0)``).
    chunk_size: tasks whose gradients are held at once (None: all K, the
      fastest; 1: the leanest, about one extra gradient of memory).
    mode: ``"jvp"`` (VJP/JVP pairs, linear in K) or ``"vjp"`` (reverse mode
      only, explicit float32 HIGHEST-precision products, quadratic in
      K/chunk_size). On a CPU, use ``mode="vjp"`` with ``chunk_size=None``
      for convolutional models: XLA's CPU backend runs the batched
      convolutions of vmapped JVPs (grouped convolutions) and convolutions
      inside the chunk loop 20-40× slower than plain ones (GPUs do not have
      this problem); see the README's measurements.
    shared: which params leaves enter the Gram matrix: None (all), a pytree
      of bools like the params or a prefix of it, or a callable returning one
      from the params (as in :func:`fairgrad`).
    weight_heads: whether leaves outside ``shared`` (task heads) get
      Σ_i w_i g_i, the gradient of Σ_i w_i l_i (True), or the plain Σ_i g_i
      (False, one more VJP). Default: the weighting's own rule
      (:attr:`Weighting.weight_heads`, as its aggregator does), True for a
      plain function.

  Returns:
    ``grad_fn(params, *args, init=None, state=None)`` returning a
    :class:`WeightedGrad`, or ``(WeightedGrad, state)`` when ``state`` is
    given; ``grad_fn.init(num_tasks)`` gives the first state.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import fairgrad_jax
    >>> def losses(params, x):  # three tasks sharing a linear map
    ...   y = x @ params["w"]
    ...   return jnp.mean((y - jnp.arange(3.0)) ** 2, axis=0)
    >>> params = {"w": jnp.ones((4, 3))}
    >>> x = jnp.arange(8.0).reshape(2, 4) / 8
    >>> grad_fn = fairgrad_jax.weighted_grad(
    ...     losses, fairgrad_jax.fairgrad_weighting(alpha=2.0), chunk_size=1)
    >>> step = jax.jit(grad_fn)
    >>> out = step(params, x)
    >>> stacked = jax.jacrev(losses)(params, x)["w"]  # (K, 4, 3), to compare
    >>> gram = jnp.einsum("kij,lij->kl", stacked, stacked)
    >>> w = fairgrad_jax.fairgrad_weights(gram, alpha=2.0)
    >>> bool(jnp.allclose(out.update["w"], jnp.tensordot(w, stacked, 1),
    ...                   rtol=1e-4))
    True

    Carrying the state (warm starts, diagnostics) from step to step:

    >>> state = grad_fn.init(3)
    >>> for _ in range(2):
    ...   out, state = step(params, x, state=state)
    >>> bool(state.extra.converged), state.weights.shape
    (True, (3,))

  References:
    Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024,
    arXiv:2402.15638. TorchJD's Gramian-based engine ("autogram"),
    https://github.com/TorchJD/torchjd.
  """
  check_options(chunk_size, mode)
  check_weights_fn(weights_fn)
  if not callable(losses_fn) or not callable(weights_fn):
    raise ValueError("losses_fn and weights_fn must be callables.")
  heads = resolve_weight_heads(weights_fn, weight_heads)

  def grad_fn(params, *args, init=None, state=None):
    fn = lambda p: losses_fn(p, *args)
    mask = _gram.shared_leaves(shared, params)
    if mode == "jvp":
      losses, jvp_fn = jax.linearize(fn, params)
      k = check_losses(losses)
      vjp_fn = jax.linear_transpose(jvp_fn, params)
      vjp_fn1 = lambda ct: vjp_fn(ct)[0]
    else:
      losses, vjp_fn = jax.vjp(fn, params)
      k = check_losses(losses)
      jvp_fn = None
      vjp_fn1 = lambda ct: vjp_fn(ct)[0]
    gram_of = lambda: gram_from_vjp(vjp_fn1, k, losses.dtype, mask,
                                    chunk_size=chunk_size, jvp_fn=jvp_fn,
                                    params=params)
    weights, new_state, check = gram_solve(weights_fn, gram_of, losses, k,
                                           init=init, state=state)
    update = vjp_fn1(weights.astype(losses.dtype))
    if check is not None:
      leaves, treedef = jax.tree.flatten(update)

      def gd_of(u):  # G u: one JVP along u on the shared leaves
        u = iter(u)
        tangent = jax.tree.unflatten(treedef, [
            next(u).astype(x.dtype) if m else jnp.zeros_like(x)
            for x, m in zip(leaves, mask)])
        if jvp_fn is not None:
          return jvp_fn(tangent)
        return jax.linear_transpose(vjp_fn1, losses)(tangent)[0]

      zero = check([x for x, m in zip(leaves, mask) if m], gd_of)
      weights, update = _aggregator.zero_where(zero, (weights, update))
    if not heads and not all(mask):
      plain = vjp_fn1(jnp.ones_like(losses))
      update = jax.tree.unflatten(
          jax.tree.structure(update),
          [u if m else s for u, s, m in zip(
              jax.tree.leaves(update), jax.tree.leaves(plain), mask)])
    out = WeightedGrad(losses=losses, update=update, weights=weights)
    if state is None:
      return out
    return out, _aggregator.keep_if_bad_step(weights_fn, update, new_state,
                                             state)

  return with_init(grad_fn, weights_fn)


def resolve_weight_heads(weights_fn, weight_heads):
  """The heads rule: the argument, else the weighting's, else True."""
  if weight_heads is not None:
    return _checks.bool_hyperparameter("weight_heads", weight_heads)
  if isinstance(weights_fn, _aggregator.Weighting):
    return weights_fn.weight_heads
  return True


def with_init(grad_fn, weights_fn):
  """Gives ``grad_fn`` its ``init(num_tasks)`` (the first state)."""

  def init(num_tasks):
    if not isinstance(weights_fn, _aggregator.Weighting):
      raise ValueError("init() gives a Weighting's first state; weights_fn"
                       " is a plain function, which has none.")
    num_tasks = _checks.int_hyperparameter("num_tasks", num_tasks)
    return _aggregator.initial_state(weights_fn, num_tasks)

  grad_fn.init = init
  return grad_fn
