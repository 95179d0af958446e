"""Nash-MTL's weights: the Nash bargaining solution, GᵀG α = 1/α.

Navon et al. (2022), Section 3 (Claim 3.1): the bargaining solution is
d = Σ_i α_i g_i with α_i (g_iᵀd) = 1, i.e. GᵀG α = 1/α, α > 0. The authors
approximate it by a sequence of convex programs (cvxpy, ``optim_niter=20``);
this is FairGrad's equation at α_fair = 1, which we solve exactly on device
with FairGrad's Levenberg–Marquardt solver.
"""

import jax

from fairgrad_jax._weighting import fairgrad as fairgrad_weighting


def nash_mtl_weights(gram: jax.Array, **solver_kwargs) -> jax.Array:
  r"""Nash-MTL weights: the positive root of GᵀG α = 1/α.

  ``fairgrad_weights(gram, alpha=1.0)``: jittable, no cvxpy.

  Args:
    gram: (K, K) Gram matrix GᵀG.
    **solver_kwargs: ``init``, ``maxiter``, ``tol``, ``regularization`` of
      :func:`fairgrad_solve`.

  Returns:
    (K,) positive weights (0 for a zero-gradient task).

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> g = jnp.array([[1.0, 0.0], [1.0, 2.0]])
    >>> a = fairgrad_jax.nash_mtl_weights(g @ g.T)
    >>> bool(jnp.allclose((g @ g.T) @ a, 1 / a, rtol=1e-4))
    True

  References:
    Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya,
    "Multi-Task Learning as a Bargaining Game", ICML 2022, arXiv:2202.01017.
  """
  return fairgrad_weighting.fairgrad_weights(gram, 1.0, **solver_kwargs)
