"""The α-fair loss transformation of Ban & Ji, Section 6."""

import jax
import jax.numpy as jnp


def fair_loss(losses: jax.Array, alpha: float) -> jax.Array:
  r"""α-fair transformation of task losses: l^(1-α)/(1-α), log l at α = 1.

  Replacing each loss l_i by its α-fair counterpart (Ban & Ji, Section 6,
  eq. 5) turns the task gradients g_i into g_i / l_i^α: tasks with a larger
  loss weigh more for α > 0. The Pareto front is unchanged (their
  Proposition 1). The paper uses α ∈ (-∞, 1) and α = 0.5 in its Tables 6–7;
  α = 0 leaves the losses as they are, α = 1 is the log (as in the
  scale-invariant baseline), α → -∞ approaches minimax. Any finite α is
  accepted; the transform is applied elementwise.

  Put it in front of any method: differentiate ``fair_loss(losses_fn(p), α)``
  instead of ``losses_fn(p)``.

  Args:
    losses: task losses, > 0 (any shape; usually (K,)). Zero losses give
      -inf (α >= 1) or a zero gradient weight l^(-α) = inf (α > 0): keep
      losses positive, e.g. by adding a small constant.
    alpha: the fairness level, a finite Python float.

  Returns:
    The transformed losses, same shape and dtype.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import fairgrad_jax
    >>> l = jnp.array([0.5, 2.0])
    >>> fairgrad_jax.fair_loss(l, 0.5).round(4)
    Array([1.4142, 2.8284], dtype=float32)
    >>> jax.grad(lambda l: fairgrad_jax.fair_loss(l, 0.5).sum())(l).round(4)
    Array([1.4142, 0.7071], dtype=float32)

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
  alpha = float(alpha)
  if not jnp.isfinite(alpha):
    raise ValueError(f"alpha must be finite, got {alpha}.")
  losses = jnp.asarray(losses)
  if alpha == 1.0:
    return jnp.log(losses)
  return losses ** (1.0 - alpha) / (1.0 - alpha)
