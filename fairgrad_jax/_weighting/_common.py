"""Input handling shared by every weighting."""

import jax
import jax.numpy as jnp


def as_gram(gram) -> jax.Array:
  """Checks a (K, K) Gram matrix; returns it in >= float32, without gradient.

  Every weighting treats its weights as constants (no derivative flows back
  through the solve, as in every implementation of these methods).
  """
  gram = jnp.asarray(gram)
  if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
    raise ValueError(f"gram must be a (K, K) matrix, got shape {gram.shape}.")
  gram = jax.lax.stop_gradient(gram)
  return gram.astype(jnp.promote_types(gram.dtype, jnp.float32))
