"""PCGrad, CAGrad, IMTL-G and Nash-MTL as optax aggregators.

Each is a Gram-matrix weighting (see ``fairgrad_jax._weighting``) wrapped by
:func:`fairgrad_jax._aggregation.base.weighted_aggregator`.
"""

import jax
from optax.experimental import aggregating

from fairgrad_jax import _checks
from fairgrad_jax import _gram
from fairgrad_jax._aggregation import base
from fairgrad_jax._aggregation import fairgrad as fairgrad_agg
from fairgrad_jax._weighting import cagrad as cagrad_weighting
from fairgrad_jax._weighting import imtl_g as imtl_g_weighting
from fairgrad_jax._weighting import pcgrad as pcgrad_weighting


def check_seed(seed):
  if not isinstance(seed, int) or isinstance(seed, bool):
    raise ValueError(f"seed must be an int, got {seed!r}.")


def pcgrad(
    *,
    seed: int = 0,
    num_tasks: int | None = None,
    shared: _gram.Mask = None,
    scale_by_num_tasks: bool = False,
    max_norm: float | None = None,
) -> aggregating.Aggregator:
  r"""PCGrad: project away conflicting components, then sum.

  Each g_i is projected, in a random order of the other tasks, onto the
  normal plane of every g_j with g_iᵀg_j < 0; the update sums the projected
  gradients on the shared leaves (the authors' code sums), task-specific
  leaves get Σ_i g_i. The random orders come from a PRNG key in
  ``state.extra``, seeded by ``seed`` and split at every step. Computed on
  the Gram matrix (see :func:`pcgrad_weights`). Extra keyword arguments
  (``losses=``...) are ignored.

  Args:
    seed: seed of the PRNG key that draws the task orders.
    num_tasks: K; when given, ``state.weights`` holds the last weights w
      (the update is Σ_i w_i g_i).
    shared: which leaves are shared (see :func:`fairgrad`).
    scale_by_num_tasks: multiply the shared update by K (off).
    max_norm: clip the global norm of the shared update (off).

  Returns:
    An :class:`optax.experimental.aggregating.Aggregator`; ``state.extra`` is
    the PRNG key of the next step.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> agg = fairgrad_jax.pcgrad(seed=0)
    >>> grads = {"w": jnp.array([[1.0, 0.0], [-1.0, 1.0]])}
    >>> agg.update(grads, agg.init(None))[0]["w"]
    Array([0.5, 1.5], dtype=float32)

  References:
    Yu, Kumar, Gupta, Levine, Hausman & Finn, "Gradient Surgery for
    Multi-Task Learning", NeurIPS 2020, arXiv:2001.06782.
  """
  check_seed(seed)
  if max_norm is not None:
    max_norm = _checks.real_hyperparameter("max_norm", max_norm, minimum=0.0,
                                           strict=True)

  def weights(gram, key, *, init, losses):
    del init, losses
    key, sub = jax.random.split(key)
    return pcgrad_weighting.pcgrad_weights(gram, sub), key

  hyperparams = {"seed": seed} | base.common_hyperparams(
      num_tasks, shared, scale_by_num_tasks, max_norm)
  return base.weighted_aggregator(
      base.Weighting(weights=weights,
                     init=lambda num_tasks: jax.random.PRNGKey(seed)),
      name="pcgrad", hyperparams=hyperparams, num_tasks=num_tasks,
      shared=shared, scale_by_num_tasks=scale_by_num_tasks,
      max_norm=max_norm)


def cagrad(
    c: float = 0.4,
    *,
    rescale: bool = True,
    num_tasks: int | None = None,
    shared: _gram.Mask = None,
    scale_by_num_tasks: bool = False,
    max_norm: float | None = None,
    maxiter: int = 200,
) -> aggregating.Aggregator:
  r"""CAGrad: the best worst-case improvement within a ball around the mean.

  d = (g0 + (√φ/‖g_w‖) g_w) / (1 + c²) with g0 the mean gradient, φ = c²‖g0‖²
  and w ∈ Δ_K the minimiser of g_wᵀg0 + √φ‖g_w‖ (see :func:`cagrad_weights`).
  We follow the authors' code, including its default division by 1 + c²
  (``rescale``); c = 0 gives the mean gradient. Task-specific leaves get
  Σ_i g_i (as in Nash-MTL's benchmark code, which the FairGrad paper uses).
  Extra keyword arguments (``losses=``...) are ignored.

  Args:
    c: radius c of the ball relative to ‖g0‖, finite and >= 0; 0.4 is the
      authors' default for their multi-task supervised experiments.
    rescale: divide by 1 + c² (the authors' ``rescale=1``).
    num_tasks: K; when given, ``state.weights`` holds the last weights λ
      (d = Σ_i λ_i g_i).
    shared: which leaves are shared (see :func:`fairgrad`).
    scale_by_num_tasks: multiply the shared update by K (off).
    max_norm: clip the global norm of the shared update (off).
    maxiter: projected-gradient iterations of the dual solve.

  Returns:
    An :class:`optax.experimental.aggregating.Aggregator`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> agg = fairgrad_jax.cagrad(c=0.0)
    >>> grads = {"w": jnp.array([[1.0, 0.0], [-1.0, 3.0]])}
    >>> agg.update(grads, agg.init(None))[0]["w"]  # the mean at c = 0
    Array([0. , 1.5], dtype=float32)

  References:
    Liu, Liu, Jin, Stone & Liu, "Conflict-Averse Gradient Descent for
    Multi-task Learning", NeurIPS 2021, arXiv:2110.14048.
  """
  c = _checks.real_hyperparameter("c", c, minimum=0.0)
  rescale = _checks.bool_hyperparameter("rescale", rescale)
  if max_norm is not None:
    max_norm = _checks.real_hyperparameter("max_norm", max_norm, minimum=0.0,
                                           strict=True)
  maxiter = _checks.int_hyperparameter("maxiter", maxiter, minimum=1)

  def weights(gram, extra, *, init, losses):
    del init, losses
    return cagrad_weighting.cagrad_weights(
        gram, c, rescale=rescale, maxiter=maxiter), extra

  hyperparams = {"c": c, "rescale": rescale} | base.common_hyperparams(
      num_tasks, shared, scale_by_num_tasks, max_norm)
  return base.weighted_aggregator(
      base.Weighting(weights=weights), name="cagrad",
      hyperparams=hyperparams, num_tasks=num_tasks, shared=shared,
      scale_by_num_tasks=scale_by_num_tasks, max_norm=max_norm)


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
  if max_norm is not None:
    max_norm = _checks.real_hyperparameter("max_norm", max_norm, minimum=0.0,
                                           strict=True)

  def weights(gram, extra, *, init, losses):
    del init, losses
    return imtl_g_weighting.imtl_g_weights(gram), extra

  return base.weighted_aggregator(
      base.Weighting(weights=weights), name="imtl_g",
      hyperparams=base.common_hyperparams(num_tasks, shared,
                                          scale_by_num_tasks, max_norm),
      num_tasks=num_tasks, shared=shared,
      scale_by_num_tasks=scale_by_num_tasks, max_norm=max_norm)


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
  exactly at every step by FairGrad's on-device Levenberg–Marquardt solve
  (:func:`nash_mtl_weights`; it is :func:`fairgrad` at α = 1). Of the
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
  maxiter = _checks.int_hyperparameter("maxiter", maxiter, minimum=1)
  tol = _checks.real_hyperparameter("tol", tol, minimum=0.0, strict=True)
  if regularization is not None:
    regularization = _checks.real_hyperparameter(
        "regularization", regularization, minimum=0.0)
  if max_norm is not None:
    max_norm = _checks.real_hyperparameter("max_norm", max_norm, minimum=0.0,
                                           strict=True)
  # α(cGᵀG) = c^(-1/2) α(GᵀG): the update does not depend on the scale
  # (degree 0), and heads get Σ_i α_i g_i as in the authors' code.
  weighting = fairgrad_agg.fairgrad_weighting_of(
      1.0, maxiter=maxiter, tol=tol, regularization=regularization,
      weight_heads=True)
  hyperparams = base.common_hyperparams(num_tasks, shared, scale_by_num_tasks,
                                        max_norm)
  return base.weighted_aggregator(
      weighting,
      name="nash_mtl", hyperparams=hyperparams, num_tasks=num_tasks,
      shared=shared, scale_by_num_tasks=scale_by_num_tasks,
      max_norm=max_norm)
