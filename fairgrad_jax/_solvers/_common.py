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


# Error-free arithmetic (the FairGrad solve's residual, IMTL-G's refinement).


def power_of_two(x):
  """2^floor(log2 x) for finite x > 0 (1 otherwise): exact to divide by.

  Built from x's own exponent (frexp / ldexp), never with ``jnp.exp2``:
  XLA's CPU exp2 is off by an ulp for most integer exponents beyond ±12, and
  dividing by such a "power of two" rounds every entry, which the
  cancellation in GᵀG w then amplifies (a relative residual of 6e-3 reported
  as 2e-3 on issue 11's random K = 2, α = 10, seven-decade case).
  """
  ok = (x > 0) & jnp.isfinite(x)
  _, exponent = jnp.frexp(jnp.where(ok, x, 1.0))
  return jnp.where(ok, jnp.ldexp(jnp.ones_like(x), exponent - 1), 1.0)


def two_sum(a, b):
  """s + e = a + b exactly (Knuth)."""
  s = a + b
  z = s - a
  return s, (a - (s - z)) + (b - z)


def two_product(a, b):
  """p + e = a * b exactly (Dekker's splitting)."""
  factor = 2.0 ** (jnp.finfo(a.dtype).nmant // 2 + 1) + 1.0
  def split(v):
    c = factor * v
    hi = c - (c - v)
    return hi, v - hi
  p = a * b
  ah, al = split(a)
  bh, bl = split(b)
  return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def accurate_sum(terms):
  """Row sums of (K, K) ``terms`` with twice the working precision.

  Pairwise summation by error-free transformations (a cascaded sum): each
  level adds pairs with :func:`two_sum` and carries the rounding errors,
  which are summed plainly at the end. log2(K) vectorized levels, no loop.
  """
  n = terms.shape[1]
  width = 1 << max(n - 1, 0).bit_length()
  s = jnp.pad(terms, ((0, 0), (0, width - n)))
  err = jnp.zeros(terms.shape[:1], terms.dtype)
  while s.shape[1] > 1:
    s, e = two_sum(s[:, 0::2], s[:, 1::2])
    err = err + jnp.sum(e, axis=1)
  return s[:, 0] + err


def accurate_matvec(a, w):
  """A w as if in twice the working precision (Ogita, Rump & Oishi's Dot2).

  Conflicting task gradients make (GᵀG w)_i a sum of terms that nearly
  cancel: in plain float32 its relative error is eps times the cancellation
  factor, 1e-4 and more near a Pareto-stationary point, far above the
  residual we want. Error-free products and sums make it eps-accurate.
  """
  p, e = two_product(a, w[None, :])
  return accurate_sum(jnp.concatenate([p, e], axis=1))
