"""What the loss-weighting methods share (RLW, DWA, UW, IMTL-L, SI, FAMO, ...).

Each of these methods weights the task *losses*: the update is the gradient of
Σ_i w_i l_i, i.e. d = Σ_i w_i g_i on every leaf (shared and task-specific).
The weights come from the losses (given as ``update(..., losses=...)``), a
PRNG key or a learned state, never from the Gram matrix, so the builders
skip the O(K²P) Gram product.

Bad steps: under ``jit`` a bad value cannot raise. Losses outside a method's
domain (non-finite, or non-positive where the method takes a ratio or a log)
give NaN weights, hence a NaN update, and every non-finite update (from the
losses or from the gradients) leaves the whole aggregator state (``weights``
and ``extra``) as it was after the last good step. Behind
``optax.apply_if_finite`` such a step is skipped and training goes on as if
it had not happened.
"""

import jax
import jax.numpy as jnp
import optax

from fairgrad_jax import _aggregator
from fairgrad_jax import _checks


def unless(ok, weights, new_state, old_state):
  """NaN weights and the old state where ``ok`` is False (a step to skip)."""
  weights = jnp.where(ok, weights, jnp.nan)
  state = jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state,
                       old_state)
  return weights, state


def needs_num_tasks(name, num_tasks):
  if num_tasks is None:
    raise ValueError(f"{name} keeps per-task state: give num_tasks=K.")


def loss_weighting(name, apply, *, init=_aggregator.Weighting.init,
                   hyperparams=None, needs_losses=True
                   ) -> _aggregator.Weighting:
  """A loss weighting: every leaf weighted, no Gram matrix, state kept on a
  non-finite step."""
  return _aggregator.Weighting(
      name=name, apply=apply, init=init, hyperparams=hyperparams or {},
      weight_heads=True, needs_gram=False, needs_losses=needs_losses,
      keep_state_on_bad_step=True)


def learned_scale_weighting(name, sign, learning_rate, optimizer,
                            state_type) -> _aggregator.Weighting:
  """Loss weights w_i = exp(sign s_i), the s_i learned alongside the model.

  s takes one step of ``optimizer`` (Adam at ``learning_rate`` when None)
  per call on ∂/∂s_i of Σ_i exp(sign s_i) l_i - sign s_i, i.e.
  sign (w_i l_i - 1), after the update has used the current s. UW is
  sign = -1 (s the log-variances), IMTL-L sign = +1 (s the log-scales): the
  same method up to s -> -s. ``state_type(s, opt_state)`` is the state.
  """
  if optimizer is None:
    learning_rate = _checks.real_hyperparameter(
        "learning_rate", learning_rate, minimum=0.0, strict=True)
    hyperparams = {"learning_rate": learning_rate}
    optimizer = optax.adam(learning_rate)
  else:
    hyperparams = {"optimizer": optimizer}

  def init(num_tasks):
    needs_num_tasks(name, num_tasks)
    s = jnp.zeros((num_tasks,), jnp.float32)
    return state_type(s, optimizer.init(s))

  def apply(gram, extra, *, losses, key, init):
    del key, init
    s, opt_state = extra
    weights = jnp.exp(sign * s)
    grad = sign * (weights * losses.astype(s.dtype) - 1.0)
    updates, opt_state = optimizer.update(grad, opt_state, s)
    new_s = optax.apply_updates(s, updates)
    ok = jnp.all(jnp.isfinite(losses) & (losses >= 0))
    return unless(ok, weights.astype(gram.dtype), state_type(new_s, opt_state),
                  extra)

  return loss_weighting(name, apply, init=init, hyperparams=hyperparams)
