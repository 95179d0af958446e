r"""ConFIG's weights: the conflict-free direction of the unit gradients.

Liu, Chen & Thuerey (2025), Equation 2 (as TorchJD's ``ConFIG`` and the
authors' ``conflictfree`` package compute it):

  b = pinv(Û) p,   u = b / ‖b‖,   d = (Σ_i g_iᵀu) u,

with Û the K×P matrix of unit gradients û_i = g_i/‖g_i‖ (a zero gradient
gives a zero row, TorchJD's ``nan_to_num``) and p the preference vector
(ones in TorchJD and the paper; any positive multiple of p gives the same
d). ``b`` is the minimum-norm direction with ûᵢᵀb = p_i for every task, so
d makes the same (preference-weighted) angle with every gradient; its
length is the sum of the gradients' projections on it.

On the Gram matrix alone. With n_i = ‖g_i‖ = √G_ii, D = diag(n) and
D⁺ = diag(1/n_i, 0 where n_i = 0), Û = D⁺J and pinv(Û) = Ûᵀ(ÛÛᵀ)⁺, where
Ĝ = ÛÛᵀ = D⁺GD⁺ is the Gram matrix of the unit gradients (ones on the
diagonal, zero rows for zero gradients). Let c = Ĝ⁺p (a K×K
eigendecomposition). Then b = JᵀD⁺c, ‖b‖² = cᵀĜc, Σ_i g_iᵀb = nᵀĜc, and

  d = Jᵀw,   w = D⁺c · (nᵀĜc) / (cᵀĜc)

(w = 0 when b = 0: all gradients zero, or p orthogonal to the unit
gradients' span to working precision, e.g. two opposite gradients with
p = 1, a Pareto-stationary point; TorchJD's ``normalize`` floors ‖b‖ at
1e-12 for the same cases and returns d ~ 0 there). The weights are invariant to the
gradients' scale (D⁺ ~ 1/σ, nᵀĜc ~ σ): the update is homogeneous of
degree 1.

Non-conflicting: for independent gradients Ĝc = p, so
g_iᵀd = n_i p_i (nᵀp) / (pᵀĜ⁻¹p) >= 0, and d has the same component
(proportional to p_i) along every unit gradient. For dependent gradients
Ĝc is the projection of p onto the range of Ĝ, which may have negative
entries: ConFIG (like TorchJD's) may then conflict.

Eigenvalues of Ĝ at most ``rank_tol`` · λ_max count as zero. TorchJD's
``torch.linalg.pinv(Û)`` cuts the singular values of Û at max(K, P) ε
relative, i.e. Ĝ's eigenvalues at (max(K, P) ε)² relative; the Gram matrix
knows its eigenvalues only to about ε λ_max, so the cut-off here is
relative to the eigenvalues, K ε by default (where the two differ, Û has
singular values between max(K, P) ε and √(K ε) of the largest: dependent
to working precision, and ConFIG's direction there is ill-defined).

The function is named ``config`` after TorchJD's ``ConFIG`` and the
authors' ``ConFIG_update``, in the package's one rule (the method's name,
lower case); it has nothing to do with configuration.
"""

from typing import Sequence

import jax
import jax.numpy as jnp
from optax.experimental import aggregating

from fairgrad_jax import _aggregator
from fairgrad_jax import _checks
from fairgrad_jax import _gram
from fairgrad_jax._solvers import _common
from fairgrad_jax._solvers import qp


def _check_rank_tol(rank_tol):
  if rank_tol is None:
    return None
  return _checks.real_hyperparameter("rank_tol", rank_tol, minimum=0.0)


def conflict_free_weights(gram: jax.Array, p: jax.Array,
                          rank_tol: float | None = None) -> jax.Array:
  """w = D⁺c (nᵀĜc)/(cᵀĜc), c = Ĝ⁺p (see the module docstring)."""
  k = gram.shape[0]
  tol = k * jnp.finfo(gram.dtype).eps if rank_tol is None else rank_tol
  norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
  inv_norms = jnp.where(norms > 0, 1.0 / jnp.where(norms > 0, norms, 1.0),
                        0.0)
  units = gram * inv_norms[:, None] * inv_norms[None, :]
  lam, vecs = jnp.linalg.eigh(units)
  lam_max = lam[-1]
  keep = (lam > tol * lam_max) & (lam > 0)
  inv_lam = jnp.where(keep, 1.0 / jnp.where(keep, lam, 1.0), 0.0)
  coef = vecs.T @ p

  def pinv_times(r):
    return vecs @ (inv_lam * (vecs.T @ r))

  c = pinv_times(p)
  # One step of iterative refinement on the kept eigenspace: the eigenvector
  # round-off (ε λ_max / gap) otherwise shows in the small weights.
  kept_p = vecs @ jnp.where(keep, coef, 0.0)
  c = c + pinv_times(kept_p - units @ c)
  gc = units @ c
  length = norms @ gc  # Σ_i g_iᵀb, b = JᵀD⁺c
  sq_norm = c @ gc  # ‖b‖²
  # b = 0 when p is orthogonal to the unit gradients' span to working
  # precision (e.g. two opposite gradients, p = 1): the projection of p on
  # the kept eigenvectors is then round-off, of order K ε λ_max/λ_min ‖p‖
  # (the eigenvectors' error, Davis–Kahan), and so would be b's direction;
  # TorchJD's normalize(b) has a floor (‖b‖ >= 1e-12) for the same case.
  lam_min = jnp.min(jnp.where(keep, lam, jnp.inf))
  in_span = jnp.sqrt(jnp.sum(jnp.where(keep, coef, 0.0) ** 2))
  noise = k * jnp.finfo(gram.dtype).eps * lam_max / lam_min * jnp.sqrt(p @ p)
  ok = (sq_norm > 0) & (in_span > noise)
  w = inv_norms * c * (length / jnp.where(ok, sq_norm, 1.0))
  w = jnp.where(ok, w, 0.0)
  return jnp.where(jnp.all(jnp.isfinite(gram)), w, jnp.nan)


def config_weighting(*, pref_vector: Sequence[float] | None = None,
                     rank_tol: float | None = None) -> _aggregator.Weighting:
  r"""ConFIG's :class:`Weighting` (see :func:`config_weights`).

  Stateless, degree 1 (the weights do not depend on the gradients' scale).
  Task-specific leaves get Σ_i g_i (``weight_heads=False``), as TorchJD's
  ``mtl_backward`` gives every task-specific parameter its own task's plain
  gradient.

  Args:
    pref_vector: the K weights p >= 0 of the unit gradients' projections
      on the direction (ûᵢᵀb = p_i); None: equal (TorchJD's ones; only
      their ratios matter).
    rank_tol: eigenvalues of the unit gradients' Gram matrix at most
      rank_tol · λ_max count as zero (>= 0, static); None: K ε of the
      solve's dtype (see the module docstring for TorchJD's cut-off).

  Returns:
    A :class:`Weighting`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> gram = jnp.diag(jnp.array([1.0, 4.0]))  # orthogonal, ‖g_2‖ = 2
    >>> w, _ = fairgrad_jax.config_weighting()(gram)
    >>> w  # d = (1 + 2)/2 (g_1 + g_2/2): along the unit bisector
    Array([1.5 , 0.75], dtype=float32)

  References:
    Liu, Chen & Thuerey, "ConFIG: Towards Conflict-free Training of
    Physics Informed Neural Networks", ICLR 2025, arXiv:2408.11104
    (Equation 2); TorchJD's ``ConFIG``.
  """
  pref_vector = qp.check_pref_vector(pref_vector)
  rank_tol = _check_rank_tol(rank_tol)

  def apply(gram, state, *, losses, key, init):
    del losses, key, init
    gram = _common.as_gram(gram)
    p = qp.preference(pref_vector, gram.shape[0], gram.dtype)
    return conflict_free_weights(gram, p, rank_tol), state

  return _aggregator.Weighting(
      name="config", apply=apply,
      hyperparams={"pref_vector": pref_vector, "rank_tol": rank_tol})


def config_weights(gram: jax.Array, *,
                   pref_vector: Sequence[float] | None = None,
                   rank_tol: float | None = None) -> jax.Array:
  r"""ConFIG weights from a Gram matrix (a view of :func:`config_weighting`).

  w = D⁺c (nᵀĜc)/(cᵀĜc) with n_i = √G_ii, Ĝ = D⁺GD⁺ the Gram matrix of the
  unit gradients and c = Ĝ⁺p: d = Σ_i w_i g_i is ConFIG's update
  (Σ_i g_iᵀu) u, u the unit vector of pinv(Û) p.

  Args:
    gram: (K, K) Gram matrix GᵀG.
    pref_vector, rank_tol: see :func:`config_weighting`.

  Returns:
    (K,) weights (0 for a zero gradient; all 0 when every gradient is).

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> fairgrad_jax.config_weights(jnp.eye(2))  # the sum: 2 (g_1 + g_2)/2
    Array([1., 1.], dtype=float32)

  References:
    Liu, Chen & Thuerey, "ConFIG: Towards Conflict-free Training of
    Physics Informed Neural Networks", ICLR 2025, arXiv:2408.11104.
  """
  return config_weighting(pref_vector=pref_vector, rank_tol=rank_tol)(gram)[0]


def config(
    *,
    pref_vector: Sequence[float] | None = None,
    rank_tol: float | None = None,
    num_tasks: int | None = None,
    shared: _gram.Mask = None,
    scale_by_num_tasks: bool = False,
    max_norm: float | None = None,
) -> aggregating.Aggregator:
  r"""ConFIG: the direction at equal angles to every gradient, conflict-free.

  d = (Σ_i g_iᵀu) u with u the unit vector of pinv(Û) p, Û the unit
  gradients (Liu, Chen & Thuerey, Equation 2): u makes the same angle with
  every gradient (for p = 1), so d conflicts with none of them when they
  are independent, and its length is the sum of their projections. Computed
  from the Gram matrix (one K×K eigendecomposition inside ``jit``, see
  :func:`config_weights`). TorchJD's defaults; task-specific leaves get
  Σ_i g_i. Extra keyword arguments (``losses=``...) are ignored. The name is
  the method's (TorchJD's ``ConFIG``), not "configuration".

  Args:
    pref_vector: preference weights p (K entries >= 0); None: equal.
    rank_tol: relative eigenvalue cut-off of the unit Gram matrix; None:
      K ε.
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
    >>> agg = fairgrad_jax.config()
    >>> g = jnp.array([[1.0, 0.0], [-1.0, 1.0]])  # conflicting
    >>> d = agg.update({"w": g}, agg.init(None))[0]["w"]
    >>> ((g @ d) / jnp.linalg.norm(g, axis=1)).round(4)  # equal, positive
    Array([0.3536, 0.3536], dtype=float32)

  References:
    Liu, Chen & Thuerey, "ConFIG: Towards Conflict-free Training of
    Physics Informed Neural Networks", ICLR 2025, arXiv:2408.11104.
  """
  return _aggregator.aggregator(
      config_weighting(pref_vector=pref_vector, rank_tol=rank_tol),
      num_tasks=num_tasks, shared=shared,
      scale_by_num_tasks=scale_by_num_tasks, max_norm=max_norm)
