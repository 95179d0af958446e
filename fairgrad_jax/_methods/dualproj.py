"""DualProj's weights: the mean gradient projected onto the dual cone.

Lopez-Paz & Ranzato (2017), Equation 11 (GEM's projection), as TorchJD's
``DualProj`` aggregates a Jacobian: the p-weighted sum Jᵀp of the task
gradients (the mean by default) is projected onto the dual cone
{x : g_jᵀx >= 0 ∀j} of the gradients. By Quinton & Rey (2024), Proposition
1, the projection is Jᵀw with

  w = argmin_{v >= p} vᵀ A v,   A = G/tr(G) + ε I,

one K-variable box QP (:func:`fairgrad_jax._solvers.qp`), solved exactly
inside ``jit`` by an active-set method (TorchJD: quadprog on the host). As
for UPGrad we follow TorchJD's code in normalising G by its trace and adding
the ridge ``reg_eps``; with ``reg_eps > 0`` the update may conflict with task
j by at most reg_eps · tr(G) · w_j; with ``reg_eps=0`` it is
non-conflicting up to round-off.
"""

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from optax.experimental import aggregating

from fairgrad_jax import _aggregator
from fairgrad_jax import _checks
from fairgrad_jax import _gram
from fairgrad_jax._solvers import _common
from fairgrad_jax._solvers import qp


class DualProjInfo(NamedTuple):
  """Diagnostics of the last dual-cone projection (DualProj's state).

  Attributes:
    num_iterations: active-set steps (int32).
    residual: the KKT residual relative to the problem's scale (float32;
      see :class:`fairgrad_jax._solvers.qp.DualConeSolution`).
    converged: whether the projection met its KKT conditions rather than
      stopping at ``maxiter`` (bool; False before the first step and for a
      Gram matrix that is not finite).
  """

  num_iterations: jax.Array
  residual: jax.Array
  converged: jax.Array


def _init(num_tasks):
  del num_tasks
  return DualProjInfo(num_iterations=jnp.zeros((), jnp.int32),
                      residual=jnp.zeros((), jnp.float32),
                      converged=jnp.zeros((), jnp.bool_))


def dualproj_weighting(*, pref_vector: Sequence[float] | None = None,
                       norm_eps: float = 1e-4, reg_eps: float = 1e-4,
                       maxiter: int = 250, tol: float = 1e-6
                       ) -> _aggregator.Weighting:
  r"""DualProj's :class:`Weighting` (see :func:`dualproj_weights`).

  Degree 1 (the weights depend on G only through G/tr(G)). Task-specific
  leaves get Σ_i g_i (``weight_heads=False``), as TorchJD's
  ``mtl_backward`` gives every task-specific parameter its own task's plain
  gradient. The state is the last solve's :class:`DualProjInfo`.

  Args:
    pref_vector: the K weights p >= 0 of the vector Jᵀp that is projected;
      None: the mean, 1/K (TorchJD's default).
    norm_eps: trace of G below which G counts as 0 (TorchJD's 1e-4; >= 0).
      The builders pass the Gram matrix divided by a power of two σ² near
      its largest entry, so there only all-zero gradients meet it and the
      update is exactly homogeneous of degree 1 (see
      :func:`upgrad_weighting`).
    reg_eps: ridge added to G/tr(G) (TorchJD's 1e-4; >= 0); the update may
      conflict with task j by at most reg_eps tr(G) w_j; 0: exactly
      non-conflicting (a ridge of K ε, the round-off, is kept).
    maxiter: active-set steps, at most (>= 1).
    tol: stationarity tolerance of the QP (see
      :func:`fairgrad_jax._solvers.qp.lower_bounded_qp`; finite, > 0).

  Returns:
    A :class:`Weighting`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> gram = jnp.array([[1.0, -2.0], [-2.0, 5.0]])  # g_1ᵀ(g_1 + g_2) < 0
    >>> w, info = fairgrad_jax.dualproj_weighting(reg_eps=0.0)(gram)
    >>> w.round(4), bool(info.converged)  # g_1 + g_2/2: g_1ᵀd = 0
    (Array([1. , 0.5], dtype=float32), True)

  References:
    Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual Learning",
    NeurIPS 2017 (Equation 11); Quinton & Rey, "Jacobian Descent for
    Multi-Objective Optimization", arXiv:2406.16232, 2024 (Proposition 1);
    TorchJD's ``DualProjWeighting``.
  """
  pref_vector = qp.check_pref_vector(pref_vector)
  norm_eps = _checks.real_hyperparameter("norm_eps", norm_eps, minimum=0.0)
  reg_eps = _checks.real_hyperparameter("reg_eps", reg_eps, minimum=0.0)
  maxiter = _checks.int_hyperparameter("maxiter", maxiter, minimum=1)
  tol = _checks.real_hyperparameter("tol", tol, minimum=0.0, strict=True)

  def apply(gram, state, *, losses, key, init):
    del state, losses, key, init
    gram = _common.as_gram(gram)
    p = qp.preference(pref_vector, gram.shape[0], gram.dtype)
    sol = qp.project_to_dual_cone(gram, p, norm_eps=norm_eps,
                                  reg_eps=reg_eps, maxiter=maxiter, tol=tol)
    info = DualProjInfo(num_iterations=sol.num_iterations,
                        residual=sol.residual.astype(jnp.float32),
                        converged=sol.converged)
    return sol.weights, info

  return _aggregator.Weighting(
      name="dualproj", apply=apply, init=_init,
      hyperparams={"pref_vector": pref_vector, "norm_eps": norm_eps,
                   "reg_eps": reg_eps})


def dualproj_weights(gram: jax.Array, *,
                     pref_vector: Sequence[float] | None = None,
                     norm_eps: float = 1e-4, reg_eps: float = 1e-4,
                     maxiter: int = 250, tol: float = 1e-6) -> jax.Array:
  r"""DualProj weights from a Gram matrix (a view of :func:`dualproj_weighting`).

  w = argmin_{v >= p} vᵀAv, A = G/tr(G) + reg_eps I (A = reg_eps I when
  tr(G) < norm_eps), as TorchJD computes them; d = Σ_i w_i g_i is the
  projection of Σ_i p_i g_i onto the dual cone of the gradients.

  Args:
    gram: (K, K) Gram matrix GᵀG.
    pref_vector, norm_eps, reg_eps, maxiter, tol: see
      :func:`dualproj_weighting`.

  Returns:
    (K,) weights (>= p).

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> fairgrad_jax.dualproj_weights(jnp.eye(2))  # no conflict: the mean
    Array([0.5, 0.5], dtype=float32)

  References:
    Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual Learning",
    NeurIPS 2017 (Equation 11).
  """
  return dualproj_weighting(pref_vector=pref_vector, norm_eps=norm_eps,
                            reg_eps=reg_eps, maxiter=maxiter,
                            tol=tol)(gram)[0]


def dualproj(
    *,
    pref_vector: Sequence[float] | None = None,
    norm_eps: float = 1e-4,
    reg_eps: float = 1e-4,
    num_tasks: int | None = None,
    shared: _gram.Mask = None,
    scale_by_num_tasks: bool = False,
    max_norm: float | None = None,
    maxiter: int = 250,
    tol: float = 1e-6,
) -> aggregating.Aggregator:
  r"""DualProj: the mean gradient projected onto the dual cone of the gradients.

  d = π(Σ_i p_i g_i), π the projection onto {x : g_jᵀx >= 0 ∀j} (GEM's
  projection, Lopez-Paz & Ranzato 2017, eq. 11, as TorchJD's ``DualProj``):
  the closest update to the mean that conflicts with no task (up to
  reg_eps, see :func:`dualproj_weighting`). One K-variable box QP on the
  Gram matrix, solved exactly inside ``jit`` (see :func:`dualproj_weights`).
  TorchJD's defaults; task-specific leaves get Σ_i g_i. Extra keyword
  arguments (``losses=``...) are ignored.

  Args:
    pref_vector: preference weights p (K entries >= 0); None: 1/K.
    norm_eps: trace below which the Gram matrix counts as zero (1e-4).
    reg_eps: ridge on the trace-normalised Gram matrix (1e-4).
    num_tasks: K; when given, ``state.weights`` holds the last weights w
      (d = Σ_i w_i g_i). ``state.extra`` is a :class:`DualProjInfo`.
    shared: which leaves are shared (see :func:`fairgrad`).
    scale_by_num_tasks: multiply the shared update by K (off).
    max_norm: clip the global norm of the shared update (off).
    maxiter: active-set steps, at most.
    tol: stationarity tolerance of the QP.

  Returns:
    An :class:`optax.experimental.aggregating.Aggregator`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> agg = fairgrad_jax.dualproj(reg_eps=0.0)
    >>> g = jnp.array([[1.0, 0.0], [-2.0, 1.0]])  # the mean hurts task 1
    >>> d = agg.update({"w": g}, agg.init(None))[0]["w"]
    >>> d.round(4) + 0.0, (g @ d).round(4) + 0.0  # its projection: g_1ᵀd = 0
    (Array([0. , 0.5], dtype=float32), Array([0. , 0.5], dtype=float32))

  References:
    Lopez-Paz & Ranzato, "Gradient Episodic Memory for Continual Learning",
    NeurIPS 2017 (Equation 11); Quinton & Rey, "Jacobian Descent for
    Multi-Objective Optimization", arXiv:2406.16232, 2024.
  """
  return _aggregator.aggregator(
      dualproj_weighting(pref_vector=pref_vector, norm_eps=norm_eps,
                         reg_eps=reg_eps, maxiter=maxiter, tol=tol),
      num_tasks=num_tasks, shared=shared,
      scale_by_num_tasks=scale_by_num_tasks, max_norm=max_norm)
