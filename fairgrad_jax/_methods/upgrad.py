"""UPGrad's weights: the average of each gradient projected onto the dual cone.

Quinton & Rey (2024) (π_J of their Equation 3; Proposition 1): UPGrad
projects every task gradient g_i onto the dual cone {x : g_jᵀx >= 0 ∀j} of
the gradients and averages the projections with the preference weights p
(1/K by default): d = Σ_i p_i π(g_i). The projection of Jᵀu has the form Jᵀv
with v = argmin vᵀGv s.t. v >= u (G = JJᵀ), so

  w = Σ_i v⁽ⁱ⁾,   v⁽ⁱ⁾ = argmin_{v >= p_i e_i} vᵀ A v,   A = G/tr(G) + ε I,

a K-variable box QP per task (:func:`fairgrad_jax._solvers.qp`), solved
exactly inside ``jit`` by an active-set method (TorchJD: quadprog on the
host). We follow TorchJD's code, not the paper, in normalising G by its
trace and adding the ridge ``reg_eps`` (the paper's QP has neither); with
``reg_eps > 0`` the update may conflict with a task by at most
reg_eps · tr(G) · w_j (g_jᵀd = (Gw)_j >= −reg_eps tr(G) w_j, from the KKT
conditions of the regularised QP); with ``reg_eps=0`` it is
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


class UPGradInfo(NamedTuple):
  """Diagnostics of the last K dual-cone projections (UPGrad's state).

  Attributes:
    num_iterations: active-set steps of the slowest projection (int32).
    residual: the largest KKT residual of the K projections, relative to
      the problem's scale (float32; see
      :class:`fairgrad_jax._solvers.qp.DualConeSolution`).
    converged: whether every projection met its KKT conditions rather
      than stopping at ``maxiter`` (bool; False before the first step and
      for a Gram matrix that is not finite).
  """

  num_iterations: jax.Array
  residual: jax.Array
  converged: jax.Array


def _init(num_tasks):
  del num_tasks
  return UPGradInfo(num_iterations=jnp.zeros((), jnp.int32),
                    residual=jnp.zeros((), jnp.float32),
                    converged=jnp.zeros((), jnp.bool_))


def upgrad_weighting(*, pref_vector: Sequence[float] | None = None,
                     norm_eps: float = 1e-4, reg_eps: float = 1e-4,
                     maxiter: int = 250, tol: float = 1e-6
                     ) -> _aggregator.Weighting:
  r"""UPGrad's :class:`Weighting` (see :func:`upgrad_weights`).

  Degree 1 (d(σJ) = σ d(J): the weights depend on G only through G/tr(G)).
  Task-specific leaves get Σ_i g_i (``weight_heads=False``): UPGrad is
  Jacobian descent on the shared parameters, and TorchJD's ``mtl_backward``,
  the authors' multi-task entry point, gives every task-specific parameter
  its own task's plain gradient. The state is the last solve's
  :class:`UPGradInfo`.

  Args:
    pref_vector: the K preference weights p >= 0 that average the
      projections; None: the mean, 1/K (TorchJD's and the paper's default).
    norm_eps: trace of G below which G counts as 0 (TorchJD's 1e-4; >= 0).
      The builders (:func:`aggregator`, :func:`weighted_grad`, ...) pass
      the Gram matrix divided by a power of two σ² near its largest entry,
      so there the test is tr(G)/σ² < norm_eps and only all-zero
      gradients meet it: the update is exactly homogeneous of degree 1
      (TorchJD compares the unscaled trace and returns the mean below it).
    reg_eps: ridge added to G/tr(G) (TorchJD's 1e-4; >= 0). It makes the
      QP strictly convex on rank-deficient gradients, and lets the update
      conflict with task j by at most reg_eps tr(G) w_j; 0: exactly
      non-conflicting (a ridge of K ε, the round-off, is kept).
    maxiter: active-set steps per projection, at most (>= 1; a projection
      takes about one step per task it conflicts with).
    tol: stationarity tolerance of the QP (see
      :func:`fairgrad_jax._solvers.qp.lower_bounded_qp`; finite, > 0).

  Returns:
    A :class:`Weighting`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> gram = jnp.array([[1.0, -1.0], [-1.0, 2.0]])  # g_1ᵀg_2 = −1 < 0
    >>> w, info = fairgrad_jax.upgrad_weighting(reg_eps=0.0)(gram)
    >>> w.round(4), bool(info.converged)  # (g_1 + g_2/2 + g_1 + g_2) / 2
    (Array([1.  , 0.75], dtype=float32), True)

  References:
    Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization",
    arXiv:2406.16232, 2024 (Equation 3, Proposition 1); TorchJD's
    ``UPGradWeighting``.
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
    # One projection per task: v⁽ⁱ⁾ >= p_i e_i (the rows of diag(p)).
    sol = qp.project_to_dual_cone(gram, jnp.diag(p), norm_eps=norm_eps,
                                  reg_eps=reg_eps, maxiter=maxiter, tol=tol)
    info = UPGradInfo(num_iterations=jnp.max(sol.num_iterations),
                      residual=jnp.max(sol.residual).astype(jnp.float32),
                      converged=jnp.all(sol.converged))
    return jnp.sum(sol.weights, axis=0), info

  return _aggregator.Weighting(
      name="upgrad", apply=apply, init=_init,
      hyperparams={"pref_vector": pref_vector, "norm_eps": norm_eps,
                   "reg_eps": reg_eps})


def upgrad_weights(gram: jax.Array, *,
                   pref_vector: Sequence[float] | None = None,
                   norm_eps: float = 1e-4, reg_eps: float = 1e-4,
                   maxiter: int = 250, tol: float = 1e-6) -> jax.Array:
  r"""UPGrad weights from a Gram matrix (a view of :func:`upgrad_weighting`).

  w = Σ_i v⁽ⁱ⁾ with v⁽ⁱ⁾ = argmin_{v >= p_i e_i} vᵀAv, A = G/tr(G) +
  reg_eps I (A = reg_eps I when tr(G) < norm_eps), as TorchJD computes
  them; d = Σ_i w_i g_i is the p-weighted sum of the gradients' projections
  onto the dual cone of the gradients.

  Args:
    gram: (K, K) Gram matrix GᵀG.
    pref_vector, norm_eps, reg_eps, maxiter, tol: see
      :func:`upgrad_weighting`.

  Returns:
    (K,) weights (>= p: each projection keeps at least its own gradient).

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> fairgrad_jax.upgrad_weights(jnp.eye(2))  # no conflict: the mean
    Array([0.5, 0.5], dtype=float32)

  References:
    Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization",
    arXiv:2406.16232, 2024.
  """
  return upgrad_weighting(pref_vector=pref_vector, norm_eps=norm_eps,
                          reg_eps=reg_eps, maxiter=maxiter, tol=tol)(gram)[0]


def upgrad(
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
  r"""UPGrad: the average of every task gradient projected onto the dual cone.

  d = Σ_i p_i π(g_i), π the projection onto {x : g_jᵀx >= 0 ∀j}: d never
  conflicts with a task (up to reg_eps, see :func:`upgrad_weighting`), and
  where the gradients do not conflict it is the p-weighted sum of the
  gradients (the mean by default). Each projection is a K-variable box QP
  on the Gram matrix, solved exactly inside ``jit`` (see
  :func:`upgrad_weights`). TorchJD's defaults; task-specific leaves get
  Σ_i g_i. Extra keyword arguments (``losses=``...) are ignored.

  Args:
    pref_vector: preference weights p (K entries >= 0); None: 1/K.
    norm_eps: trace below which the Gram matrix counts as zero (1e-4).
    reg_eps: ridge on the trace-normalised Gram matrix (1e-4).
    num_tasks: K; when given, ``state.weights`` holds the last weights w
      (d = Σ_i w_i g_i). ``state.extra`` is an :class:`UPGradInfo`.
    shared: which leaves are shared (see :func:`fairgrad`).
    scale_by_num_tasks: multiply the shared update by K (off).
    max_norm: clip the global norm of the shared update (off).
    maxiter: active-set steps per projection, at most.
    tol: stationarity tolerance of the QP.

  Returns:
    An :class:`optax.experimental.aggregating.Aggregator`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> agg = fairgrad_jax.upgrad(reg_eps=0.0)
    >>> g = jnp.array([[1.0, 0.0], [-1.0, 1.0]])  # conflicting
    >>> d = agg.update({"w": g}, agg.init(None))[0]["w"]
    >>> d.round(4), (g @ d).round(4)  # no task is hurt
    (Array([0.25, 0.75], dtype=float32), Array([0.25, 0.5 ], dtype=float32))

  References:
    Quinton & Rey, "Jacobian Descent for Multi-Objective Optimization",
    arXiv:2406.16232, 2024.
  """
  return _aggregator.aggregator(
      upgrad_weighting(pref_vector=pref_vector, norm_eps=norm_eps,
                       reg_eps=reg_eps, maxiter=maxiter, tol=tol),
      num_tasks=num_tasks, shared=shared,
      scale_by_num_tasks=scale_by_num_tasks, max_norm=max_norm)
