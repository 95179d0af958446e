"""PCGrad's weights: gradient surgery expressed on the Gram matrix.

Yu et al. (2020), Algorithm 1: each task gradient g_i is projected, in a random
order of the other tasks j, onto the normal plane of every g_j it conflicts
with: g_i ← g_i − min(g_iᵀg_j, 0) / ‖g_j‖² g_j; the update is the sum of the
projected gradients (as in the authors' code). Every projected gradient stays
a linear combination g_i' = Σ_m C_im g_m of the original ones, and
g_i'ᵀg_j = (C GᵀG)_ij, so the whole procedure runs on the K×K Gram matrix and
the update is Σ_m w_m g_m with w = 1ᵀC (as in TorchJD).
"""

import jax
import jax.numpy as jnp
from optax.experimental import aggregating

from fairgrad_jax import _aggregator
from fairgrad_jax import _checks
from fairgrad_jax import _gram
from fairgrad_jax._solvers import _common


def _projected_weights(gram, key):
  """Algorithm 1 on the Gram matrix: the weights of the summed projections."""
  gram = _common.as_gram(gram)
  dtype = gram.dtype
  k = gram.shape[0]
  orders = jax.vmap(lambda kk: jax.random.permutation(kk, k))(
      jax.random.split(key, k))
  diag = jnp.diagonal(gram)
  safe = jnp.where(diag > 0, diag, 1.0)
  rows = jnp.arange(k)

  def body(t, coef):
    j = orders[:, t]  # the task that each task i is projected against now
    dots = jnp.sum(coef * gram[j], axis=1)  # g_i'ᵀ g_{j_i}
    step = jnp.where((j != rows) & (diag[j] > 0),
                     jnp.minimum(dots, 0.0) / safe[j], 0.0)
    return coef.at[rows, j].add(-step)

  coef = jax.lax.fori_loop(0, k, body, jnp.eye(k, dtype=dtype))
  return jnp.sum(coef, axis=0)


def pcgrad_weighting(*, seed: int = 0) -> _aggregator.Weighting:
  r"""PCGrad's :class:`Weighting`: gradient surgery on the Gram matrix.

  The state is a PRNG key, seeded by ``seed`` and split at every step to
  draw the task orders (a ``key=`` given to the call is used instead, and
  the state's key is then left as it is).

  Args:
    seed: seed of the PRNG key.

  Returns:
    A :class:`Weighting`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> g = jnp.array([[1.0, 0.0], [-1.0, 1.0]])  # conflicting pair
    >>> w, key = fairgrad_jax.pcgrad_weighting(seed=0)(g @ g.T)
    >>> w @ g
    Array([0.5, 1.5], dtype=float32)

  References:
    Yu, Kumar, Gupta, Levine, Hausman & Finn, "Gradient Surgery for
    Multi-Task Learning", NeurIPS 2020, arXiv:2001.06782 (Algorithm 1).
  """
  seed = _checks.seed(seed)

  def apply(gram, state, *, losses, key, init):
    del losses, init
    if key is None:
      state, key = jax.random.split(state)
    return _projected_weights(gram, key), state

  return _aggregator.Weighting(
      name="pcgrad", apply=apply,
      init=lambda num_tasks: jax.random.PRNGKey(seed),
      hyperparams={"seed": seed})


def pcgrad_weights(gram: jax.Array, key: jax.Array) -> jax.Array:
  r"""PCGrad's weights on the original gradients, from GᵀG and a PRNG key.

  Task i visits the other tasks in its own random order (a permutation drawn
  from ``key``), as in the authors' code and Nash-MTL's re-implementation.
  A view of :func:`pcgrad_weighting` with this call's key.

  Args:
    gram: (K, K) Gram matrix GᵀG.
    key: a ``jax.random`` key.

  Returns:
    (K,) weights w: the PCGrad update is Σ_m w_m g_m.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import fairgrad_jax
    >>> g = jnp.array([[1.0, 0.0], [-1.0, 1.0]])  # conflicting pair
    >>> w = fairgrad_jax.pcgrad_weights(g @ g.T, jax.random.PRNGKey(0))
    >>> w @ g  # (0.5, 0.5) + (0, 1)
    Array([0.5, 1.5], dtype=float32)

  References:
    Yu, Kumar, Gupta, Levine, Hausman & Finn, "Gradient Surgery for
    Multi-Task Learning", NeurIPS 2020, arXiv:2001.06782 (Algorithm 1).
  """
  return pcgrad_weighting()(gram, key=key)[0]


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
  return _aggregator.aggregator(
      pcgrad_weighting(seed=seed), num_tasks=num_tasks, shared=shared,
      scale_by_num_tasks=scale_by_num_tasks, max_norm=max_norm)
