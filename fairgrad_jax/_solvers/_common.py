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
  if gram.shape[0] == 0:
    raise ValueError("gram is a (0, 0) matrix: a weighting needs K >= 1"
                     " tasks.")
  if not (jnp.issubdtype(gram.dtype, jnp.floating)
          or jnp.issubdtype(gram.dtype, jnp.integer)):
    raise TypeError(f"gram must be a real (K, K) matrix, got dtype"
                    f" {gram.dtype}.")
  if not differentiable:
    gram = jax.lax.stop_gradient(gram)
  return gram.astype(jnp.promote_types(gram.dtype, jnp.float32))


# g_iᵀd = (GᵀG λ)_i is a sum of K products A_ij λ_j, each bounded by
# ‖g_i‖ ‖g_j‖ |λ_j|; with the rounding of the Gram entries themselves (sums
# over the parameters) it is known to about K ε ‖g_i‖ Σ_j ‖g_j‖ |λ_j|. A
# conflict larger than this many times that bound is a real one.
_ROUNDOFF_FACTOR = 32.0


def conflict_tolerance(a: jax.Array, lam: jax.Array) -> jax.Array:
  """(K,) round-off level of g_iᵀd, d = Σ_j λ_j g_j, from the Gram matrix a."""
  norms = jnp.sqrt(jnp.maximum(jnp.diagonal(a), 0.0))
  k = a.shape[0]
  eps = jnp.finfo(a.dtype).eps
  return _ROUNDOFF_FACTOR * k * eps * norms * (norms @ jnp.abs(lam))


def zero_if_conflicting(a: jax.Array, lam: jax.Array) -> jax.Array:
  """λ, or zeros if d = Σ_i λ_i g_i conflicts with a task beyond round-off.

  For methods that promise g_iᵀd >= 0 (MGDA; CAGrad with c >= 1, for which
  d = 0 is feasible; IMTL-G, whose equal projections are 0 at a Pareto-
  stationary point). Their solve can only miss that promise where the
  gradients are (numerically) Pareto-stationary, i.e. some convex
  combination of them vanishes up to round-off; there the right update is
  0, which is what TorchJD returns below its relative ``norm_eps``. The
  test is relative to the gradients' scale (see :func:`conflict_tolerance`).
  NaN weights stay NaN (a non-finite step must remain non-finite).

  Args:
    a: (K, K) Gram matrix (any positive scale).
    lam: (K,) weights of the candidate update.

  Returns:
    ``lam`` or zeros.
  """
  conflict = jnp.any(a @ lam < -conflict_tolerance(a, lam))
  return jnp.where(conflict, jnp.zeros_like(lam), lam)


def numerically_zero(a: jax.Array, lam: jax.Array) -> jax.Array:
  """Whether d = Σ_i λ_i g_i is 0 up to the round-off of its terms.

  ‖d‖² = λᵀ(GᵀG)λ is known to about K ε (Σ_i |λ_i| ‖g_i‖)²: below that (a
  d that is all cancellation) its direction is noise.
  """
  norms = jnp.sqrt(jnp.maximum(jnp.diagonal(a), 0.0))
  k = a.shape[0]
  eps = jnp.finfo(a.dtype).eps
  mass = norms @ jnp.abs(lam)
  return (lam @ a @ lam <= _ROUNDOFF_FACTOR * k * eps * mass ** 2) & (
      mass > 0)
