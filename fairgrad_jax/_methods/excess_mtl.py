"""ExcessMTL: robust multi-task learning with excess risks (He et al., 2024).

Not a :class:`Weighting`: its excess-risk estimate of task i,
Σ_p g_ip² / √(Σ_s g_ip,s²), divides each coordinate's square by that
coordinate's own running sum of squares (a diagonal, Adagrad-like curvature
estimate). That needs the K×P sums of squares of all past gradients, which
no Gram matrix (inner products only) carries, so ExcessMTL keeps them in its
state and runs on stacked gradients only.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from optax.experimental import aggregating

from fairgrad_jax import _aggregator
from fairgrad_jax import _checks
from fairgrad_jax import _gram
from fairgrad_jax._methods import _loss
from fairgrad_jax._methods import _stacked


class ExcessMTLState(NamedTuple):
  """ExcessMTL's state (``state.extra``).

  Attributes:
    sq_grad_sum: a list with one (K, ...) float32 array per shared leaf (in
      ``jax.tree.leaves`` order): S, the running sums of the squared
      gradients (in units of 4^e, e = ``log2_scale``); None before the
      first step when ``init`` got no params.
    log2_scale: e, the power of two S is kept in (the largest gradient
      entry's so far, so that S stays in range for any gradient scale).
    initial_excess: (K,) the first call's excess-risk estimates, the
      baseline of the later ones (in the units of ``log2_scale``).
    logits: (K,) z, the weights in logs: w = K softmax(z) (z = 0 at the
      start; max z = 0 after each step). A weight that rounds to 0 keeps
      its logit, so it can come back, as it does in float64.
    count: calls so far (int32, saturates at 2).
  """

  sq_grad_sum: Any
  log2_scale: jax.Array
  initial_excess: jax.Array
  logits: jax.Array
  count: jax.Array


def excess_mtl(
    robust_step_size: float = 1e-2,
    *,
    eps: float = 0.0,
    num_tasks: int | None = None,
    shared: _gram.Mask = None,
) -> aggregating.Aggregator:
  r"""ExcessMTL: loss weights raised for the tasks with the largest excess
  risk.

  He et al. weight the tasks by their *excess* risk (distance to their own
  optimum) rather than their loss, so that a noisy task with a high
  irreducible loss does not take over. The excess risk of task i is
  estimated by a second-order expansion with a diagonal, Adagrad-like
  curvature: with S_i ← S_i + g_i² (per coordinate, summed over steps),

      ε_i = Σ_p g_ip² / √S_ip,

  and, from the second call on, the weights take an exponentiated-gradient
  step on the estimates relative to the first call's (the paper's scale
  processing),

      w ← K w ⊙ exp(η ε/ε⁽¹⁾) / Σ_j w_j exp(η ε_j/ε_j⁽¹⁾),

  from w = 1 (the first call keeps w = 1 and records ε⁽¹⁾). The update is
  d = Σ_i w_i g_i on every leaf (LibMTL back-propagates Σ_i w_i l_i). This
  follows LibMTL's ``ExcessMTL`` (from the authors' code), whose defaults
  are η = 1e-2 and w summing to K (TorchJD's ``ExcessMTL`` starts from
  w = 1/K, steps on the first call too, and defaults to η = 1). Two
  differences from LibMTL: its √(S + 1e-7) has an absolute 1e-7 that has
  no meaning for gradients of arbitrary scale (here √S, and a coordinate
  with S = 0 contributes 0, so the weights do not depend on the gradients'
  scale; ``eps=1e-7`` gives LibMTL's √(S + 1e-7)); and a task whose first
  estimate is 0 (a zero gradient) gets the ratio 0 here where LibMTL
  divides by zero. The exponent is applied in
  logs (w = K softmax(log w + η ε/ε⁽¹⁾)), as TorchJD does, so no weight
  overflows (and the state keeps log w, see :class:`ExcessMTLState`).

  S is K copies of the shared parameters (LibMTL's K×P buffer):
  ``init(params)`` allocates it (the shared leaves are ``shared`` applied to
  the params); ``init(None)`` leaves it None until the first update (the
  state's structure then changes after one step: under ``jax.lax.scan``
  give the params). ``losses=`` is not used. A call whose update is not
  finite gives that update (``optax.apply_if_finite`` skips it) and leaves
  the state as it was.

  Args:
    robust_step_size: η > 0, the exponentiated-gradient step (LibMTL's
      1e-2).
    eps: ε >= 0 added to S under the square root (LibMTL's 1e-7; 0: none,
      the estimate then does not depend on the gradients' scale).
    num_tasks: K (required).
    shared: which leaves are shared (the curvature estimate's; see
      :func:`fairgrad`).

  Returns:
    An :class:`optax.experimental.aggregating.Aggregator`; ``state.weights``
    is w (the weights of this step's update) and ``state.extra`` an
    :class:`ExcessMTLState`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> agg = fairgrad_jax.excess_mtl(1.0, num_tasks=2)
    >>> state = agg.init({"w": jnp.zeros(2)})
    >>> for g in ([[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 3.0]]):
    ...   d, state = agg.update({"w": jnp.array(g)}, state)
    >>> # ε⁽¹⁾ = (1, 1), then ε = (1/√2, 9/√10): w = 2 softmax(ε)
    >>> [round(w, 4) for w in state.weights.tolist()]
    [0.2107, 1.7893]

  References:
    He, Zhou, Zhang & Zhao, "Robust Multi-Task Learning with Excess
    Risks", ICML 2024, arXiv:2402.02009; LibMTL's
    ``LibMTL/weighting/ExcessMTL.py``.
  """
  robust_step_size = _checks.real_hyperparameter(
      "robust_step_size", robust_step_size, minimum=0.0, strict=True)
  eps = _checks.real_hyperparameter("eps", eps, minimum=0.0)
  num_tasks = _checks.num_tasks(num_tasks)
  _loss.needs_num_tasks("excess_mtl", num_tasks)
  name = "excess_mtl"

  def init_fn(params):
    return _aggregator.AggregatorState(
        weights=jnp.ones((num_tasks,), jnp.float32),
        extra=ExcessMTLState(
            sq_grad_sum=_stacked.initial_buffer(params, shared, num_tasks),
            log2_scale=jnp.zeros((), jnp.float32),
            initial_excess=jnp.zeros((num_tasks,), jnp.float32),
            logits=jnp.zeros((num_tasks,), jnp.float32),
            count=jnp.zeros((), jnp.int32)))

  def update_fn(grads, state, params=None, *, losses=None, **extra_args):
    del losses, extra_args
    extra = state.extra
    leaves, treedef, mask, shared_leaves, old_sum, _ = (
        _stacked.check_update(name, grads, params, num_tasks, shared,
                              extra.sq_grad_sum))
    k = num_tasks
    dtype = _gram.solve_dtype(shared_leaves)
    # S in units of 4^e, e the largest entry's power of two so far: when a
    # larger gradient comes, the old sums are rescaled by 4^(e_old - e_new)
    # (exact; what falls below the range was negligible next to it).
    e_now = _gram.log2_scale(shared_leaves, dtype)
    first = extra.count == 0
    e_old = jnp.where(first, e_now, extra.log2_scale.astype(dtype))
    e = jnp.maximum(e_old, e_now)
    g = [_gram.times_pow2(x.astype(dtype), -e) for x in shared_leaves]
    # (e_old <= e: the old sums only shrink, no factor overflows.)
    sums = [_gram.times_pow2(s.astype(dtype), 2 * (e_old - e))
            + jnp.square(x) for s, x in zip(old_sum, g)]
    # ε_i = Σ_p g_ip² / √(S_ip + eps), in units of 2^e (√S's); 0 where
    # the root is 0.
    eps_scaled = _gram.times_pow2(jnp.asarray(eps, dtype), -2 * e)
    roots = [jnp.sqrt(s + eps_scaled) for s in sums]
    excess = sum(
        jnp.sum(jnp.where(h > 0, jnp.square(x) / jnp.where(h > 0, h, 1), 0
                          ).reshape(k, -1), axis=1)
        for x, h in zip(g, roots))
    # ε⁽¹⁾ in the units of 2^e: rescaled like S (by 2^(e_old - e)).
    initial = jnp.where(first, excess, _gram.times_pow2(
        extra.initial_excess.astype(dtype), e_old - e))
    ratio = jnp.where(initial > 0,
                      excess / jnp.where(initial > 0, initial, 1), 0)
    logits = extra.logits.astype(dtype)
    logits = jnp.where(first, logits, logits + robust_step_size * ratio)
    logits = logits - jnp.max(logits)
    weights = k * jax.nn.softmax(logits)
    updates = jax.tree.unflatten(treedef, _gram.weighted_sums(weights,
                                                              leaves))
    new_state = _aggregator.AggregatorState(
        weights=weights.astype(state.weights.dtype),
        extra=ExcessMTLState(
            sq_grad_sum=[s.astype(o.dtype) for s, o in zip(sums, old_sum)],
            log2_scale=e.astype(extra.log2_scale.dtype),
            initial_excess=initial.astype(extra.initial_excess.dtype),
            logits=logits.astype(extra.logits.dtype),
            count=jnp.minimum(extra.count + 1, 2)))
    old_state = _aggregator.AggregatorState(
        weights=state.weights,
        extra=ExcessMTLState(old_sum, extra.log2_scale, extra.initial_excess,
                             extra.logits, extra.count))
    return updates, _stacked.keep_if_bad(updates, new_state, old_state)

  return _aggregator.with_repr(
      init_fn, update_fn, name,
      {"robust_step_size": robust_step_size, "eps": eps}
      | _aggregator.common_hyperparams(num_tasks, shared, False, None))
