"""FAMO: fast adaptive multitask optimisation (Liu, Feng, Stone & Liu, 2023)."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax.experimental import aggregating

from fairgrad_jax import _aggregator
from fairgrad_jax import _checks
from fairgrad_jax import _gram
from fairgrad_jax._methods import _loss


class FAMOState(NamedTuple):
  """FAMO's state (``state.extra``).

  Attributes:
    logits: (K,) ξ; the task weights are z = softmax(ξ).
    opt_state: the logits' optimizer state (Adam with weight decay γ).
    prev_losses: (K,) the ``losses=`` of the last call (pre-step losses of
      the last step).
    count: calls so far (int32, saturates at 1).
  """

  logits: jax.Array
  opt_state: Any
  prev_losses: jax.Array
  count: jax.Array




def famo_weighting(gamma: float = 1e-3, w_lr: float = 0.025, *,
                   min_losses: float | Any = 0.0) -> _aggregator.Weighting:
  r"""FAMO's :class:`Weighting`: loss-balancing weights from learned logits.

  w_i = (z_i/(l_i − l_i*)) / Σ_j z_j/(l_j − l_j*), z = softmax(ξ); each call
  (but the first) first moves ξ by the log-loss decreases since the last
  call (see :func:`famo`). The state is a :class:`FAMOState` (``init(K)``
  needs K); the losses are needed at every call.

  Args:
    gamma: weight decay γ >= 0 of the logits.
    w_lr: Adam's learning rate for the logits, > 0.
    min_losses: l*, lower bounds of the losses: one finite number, or a
      (K,) array of them (checked against K by ``init``).

  Returns:
    A :class:`Weighting`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> weighting = fairgrad_jax.famo_weighting()
    >>> w, state = weighting(jnp.zeros((2, 2)), weighting.init(2),
    ...                      losses=jnp.array([1.0, 3.0]))
    >>> w.round(4)  # z uniform: w ∝ 1/l
    Array([0.75, 0.25], dtype=float32)

  References:
    Liu, Feng, Stone & Liu, "FAMO: Fast Adaptive Multitask Optimization",
    NeurIPS 2023, arXiv:2306.03792 (Algorithm 1).
  """
  gamma = _checks.real_hyperparameter("gamma", gamma, minimum=0.0)
  w_lr = _checks.real_hyperparameter("w_lr", w_lr, minimum=0.0, strict=True)
  hyperparams = {"gamma": gamma, "w_lr": w_lr}

  def bad_min_losses(num_tasks):
    k = "K" if num_tasks is None else num_tasks
    return ValueError(
        f"min_losses must be a finite number or an array of shape"
        f" (num_tasks,) = ({k},) of them, got {min_losses!r}.")

  if not isinstance(min_losses, jax.core.Tracer):
    given = np.asarray(min_losses)
    if (given.ndim > 1
        or not np.issubdtype(given.dtype, np.number)
        or np.iscomplexobj(given)
        or not np.all(np.isfinite(given))):
      raise bad_min_losses(None)
    if np.any(given != 0):
      hyperparams["min_losses"] = given.tolist()
    lower = jnp.asarray(given, jnp.float32)
  else:
    lower = min_losses
  optimizer = optax.chain(optax.add_decayed_weights(gamma),
                          optax.adam(w_lr))
  eps = 1e-8  # as in the authors' code

  def init(num_tasks):
    _loss.needs_num_tasks("famo", num_tasks)
    if jnp.shape(lower) not in ((), (num_tasks,)):
      raise bad_min_losses(num_tasks)
    xi = jnp.zeros((num_tasks,), jnp.float32)
    return FAMOState(logits=xi, opt_state=optimizer.init(xi),
                     prev_losses=jnp.ones((num_tasks,), jnp.float32),
                     count=jnp.zeros((), jnp.int32))

  def apply(gram, extra, *, losses, key, init):
    del key, init
    xi = extra.logits
    losses = losses.astype(xi.dtype)
    ok = jnp.all(jnp.isfinite(losses) & (losses >= lower))
    gap = losses - lower + eps
    delta = jnp.log(extra.prev_losses - lower + eps) - jnp.log(gap)
    _, vjp = jax.vjp(jax.nn.softmax, xi)
    (grad,) = vjp(delta)
    updates, opt_state = optimizer.update(grad, extra.opt_state, xi)
    first = extra.count == 0
    xi = jnp.where(first, xi, optax.apply_updates(xi, updates))
    opt_state = jax.tree.map(lambda new, old: jnp.where(first, old, new),
                             opt_state, extra.opt_state)
    z = jax.nn.softmax(xi)
    w = (z / gap) / jnp.sum(z / gap)
    new = FAMOState(logits=xi, opt_state=opt_state,
                    prev_losses=losses,
                    count=jnp.minimum(extra.count + 1, 1))
    return _loss.unless(ok, w.astype(gram.dtype), new, extra)

  return _loss.loss_weighting("famo", apply, init=init,
                              hyperparams=hyperparams)


def famo(
    gamma: float = 1e-3,
    w_lr: float = 0.025,
    *,
    min_losses: float | Any = 0.0,
    num_tasks: int | None = None,
    shared: _gram.Mask = None,
    max_norm: float | None = None,
) -> aggregating.Aggregator:
  r"""FAMO: fast adaptive multitask optimisation, a loss-only O(1) method.

  With logits ξ and z = softmax(ξ), FAMO descends Σ_i z_i log(l_i − l_i*)
  normalised by c = Σ_i z_i/(l_i − l_i*): the update is d = Σ_i w_i g_i with
  w_i = (z_i/(l_i − l_i*)) / c (so Σ w = 1), l* = ``min_losses``. After a step
  θ_t → θ_{t+1}, the logits move to balance the log-loss decreases
  δ_i = log(l_i(θ_t) − l*) − log(l_i(θ_{t+1}) − l*): their gradient is
  J_softmax(ξ)ᵀ δ, applied by Adam (learning rate ``w_lr``, L2 weight decay
  ``gamma``, as ``torch.optim.Adam(weight_decay=gamma)``).

  Losses API (one call per step): ``update(grads, state, losses=l_t)`` with
  l_t the losses at the current parameters θ_t. The state remembers the
  previous call's losses l_{t−1}; each call (but the first) first updates ξ
  with δ = log(l_{t−1} − l*) − log(l_t − l*), i.e. it takes this call's
  losses as the post-step losses of the previous step, then weights this
  step's gradients with the updated z. This is the authors' order (step,
  then ``famo.update(post-step losses)``, then the next step); the authors
  re-evaluate the post-step losses on the *same* batch, whereas here they
  come from the next batch (identical for full-batch training). Needs
  ``losses=`` and ``num_tasks``.

  l* is a lower bound of the losses: FAMO takes log(l_i − l_i*) (the
  authors' code adds 1e-8, kept here, so l_i = l_i* is allowed and gives
  that task almost all the weight). A call with a loss that is not finite
  or is below its l_i* (e.g. a negative Gaussian negative log-likelihood
  with the default l* = 0; the authors' code gives NaN there) gives NaN
  weights, hence a NaN update that ``optax.apply_if_finite`` skips, and
  leaves the state (logits, their optimizer state, the previous losses) as
  it was after the last good call, whose losses the next call's δ then
  uses. A call whose update is not finite for another reason (non-finite
  gradients) also keeps the state. For losses that can be negative, give
  their lower bound as ``min_losses``.

  Args:
    gamma: weight decay γ >= 0 of the logits (the FairGrad paper's CelebA
      and NYU-v2 setting, 1e-3; the authors' class default is 1e-2).
    w_lr: Adam's learning rate for the logits, > 0 (the authors' 0.025).
    min_losses: l*, lower bounds of the losses: one finite number for every
      task, or a (K,) array of them (the authors' default 0).
    num_tasks: K (required).
    shared: which leaves are shared (only for the interface).
    max_norm: clip the global norm of the shared update (off; the authors'
      training scripts clip at 1.0 on some benchmarks).

  Returns:
    An :class:`optax.experimental.aggregating.Aggregator`; ``state.extra`` is
    a :class:`FAMOState`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> agg = fairgrad_jax.famo(num_tasks=2)
    >>> state = agg.init(None)
    >>> d, state = agg.update({"w": jnp.eye(2)}, state,
    ...                       losses=jnp.array([1.0, 3.0]))
    >>> state.weights.round(4)  # z uniform: w ∝ 1/l
    Array([0.75, 0.25], dtype=float32)

  References:
    Liu, Feng, Stone & Liu, "FAMO: Fast Adaptive Multitask Optimization",
    NeurIPS 2023, arXiv:2306.03792 (Algorithm 1).
  """
  _loss.needs_num_tasks("famo", num_tasks)
  return _aggregator.aggregator(
      famo_weighting(gamma, w_lr, min_losses=min_losses),
      num_tasks=num_tasks, shared=shared, max_norm=max_norm)
