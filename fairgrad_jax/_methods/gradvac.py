"""Gradient Vaccine (GradVac, Wang et al., ICLR 2021) on the Gram matrix.

For each task i, in a random order of the other tasks j, the cosine
φ_ij = g_i'ᵀg_j / (‖g_i'‖ ‖g_j‖ + ε) of the (already corrected) g_i' with the
original g_j is compared with a target φ̂_ij, an exponential moving average
of the cosines seen so far. Below the target, g_i' gets the multiple of g_j
that raises the cosine to φ̂_ij (the paper's eq. 4):

  g_i' ← g_i' + ‖g_i'‖ (φ̂_ij √(1 − φ_ij²) − φ_ij √(1 − φ̂_ij²))
                 / (‖g_j‖ √(1 − φ̂_ij²) + ε) · g_j,

and the target moves, φ̂_ij ← (1 − β) φ̂_ij + β φ_ij (eq. 5). The update is
Σ_i g_i'. Every g_i' stays a combination Σ_m C_im g_m of the original
gradients (C = I at the start; a correction adds to C_ij), and every
quantity above comes from the Gram matrix: g_i'ᵀg_j = (C GᵀG)_ij,
‖g_i'‖² = (C GᵀG Cᵀ)_ii. So the whole procedure runs on the K×K Gram
matrix, and the update is Σ_m w_m g_m with w = 1ᵀC (as TorchJD's
``GradVacWeighting``).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from optax.experimental import aggregating

from fairgrad_jax import _aggregator
from fairgrad_jax import _checks
from fairgrad_jax import _gram
from fairgrad_jax._methods import _loss
from fairgrad_jax._solvers import _common


class GradVacState(NamedTuple):
  """GradVac's state (``state.extra``).

  Attributes:
    key: the PRNG key of the next step's task orders.
    phi_hat: (K, K) targets φ̂_ij, the moving averages of the cosines of
      task i's corrected gradient with g_j (zeros before the first step, as
      in the paper; the diagonal stays 0).
  """

  key: jax.Array
  phi_hat: jax.Array


def vaccine_weights(gram, phi_hat, orders, *, beta, eps):
  """The corrections on the Gram matrix, for given task orders.

  Args:
    gram: (K, K) Gram matrix GᵀG.
    phi_hat: (K, K) targets φ̂ before this step.
    orders: (K, T) int: row i lists the tasks j that task i visits, in
      order; entries equal to i are skipped (a permutation of all K tasks,
      or of the K − 1 others).
    beta: β, the targets' moving-average rate.
    eps: ε of the denominators.

  Returns:
    ``(weights, phi_hat)``: (K,) w = 1ᵀC and the updated targets.
  """
  gram = _common.as_gram(gram)
  dtype = gram.dtype
  k = gram.shape[0]
  rows = jnp.arange(k)
  norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
  phi_hat = jnp.asarray(phi_hat, dtype)

  def body(t, carry):
    coef, dots, phi = carry  # C, C GᵀG, φ̂
    j = orders[:, t]  # the task each task i visits now
    visit = j != rows
    norm_i = jnp.sqrt(jnp.maximum(jnp.sum(dots * coef, axis=1), 0.0))
    norm_j = norms[j]
    cos = dots[rows, j] / (norm_i * norm_j + eps)
    target = phi[rows, j]
    sin = jnp.sqrt(jnp.maximum(1.0 - cos * cos, 0.0))
    sin_hat = jnp.sqrt(jnp.maximum(1.0 - target * target, 0.0))
    step = norm_i * (target * sin - cos * sin_hat) / (norm_j * sin_hat + eps)
    step = jnp.where(visit & (cos < target), step, 0.0)
    coef = coef.at[rows, j].add(step)
    dots = dots + step[:, None] * gram[j]
    phi = phi.at[rows, j].set(
        jnp.where(visit, (1.0 - beta) * target + beta * cos, target))
    return coef, dots, phi

  coef = jnp.eye(k, dtype=dtype)
  coef, _, phi_hat = jax.lax.fori_loop(0, orders.shape[1], body,
                                       (coef, gram, phi_hat))
  return jnp.sum(coef, axis=0), phi_hat


def gradvac_weighting(beta: float = 0.5, *, eps: float = 1e-8,
                      seed: int = 0) -> _aggregator.Weighting:
  r"""GradVac's :class:`Weighting`: cosines raised to their moving targets.

  Task i visits the other tasks in its own random order (a permutation
  drawn from the state's PRNG key, split at every step; a ``key=`` given
  to the call is used instead); each visit raises the cosine of g_i' with
  g_j to the target φ̂_ij when it is below (see the module docstring), and
  moves φ̂_ij towards the cosine seen. The weights are w = 1ᵀC, C the
  combination coefficients of the corrected gradients: the update is
  Σ_i g_i' = Σ_m w_m g_m. Cosines and norm ratios do not change with the
  gradients' scale: degree 1 (up to ε, which the builders add on the
  σ-scaled Gram matrix, the gradients divided by the power of two nearest
  their largest entry, not in the gradients' own units). The state is a
  :class:`GradVacState` (``init(K)`` needs K).

  A zero gradient g_j gives cosines 0; a target above 0 then asks for a
  correction ‖g_i'‖ φ̂_ij / ε times g_j = 0: a large weight on a task that
  contributes nothing, as in TorchJD (the update is unaffected).

  Args:
    beta: β in [0, 1], the targets' moving-average rate (TorchJD's and
      LibMTL's default 0.5; 0 keeps the targets at 0: PCGrad's
      projections, exactly so at ε = 0).
    eps: ε >= 0 of the denominators (TorchJD's 1e-8).
    seed: seed of the PRNG key that draws the task orders.

  Returns:
    A :class:`Weighting`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> weighting = fairgrad_jax.gradvac_weighting()
    >>> g = jnp.array([[1.0, 0.0], [-1.0, 1.0]])  # cosine −1/√2 < 0
    >>> w, state = weighting(g @ g.T, weighting.init(2))
    >>> w @ g  # targets 0: each gradient projected off the other
    Array([0.5, 1.5], dtype=float32)
    >>> state.phi_hat.round(4)  # (1 − β)·0 + β·(−1/√2)
    Array([[ 0.    , -0.3536],
           [-0.3536,  0.    ]], dtype=float32)

  References:
    Wang, Tsvetkov, Firat & Cao, "Gradient Vaccine: Investigating and
    Improving Multi-task Optimization in Massively Multilingual Models",
    ICLR 2021, arXiv:2010.05874 (Algorithm 1, eqs. 4–5); TorchJD's
    ``GradVacWeighting``.
  """
  beta = _checks.real_hyperparameter("beta", beta, minimum=0.0)
  if isinstance(beta, float) and beta > 1.0:
    raise ValueError(f"beta must be in [0, 1], got {beta!r}.")
  eps = _checks.real_hyperparameter("eps", eps, minimum=0.0)
  seed = _checks.seed(seed)

  def init(num_tasks):
    _loss.needs_num_tasks("gradvac", num_tasks)
    return GradVacState(key=jax.random.PRNGKey(seed),
                        phi_hat=jnp.zeros((num_tasks, num_tasks), float))

  def apply(gram, state, *, losses, key, init):
    del losses, init
    next_key = state.key
    if key is None:
      next_key, key = jax.random.split(state.key)
    k = gram.shape[0]
    orders = jax.vmap(lambda kk: jax.random.permutation(kk, k))(
        jax.random.split(key, k))
    weights, phi_hat = vaccine_weights(gram, state.phi_hat, orders,
                                       beta=beta, eps=eps)
    return weights, GradVacState(key=next_key,
                                 phi_hat=phi_hat.astype(state.phi_hat.dtype))

  return _aggregator.Weighting(
      name="gradvac", apply=apply, init=init,
      hyperparams={"beta": beta, "eps": eps, "seed": seed},
      keep_state_on_bad_step=True)


def gradvac(
    beta: float = 0.5,
    *,
    eps: float = 1e-8,
    seed: int = 0,
    num_tasks: int | None = None,
    shared: _gram.Mask = None,
    scale_by_num_tasks: bool = False,
    max_norm: float | None = None,
) -> aggregating.Aggregator:
  r"""Gradient Vaccine: raise pairwise cosines to their moving targets, sum.

  Each task gradient is corrected, in a random order of the other tasks,
  towards the cosine φ̂_ij its pairs have had on average (a moving average
  of rate β, from 0), adding a multiple of g_j when the cosine is below it;
  the update sums the corrected gradients on the shared leaves (as PCGrad,
  which is β = 0's projection); task-specific leaves get Σ_i g_i. Computed
  on the Gram matrix (see :func:`gradvac_weighting`). The paper applies
  the vaccine per layer group; this is the whole-model version (TorchJD's
  ``GradVac``): build one aggregator per group with ``shared`` for more.
  A step whose update is not finite keeps the state (targets and key).

  Args:
    beta: β in [0, 1], the targets' moving-average rate (0.5).
    eps: ε >= 0 of the denominators (1e-8).
    seed: seed of the PRNG key that draws the task orders.
    num_tasks: K (required: the targets are per pair of tasks).
    shared: which leaves are shared (see :func:`fairgrad`).
    scale_by_num_tasks: multiply the shared update by K (off).
    max_norm: clip the global norm of the shared update (off).

  Returns:
    An :class:`optax.experimental.aggregating.Aggregator`; ``state.extra`` is
    a :class:`GradVacState`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> agg = fairgrad_jax.gradvac(num_tasks=2)
    >>> grads = {"w": jnp.array([[1.0, 0.0], [-1.0, 1.0]])}
    >>> d, state = agg.update(grads, agg.init(None))
    >>> d["w"]
    Array([0.5, 1.5], dtype=float32)

  References:
    Wang, Tsvetkov, Firat & Cao, "Gradient Vaccine: Investigating and
    Improving Multi-task Optimization in Massively Multilingual Models",
    ICLR 2021, arXiv:2010.05874.
  """
  _loss.needs_num_tasks("gradvac", num_tasks)
  return _aggregator.aggregator(
      gradvac_weighting(beta, eps=eps, seed=seed), num_tasks=num_tasks,
      shared=shared, scale_by_num_tasks=scale_by_num_tasks,
      max_norm=max_norm)
