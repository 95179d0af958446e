"""PCGrad's weights: gradient surgery expressed on the Gram matrix.

Yu et al. (2020), Algorithm 1: each task gradient g_i is projected, in a random
order of the other tasks j, onto the normal plane of every g_j it conflicts
with: g_i ← g_i − min(g_iᵀg_j, 0) / ‖g_j‖² g_j; the update is the sum of the
projected gradients (as in the authors' code). Every projected gradient stays
a linear combination g_i' = Σ_m C_im g_m of the original ones, and
g_i'ᵀg_j = (C GᵀG)_ij, so the whole procedure runs on the K×K Gram matrix and
the update is Σ_m w_m g_m with w = 1ᵀC (as in TorchJD).
"""

import jax
import jax.numpy as jnp

from fairgrad_jax._weighting import _common


def pcgrad_weights(gram: jax.Array, key: jax.Array) -> jax.Array:
  r"""PCGrad's weights on the original gradients, from GᵀG and a PRNG key.

  Task i visits the other tasks in its own random order (a permutation drawn
  from ``key``), as in the authors' code and Nash-MTL's re-implementation.

  Args:
    gram: (K, K) Gram matrix GᵀG.
    key: a ``jax.random`` key.

  Returns:
    (K,) weights w: the PCGrad update is Σ_m w_m g_m.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import fairgrad_jax
    >>> g = jnp.array([[1.0, 0.0], [-1.0, 1.0]])  # conflicting pair
    >>> w = fairgrad_jax.pcgrad_weights(g @ g.T, jax.random.PRNGKey(0))
    >>> w @ g  # (0.5, 0.5) + (0, 1)
    Array([0.5, 1.5], dtype=float32)

  References:
    Yu, Kumar, Gupta, Levine, Hausman & Finn, "Gradient Surgery for
    Multi-Task Learning", NeurIPS 2020, arXiv:2001.06782 (Algorithm 1).
  """
  gram = _common.as_gram(gram)
  dtype = gram.dtype
  k = gram.shape[0]
  orders = jax.vmap(lambda kk: jax.random.permutation(kk, k))(
      jax.random.split(key, k))
  diag = jnp.diagonal(gram)
  safe = jnp.where(diag > 0, diag, 1.0)
  rows = jnp.arange(k)

  def body(t, coef):
    j = orders[:, t]  # the task that each task i is projected against now
    dots = jnp.sum(coef * gram[j], axis=1)  # g_i'ᵀ g_{j_i}
    step = jnp.where((j != rows) & (diag[j] > 0),
                     jnp.minimum(dots, 0.0) / safe[j], 0.0)
    return coef.at[rows, j].add(-step)

  coef = jax.lax.fori_loop(0, k, body, jnp.eye(k, dtype=dtype))
  return jnp.sum(coef, axis=0)
