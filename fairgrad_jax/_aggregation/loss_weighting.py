"""Loss-weighting baselines: RLW, DWA, UW, scale-invariant and FAMO.

Each of these methods weights the task *losses*: the update is the gradient of
Σ_i w_i l_i, i.e. d = Σ_i w_i g_i on every leaf (shared and task-specific).
The weights come from the losses (given as ``update(..., losses=...)``), a
PRNG key or a learned state, never from the Gram matrix, so the aggregator
skips the O(K²P) Gram product.

Bad steps: under ``jit`` a bad value cannot raise. Losses outside a method's
domain (non-finite, or non-positive where the method takes a ratio or a log)
give NaN weights, hence a NaN update, and every non-finite update (from the
losses or from the gradients) leaves the whole aggregator state (``weights``
and ``extra``) as it was after the last good step. Behind
``optax.apply_if_finite`` such a step is skipped and training goes on as if
it had not happened.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax.experimental import aggregating

from fairgrad_jax import _checks
from fairgrad_jax import _gram
from fairgrad_jax._aggregation import base
from fairgrad_jax._aggregation.gradient_surgery import check_seed


def _needs_losses(name, losses):
  if losses is None:
    raise ValueError(f"{name} needs the task losses: update(grads, state,"
                     " params, losses=...) with losses of shape (K,).")
  if not (jnp.issubdtype(losses.dtype, jnp.floating)
          or jnp.issubdtype(losses.dtype, jnp.integer)):
    raise TypeError(f"{name} needs real losses, got dtype {losses.dtype}.")


def _needs_num_tasks(name, num_tasks):
  if num_tasks is None:
    raise ValueError(f"{name} keeps per-task state: give num_tasks=K.")


def _unless(ok, weights, new_extra, old_extra):
  """NaN weights and the old state where ``ok`` is False (a step to skip)."""
  weights = jnp.where(ok, weights, jnp.nan)
  extra = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_extra,
                       old_extra)
  return weights, extra


def _all_finite(tree):
  leaves = jax.tree.leaves(tree)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]
                           or [jnp.array(True)]))


def _loss_aggregator(name, weights, init, hyperparams, num_tasks, shared,
                     max_norm):
  if max_norm is not None:
    max_norm = _checks.real_hyperparameter("max_norm", max_norm, minimum=0.0,
                                           strict=True)
  agg = base.weighted_aggregator(
      base.Weighting(weights=weights, init=init, degree=1.0,
                     weight_heads=True, needs_gram=False),
      name=name,
      hyperparams=hyperparams | base.common_hyperparams(
          num_tasks, shared, False, max_norm),
      num_tasks=num_tasks, shared=shared, max_norm=max_norm)

  def update_fn(grads, state, params=None, **extra_args):
    updates, new_state = agg.update(grads, state, params, **extra_args)
    # A non-finite update (bad losses or bad gradients) is a step that
    # apply_if_finite skips: keep the state of the last good step.
    ok = _all_finite(updates)
    new_state = jax.tree.map(lambda new, old: jnp.where(ok, new, old),
                             new_state, state)
    return updates, new_state

  # pylint: disable-next=protected-access
  update_fn._fairgrad_repr = agg.update._fairgrad_repr
  return type(agg)(agg.init, update_fn)


def rlw(
    *,
    seed: int = 0,
    num_tasks: int | None = None,
    shared: _gram.Mask = None,
    max_norm: float | None = None,
) -> aggregating.Aggregator:
  r"""Random loss weighting (RLW): weights softmax(z), z ~ N(0, I) each step.

  d = Σ_i w_i g_i with fresh weights w = softmax(z) at every step, z standard
  normal (the paper's default distribution), drawn from a PRNG key kept in
  ``state.extra``, seeded by ``seed``. ``losses=`` is accepted and ignored.
  A step whose update is not finite (non-finite gradients) keeps the state:
  the next step draws the same weights.

  Args:
    seed: seed of the PRNG key.
    num_tasks: K; when given, ``state.weights`` holds the last weights.
    shared: which leaves are shared (only for the interface: every leaf gets
      Σ_i w_i g_i).
    max_norm: clip the global norm of the shared update (off).

  Returns:
    An :class:`optax.experimental.aggregating.Aggregator`; ``state.extra`` is
    the PRNG key of the next step.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> agg = fairgrad_jax.rlw(seed=0, num_tasks=3)
    >>> _, state = agg.update({"w": jnp.ones((3, 2))}, agg.init(None))
    >>> round(float(state.weights.sum()), 4)
    1.0

  References:
    Lin, Ye, Xu, Shi & Zhang, "Reasonable Effectiveness of Random Weighting:
    A Litmus Test for Multi-Task Learning", TMLR 2022, arXiv:2111.10603.
  """
  check_seed(seed)

  def weights(gram, key, *, init, losses):
    del init, losses
    key, sub = jax.random.split(key)
    z = jax.random.normal(sub, gram.shape[:1], gram.dtype)
    return jax.nn.softmax(z), key

  return _loss_aggregator("rlw", weights,
                          lambda num_tasks: jax.random.PRNGKey(seed),
                          {"seed": seed}, num_tasks, shared, max_norm)


class DWAState(NamedTuple):
  """DWA's state (``state.extra``).

  Attributes:
    losses: (2, K) losses of the last call (row 0) and of the one before
      (row 1).
    count: how many calls have been made (int32, saturates at 2).
  """

  losses: jax.Array
  count: jax.Array


def dwa(
    temperature: float = 2.0,
    *,
    num_tasks: int | None = None,
    shared: _gram.Mask = None,
    max_norm: float | None = None,
) -> aggregating.Aggregator:
  r"""Dynamic weight average (DWA): weights from the rate of loss decrease.

  w_i(t) = K exp(r_i/T) / Σ_j exp(r_j/T), r_i = l_i(t−1)/l_i(t−2), and
  w_i = 1 for the first two steps; d = Σ_i w_i g_i. The original averages the
  losses over each epoch; here l(t−1), l(t−2) are the ``losses=`` of the two
  previous calls to ``update`` (kept in :class:`DWAState`), so it reacts per
  step. For the epoch version, pass epoch-average losses, e.g. by calling
  with the same averaged losses for a whole epoch. Needs ``losses=`` at every
  call and ``num_tasks``.

  The losses must be finite and > 0 (the rate r_i is a ratio of losses, as in
  the paper, whose losses are positive). A call with a loss that is not
  gives NaN weights, hence a NaN update that ``optax.apply_if_finite``
  skips, and leaves the state as it was: the loss never enters the history,
  so later steps are unaffected. A call whose update is not finite for
  another reason (non-finite gradients) also keeps the state. A task whose
  loss can be exactly 0 (or negative) needs a shift first, e.g. l + 1e-8:
  every call with such a loss is skipped.

  Args:
    temperature: T > 0, finite (the paper's 2).
    num_tasks: K (required).
    shared: which leaves are shared (only for the interface).
    max_norm: clip the global norm of the shared update (off).

  Returns:
    An :class:`optax.experimental.aggregating.Aggregator`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> agg = fairgrad_jax.dwa(num_tasks=2)
    >>> state, g = agg.init(None), {"w": jnp.eye(2)}
    >>> for l in ([1.0, 1.0], [0.5, 1.0], [0.5, 1.0]):
    ...   d, state = agg.update(g, state, losses=jnp.array(l))
    >>> state.weights.round(4)  # r = (0.5, 1): 2 softmax(r / 2)
    Array([0.8756, 1.1244], dtype=float32)

  References:
    Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention",
    CVPR 2019, arXiv:1803.10704 (Section 3.3, eq. 7).
  """
  temperature = _checks.real_hyperparameter("temperature", temperature,
                                            minimum=0.0, strict=True)
  _needs_num_tasks("dwa", num_tasks)
  base.check_num_tasks(num_tasks)

  def init(num_tasks):
    return DWAState(losses=jnp.ones((2, num_tasks), jnp.float32),
                    count=jnp.zeros((), jnp.int32))

  def weights(gram, extra, *, init, losses):
    del init
    _needs_losses("dwa", losses)
    k = gram.shape[0]
    prev = extra.losses.astype(gram.dtype)
    ratio = prev[0] / prev[1]
    w = k * jax.nn.softmax(ratio / temperature)
    w = jnp.where(extra.count >= 2, w, jnp.ones_like(w))
    new = DWAState(
        losses=jnp.stack([losses.astype(extra.losses.dtype), extra.losses[0]]),
        count=jnp.minimum(extra.count + 1, 2))
    ok = jnp.all(jnp.isfinite(losses) & (losses > 0))
    return _unless(ok, w, new, extra)

  return _loss_aggregator("dwa", weights, init, {"temperature": temperature},
                          num_tasks, shared, max_norm)


class UWState(NamedTuple):
  """UW's state (``state.extra``).

  Attributes:
    log_variances: (K,) learned s_i = log σ_i²; the weights are exp(−s_i).
    opt_state: the state of the optimizer that learns them.
  """

  log_variances: jax.Array
  opt_state: Any


def uw(
    learning_rate: float = 0.025,
    *,
    optimizer: optax.GradientTransformation | None = None,
    num_tasks: int | None = None,
    shared: _gram.Mask = None,
    max_norm: float | None = None,
) -> aggregating.Aggregator:
  r"""Uncertainty weighting (UW): weights exp(−s_i) with learned log-variances.

  Kendall et al. minimise Σ_i exp(−s_i) l_i + s_i over the network and the
  log-variances s_i = log σ_i². Here s lives in ``state.extra``: at each call
  the update is d = Σ_i exp(−s_i) g_i with the current s, then s takes one
  step of ``optimizer`` (default Adam at ``learning_rate``) on
  ∂/∂s_i = 1 − exp(−s_i) l_i evaluated at this call's ``losses=`` — the
  same joint step as training s with the network. s starts at 0 (weights 1)
  and tends to log l_i. The default learning rate 0.025 is the
  ``method-params-lr`` of Nash-MTL's benchmark code, which the FairGrad paper
  uses. Needs ``losses=`` and ``num_tasks``.

  The losses must be finite and >= 0 (the paper's regression and
  classification losses; its optimum s_i = log l_i needs l_i > 0, and at
  l_i = 0 s_i keeps decreasing, so w_i keeps growing). A call with a
  negative or non-finite loss gives NaN weights, hence a NaN update that
  ``optax.apply_if_finite`` skips, and leaves the state (s and its optimizer
  state) as it was; so does a call whose update is not finite for another
  reason (non-finite gradients). For losses that can be negative (e.g. a
  Gaussian negative log-likelihood), shift them by a lower bound first.

  Args:
    learning_rate: Adam's learning rate for s, finite and > 0 (ignored with
      ``optimizer``).
    optimizer: any optax transformation to learn s with, instead of Adam.
    num_tasks: K (required).
    shared: which leaves are shared (only for the interface).
    max_norm: clip the global norm of the shared update (off).

  Returns:
    An :class:`optax.experimental.aggregating.Aggregator`; ``state.extra`` is
    a :class:`UWState`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> agg = fairgrad_jax.uw(num_tasks=2)
    >>> state = agg.init(None)
    >>> d, state = agg.update({"w": jnp.eye(2)}, state,
    ...                       losses=jnp.array([4.0, 0.5]))
    >>> state.weights  # exp(-0) at the first step
    Array([1., 1.], dtype=float32)
    >>> state.extra.log_variances.round(4)  # Adam's first step: -lr sign(1 - l)
    Array([ 0.025, -0.025], dtype=float32)

  References:
    Kendall, Gal & Cipolla, "Multi-Task Learning Using Uncertainty to Weigh
    Losses for Scene Geometry and Semantics", CVPR 2018, arXiv:1705.07115.
  """
  if optimizer is None:
    learning_rate = _checks.real_hyperparameter(
        "learning_rate", learning_rate, minimum=0.0, strict=True)
    optimizer = optax.adam(learning_rate)
  _needs_num_tasks("uw", num_tasks)
  base.check_num_tasks(num_tasks)

  def init(num_tasks):
    s = jnp.zeros((num_tasks,), jnp.float32)
    return UWState(log_variances=s, opt_state=optimizer.init(s))

  def weights(gram, extra, *, init, losses):
    del init
    _needs_losses("uw", losses)
    s = extra.log_variances
    grad = 1.0 - jnp.exp(-s) * losses.astype(s.dtype)
    updates, opt_state = optimizer.update(grad, extra.opt_state, s)
    new_s = optax.apply_updates(s, updates)
    ok = jnp.all(jnp.isfinite(losses) & (losses >= 0))
    return _unless(ok, jnp.exp(-s).astype(gram.dtype),
                   UWState(new_s, opt_state), extra)

  hyper = ({"learning_rate": learning_rate} if optimizer is None
           else {"optimizer": optimizer})
  return _loss_aggregator("uw", weights, init, hyper, num_tasks, shared,
                          max_norm)


def scale_invariant(
    *,
    num_tasks: int | None = None,
    shared: _gram.Mask = None,
    max_norm: float | None = None,
) -> aggregating.Aggregator:
  r"""Scale-invariant (SI) loss: the gradient of Σ_i log l_i.

  d = Σ_i g_i / l_i, i.e. weights 1/l_i from ``losses=`` (required, > 0).
  Equivalently, linear scalarization of ``fair_loss(losses, 1.0)``; invariant
  to rescaling any task's loss.

  log l_i is defined for l_i > 0 only: a call with a loss that is not finite
  and > 0 gives NaN weights, hence a NaN update that
  ``optax.apply_if_finite`` skips (never the gradient ascent of a negative
  weight 1/l_i, nor the silent drop of a task with l_i = inf), and
  ``state.weights`` keeps the last good weights. For losses that can be
  negative (e.g. a Gaussian negative log-likelihood), shift them by a lower
  bound first.

  Args:
    num_tasks: K; when given, ``state.weights`` holds the last weights.
    shared: which leaves are shared (only for the interface).
    max_norm: clip the global norm of the shared update (off).

  Returns:
    An :class:`optax.experimental.aggregating.Aggregator`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> agg = fairgrad_jax.scale_invariant()
    >>> agg.update({"w": jnp.eye(2)}, agg.init(None),
    ...            losses=jnp.array([2.0, 0.5]))[0]["w"]
    Array([0.5, 2. ], dtype=float32)

  References:
    The SI baseline of Navon et al., "Multi-Task Learning as a Bargaining
    Game", ICML 2022, arXiv:2202.01017 (Section 6), and Ban & Ji, "Fair
    Resource Allocation in Multi-Task Learning", ICML 2024, arXiv:2402.15638.
  """

  def weights(gram, extra, *, init, losses):
    del init
    _needs_losses("scale_invariant", losses)
    ok = jnp.all(jnp.isfinite(losses) & (losses > 0))
    return _unless(ok, 1.0 / losses.astype(gram.dtype), extra, extra)

  return _loss_aggregator("scale_invariant", weights, lambda k: None, {},
                          num_tasks, shared, max_norm)


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
  gamma = _checks.real_hyperparameter("gamma", gamma, minimum=0.0)
  w_lr = _checks.real_hyperparameter("w_lr", w_lr, minimum=0.0, strict=True)
  _needs_num_tasks("famo", num_tasks)
  base.check_num_tasks(num_tasks)
  hyperparams = {"gamma": gamma, "w_lr": w_lr}
  if not isinstance(min_losses, jax.core.Tracer):
    min_losses = np.asarray(min_losses)
    if (min_losses.shape not in ((), (num_tasks,))
        or not np.issubdtype(min_losses.dtype, np.number)
        or np.iscomplexobj(min_losses)
        or not np.all(np.isfinite(min_losses))):
      raise ValueError(
          f"min_losses must be a finite number or an array of shape"
          f" (num_tasks,) = ({num_tasks},) of them, got {min_losses!r}.")
    if np.any(min_losses != 0):
      hyperparams["min_losses"] = min_losses.tolist()
    min_losses = jnp.asarray(min_losses, jnp.float32)
  optimizer = optax.chain(optax.add_decayed_weights(gamma),
                          optax.adam(w_lr))
  eps = 1e-8  # as in the authors' code

  def init(num_tasks):
    xi = jnp.zeros((num_tasks,), jnp.float32)
    return FAMOState(logits=xi, opt_state=optimizer.init(xi),
                     prev_losses=jnp.ones((num_tasks,), jnp.float32),
                     count=jnp.zeros((), jnp.int32))

  def weights(gram, extra, *, init, losses):
    del init
    _needs_losses("famo", losses)
    xi = extra.logits
    losses = losses.astype(xi.dtype)
    ok = jnp.all(jnp.isfinite(losses) & (losses >= min_losses))
    gap = losses - min_losses + eps
    delta = jnp.log(extra.prev_losses - min_losses + eps) - jnp.log(gap)
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
    return _unless(ok, w.astype(gram.dtype), new, extra)

  return _loss_aggregator("famo", weights, init, hyperparams, num_tasks,
                          shared, max_norm)
