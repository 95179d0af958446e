"""GradNorm: gradient normalisation for adaptive loss balancing (Chen et al.,
2018)."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax.experimental import aggregating

from fairgrad_jax import _aggregator
from fairgrad_jax import _checks
from fairgrad_jax import _gram
from fairgrad_jax._methods import _loss


class GradNormState(NamedTuple):
  """GradNorm's state (``state.extra``).

  Attributes:
    loss_scale: (K,) learned s; the weights are K softmax(s) (ones at the
      start, as LibMTL's parameter).
    opt_state: the state of the optimizer that learns s.
    initial_losses: (K,) l(0), the mean loss of the warm-up calls so far
      (a running mean: no overflow of a sum).
    count: calls so far (int32, saturates at ``warmup_steps``).
  """

  loss_scale: jax.Array
  opt_state: Any
  initial_losses: jax.Array
  count: jax.Array


def gradnorm_weighting(alpha: float = 1.5, learning_rate: float = 1e-4, *,
                       warmup_steps: int = 100,
                       optimizer: optax.GradientTransformation | None = None
                       ) -> _aggregator.Weighting:
  r"""GradNorm's :class:`Weighting`: weights K softmax(s), s learned on the
  gradient norms.

  The weights are w = K softmax(s) with the current s; after the warm-up,
  s then takes one step of ``optimizer`` on the gradient of
  Σ_i |w_i ‖g_i‖ − Ḡ r_i^α| (Ḡ = mean_i w_i ‖g_i‖ and r_i the relative
  inverse training rates, both held constant), ‖g_i‖ from the Gram matrix's
  diagonal (see :func:`gradnorm`). The state is a :class:`GradNormState`
  (``init(K)`` needs K); the losses are needed at every call.

  Args:
    alpha: the restoring force α >= 0 (the paper's and LibMTL's 1.5).
    learning_rate: Adam's learning rate for s, finite and > 0 (LibMTL's
      1e-4; ignored with ``optimizer``).
    warmup_steps: calls of the plain sum (w = 1) whose losses are averaged
      into the initial losses l(0), int >= 1 (LibMTL's first epoch).
    optimizer: any optax transformation to learn s with, instead of Adam.

  Returns:
    A :class:`Weighting`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> weighting = fairgrad_jax.gradnorm_weighting(learning_rate=0.1,
    ...                                             warmup_steps=1)
    >>> state, gram = weighting.init(2), jnp.diag(jnp.array([1.0, 9.0]))
    >>> for l in ([1.0, 1.0], [1.0, 1.0]):
    ...   w, state = weighting(gram, state, losses=jnp.array(l))
    >>> w  # K softmax(s): s has not moved yet
    Array([1., 1.], dtype=float32)
    >>> state.loss_scale.round(4)  # the larger gradient's weight goes down
    Array([1.1, 0.9], dtype=float32)

  References:
    Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: Gradient
    Normalization for Adaptive Loss Balancing in Deep Multitask Networks",
    ICML 2018, arXiv:1711.02257; LibMTL's ``LibMTL/weighting/GradNorm.py``.
  """
  alpha = _checks.real_hyperparameter("alpha", alpha, minimum=0.0)
  warmup_steps = _checks.int_hyperparameter("warmup_steps", warmup_steps,
                                            minimum=1)
  if optimizer is None:
    learning_rate = _checks.real_hyperparameter(
        "learning_rate", learning_rate, minimum=0.0, strict=True)
    hyperparams = {"alpha": alpha, "learning_rate": learning_rate}
    optimizer = optax.adam(learning_rate)
  else:
    hyperparams = {"alpha": alpha, "optimizer": optimizer}
  hyperparams["warmup_steps"] = warmup_steps

  def init(num_tasks):
    _loss.needs_num_tasks("gradnorm", num_tasks)
    s = jnp.ones((num_tasks,), jnp.float32)
    return GradNormState(loss_scale=s, opt_state=optimizer.init(s),
                         initial_losses=jnp.zeros((num_tasks,), jnp.float32),
                         count=jnp.zeros((), jnp.int32))

  def apply(gram, extra, *, losses, key, init):
    del key, init
    k = gram.shape[0]
    s = extra.loss_scale
    ok = jnp.all(jnp.isfinite(losses) & (losses >= 0))
    l = jnp.where(ok, losses, 1).astype(s.dtype)
    p = jax.nn.softmax(s)
    weights = k * p
    balancing = extra.count >= warmup_steps
    # r_i = L_i / mean L, L_i = l_i / l_i(0), in logs (no overflow of the
    # ratio); r = 1 when every loss is 0 (no training rate to compare).
    l0 = extra.initial_losses
    l0_ok = jnp.all(jnp.isfinite(l0) & (l0 > 0))
    log_ratio = jnp.log(l) - jnp.log(jnp.where(l0_ok, l0, 1))
    any_loss = jnp.any(l > 0)
    log_r = jnp.log(k) + jax.nn.log_softmax(
        jnp.where(any_loss, log_ratio, 0))
    # (α = 0: r^0 = 1, also for a task whose loss is 0.)
    target_rates = jnp.where(jnp.asarray(alpha) == 0, 1.0,
                             jnp.exp(alpha * log_r))
    norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0)).astype(s.dtype)
    # ∂/∂s of Σ_i |w_i ‖g_i‖ − c_i|, c = mean(w ‖g‖) r^α held constant:
    # v_i = sign(w_i ‖g_i‖ − c_i) ‖g_i‖ and ∂w/∂s = K (diag p − p pᵀ).
    weighted_norms = weights * norms
    target = jnp.mean(weighted_norms) * target_rates
    v = jnp.sign(weighted_norms - target) * norms
    grad = k * p * (v - p @ v)
    updates, opt_state = optimizer.update(grad, extra.opt_state, s)
    new_s = optax.apply_updates(s, updates)
    keep = lambda new, old: jnp.where(balancing, new, old)
    new = GradNormState(
        loss_scale=keep(new_s, s),
        opt_state=jax.tree.map(keep, opt_state, extra.opt_state),
        initial_losses=jnp.where(
            balancing, l0,
            l0 + (l - l0) / (extra.count + 1).astype(l.dtype)),
        count=jnp.minimum(extra.count + 1, warmup_steps))
    return _loss.unless(ok & (l0_ok | ~balancing), weights.astype(gram.dtype),
                        new, extra)

  return _aggregator.Weighting(
      name="gradnorm", apply=apply, init=init, hyperparams=hyperparams,
      degree=1.0, weight_heads=False, needs_gram=True, needs_losses=True,
      keep_state_on_bad_step=True)


def gradnorm(
    alpha: float = 1.5,
    learning_rate: float = 1e-4,
    *,
    warmup_steps: int = 100,
    optimizer: optax.GradientTransformation | None = None,
    num_tasks: int | None = None,
    shared: _gram.Mask = None,
    max_norm: float | None = None,
) -> aggregating.Aggregator:
  r"""GradNorm: loss weights learned to equalise the weighted gradient norms.

  Chen et al. learn task weights w_i so that the norms of the weighted
  gradients ‖w_i g_i‖ follow the tasks' relative inverse training rates:
  with L_i = l_i / l_i(0) and r_i = L_i / mean_j L_j, the weights descend

      L_grad = Σ_i |w_i ‖g_i‖ − Ḡ r_i^α|,   Ḡ = mean_i w_i ‖g_i‖

  (Ḡ r^α held constant), a task that trains slowly (large r_i) getting a
  larger gradient, α the strength of that restoring force. This follows
  LibMTL's ``GradNorm``: w = K softmax(s) (so Σ w_i = K, the paper's
  renormalisation), s a parameter (ones at the start) that the model's
  optimizer steps on ∂L_grad/∂s after the update has used the current w;
  the update is d = Σ_i w_i g_i on the shared leaves and Σ_i g_i on the
  task-specific ones (LibMTL's heads get their plain gradients). During
  LibMTL's first epoch the update is the plain sum (w = 1) and the epoch's
  mean losses become l(0); here that warm-up is ``warmup_steps`` calls
  (default 100, one NYUv2 epoch at batch 8, as :func:`stch`). The default
  optimizer is Adam at 1e-4, LibMTL's defaults; LibMTL also applies its
  weight decay (1e-5) to s: to reproduce it, pass
  ``optimizer=optax.chain(optax.add_decayed_weights(1e-5),
  optax.adam(1e-4))``.

  ‖g_i‖ comes from the Gram matrix's diagonal, so GradNorm runs stacked,
  Gram-only and on a representation (as in LibMTL, whose representation
  mode sums the gradients over the batch). One difference: the builders
  pass the Gram matrix of g_i / σ, σ a power of two near the gradients'
  largest entry (so that any scale is in range), and ∂L_grad/∂s is
  linear in the gradients, so s is stepped on LibMTL's gradient divided by
  σ. Adam's steps do not change when all its gradients are scaled by one
  factor (up to its ε = 1e-8), so the two agree while σ stays the same
  (the tests check it on LibMTL's values); a change of σ (a factor 2 when
  the gradients' scale crosses a power of two) enters Adam's moment
  estimates as it would from a change of the gradients' size.

  The losses must be finite and >= 0 (and l(0) > 0, for a task whose
  warm-up losses were all 0 LibMTL divides by zero too): a call with a
  loss that is not gives NaN weights, hence a NaN update that
  ``optax.apply_if_finite`` skips, and leaves the state as it was; so does
  a call whose update is not finite for another reason.

  Args:
    alpha: the restoring force α >= 0 (the paper's and LibMTL's 1.5; 0
      pulls every ‖w_i g_i‖ to their mean).
    learning_rate: Adam's learning rate for s, finite and > 0 (LibMTL's
      default 1e-4; ignored with ``optimizer``).
    warmup_steps: calls of the plain sum whose losses are averaged into
      l(0), int >= 1.
    optimizer: any optax transformation to learn s with, instead of Adam.
    num_tasks: K (required).
    shared: which leaves are shared between tasks (the Gram matrix's).
    max_norm: clip the global norm of the shared update (off).

  Returns:
    An :class:`optax.experimental.aggregating.Aggregator`; ``state.extra`` is
    a :class:`GradNormState`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> agg = fairgrad_jax.gradnorm(learning_rate=0.1, warmup_steps=1,
    ...                             num_tasks=2)
    >>> state, g = agg.init(None), {"w": jnp.array([[1.0, 0.0], [0.0, 3.0]])}
    >>> for l in ([1.0, 1.0], [1.0, 1.0], [1.0, 1.0]):
    ...   d, state = agg.update(g, state, losses=jnp.array(l))
    >>> [round(w, 4) for w in state.weights.tolist()]  # 2 softmax(1.1, 0.9)
    [1.0997, 0.9003]

  References:
    Chen, Badrinarayanan, Lee & Rabinovich, "GradNorm: Gradient
    Normalization for Adaptive Loss Balancing in Deep Multitask Networks",
    ICML 2018, arXiv:1711.02257; LibMTL's ``LibMTL/weighting/GradNorm.py``.
  """
  _loss.needs_num_tasks("gradnorm", num_tasks)
  return _aggregator.aggregator(
      gradnorm_weighting(alpha, learning_rate, warmup_steps=warmup_steps,
                         optimizer=optimizer),
      num_tasks=num_tasks, shared=shared, max_norm=max_norm)
