"""Input handling shared by every weighting."""

import jax
import jax.numpy as jnp


def as_gram(gram, *, differentiable: bool = False) -> jax.Array:
  """Checks a (K, K) Gram matrix; returns it in >= float32.

  Without ``differentiable``, the weighting treats its weights as constants
  (no derivative flows back through the solve, as in every implementation of
  these methods); FairGrad's solve differentiates its root implicitly.
  """
  gram = jnp.asarray(gram)
  if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
    raise ValueError(f"gram must be a (K, K) matrix, got shape {gram.shape}.")
  if not differentiable:
    gram = jax.lax.stop_gradient(gram)
  return gram.astype(jnp.promote_types(gram.dtype, jnp.float32))
