"""Trimmed mean as an optax aggregator (TorchJD's ``TrimmedMean``).

Like GradDrop, the trimmed mean is not a :class:`Weighting`: it sorts every
coordinate of the gradients over the tasks, so its update is not Σ_i w_i g_i
for any one set of weights, and it needs the stacked gradients (no
Gram-only or representation-level form).
"""

import jax
import jax.numpy as jnp
from optax.experimental import aggregating

from fairgrad_jax import _aggregator
from fairgrad_jax import _checks
from fairgrad_jax import _gram


def trimmed_mean(
    trim_number: int,
    *,
    num_tasks: int | None = None,
    shared: _gram.Mask = None,
    scale_by_num_tasks: bool = False,
) -> aggregating.Aggregator:
  r"""Coordinate-wise trimmed mean: drop the t largest and t smallest entries.

  For each coordinate of the shared leaves, the K task entries are sorted,
  the t = ``trim_number`` largest and t smallest are dropped and the other
  K − 2t averaged (Yin et al.'s trimmed mean; t = 0 is the mean, t = (K−1)/2
  for odd K the coordinate-wise median). The update is robust to up to t
  arbitrary gradients per coordinate. Sorting puts NaN last (as
  ``torch.sort``), so a NaN entry counts as the largest. The mean is
  accumulated in float32 (at least) without overflow for any finite
  entries. Task-specific leaves get Σ_i g_i (as TorchJD's ``mtl_backward``).
  Extra keyword arguments (``losses=``...) are ignored.

  ``state.weights`` (with ``num_tasks``) is not a weighting of the update
  (there is none) but a diagnostic: task i's share of the kept entries,
  (entries of g_i kept) / (P (K − 2t)) over the P shared entries (1/K each
  for t = 0; ties in a coordinate keep the lower task indices).

  Args:
    trim_number: t, an int >= 0; K >= 2t + 1 tasks are needed (a
      ValueError when the aggregator is built with a smaller ``num_tasks``,
      or when it is traced with fewer tasks). Required, as in TorchJD.
    num_tasks: K; when given, checked against t now, and ``state.weights``
      holds the kept shares.
    shared: which leaves are shared (see :func:`fairgrad`).
    scale_by_num_tasks: multiply the shared update by K (off). There is no
      ``max_norm``: chain ``optax.clip_by_global_norm`` after it.

  Returns:
    An :class:`optax.experimental.aggregating.Aggregator` whose state is an
    :class:`AggregatorState` (``extra`` None).

  Raises:
    ValueError: ``trim_number`` is not an int >= 0, or ``num_tasks`` is
      below 2t + 1.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> agg = fairgrad_jax.trimmed_mean(1, num_tasks=4)
    >>> g = jnp.array([[1.0, -1.0], [2.0, 0.0], [3.0, 1.0], [90.0, -50.0]])
    >>> d, state = agg.update({"w": g}, agg.init(None))
    >>> d["w"]  # (2 + 3) / 2 and (-1 + 0) / 2
    Array([ 2.5, -0.5], dtype=float32)
    >>> state.weights  # g_1 kept once, g_2 twice, g_3 once
    Array([0.25, 0.5 , 0.25, 0.  ], dtype=float32)

  References:
    Yin, Chen, Ramchandran & Bartlett, "Byzantine-Robust Distributed
    Learning: Towards Optimal Statistical Rates", ICML 2018,
    arXiv:1803.01498 (Definition 2); TorchJD's ``TrimmedMean``.
  """
  trim_number = _checks.int_hyperparameter("trim_number", trim_number,
                                           minimum=0)
  num_tasks = _checks.num_tasks(num_tasks)
  _checks.bool_hyperparameter("scale_by_num_tasks", scale_by_num_tasks)
  min_tasks = 2 * trim_number + 1

  def check_k(k):
    if k < min_tasks:
      raise ValueError(f"trimmed_mean(trim_number={trim_number}) needs at"
                       f" least 2 * trim_number + 1 = {min_tasks} tasks, got"
                       f" {k}.")

  if num_tasks is not None:
    check_k(num_tasks)

  def init_fn(params):
    del params
    weights = (None if num_tasks is None
               else jnp.zeros((num_tasks,), jnp.float32))
    return _aggregator.AggregatorState(weights=weights, extra=None)

  def update_fn(grads, state, params=None, *, losses=None, **extra_args):
    del losses, extra_args
    k = _gram.check_stacked(grads, params, "trimmed_mean")
    if num_tasks is not None and k != num_tasks:
      raise ValueError(
          f"trimmed_mean was built with num_tasks={num_tasks} but the"
          f" gradients have a task axis of size {k}.")
    check_k(k)
    kept = k - 2 * trim_number
    factor = k if scale_by_num_tasks else None
    mean_weights = jnp.full((kept,), 1.0 / kept, jnp.float32)
    leaves, treedef = jax.tree.flatten(grads)
    mask = _gram.shared_leaves(shared, grads)
    counts = jnp.zeros((k,), jnp.float32)
    trimmed = []
    for x, m in zip(leaves, mask):
      if m:
        order = jnp.argsort(x, axis=0, stable=True)
        middle = order[trim_number:k - trim_number]
        trimmed.append(jnp.take_along_axis(x, middle, axis=0))
        counts = counts.at[middle.reshape(-1)].add(1.0)
    shared_out = iter(_gram.weighted_sums(mean_weights, trimmed,
                                          factor=factor))
    heads = iter(_gram.weighted_sums(
        jnp.ones((k,), jnp.float32),
        [x for x, m in zip(leaves, mask) if not m]))
    out = [next(shared_out) if m else next(heads)
           for x, m in zip(leaves, mask)]
    weights = state.weights
    if weights is not None:
      weights = counts / jnp.maximum(jnp.sum(counts), 1.0)
    return (jax.tree.unflatten(treedef, out),
            _aggregator.AggregatorState(weights=weights, extra=None))

  return _aggregator.with_repr(
      init_fn, update_fn, "trimmed_mean",
      {"trim_number": trim_number} | _aggregator.common_hyperparams(
          num_tasks, shared, scale_by_num_tasks, None))
