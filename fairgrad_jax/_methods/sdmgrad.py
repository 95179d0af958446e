"""SDMGrad (Xiao, Ban & Ji, NeurIPS 2023): MGDA regularised toward a
preferred direction, its weights from projected momentum steps."""

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from optax.experimental import aggregating

from fairgrad_jax import _aggregator
from fairgrad_jax import _checks
from fairgrad_jax import _gram
from fairgrad_jax._methods import _loss
from fairgrad_jax._solvers import _common
from fairgrad_jax._solvers import qp
from fairgrad_jax._solvers import simplex

# The authors' (and TorchJD's) guard in the normalisation G / (s² + 1e-8).
_EPS = 1e-8


class SDMGradState(NamedTuple):
  """SDMGrad's state (``state.extra``).

  Attributes:
    weights: (K,) the simplex weights w of the inner problem after the last
      step (1/K before the first), where the next step's iterations start
      (the weights the update uses are (w + λ w̃)/(1 + λ)).
  """

  weights: jax.Array


def sdmgrad_inner(gram, w, pref, *, lambda_, lr, momentum, n_iter):
  """SDMGrad's inner loop: ``n_iter`` projected momentum steps from ``w``.

  Args:
    gram: (K, K) matrix A (GᵀG, or J₁J₂ᵀ of two batches).
    w: (K,) starting weights on the simplex.
    pref: (K,) preference w̃.
    lambda_, lr, momentum, n_iter: see :func:`sdmgrad_weighting`.

  Returns:
    ``(weights, w)``: the update's (w + λ w̃)/(1 + λ) and the last w.
  """
  gram = _common.as_gram(gram)
  dtype = gram.dtype
  scale = jnp.mean(jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0)))
  a = gram / (scale * scale + _EPS)
  pref = pref.astype(dtype)
  w = w.astype(dtype)

  def body(_, carry):
    w, velocity = carry
    grad = a @ (w + lambda_ * pref)
    velocity = momentum * velocity + grad
    return simplex.project_simplex(w - lr * velocity), velocity

  w, _ = jax.lax.fori_loop(0, n_iter, body, (w, jnp.zeros_like(w)))
  return (w + lambda_ * pref) / (1.0 + lambda_), w


def sdmgrad_weighting(lambda_: float = 0.3, *, lr: float = 10.0,
                      momentum: float = 0.5, n_iter: int = 20,
                      pref_vector: Sequence[float] | None = None
                      ) -> _aggregator.Weighting:
  r"""SDMGrad's :class:`Weighting`: MGDA regularised toward w̃, projected
  momentum steps.

  SDMGrad's direction d = G(w + λ w̃)/(1 + λ) comes from the dual of the
  paper's direction-oriented problem, min_{w ∈ Δ_K} ½‖G(w + λ w̃)‖², with
  w̃ the preference (the mean, 1/K, by default: d pulled towards the mean
  gradient). Its gradient in w is A(w + λ w̃), A = GᵀG: everything is on
  the Gram matrix. As the authors' code (and TorchJD's
  ``SDMGradWeighting``), A is first normalised by s², s the mean gradient
  norm (mean_i √A_ii; s² + 1e-8 as theirs), then ``n_iter`` steps of
  w ← Π_Δ(w − lr v), v ← momentum · v + A(w + λ w̃) (Π_Δ the Euclidean
  projection onto the simplex) run from the last step's w (1/K at the
  first). The weights are (w + λ w̃)/(1 + λ); degree 1 (the normalisation
  makes them scale-free). The state is an :class:`SDMGradState`
  (``init(K)`` needs K).

  The paper forms A from two independent mini-batches, A = J₁J₂ᵀ (an
  unbiased estimate of GᵀG for its convergence proof), and the update from
  a third. The aggregator has one set of gradients per step: it uses their
  Gram matrix (a biased estimate of the same; the method as one usually
  runs it). With two batches, call the weighting on J₁J₂ᵀ directly
  (``weighting(j1 @ j2.T, state)``: the matrix need not be symmetric) and
  apply the weights to a third batch's gradients.

  Args:
    lambda_: λ >= 0, the pull toward w̃ (0.3: the authors' experiments,
      TorchJD and LibMTL; their class default is 0.6).
    lr: step size of the inner loop, > 0 (10, as theirs).
    momentum: momentum of the inner loop, in [0, 1) (0.5, as theirs).
    n_iter: inner steps per call, >= 1 (20, as theirs).
    pref_vector: the K preference weights w̃ >= 0; None: the mean 1/K.

  Returns:
    A :class:`Weighting`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> weighting = fairgrad_jax.sdmgrad_weighting()
    >>> w, state = weighting(jnp.eye(2), weighting.init(2))  # orthogonal
    >>> w  # equal norms: w stays 1/K, and so does the update's
    Array([0.5, 0.5], dtype=float32)

  References:
    Xiao, Ban & Ji, "Direction-oriented Multi-objective Learning: Simple
    and Provable Stochastic Algorithms", NeurIPS 2023, arXiv:2305.18409;
    the authors' ``methods/weight_methods.py`` (OptMN-Lab/SDMGrad) and
    TorchJD's ``SDMGradWeighting``.
  """
  lambda_ = _checks.real_hyperparameter("lambda_", lambda_, minimum=0.0)
  lr = _checks.real_hyperparameter("lr", lr, minimum=0.0, strict=True)
  momentum = _checks.real_hyperparameter("momentum", momentum, minimum=0.0)
  if isinstance(momentum, float) and momentum >= 1.0:
    raise ValueError(f"momentum must be in [0, 1), got {momentum!r}.")
  n_iter = _checks.int_hyperparameter("n_iter", n_iter, minimum=1)
  pref_vector = qp.check_pref_vector(pref_vector)

  def init(num_tasks):
    _loss.needs_num_tasks("sdmgrad", num_tasks)
    if pref_vector is not None and len(pref_vector) != num_tasks:
      raise ValueError(f"pref_vector has {len(pref_vector)} entries but"
                       f" num_tasks={num_tasks}: give one entry per task.")
    return SDMGradState(weights=jnp.full((num_tasks,), 1.0 / num_tasks,
                                         float))

  def apply(gram, state, *, losses, key, init):
    del losses, key, init
    k = gram.shape[0]
    pref = qp.preference(pref_vector, k, gram.dtype)
    weights, w = sdmgrad_inner(gram, state.weights, pref, lambda_=lambda_,
                               lr=lr, momentum=momentum, n_iter=n_iter)
    return weights, SDMGradState(weights=w.astype(state.weights.dtype))

  hyperparams = {"lambda_": lambda_, "lr": lr, "momentum": momentum,
                 "n_iter": n_iter}
  if pref_vector is not None:
    hyperparams["pref_vector"] = pref_vector
  return _aggregator.Weighting(
      name="sdmgrad", apply=apply, init=init, hyperparams=hyperparams,
      weight_heads=True, keep_state_on_bad_step=True)


def sdmgrad(
    lambda_: float = 0.3,
    *,
    lr: float = 10.0,
    momentum: float = 0.5,
    n_iter: int = 20,
    pref_vector: Sequence[float] | None = None,
    num_tasks: int | None = None,
    shared: _gram.Mask = None,
    scale_by_num_tasks: bool = False,
    max_norm: float | None = None,
) -> aggregating.Aggregator:
  r"""SDMGrad: MGDA's direction pulled toward the mean gradient.

  d = G(w + λ w̃)/(1 + λ), w the simplex weights of min ½‖G(w + λ w̃)‖²
  after ``n_iter`` projected momentum steps from the last step's w, on the
  Gram matrix normalised by the squared mean gradient norm (see
  :func:`sdmgrad_weighting`). λ = 0 is an inexact MGDA; λ → ∞ the
  preference-weighted mean. Task-specific leaves get the same weights (as
  TorchJD's example, which backpropagates Σ_i w_i l_i). One batch: the
  Gram matrix of this step's gradients stands for the paper's two-batch
  J₁J₂ᵀ. A step whose update is not finite keeps the state.

  Args:
    lambda_: λ >= 0 (0.3).
    lr: inner step size, > 0 (10).
    momentum: inner momentum, in [0, 1) (0.5).
    n_iter: inner steps per call, >= 1 (20).
    pref_vector: preference weights w̃ (K entries >= 0); None: 1/K.
    num_tasks: K (required: the inner weights carry over between steps).
    shared: which leaves are shared (see :func:`fairgrad`).
    scale_by_num_tasks: multiply the shared update by K (off).
    max_norm: clip the global norm of the shared update (off).

  Returns:
    An :class:`optax.experimental.aggregating.Aggregator`; ``state.extra`` is
    an :class:`SDMGradState`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> agg = fairgrad_jax.sdmgrad(num_tasks=2)
    >>> d, state = agg.update({"w": jnp.eye(2)}, agg.init(None))
    >>> d["w"]
    Array([0.5, 0.5], dtype=float32)

  References:
    Xiao, Ban & Ji, "Direction-oriented Multi-objective Learning: Simple
    and Provable Stochastic Algorithms", NeurIPS 2023, arXiv:2305.18409.
  """
  _loss.needs_num_tasks("sdmgrad", num_tasks)
  return _aggregator.aggregator(
      sdmgrad_weighting(lambda_, lr=lr, momentum=momentum, n_iter=n_iter,
                        pref_vector=pref_vector),
      num_tasks=num_tasks, shared=shared,
      scale_by_num_tasks=scale_by_num_tasks, max_norm=max_norm)
