"""MoDo (Chen, Fernando, Ying & Chen, NeurIPS 2023): MGDA's weights by one
projected gradient step per training step."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from optax.experimental import aggregating

from fairgrad_jax import _aggregator
from fairgrad_jax import _checks
from fairgrad_jax import _gram
from fairgrad_jax._methods import _loss
from fairgrad_jax._solvers import _common
from fairgrad_jax._solvers import simplex


class MoDoState(NamedTuple):
  """MoDo's state (``state.extra``).

  Attributes:
    weights: (K,) λ after the last step (1/K before the first), where the
      next step starts.
  """

  weights: jax.Array


def modo_step(gram, lam, *, gamma, rho):
  """One MoDo step λ ← Π_Δ(λ − γ (A/s² + ρ I) λ), s the mean gradient norm.

  Args:
    gram: (K, K) matrix A (GᵀG, or J₁J₂ᵀ of two batches).
    lam: (K,) λ on the simplex.
    gamma, rho: see :func:`modo_weighting`.

  Returns:
    (K,) the next λ.
  """
  gram = _common.as_gram(gram)
  lam = lam.astype(gram.dtype)
  scale = jnp.mean(jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0)))
  scale = scale * scale
  a = gram / jnp.where(scale > 0, scale, 1.0)
  return simplex.project_simplex(lam - gamma * (a @ lam + rho * lam))


def modo_weighting(gamma: float = 0.1, rho: float = 0.1
                   ) -> _aggregator.Weighting:
  r"""MoDo's :class:`Weighting`: one projected step on λ per call.

  MoDo (eqs. 2.9a–b of the JMLR version) tracks MGDA's min-norm
  weights with one step per training step,
  λ ← Π_Δ(λ − γ (∇F_ξ₁ᵀ∇F_ξ₂ λ + ρ λ)) (Π_Δ the Euclidean projection onto
  the simplex, ρ λ the gradient of the regulariser ρ/2 ‖λ‖²), and updates
  the parameters along ∇F λ. ∇Fᵀ∇F is a K×K matrix: the step runs on the
  Gram matrix; the weights are the new λ. The state is a
  :class:`MoDoState` (``init(K)`` needs K).

  Two choices differ from TorchJD's ``MoDoWeighting``, on purpose:

  * **Scale.** γ multiplies a matrix of squared gradient norms, so a
    fixed γ means different steps for gradients of different scales, and
    an update that is not homogeneous in the gradients, which the builders'
    exact power-of-two rescaling (and every method of the package) needs.
    Here the matrix is divided by s², s = mean_i √A_ii the mean gradient
    norm, as SDMGrad's authors (and TorchJD's SDMGrad) normalise theirs:
    γ is then in units of 1/s², and the weights are scale-free (degree 1).
    TorchJD's MoDo on A/s² gives the same values.
  * **One sample.** The paper's λ-step uses two independent mini-batches
    (ξ₁, ξ₂: ∇F_ξ₁ᵀ∇F_ξ₂ is an unbiased estimate of ∇Fᵀ∇F, what its
    analysis needs). The aggregator has one set of gradients per step and
    uses their Gram matrix, a biased estimate (with mini-batch noise its
    diagonal is too large by the gradients' variance, which pulls λ
    towards the uniform weights like a larger ρ). With two batches, call
    the weighting on J₁J₂ᵀ directly (``weighting(j1 @ j2.T, state)``) and
    apply λ to the gradients of their mean loss (eq. 2.9b).

  Args:
    gamma: γ > 0, λ's step size (TorchJD's default 0.1).
    rho: ρ >= 0, the ℓ2 regularisation of λ (TorchJD's default 0.1).

  Returns:
    A :class:`Weighting`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> weighting = fairgrad_jax.modo_weighting()
    >>> w, state = weighting(jnp.diag(jnp.array([1.0, 9.0])),
    ...                      weighting.init(2))
    >>> w.round(4)  # s² = 4: steps 0.1·(1/8 + 1/20), 0.1·(9/8 + 1/20)
    Array([0.55, 0.45], dtype=float32)

  References:
    Chen, Fernando, Ying & Chen, "Three-Way Trade-Off in Multi-Objective
    Learning: Optimization, Generalization and Conflict-Avoidance",
    NeurIPS 2023 (JMLR 2024), arXiv:2305.20057; the authors' code
    (heshandevaka/Trade-Off-MOL) and TorchJD's ``MoDoWeighting``.
  """
  gamma = _checks.real_hyperparameter("gamma", gamma, minimum=0.0,
                                      strict=True)
  rho = _checks.real_hyperparameter("rho", rho, minimum=0.0)

  def init(num_tasks):
    _loss.needs_num_tasks("modo", num_tasks)
    return MoDoState(weights=jnp.full((num_tasks,), 1.0 / num_tasks, float))

  def apply(gram, state, *, losses, key, init):
    del losses, key, init
    lam = modo_step(gram, state.weights, gamma=gamma, rho=rho)
    return lam, MoDoState(weights=lam.astype(state.weights.dtype))

  return _aggregator.Weighting(
      name="modo", apply=apply, init=init,
      hyperparams={"gamma": gamma, "rho": rho}, weight_heads=True,
      keep_state_on_bad_step=True)


def modo(
    gamma: float = 0.1,
    rho: float = 0.1,
    *,
    num_tasks: int | None = None,
    shared: _gram.Mask = None,
    scale_by_num_tasks: bool = False,
    max_norm: float | None = None,
) -> aggregating.Aggregator:
  r"""MoDo: MGDA's weights tracked by one projected step per training step.

  d = Σ_i λ_i g_i with λ ← Π_Δ(λ − γ (GᵀG/s² + ρ I) λ) at every step, from
  1/K (see :func:`modo_weighting`: the Gram matrix normalised by the
  squared mean gradient norm s², and one batch for the paper's two).
  Task-specific leaves get the same weights (the paper's update is
  ∇F λ). A step whose update is not finite keeps λ.

  Args:
    gamma: γ > 0, λ's step size (0.1).
    rho: ρ >= 0, λ's ℓ2 regularisation (0.1).
    num_tasks: K (required: λ carries over between steps).
    shared: which leaves are shared (see :func:`fairgrad`).
    scale_by_num_tasks: multiply the shared update by K (off).
    max_norm: clip the global norm of the shared update (off).

  Returns:
    An :class:`optax.experimental.aggregating.Aggregator`; ``state.extra`` is
    a :class:`MoDoState`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> agg = fairgrad_jax.modo(num_tasks=2)
    >>> d, state = agg.update({"w": jnp.array([[1.0, 0.0], [0.0, 3.0]])},
    ...                       agg.init(None))
    >>> state.weights.round(4)
    Array([0.55, 0.45], dtype=float32)

  References:
    Chen, Fernando, Ying & Chen, "Three-Way Trade-Off in Multi-Objective
    Learning: Optimization, Generalization and Conflict-Avoidance",
    NeurIPS 2023, arXiv:2305.20057.
  """
  _loss.needs_num_tasks("modo", num_tasks)
  return _aggregator.aggregator(
      modo_weighting(gamma, rho), num_tasks=num_tasks, shared=shared,
      scale_by_num_tasks=scale_by_num_tasks, max_norm=max_norm)
