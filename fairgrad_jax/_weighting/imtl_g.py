"""IMTL-G's weights: the update with equal projections on every unit gradient.

Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang (2021), Section 3.2: IMTL-G
looks for d = Σ_i α_i g_i with Σ_i α_i = 1 and dᵀu_i equal for all tasks,
u_i = g_i/‖g_i‖. With n_i = ‖g_i‖ this reads GᵀG α = c n, so
α = (GᵀG)⁺n / 1ᵀ(GᵀG)⁺n (TorchJD's form, equivalent to the paper's closed form
α_{2:K} = g_1Uᵀ(DUᵀ)⁻¹ for independent gradients; the pseudo-inverse keeps it
finite for dependent ones).
"""

import jax
import jax.numpy as jnp

from fairgrad_jax._weighting import _common


def imtl_g_weights(gram: jax.Array) -> jax.Array:
  r"""IMTL-G weights from a Gram matrix: α ∝ (GᵀG)⁺ diag(GᵀG)^½, Σα = 1.

  Args:
    gram: (K, K) Gram matrix GᵀG.

  Returns:
    (K,) weights summing to 1 (all zero when 1ᵀ(GᵀG)⁺n vanishes, e.g. when
    every gradient is zero).

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> g = jnp.array([[1.0, 0.0], [0.0, 3.0]])
    >>> w = fairgrad_jax.imtl_g_weights(g @ g.T)
    >>> d = w @ g
    >>> (g @ d / jnp.linalg.norm(g, axis=1)).round(4)  # equal projections
    Array([0.75, 0.75], dtype=float32)

  References:
    Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards Impartial
    Multi-task Learning", ICLR 2021 (Section 3.2, IMTL-G).
  """
  gram = _common.as_gram(gram)
  scale = jnp.max(jnp.diagonal(gram))
  scale = jnp.where(scale > 0, scale, 1.0)
  a = gram / scale
  norms = jnp.sqrt(jnp.maximum(jnp.diagonal(a), 0.0))
  v = jnp.linalg.pinv(a, hermitian=True) @ norms
  total = jnp.sum(v)
  ok = jnp.abs(total) > 1e-6 * jnp.sum(jnp.abs(v))
  return jnp.where(ok, v / jnp.where(ok, total, 1.0), 0.0)
