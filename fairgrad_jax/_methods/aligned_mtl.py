r"""Aligned-MTL's weights: the gradients aligned to equal singular values.

Senushkin, Patakin, Kuznetsov & Konushin (2023), Algorithm 1. Let J be the
K×P matrix of the task gradients (rows g_i) and G = JJᵀ = V Λ Vᵀ its
eigendecomposition, λ_1 >= ... >= λ_r > 0 the r non-negligible eigenvalues
(the rank of J). J's thin SVD is J = V_r Λ_r^{1/2} Wᵀ with W = Jᵀ V_r
Λ_r^{-1/2}. Aligned-MTL replaces J by the matrix with the same singular
vectors and every singular value equal to the smallest one, √λ_r (the
condition number 1), and takes its p-weighted sum of rows:

  Ĵ = √λ_r V_r Wᵀ = B J,   B = √λ_r V_r Λ_r^{-1/2} V_rᵀ,
  d = Ĵᵀ p = Jᵀ (B p),

so the weights w = B p are a function of the Gram matrix alone, as TorchJD
computes them (``AlignedMTLWeighting``; LibMTL's ``Aligned_MTL`` is the
same with p = 1, K times TorchJD's update). We follow their code where the
paper is silent:

* Eigenvalues at most ``rank_tol`` · λ_1 count as zero and are dropped
  (both codes: K ε λ_1, ε of the solve's dtype; the default). On
  rank-deficient gradients B is then √λ_r times the pseudo-inverse square
  root of G, and d lies in the span of the gradients.
* All-zero gradients (no eigenvalue above the tolerance): B = I, w = p
  (TorchJD; d = 0 all the same). LibMTL has no such case.
* ``scale_mode``: the singular value the gradients are aligned to, √λ_r
  (``"min"``, the paper's), the square root of the lower median of the
  kept eigenvalues (``"median"``, as ``torch.median`` picks it) or of their
  mean (``"rmse"``, the authors' released code), as in TorchJD.

The weights are invariant to the scale of the gradients (B depends on G only
through λ_r/λ_i and V), so the update is homogeneous of degree 1; ‖B‖ <= 1
("min"), so ‖w‖ <= ‖p‖ however ill-conditioned the gradients are. Aligned-MTL
does not promise non-conflicting updates: g_jᵀd = (G B p)_j =
√λ_r (V_r Λ_r^{1/2} V_rᵀ p)_j may be negative.

A note on precision: the eigenvalues of G are only known to about ε λ_1
(float32: 1e-7 λ_1), so gradients whose norms span more than about three
decades (λ_K/λ_1 < 1e-7) have their smallest directions dropped in float32
where float64 keeps them; ``jax.config.update("jax_enable_x64", True)``
makes the solve float64.
"""

from typing import Literal, Sequence

import jax
import jax.numpy as jnp
from optax.experimental import aggregating

from fairgrad_jax import _aggregator
from fairgrad_jax import _checks
from fairgrad_jax import _gram
from fairgrad_jax._solvers import _common
from fairgrad_jax._solvers import qp

ScaleMode = Literal["min", "median", "rmse"]
_SCALE_MODES = ("min", "median", "rmse")


def _check_scale_mode(scale_mode) -> str:
  if scale_mode not in _SCALE_MODES:
    raise ValueError(f"scale_mode must be one of {_SCALE_MODES}, got"
                     f" {scale_mode!r}.")
  return scale_mode


def _check_rank_tol(rank_tol):
  if rank_tol is None:
    return None
  return _checks.real_hyperparameter("rank_tol", rank_tol, minimum=0.0)


def balance_transformation(gram: jax.Array, *, scale_mode: str = "min",
                           rank_tol: float | None = None) -> jax.Array:
  """Aligned-MTL's K×K matrix B = √s V_r Λ_r^{-1/2} V_rᵀ (module docstring).

  Args:
    gram: (K, K) Gram matrix, float32 or float64.
    scale_mode: "min", "median" or "rmse" (s = λ_r, the lower median or the
      mean of the kept eigenvalues).
    rank_tol: eigenvalues <= rank_tol · λ_1 are dropped; None: K ε.

  Returns:
    B (K, K); the identity when no eigenvalue is kept (G = 0); NaN when
    ``gram`` is not finite.
  """
  k = gram.shape[0]
  tol = (k * jnp.finfo(gram.dtype).eps if rank_tol is None else rank_tol)
  lam, vecs = jnp.linalg.eigh(gram)  # ascending
  lam, vecs = lam[::-1], vecs[:, ::-1]  # descending, as TorchJD sorts them
  # The eigenvalues again, as Rayleigh quotients of the eigenvectors: their
  # error is second order in the vectors' (eigh's own small eigenvalues
  # carry ε λ_max absolute; Aligned-MTL's weights scale by λ^(-1/2)).
  lam = jnp.einsum("ik,ij,jk->k", vecs, gram, vecs,
                   precision=jax.lax.Precision.HIGHEST)
  # λ > 0 as well: a non-PSD round-off (λ_1 <= 0) keeps nothing.
  keep = (lam > tol * lam[0]) & (lam > 0)
  rank = jnp.sum(keep)
  safe = jnp.where(keep, lam, 1.0)
  if scale_mode == "min":
    scale = jnp.min(jnp.where(keep, lam, jnp.inf))
  elif scale_mode == "median":
    # torch.median: the lower of the two middle values; kept eigenvalues
    # are the first ``rank`` (descending), the lower median is at
    # position rank - 1 - (rank - 1) // 2.
    scale = lam[jnp.maximum(rank - 1 - (rank - 1) // 2, 0)]
  else:
    scale = jnp.sum(jnp.where(keep, lam, 0.0)) / jnp.maximum(rank, 1)
  inv_sqrt = jnp.where(keep, jax.lax.rsqrt(safe), 0.0)
  b = jnp.sqrt(jnp.where(rank > 0, scale, 1.0)) * (vecs * inv_sqrt) @ vecs.T
  b = jnp.where(rank > 0, b, jnp.eye(k, dtype=gram.dtype))
  return jnp.where(jnp.all(jnp.isfinite(gram)), b, jnp.nan)


def aligned_mtl_weighting(*, pref_vector: Sequence[float] | None = None,
                          scale_mode: ScaleMode = "min",
                          rank_tol: float | None = None
                          ) -> _aggregator.Weighting:
  r"""Aligned-MTL's :class:`Weighting` (see :func:`aligned_mtl_weights`).

  Stateless, degree 1 (the weights do not depend on the gradients' scale).
  Task-specific leaves get Σ_i g_i (``weight_heads=False``), as TorchJD's
  ``mtl_backward`` and LibMTL give every task-specific parameter its own
  task's plain gradient.

  Args:
    pref_vector: the K preference weights p >= 0 of the aligned gradients;
      None: the mean, 1/K (TorchJD's default; LibMTL sums, p = 1).
    scale_mode: the singular value the gradients are aligned to: "min"
      (the paper's and TorchJD's default), "median" or "rmse" (see the
      module docstring).
    rank_tol: eigenvalues of G at most rank_tol · λ_max count as zero
      (>= 0, static); None: K ε of the solve's dtype (TorchJD, LibMTL).

  Returns:
    A :class:`Weighting`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> gram = jnp.diag(jnp.array([1.0, 4.0]))  # orthogonal, ‖g_2‖ = 2‖g_1‖
    >>> w, _ = fairgrad_jax.aligned_mtl_weighting()(gram)
    >>> w  # both rescaled to the smallest norm, then averaged
    Array([0.5 , 0.25], dtype=float32)

  References:
    Senushkin, Patakin, Kuznetsov & Konushin, "Independent Component
    Alignment for Multi-Task Learning", CVPR 2023, arXiv:2305.19000
    (Algorithm 1); TorchJD's ``AlignedMTLWeighting``; LibMTL's
    ``Aligned_MTL``.
  """
  pref_vector = qp.check_pref_vector(pref_vector)
  scale_mode = _check_scale_mode(scale_mode)
  rank_tol = _check_rank_tol(rank_tol)

  def apply(gram, state, *, losses, key, init):
    del losses, key, init
    gram = _common.as_gram(gram)
    p = qp.preference(pref_vector, gram.shape[0], gram.dtype)
    b = balance_transformation(gram, scale_mode=scale_mode,
                               rank_tol=rank_tol)
    return b @ p, state

  return _aggregator.Weighting(
      name="aligned_mtl", apply=apply,
      hyperparams={"pref_vector": pref_vector, "scale_mode": scale_mode,
                   "rank_tol": rank_tol})


def aligned_mtl_weights(gram: jax.Array, *,
                        pref_vector: Sequence[float] | None = None,
                        scale_mode: ScaleMode = "min",
                        rank_tol: float | None = None) -> jax.Array:
  r"""Aligned-MTL weights from a Gram matrix (a view of :func:`aligned_mtl_weighting`).

  w = B p, B = √λ_r V_r Λ_r^{-1/2} V_rᵀ from G = VΛVᵀ (eigenvalues below
  rank_tol · λ_1 dropped): d = Σ_i w_i g_i is the p-weighted sum of the
  rows of the aligned Jacobian BJ, whose singular values all equal the
  smallest one of J.

  Args:
    gram: (K, K) Gram matrix GᵀG.
    pref_vector, scale_mode, rank_tol: see :func:`aligned_mtl_weighting`.

  Returns:
    (K,) weights (p itself for all-zero gradients).

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> fairgrad_jax.aligned_mtl_weights(jnp.eye(3))  # already aligned
    Array([0.33333334, 0.33333334, 0.33333334], dtype=float32)

  References:
    Senushkin, Patakin, Kuznetsov & Konushin, "Independent Component
    Alignment for Multi-Task Learning", CVPR 2023, arXiv:2305.19000.
  """
  return aligned_mtl_weighting(pref_vector=pref_vector, scale_mode=scale_mode,
                               rank_tol=rank_tol)(gram)[0]


def aligned_mtl(
    *,
    pref_vector: Sequence[float] | None = None,
    scale_mode: ScaleMode = "min",
    rank_tol: float | None = None,
    num_tasks: int | None = None,
    shared: _gram.Mask = None,
    scale_by_num_tasks: bool = False,
    max_norm: float | None = None,
) -> aggregating.Aggregator:
  r"""Aligned-MTL: the gradients aligned to equal singular values, averaged.

  The Jacobian J is replaced by BJ, the matrix with J's singular vectors
  and all its singular values equal to the smallest one (condition number
  1, which the paper shows removes both conflicting and dominating
  gradients), and d is its p-weighted sum of rows, Σ_i w_i g_i with w = Bp
  (see :func:`aligned_mtl_weights`; one K×K eigendecomposition inside
  ``jit``). TorchJD's defaults; task-specific leaves get Σ_i g_i. Extra
  keyword arguments (``losses=``...) are ignored.

  Args:
    pref_vector: preference weights p (K entries >= 0); None: 1/K.
    scale_mode: "min" (default), "median" or "rmse".
    rank_tol: relative eigenvalue cut-off; None: K ε.
    num_tasks: K; when given, ``state.weights`` holds the last weights w
      (d = Σ_i w_i g_i).
    shared: which leaves are shared (see :func:`fairgrad`).
    scale_by_num_tasks: multiply the shared update by K (off).
    max_norm: clip the global norm of the shared update (off).

  Returns:
    An :class:`optax.experimental.aggregating.Aggregator`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> agg = fairgrad_jax.aligned_mtl()
    >>> g = jnp.array([[1.0, 0.0], [0.0, 10.0]])  # task 2 dominates
    >>> agg.update({"w": g}, agg.init(None))[0]["w"]  # balanced
    Array([0.5, 0.5], dtype=float32)

  References:
    Senushkin, Patakin, Kuznetsov & Konushin, "Independent Component
    Alignment for Multi-Task Learning", CVPR 2023, arXiv:2305.19000.
  """
  return _aggregator.aggregator(
      aligned_mtl_weighting(pref_vector=pref_vector, scale_mode=scale_mode,
                            rank_tol=rank_tol),
      num_tasks=num_tasks, shared=shared,
      scale_by_num_tasks=scale_by_num_tasks, max_norm=max_norm)
