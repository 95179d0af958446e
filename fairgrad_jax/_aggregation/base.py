"""From a weighting (Gram matrix → task weights) to an optax aggregator.

A *weighting* maps the K×K Gram matrix of the task gradients (and, for some
methods, the task losses and a state of its own) to K weights. The
*aggregator* built on it takes the stacked per-task gradients and returns
d = Σ_i w_i g_i on the shared leaves. This split follows TorchJD; every
Gram-based method of the package is one weighting plus this module.

An aggregator changes the shapes (K stacked gradients in, one update out),
so optax wrappers that assume the input and output shapes agree cannot
wrap a chain that starts with one: ``optax.MultiSteps`` (accumulate the
stacked gradients yourself, see :func:`fairgrad_jax.task_gradients`) and
``optax.apply_if_finite`` (put it after the aggregator). The update raises
a ValueError saying so when it finds itself inside either.
"""

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from optax.experimental import aggregating

from fairgrad_jax import _checks
from fairgrad_jax import _gram


class AggregatorState(NamedTuple):
  """State of every aggregator of this package.

  Attributes:
    weights: (K,) weights of the last step, d = Σ_i weights_i g_i on the
      shared leaves (before ``scale_by_num_tasks`` and ``max_norm``); None when
      the aggregator was built without ``num_tasks``. NaN-free: a step with
      non-finite gradients keeps the previous weights.
    extra: the method's own state and diagnostics (for :func:`fairgrad`, a
      :class:`FairGradInfo`); None when it has none.
  """

  weights: jax.Array | None
  extra: Any


@dataclasses.dataclass(frozen=True)
class Weighting:
  """A Gram-matrix weighting, as the aggregator builder consumes it.

  Attributes:
    weights: ``(gram, extra, *, init, losses) -> (weights, extra)``. ``gram``
      is the Gram matrix of the gradients divided by a power of two σ (see
      ``degree``); ``init`` is the previous step's weights in the same units,
      or None; ``losses`` the (K,) task losses given to ``update``, or None.
    init: ``num_tasks -> extra``: the method's initial state (may be None).
    degree: p such that the method's update satisfies d(σG) = σ^p d(G)
      (1 for most methods; (1-α)/(1+α) for FairGrad). The builder uses it to
      solve on the well-scaled σ-free Gram matrix and map the result back.
    weight_heads: whether task-specific (non-shared) leaves get Σ w_i g_i
      (loss-weighting methods) rather than the plain Σ g_i (gradient methods,
      as in the authors' FairGrad code).
    needs_gram: False for methods that ignore the Gram matrix (they get a
      K×K zero matrix and the O(K²P) product is skipped).
  """

  weights: Callable[..., tuple[jax.Array, Any]]
  init: Callable[[int | None], Any] = lambda num_tasks: None
  degree: float = 1.0
  weight_heads: bool = False
  needs_gram: bool = True


class _Aggregator(aggregating.Aggregator):
  """An :class:`optax.experimental.aggregating.Aggregator` with a repr."""

  __slots__ = ()

  def __repr__(self):
    return getattr(self.update, "_fairgrad_repr", super().__repr__())


def check_num_tasks(num_tasks):
  if num_tasks is not None and (
      not isinstance(num_tasks, int) or isinstance(num_tasks, bool)
      or num_tasks < 1):
    raise ValueError(f"num_tasks must be a positive int or None, got"
                     f" {num_tasks!r}.")


def check_post_options(max_norm, scale_by_num_tasks=False):
  """Checks the options every aggregator shares; returns ``max_norm``."""
  _checks.bool_hyperparameter("scale_by_num_tasks", scale_by_num_tasks)
  if max_norm is None:
    return None
  # Finite and > 0: None (not inf) turns clipping off.
  return _checks.real_hyperparameter("max_norm", max_norm, minimum=0.0,
                                     strict=True)


def weighted_aggregator(
    weighting: Weighting,
    *,
    name: str,
    hyperparams: dict[str, Any],
    num_tasks: int | None = None,
    shared: _gram.Mask = None,
    scale_by_num_tasks: bool = False,
    max_norm: float | None = None,
) -> aggregating.Aggregator:
  """Builds the optax aggregator of a weighting.

  Args:
    weighting: the method.
    name: the factory's name, for ``repr``.
    hyperparams: the factory's arguments, for ``repr``.
    num_tasks: K; when given, the state keeps the last weights (exposed for
      logging and used to warm-start the next solve) and K is checked.
    shared: which leaves are shared (see :func:`fairgrad`).
    scale_by_num_tasks: multiply the shared update by K.
    max_norm: clip the global norm of the shared update to this value.

  Returns:
    An aggregator whose ``update(grads, state, params=None, *, losses=None,
    **extra_args)`` returns one update shaped like the params.
  """
  check_num_tasks(num_tasks)
  max_norm = check_post_options(max_norm, scale_by_num_tasks)

  def init_fn(params):
    del params
    weights = None
    if num_tasks is not None:
      # Zeros mean "no previous step": the first solve starts cold.
      weights = jnp.zeros((num_tasks,), jnp.float32)
    return AggregatorState(weights=weights, extra=weighting.init(num_tasks))

  def update_fn(grads, state, params=None, *, losses=None, **extra_args):
    del extra_args
    k = _gram.check_stacked(grads, params, name)
    if num_tasks is not None and k != num_tasks:
      raise ValueError(
          f"{name} was built with num_tasks={num_tasks} but the gradients"
          f" have a task axis of size {k}."
      )
    if losses is not None:
      losses = jnp.asarray(losses)
      if losses.shape != (k,):
        raise ValueError(f"losses must have shape ({k},), got {losses.shape}.")
    leaves, treedef = jax.tree.flatten(grads)
    mask = _gram.shared_leaves(shared, grads)
    shared_leaves = [x for x, m in zip(leaves, mask) if m]

    if weighting.needs_gram:
      gram, e = _gram.scaled_gram(shared_leaves)
    else:
      gram = jnp.zeros((k, k), _gram.solve_dtype(shared_leaves))
      e = jnp.zeros((), gram.dtype)
    p = weighting.degree
    init = None
    if state.weights is not None:
      # True weights w relate to those of the σ-free problem by w = σ^(p-1) w̃.
      init = _gram.times_pow2(state.weights.astype(gram.dtype), e * (1.0 - p))
    w_scaled, extra = weighting.weights(gram, state.extra, init=init,
                                        losses=losses)
    w_scaled = w_scaled.astype(gram.dtype)

    # d = σ^p Σ w̃_i (g_i / σ), multiplied in this order, in float32, with
    # exact powers of two (σ runs from 2^-149 to 2^128 in float32), so that
    # no factor overflows or flushes to zero when d itself is finite.
    shared_out = [
        _gram.weighted_sum(w_scaled, x, log2_in=-e, log2_out=e * p,
                           factor=k if scale_by_num_tasks else None
                           ).astype(gram.dtype)
        for x in shared_leaves]
    if max_norm is not None:
      # ‖d‖ = 2^s ‖d / 2^s‖: no overflow of the squares for d near 1e38.
      s = _gram.log2_scale(shared_out, gram.dtype)
      norm = jnp.sqrt(sum(jnp.sum(jnp.square(_gram.times_pow2(x, -s)))
                          for x in shared_out))
      # Clipped: d / 2^s times max_norm / ‖d / 2^s‖ (2^-s alone may flush).
      clip = _gram.times_pow2(norm, s) > max_norm
      factor = max_norm / jnp.where(norm > 0, norm, 1.0)
      shared_out = [jnp.where(clip, _gram.times_pow2(x, -s) * factor, x)
                    for x in shared_out]

    head_weights = (_gram.times_pow2(w_scaled, e * (p - 1.0))
                    if weighting.weight_heads
                    else jnp.ones((k,), gram.dtype))
    shared_iter = iter(shared_out)
    out_leaves = [
        next(shared_iter).astype(x.dtype) if m
        else _gram.weighted_sum(head_weights, x)
        for x, m in zip(leaves, mask)
    ]

    new_weights = state.weights
    if state.weights is not None:
      w_true = _gram.times_pow2(w_scaled, e * (p - 1.0))
      ok = jnp.all(jnp.isfinite(w_true))
      new_weights = jnp.where(ok, w_true, state.weights).astype(
          state.weights.dtype)
    return (jax.tree.unflatten(treedef, out_leaves),
            AggregatorState(weights=new_weights, extra=extra))

  args = ", ".join(f"{k}={v!r}" for k, v in hyperparams.items())
  update_fn._fairgrad_repr = f"{name}({args})"  # pylint: disable=protected-access
  return _Aggregator(init_fn, update_fn)


def common_hyperparams(num_tasks, shared, scale_by_num_tasks, max_norm):
  """The builder's own arguments, for ``repr``, leaving defaults out."""
  out = {"num_tasks": num_tasks}
  if shared is not None:
    out["shared"] = shared
  if scale_by_num_tasks:
    out["scale_by_num_tasks"] = True
  if max_norm is not None:
    out["max_norm"] = max_norm
  return out

