"""Nash-MTL (Navon et al., 2022): the Nash bargaining solution, GᵀG α = 1/α.

Navon et al. (2022), Section 3 (Claim 3.1): the bargaining solution is
d = Σ_i α_i g_i with α_i (g_iᵀd) = 1, i.e. GᵀG α = 1/α, α > 0. The authors
approximate it by a sequence of convex programs (cvxpy, ``optim_niter=20``);
this is FairGrad's equation at α_fair = 1, which we solve exactly on device
with FairGrad's solver (:func:`fairgrad_solve`).
"""

import jax
from optax.experimental import aggregating

from fairgrad_jax import _aggregator
from fairgrad_jax import _gram
from fairgrad_jax._solvers import fairgrad as solver


def nash_mtl_weighting(
    *,
    maxiter: int = 100,
    tol: float = 1e-5,
    regularization: float | None = None,
) -> _aggregator.Weighting:
  r"""Nash-MTL's :class:`Weighting`: the positive root of GᵀG α = 1/α.

  FairGrad's weighting at α = 1 except that task-specific leaves get
  Σ_i α_i g_i (the authors backpropagate Σ_i α_i l_i). α(cGᵀG) =
  c^(-1/2) α(GᵀG): the update does not depend on the gradients' scale
  (degree 0). The state is the last solve's :class:`FairGradInfo`.

  Args:
    maxiter, tol, regularization: of :func:`fairgrad_solve`.

  Returns:
    A :class:`Weighting`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> weights, _ = fairgrad_jax.nash_mtl_weighting()(jnp.diag(jnp.array(
    ...     [1.0, 16.0])))
    >>> weights.round(4)  # 1/‖g_i‖ for orthogonal gradients
    Array([1.  , 0.25], dtype=float32)

  References:
    Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya,
    "Multi-Task Learning as a Bargaining Game", ICML 2022, arXiv:2202.01017.
  """
  return solver.alpha_fair_weighting(
      "nash_mtl", 1.0, maxiter=maxiter, tol=tol,
      regularization=regularization, weight_heads=True, hyperparams={})


def nash_mtl_weights(gram: jax.Array, **solver_kwargs) -> jax.Array:
  r"""Nash-MTL weights: the positive root of GᵀG α = 1/α.

  A view of :func:`nash_mtl_weighting` (FairGrad's solve at α = 1):
  jittable, no cvxpy.

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
  init = solver_kwargs.pop("init", None)
  return nash_mtl_weighting(**solver_kwargs)(gram, init=init)[0]


def nash_mtl(
    *,
    num_tasks: int | None = None,
    shared: _gram.Mask = None,
    scale_by_num_tasks: bool = False,
    max_norm: float | None = 1.0,
    maxiter: int = 100,
    tol: float = 1e-5,
    regularization: float | None = None,
) -> aggregating.Aggregator:
  r"""Nash-MTL: the Nash bargaining solution of the tasks.

  d = Σ_i α_i g_i with GᵀG α = 1/α, α > 0 (Navon et al., Claim 3.1), solved
  exactly at every step by FairGrad's on-device damped Newton solve
  (:func:`nash_mtl_weighting`; it is :func:`fairgrad` at α = 1, with the
  heads weighted and the norm clipped). Of the
  authors' defaults we keep ``max_norm=1.0`` (they clip the shared gradient's
  norm) and ``update_weights_every=1`` (a solve every step); their
  ``optim_niter=20`` iterations of convex approximations are replaced by the
  exact root (up to ``tol``). As in their code (Σ_i α_i l_i is
  backpropagated), task-specific leaves get Σ_i α_i g_i. Extra keyword
  arguments (``losses=``...) are ignored.

  Args:
    num_tasks: K; when given, ``state.weights`` holds the last α (also the
      warm start of the next solve) and ``state.extra`` the solver's
      :class:`FairGradInfo`.
    shared: which leaves are shared (see :func:`fairgrad`).
    scale_by_num_tasks: multiply the shared update by K (off).
    max_norm: clip the global norm of the shared update (the authors' 1.0;
      None turns clipping off).
    maxiter, tol, regularization: of :func:`fairgrad_solve`.

  Returns:
    An :class:`optax.experimental.aggregating.Aggregator`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> agg = fairgrad_jax.nash_mtl(num_tasks=2, max_norm=None)
    >>> g = jnp.array([[1.0, 0.0], [0.0, 4.0]])
    >>> d, state = agg.update({"w": g}, agg.init(None))
    >>> state.weights.round(4)  # 1/‖g_i‖ for orthogonal gradients
    Array([1.  , 0.25], dtype=float32)

  References:
    Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik & Fetaya,
    "Multi-Task Learning as a Bargaining Game", ICML 2022, arXiv:2202.01017.
  """
  return _aggregator.aggregator(
      nash_mtl_weighting(maxiter=maxiter, tol=tol,
                         regularization=regularization),
      num_tasks=num_tasks, shared=shared,
      scale_by_num_tasks=scale_by_num_tasks, max_norm=max_norm)
