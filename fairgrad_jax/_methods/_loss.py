"""What the loss-weighting methods share (RLW, DWA, UW, SI, FAMO).

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

from fairgrad_jax import _aggregator


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
