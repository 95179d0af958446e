"""Euclidean projection onto the probability simplex (SDMGrad's and MoDo's
projected weight steps)."""

import jax
import jax.numpy as jnp


def project_simplex(v: jax.Array) -> jax.Array:
  """argmin_{w ∈ Δ_K} ‖w − v‖ (sort-based; Duchi et al., ICML 2008).

  Args:
    v: (K,) real vector.

  Returns:
    (K,) non-negative weights summing to 1 (NaN for a non-finite ``v``).
  """
  k = v.shape[0]
  u = jnp.sort(v)[::-1]
  css = jnp.cumsum(u) - 1.0
  ind = jnp.arange(1, k + 1, dtype=v.dtype)
  rho = jnp.max(jnp.where(u - css / ind > 0, ind, 1.0))
  theta = css[rho.astype(jnp.int32) - 1] / rho
  return jnp.maximum(v - theta, 0.0)
