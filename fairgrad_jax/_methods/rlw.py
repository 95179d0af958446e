"""Random loss weighting (RLW, Lin et al., 2022)."""

import jax
import jax.numpy as jnp
from optax.experimental import aggregating

from fairgrad_jax import _aggregator
from fairgrad_jax import _checks
from fairgrad_jax import _gram
from fairgrad_jax._methods import _loss


def rlw_weighting(*, seed: int = 0) -> _aggregator.Weighting:
  r"""RLW's :class:`Weighting`: fresh weights softmax(z), z ~ N(0, I).

  The state is a PRNG key seeded by ``seed`` and split at every step (a
  ``key=`` given to the call is used instead). Losses are not needed.

  Args:
    seed: seed of the PRNG key.

  Returns:
    A :class:`Weighting`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> w, key = fairgrad_jax.rlw_weighting(seed=0)(jnp.zeros((3, 3)))
    >>> round(float(w.sum()), 4)
    1.0

  References:
    Lin, Ye, Xu, Shi & Zhang, "Reasonable Effectiveness of Random Weighting:
    A Litmus Test for Multi-Task Learning", TMLR 2022, arXiv:2111.10603.
  """
  seed = _checks.seed(seed)

  def apply(gram, state, *, losses, key, init):
    del losses, init
    if key is None:
      state, key = jax.random.split(state)
    z = jax.random.normal(key, gram.shape[:1], gram.dtype)
    return jax.nn.softmax(z), state

  return _loss.loss_weighting(
      "rlw", apply, init=lambda num_tasks: jax.random.PRNGKey(seed),
      hyperparams={"seed": seed}, needs_losses=False)


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
  return _aggregator.aggregator(rlw_weighting(seed=seed),
                                num_tasks=num_tasks, shared=shared,
                                max_norm=max_norm)
