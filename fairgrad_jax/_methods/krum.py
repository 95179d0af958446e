r"""Krum and Multi-Krum: the gradients closest to their neighbours.

Blanchard, El Mhamdi, Guerraoui & Stainer (2017): with at most f of the K
gradients Byzantine (arbitrary), each gradient g_i is scored by its
distances to its K − f − 2 nearest other gradients, and the update is the
gradient of lowest score (Krum), or the mean of the m gradients of lowest
scores (Multi-Krum). The distances come from the Gram matrix,

  ‖g_i − g_j‖² = G_ii + G_jj − 2 G_ij,

so Krum is a weighting: w = 1/m on the selected tasks, 0 elsewhere. We
follow TorchJD's ``KrumWeighting`` (the peer this is checked against):

* the score sums the *distances* ‖g_i − g_j‖ of the K − f − 2 nearest
  neighbours (the paper, Section 4, sums their squares; the two can select
  different gradients);
* squared distances below 0 (round-off of the Gram matrix) count as 0;
* K >= f + 3 and K >= m, else a ValueError (with stacked gradients: while
  tracing, or when the aggregator is built with ``num_tasks``).

Ties between scores go to the lowest task index (``jax.lax.top_k``; TorchJD
leaves the order of ``torch.topk`` unspecified). The Gram matrix is
symmetrised first, so that the scores of two tasks at the same distance tie
exactly whichever way the Gram matrix was computed. Permuting the tasks
permutes the weights except at such ties (for K = f + 3 the two tasks of the
closest pair always tie: Krum picks the first of them).

The selection does not depend on the gradients' scale (degree 1); all-zero
gradients tie everywhere and select the first m tasks (d = 0).
"""

import jax
import jax.numpy as jnp
from optax.experimental import aggregating

from fairgrad_jax import _aggregator
from fairgrad_jax import _checks
from fairgrad_jax import _gram
from fairgrad_jax._solvers import _common


def krum_weighting(n_byzantine: int, n_selected: int = 1
                   ) -> _aggregator.Weighting:
  r"""Krum's :class:`Weighting`: 1/m on the m tasks of lowest Krum score.

  score_i = Σ_{j ∈ N_i} ‖g_i − g_j‖, N_i the K − f − 2 tasks nearest to
  task i (other than i), from the Gram matrix (see the module docstring);
  stateless, degree 1. Task-specific leaves get Σ_i g_i
  (``weight_heads=False``, as TorchJD's ``mtl_backward``). A Gram matrix
  that is not finite gives NaN weights.

  Args:
    n_byzantine: f, the number of gradients that may be adversarial (an int
      >= 0; required, as in TorchJD). Needs K >= f + 3 tasks.
    n_selected: m, the number of tasks averaged (1: Krum; > 1: Multi-Krum;
      an int >= 1, at most K).

  Returns:
    A :class:`Weighting`.

  Raises:
    ValueError: ``n_byzantine`` or ``n_selected`` is not an int in range;
      (when called) fewer than f + 3 or m tasks.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> g = jnp.array([[1.0, 0.0], [1.1, 0.0], [0.9, 0.1], [1.0, -0.2],
    ...                [-5.0, 9.0]])  # g_5 an outlier
    >>> w, _ = fairgrad_jax.krum_weighting(n_byzantine=1)(g @ g.T)
    >>> w  # scores: 0.1 + 0.14 (g_1), 0.32, 0.37, 0.42, 21.5
    Array([1., 0., 0., 0., 0.], dtype=float32)

  References:
    Blanchard, El Mhamdi, Guerraoui & Stainer, "Machine Learning with
    Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017
    (Section 4, Krum and Multi-Krum); TorchJD's ``KrumWeighting``.
  """
  n_byzantine = _checks.int_hyperparameter("n_byzantine", n_byzantine,
                                           minimum=0)
  n_selected = _checks.int_hyperparameter("n_selected", n_selected,
                                          minimum=1)

  def check_k(k):
    if k < n_byzantine + 3:
      raise ValueError(f"krum needs at least n_byzantine + 3 ="
                       f" {n_byzantine + 3} tasks, got {k}.")
    if k < n_selected:
      raise ValueError(f"krum needs at least n_selected = {n_selected}"
                       f" tasks, got {k}.")

  def init(num_tasks):
    if num_tasks is not None:
      check_k(num_tasks)

  def apply(gram, state, *, losses, key, init):
    del losses, key, init
    gram = _common.as_gram(gram)
    k = gram.shape[0]
    check_k(k)  # static: raises while tracing
    gram = 0.5 * (gram + gram.T)
    norms2 = jnp.diagonal(gram)
    dist2 = norms2[None, :] + norms2[:, None] - 2.0 * gram
    dist = jnp.sqrt(jnp.maximum(dist2, 0.0))
    # Row i sorted: its own 0 first, then its K − f − 2 nearest neighbours.
    nearest = jnp.sort(dist, axis=1)[:, 1:k - n_byzantine - 1]
    scores = jnp.sum(nearest, axis=1)
    _, selected = jax.lax.top_k(-scores, n_selected)
    weights = jnp.zeros((k,), gram.dtype).at[selected].add(1.0 / n_selected)
    return jnp.where(jnp.all(jnp.isfinite(gram)), weights, jnp.nan), state

  return _aggregator.Weighting(
      name="krum", apply=apply, init=init,
      hyperparams={"n_byzantine": n_byzantine, "n_selected": n_selected})


def krum(
    n_byzantine: int,
    n_selected: int = 1,
    *,
    num_tasks: int | None = None,
    shared: _gram.Mask = None,
    scale_by_num_tasks: bool = False,
    max_norm: float | None = None,
) -> aggregating.Aggregator:
  r"""Krum / Multi-Krum: the mean of the m gradients closest to the others.

  Robust aggregation for up to f adversarial gradients: d is the mean of
  the m task gradients of lowest Krum score (the sum of the distances to
  their K − f − 2 nearest neighbours, computed from the Gram matrix; see
  :func:`krum_weighting`). TorchJD's defaults (m = 1, f required);
  task-specific leaves get Σ_i g_i. Extra keyword arguments
  (``losses=``...) are ignored.

  Args:
    n_byzantine: f >= 0; K >= f + 3 tasks are needed.
    n_selected: m >= 1 (1: Krum).
    num_tasks: K; when given, checked against f and m now, and
      ``state.weights`` holds the last weights (1/m on the selected tasks).
    shared: which leaves are shared (see :func:`fairgrad`).
    scale_by_num_tasks: multiply the shared update by K (off).
    max_norm: clip the global norm of the shared update (off).

  Returns:
    An :class:`optax.experimental.aggregating.Aggregator`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> agg = fairgrad_jax.krum(1, n_selected=2)
    >>> g = jnp.array([[1.0, 0.0], [1.2, 0.0], [0.0, 1.0], [9.0, 9.0]])
    >>> agg.update({"w": g}, agg.init(None))[0]["w"]
    Array([1.1, 0. ], dtype=float32)

  References:
    Blanchard, El Mhamdi, Guerraoui & Stainer, "Machine Learning with
    Adversaries: Byzantine Tolerant Gradient Descent", NeurIPS 2017.
  """
  return _aggregator.aggregator(
      krum_weighting(n_byzantine, n_selected), num_tasks=num_tasks,
      shared=shared, scale_by_num_tasks=scale_by_num_tasks,
      max_norm=max_norm)
