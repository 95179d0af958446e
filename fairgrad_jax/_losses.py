"""The α-fair loss transformation of Ban & Ji, Section 6."""

import math

import jax
import jax.numpy as jnp

from fairgrad_jax import _checks


def fair_loss(losses: jax.Array, alpha: float) -> jax.Array:
  r"""α-fair transformation of task losses: l^(1-α)/(1-α), log l at α = 1.

  Replacing each loss l_i by its α-fair counterpart (Ban & Ji, Section 6,
  eq. 5) turns the task gradients g_i into g_i / l_i^α: tasks with a larger
  loss weigh more for α > 0. The Pareto front is unchanged (their
  Proposition 1). The paper uses α ∈ (-∞, 1) and α = 0.5 in its Tables 6–7;
  α = 0 leaves the losses as they are, α = 1 is the log (as in the
  scale-invariant baseline), α → -∞ approaches minimax. Any finite α is
  accepted; the transform is applied elementwise.

  Domain: the transform is defined for l > 0 (Ban & Ji's Proposition 1 takes
  x > 0), and at α = 0 it is the identity, defined for every finite l.
  Under ``jit`` a bad value cannot raise, so outside the domain the result
  is NaN *with a NaN gradient*, which makes the update NaN, so that
  ``optax.apply_if_finite`` skips the step rather than ascend:

  * l < 0 (α ≠ 0): NaN (l^(1-α) is not real, or real with a gradient of the
    wrong sign, e.g. l²/2 at α = -1).
  * l non-finite (any α): NaN (no silent zero weight l^(-α) = 0 for
    l = inf).
  * l = 0: the limit of the formula. For α < 0 it is 0 with gradient 0 (the
    weight l^(-α) of a task already at 0 vanishes, a finite answer); for
    α > 0 the weight l^(-α) is infinite and so is the gradient: skip the
    step, or keep losses positive, e.g. by adding a small constant.

  For losses that can be negative (e.g. a Gaussian negative
  log-likelihood), shift them by a lower bound before the transform.

  Put it in front of any method: differentiate ``fair_loss(losses_fn(p), α)``
  instead of ``losses_fn(p)``.

  Args:
    losses: task losses, > 0 (any shape; usually (K,)); see "Domain".
    alpha: the fairness level, a finite real number: a Python or NumPy
      scalar (checked here; ``jax.jit(fair_loss, static_argnums=1)``), or a
      scalar JAX array, which may be traced (``jax.jit(fair_loss)``, an α
      schedule; a non-finite traced α gives NaN).

  Returns:
    The transformed losses, same shape and dtype (integer losses are
    promoted to float).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import fairgrad_jax
    >>> l = jnp.array([0.5, 2.0])
    >>> fairgrad_jax.fair_loss(l, 0.5).round(4)
    Array([1.4142, 2.8284], dtype=float32)
    >>> jax.grad(lambda l: fairgrad_jax.fair_loss(l, 0.5).sum())(l).round(4)
    Array([1.4142, 0.7071], dtype=float32)
    >>> jax.jit(fairgrad_jax.fair_loss)(l, 0.5).round(4)  # α traced
    Array([1.4142, 2.8284], dtype=float32)
    >>> fairgrad_jax.fair_loss(jnp.array([-1.0, 2.0]), 0.5)  # outside l > 0
    Array([     nan, 2.828427], dtype=float32)

    In front of a method, the per-task gradients of the transformed losses:

    >>> losses_fn = lambda p: jnp.stack([jnp.sum(p ** 2), jnp.sum((p - 1) ** 2)])
    >>> grads = jax.jacrev(lambda p: fairgrad_jax.fair_loss(losses_fn(p), 0.5))(
    ...     jnp.array([0.25, 2.0]))
    >>> grads.shape
    (2, 2)

  References:
    Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024,
    arXiv:2402.15638, Section 6, eq. (5).
  """
  losses = jnp.asarray(losses)
  if not (jnp.issubdtype(losses.dtype, jnp.floating)
          or jnp.issubdtype(losses.dtype, jnp.integer)
          or losses.dtype == jnp.bool_):
    raise TypeError(f"losses must be real numbers, got dtype {losses.dtype}.")
  if not jnp.issubdtype(losses.dtype, jnp.floating):
    losses = losses.astype(jnp.promote_types(losses.dtype, jnp.float32))

  if isinstance(alpha, jax.core.Tracer):
    if alpha.shape != () or not (jnp.issubdtype(alpha.dtype, jnp.floating)
                                 or jnp.issubdtype(alpha.dtype, jnp.integer)):
      raise TypeError(f"alpha must be a real scalar, got a traced"
                      f" {alpha.dtype}{list(alpha.shape)}.")
    alpha = alpha.astype(losses.dtype)
    bad = ~jnp.isfinite(losses) | ((losses < 0) & (alpha != 0))
    losses = _nan_where(bad, losses)
    is_log = alpha == 1
    # The branch not taken gets a harmless input so that no NaN leaks into
    # the gradient of the one taken.
    one_minus = jnp.where(is_log, 1.0, 1.0 - alpha)
    power = losses ** one_minus / one_minus
    log = jnp.log(jnp.where(is_log, losses, 1.0))
    return jnp.where(is_log, log, power)

  alpha = _checks.real_hyperparameter("alpha", alpha, minimum=-math.inf)
  bad = ~jnp.isfinite(losses)
  if alpha != 0.0:
    bad |= losses < 0
  losses = _nan_where(bad, losses)
  if alpha == 1.0:
    return jnp.log(losses)
  return losses ** (1.0 - alpha) / (1.0 - alpha)


def _nan_where(bad, x):
  # Multiplying by NaN, rather than selecting it, makes the gradient NaN
  # too: a selected constant would have gradient 0, a silent zero weight.
  return x * jnp.where(bad, jnp.nan, 1.0).astype(x.dtype)
