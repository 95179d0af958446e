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
from optax.experimental import aggregating

from fairgrad_jax import _aggregator
from fairgrad_jax import _gram
from fairgrad_jax._solvers import _common
from fairgrad_jax._solvers import mgda as mgda_solver


def _equal_projection_weights(gram):
  """α ∝ (GᵀG)⁺ n with the Pareto-stationary rule (see imtl_g_weights)."""
  gram = _common.as_gram(gram)
  scale = jnp.max(jnp.diagonal(gram))
  scale = jnp.where(scale > 0, scale, 1.0)
  a = gram / scale
  norms = jnp.sqrt(jnp.maximum(jnp.diagonal(a), 0.0))
  # A α = n with A = N C N (N = diag n, C the gradients' correlations) is
  # C β = 1 with α = N⁻¹ β: C has a unit diagonal, and its condition number
  # is the directions' alone, not the norms' (squared norms over 7 decades
  # make A's 1e14, beyond float32, and its pseudo-inverse then drops the
  # small tasks). Zero gradients keep weight 0.
  live = norms > 0
  inv = jnp.where(live, 1.0 / jnp.where(live, norms, 1.0), 0.0)
  both = live[:, None] & live[None, :]
  eye = jnp.eye(a.shape[0], dtype=a.dtype)
  corr = jnp.where(both, jnp.clip(a * inv[:, None] * inv[None, :], -1.0, 1.0),
                   0.0)
  corr = jnp.where(eye > 0, jnp.where(live, 1.0, 0.0), corr)
  ones = live.astype(a.dtype)
  # The pseudo-inverse by SVD: on a rank-deficient Gram matrix the
  # eigendecomposition's (hermitian=True) tiny eigenvalues come out with
  # either sign and a larger error, which the cut-off then treats unevenly.
  pinv = jnp.linalg.pinv(corr)
  beta = pinv @ ones
  # One step of iterative refinement on an eps-accurate residual brings
  # C β = 1 to round-off wherever cond(C) eps < 1.
  resid = ones - _common.accurate_matvec(corr, beta)
  beta = beta + pinv @ jnp.where(live, resid, 0.0)
  v = beta * inv
  total = jnp.sum(v)
  ok = jnp.abs(total) > 1e-6 * jnp.sum(jnp.abs(v))
  alpha = jnp.where(ok, v / jnp.where(ok, total, 1.0), 0.0)
  # At a Pareto-stationary point the equal projections are 0 and so is d;
  # the least-squares α there conflicts with some task: d = 0 instead.
  # Stationary: MGDA's min-norm element is 0 up to round-off (elsewhere a
  # conflicting α is IMTL-G's own answer, e.g. c < 0, and is kept).
  w = mgda_solver.mgda_solve(a).weights
  stationary = _common.numerically_zero(a, w) | jnp.all(w == 0)
  return jnp.where(stationary, _common.zero_if_conflicting(a, alpha), alpha)


def imtl_g_weighting() -> _aggregator.Weighting:
  r"""IMTL-G's :class:`Weighting` (see :func:`imtl_g_weights`); stateless.

  Task-specific leaves get their own raw gradients, Σ_i g_i.

  Returns:
    A :class:`Weighting`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> fairgrad_jax.imtl_g_weighting()(jnp.diag(jnp.array([1.0, 9.0])))[0]
    Array([0.75, 0.25], dtype=float32)

  References:
    Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards Impartial
    Multi-task Learning", ICLR 2021 (Section 3.2, IMTL-G).
  """

  def apply(gram, state, *, losses, key, init):
    del losses, key, init
    return _equal_projection_weights(gram), state

  return _aggregator.Weighting(name="imtl_g", apply=apply)


def imtl_g_weights(gram: jax.Array) -> jax.Array:
  r"""IMTL-G weights from a Gram matrix: α ∝ (GᵀG)⁺ diag(GᵀG)^½, Σα = 1.

  A view of :func:`imtl_g_weighting`.

  Args:
    gram: (K, K) Gram matrix GᵀG.

  At a Pareto-stationary point (Σ_i w_i g_i = 0 for some w >= 0, w ≠ 0) the
  common projection c = dᵀu_i must be 0, hence d = 0; there the
  least-squares α of the pseudo-inverse conflicts with some task. So where
  the gradients are Pareto-stationary up to round-off (MGDA's min-norm
  element is 0 at the Gram matrix's precision), an α whose d conflicts
  with a task beyond round-off (relative to the gradients' norms) is
  replaced by 0. Elsewhere α is IMTL-G's as defined, even where it
  conflicts (no equal-projection d exists, or the common projection is
  negative). The equations are solved in the gradients' correlations,
  GᵀG α = n as C β = 1 with β_i = ‖g_i‖ α_i (C's condition number is the
  directions' alone, whatever the spread of the norms), by an SVD
  pseudo-inverse and one step of iterative refinement: the projections are
  equal to float32 round-off on norms over seven decades (measured by
  ``benchmarks.weighting_accuracy``; the plain pseudo-inverse of GᵀG was
  off by up to 18×).

  Returns:
    (K,) weights summing to 1; all zero when 1ᵀ(GᵀG)⁺n vanishes (e.g. every
    gradient is zero) or at a (numerically) Pareto-stationary point.

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
  return imtl_g_weighting()(gram)[0]


def imtl_g(
    *,
    num_tasks: int | None = None,
    shared: _gram.Mask = None,
    scale_by_num_tasks: bool = False,
    max_norm: float | None = None,
) -> aggregating.Aggregator:
  r"""IMTL-G: the update with equal projections onto every unit task gradient.

  d = Σ_i α_i g_i with Σ_i α_i = 1 and dᵀg_i/‖g_i‖ equal for all i, i.e.
  α ∝ (GᵀG)⁺ (‖g_1‖, …, ‖g_K‖) (see :func:`imtl_g_weights`). As in the paper,
  task-specific leaves get their own raw gradients, Σ_i g_i. Extra keyword
  arguments (``losses=``...) are ignored. IMTL-G has no hyperparameters.

  Args:
    num_tasks: K; when given, ``state.weights`` holds the last α.
    shared: which leaves are shared (see :func:`fairgrad`).
    scale_by_num_tasks: multiply the shared update by K (off).
    max_norm: clip the global norm of the shared update (off).

  Returns:
    An :class:`optax.experimental.aggregating.Aggregator`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> agg = fairgrad_jax.imtl_g()
    >>> g = jnp.array([[1.0, 0.0], [0.0, 3.0]])
    >>> d = agg.update({"w": g}, agg.init(None))[0]["w"]
    >>> (g @ d / jnp.linalg.norm(g, axis=1)).round(4)
    Array([0.75, 0.75], dtype=float32)

  References:
    Liu, Li, Kuang, Xue, Chen, Yang, Liao & Zhang, "Towards Impartial
    Multi-task Learning", ICLR 2021 (IMTL-G, Section 3.2).
  """
  return _aggregator.aggregator(
      imtl_g_weighting(), num_tasks=num_tasks, shared=shared,
      scale_by_num_tasks=scale_by_num_tasks, max_norm=max_norm)
