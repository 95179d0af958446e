"""MGDA (Sener & Koltun, 2018): the min-norm element of the convex hull."""

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from optax.experimental import aggregating

from fairgrad_jax import _aggregator
from fairgrad_jax import _checks
from fairgrad_jax import _gram
from fairgrad_jax._solvers import mgda as solver

Normalization = Literal["none", "l2", "loss", "loss+"]
_NORMALIZATIONS = ("none", "l2", "loss", "loss+")


class MGDAInfo(NamedTuple):
  """Diagnostics of the last min-norm solve (MGDA's state).

  Attributes:
    num_iterations: Frank–Wolfe and active-set iterations (int32).
    squared_norm: ‖Σ_i w_i ĝ_i‖² of the normalised gradients ĝ_i, in the
      units of the σ-scaled Gram matrix (0 at a Pareto-stationary point).
    converged: whether the solve verified the minimiser (KKT to round-off)
      within ``maxiter`` (bool; False before the first step).
  """

  num_iterations: jax.Array
  squared_norm: jax.Array
  converged: jax.Array


def mgda_weighting(normalization: Normalization = "none", *,
                   maxiter: int = 250, tol: float = 1e-5
                   ) -> _aggregator.Weighting:
  r"""MGDA's :class:`Weighting`: min-norm weights of the normalised gradients.

  w = argmin_{w ∈ Δ_K} ‖Σ_i w_i ĝ_i‖², ĝ_i = g_i / n_i (see :func:`mgda`
  for the normalisations n_i), by :func:`mgda_solve`. The weights found for
  the normalised gradients multiply the raw gradients, task heads included
  (``weight_heads=True``), as in the authors' code. The state is the last
  solve's :class:`MGDAInfo`.

  Args:
    normalization: "none" (default, the paper's), "l2", "loss" or "loss+"
      ("loss" and "loss+" need the losses).
    maxiter: iterations at most, >= 1 (the authors' 250; Frank–Wolfe
      gets half, the active-set finish the rest: see :func:`mgda_solve`).
    tol: L1 stopping tolerance on the weights, finite and > 0 (the authors'
      1e-5).

  Returns:
    A :class:`Weighting`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> w, info = fairgrad_jax.mgda_weighting()(jnp.diag(jnp.array([1.0, 4.0])))
    >>> [round(x, 4) for x in w.tolist()], bool(info.converged)
    ([0.8, 0.2], True)

  References:
    Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization",
    NeurIPS 2018, arXiv:1810.04650.
  """
  if normalization not in _NORMALIZATIONS:
    raise ValueError(f"normalization must be one of {_NORMALIZATIONS}, got"
                     f" {normalization!r}.")
  maxiter = _checks.int_hyperparameter("maxiter", maxiter, minimum=1)
  tol = _checks.real_hyperparameter("tol", tol, minimum=0.0, strict=True)
  with_losses = normalization in ("loss", "loss+")

  def init(num_tasks):
    del num_tasks
    return MGDAInfo(num_iterations=jnp.zeros((), jnp.int32),
                    squared_norm=jnp.zeros((), jnp.float32),
                    converged=jnp.zeros((), jnp.bool_))

  def apply(gram, state, *, losses, key, init):
    del state, key, init
    gram = jnp.asarray(gram)
    gram = gram.astype(jnp.promote_types(gram.dtype, jnp.float32))
    norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
    norms = jnp.where(norms > 0, norms, 1.0)
    if normalization == "none":
      n = jnp.ones(gram.shape[:1], gram.dtype)
    elif normalization == "l2":
      n = norms
    elif normalization == "loss":
      n = losses.astype(gram.dtype)
    else:
      n = losses.astype(gram.dtype) * norms
    sol = solver.mgda_solve(gram / (n[:, None] * n[None, :]),
                            maxiter=maxiter, tol=tol)
    return sol.weights, MGDAInfo(sol.num_iterations,
                                 sol.squared_norm.astype(jnp.float32),
                                 sol.converged)

  hyperparams = {"normalization": normalization}
  return _aggregator.Weighting(
      name="mgda", apply=apply, init=init, hyperparams=hyperparams,
      weight_heads=True, needs_losses=with_losses)


def mgda_weights(gram: jax.Array, **solver_kwargs) -> jax.Array:
  r"""MGDA weights from a Gram matrix (a view of :func:`mgda_weighting`).

  The weights w ∈ Δ_K of the min-norm element Σ_i w_i g_i of the convex hull
  of the task gradients (Sener & Koltun, eq. 3 and Algorithms 1–2).

  Args:
    gram: (K, K) Gram matrix GᵀG.
    **solver_kwargs: ``maxiter``, ``tol`` of :func:`mgda_solve`.

  Returns:
    (K,) weights on the simplex.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> g = jnp.array([[1.0, 0.0], [0.0, 2.0]])
    >>> w = fairgrad_jax.mgda_weights(g @ g.T)  # closed form: 4/5 and 1/5
    >>> [round(x, 4) for x in w.tolist()]
    [0.8, 0.2]

  References:
    Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization",
    NeurIPS 2018, arXiv:1810.04650.
  """
  return mgda_weighting(**solver_kwargs)(gram)[0]


def mgda(
    normalization: Normalization = "none",
    *,
    num_tasks: int | None = None,
    shared: _gram.Mask = None,
    scale_by_num_tasks: bool = False,
    max_norm: float | None = None,
    maxiter: int = 250,
    tol: float = 1e-5,
) -> aggregating.Aggregator:
  r"""MGDA: the min-norm element of the convex hull of the task gradients.

  d = Σ_i w_i g_i with w = argmin_{w ∈ Δ_K} ‖Σ_i w_i ĝ_i‖², ĝ_i = g_i / n_i the
  normalised gradients, solved on the Gram matrix by Frank–Wolfe with exact
  line search and an exact active-set finish (closed form for K = 2; see
  :func:`mgda_solve`). As in the
  authors' code, the weights found for the normalised gradients multiply the
  raw gradients (their training loop backpropagates Σ_i w_i l_i), task heads
  included. With ``normalization="none"`` every task improves: g_iᵀd >= ‖d‖².

  Normalisations n_i (Sener & Koltun's ``gradient_normalizers``): "none":
  1; "l2": ‖g_i‖; "loss": l_i; "loss+": l_i ‖g_i‖. "loss" and "loss+" need
  ``update(..., losses=...)``. A zero gradient gets n_i = 1 under "l2" and
  "loss+" (it stays zero and takes all the weight: d = 0).

  Args:
    normalization: one of "none" (default, the paper's), "l2", "loss",
      "loss+" (static).
    num_tasks: K; when given, ``state.weights`` holds the last weights and
      ``state.extra`` the solver's :class:`MGDAInfo`.
    shared: which leaves are shared (see :func:`fairgrad`); the Gram matrix
      uses them. Task-specific leaves get Σ_i w_i g_i too (loss weighting).
      ``state.extra`` is an :class:`MGDAInfo`.
    scale_by_num_tasks: multiply the shared update by K, as Nash-MTL's
      re-implementation does (``sol * n_tasks``); off by default.
    max_norm: clip the global norm of the shared update.
    maxiter: iterations at most, >= 1 (the authors' 250; Frank–Wolfe
      gets half, the active-set finish the rest: see :func:`mgda_solve`).
    tol: L1 stopping tolerance on the weights, finite and > 0 (the authors'
      1e-5).

  Returns:
    An :class:`optax.experimental.aggregating.Aggregator`; ``update(grads,
    state, params=None, *, losses=None)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> agg = fairgrad_jax.mgda(num_tasks=2)
    >>> grads = {"w": jnp.array([[1.0, 0.0], [0.0, 2.0]])}
    >>> d, state = agg.update(grads, agg.init(None))
    >>> [round(x, 4) for x in d["w"].tolist()]
    [0.8, 0.4]
    >>> [round(x, 4) for x in state.weights.tolist()]
    [0.8, 0.2]

  References:
    Sener & Koltun, "Multi-Task Learning as Multi-Objective Optimization",
    NeurIPS 2018, arXiv:1810.04650. Désidéri, "Multiple-gradient descent
    algorithm (MGDA) for multiobjective optimization", Comptes Rendus
    Mathematique 2012.
  """
  return _aggregator.aggregator(
      mgda_weighting(normalization, maxiter=maxiter, tol=tol),
      num_tasks=num_tasks, shared=shared,
      scale_by_num_tasks=scale_by_num_tasks, max_norm=max_norm)
