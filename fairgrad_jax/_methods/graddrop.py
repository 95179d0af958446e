"""GradDrop as an optax aggregator.

GradDrop is the one method of the package that is not a :class:`Weighting`:
it keeps or drops each coordinate of each task gradient, so its update is
not Σ_i w_i g_i for any weights, and it needs the stacked gradients (no
Gram-only or representation-level form).
"""

import jax
import jax.numpy as jnp
from optax.experimental import aggregating

from fairgrad_jax import _aggregator
from fairgrad_jax import _checks
from fairgrad_jax import _gram


def graddrop(
    *,
    seed: int = 0,
    num_tasks: int | None = None,
    shared: _gram.Mask = None,
) -> aggregating.Aggregator:
  r"""GradDrop: keep, per coordinate, only the gradients of one sign.

  For each coordinate of the shared leaves, the sign purity
  P = ½(1 + Σ_i g_i / Σ_i |g_i|) ∈ [0, 1] and one U ~ Uniform[0, 1) give the
  masks M_i = 1[P > U] 1[g_i > 0] + 1[P < U] 1[g_i < 0]; the update is
  Σ_i M_i g_i (leak 0, the paper's default; a coordinate where every g_i is 0
  gets 0). Where all tasks agree in sign, this is Σ_i g_i. Task-specific
  leaves get Σ_i g_i. The paper applies GradDrop to the gradients at a
  layer's activations; like LibMTL and Nash-MTL's code we apply it to the
  gradients of the shared parameters. U comes from a PRNG key kept in
  ``state.extra``, seeded by ``seed``. Extra keyword arguments
  (``losses=``...) are ignored.

  Args:
    seed: seed of the PRNG key.
    num_tasks: K; when given, K is checked and ``state.weights`` holds ones
      (GradDrop is not a weighting: it has no per-task weights).
    shared: which leaves are shared (see :func:`fairgrad`).

  Returns:
    An :class:`optax.experimental.aggregating.Aggregator`; ``state`` is an
    :class:`AggregatorState` whose ``extra`` is the next PRNG key.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> agg = fairgrad_jax.graddrop(seed=0)
    >>> grads = {"w": jnp.array([[1.0, -2.0], [3.0, -1.0]])}  # signs agree
    >>> agg.update(grads, agg.init(None))[0]["w"]
    Array([ 4., -3.], dtype=float32)

  References:
    Chen, Ngiam, Huang, Luong, Kretzschmar, Chai & Anguelov, "Just Pick a
    Sign: Optimizing Deep Multitask Models with Gradient Sign Dropout",
    NeurIPS 2020, arXiv:2010.06808.
  """
  seed = _checks.seed(seed)
  num_tasks = _checks.num_tasks(num_tasks)

  def init_fn(params):
    del params
    weights = (None if num_tasks is None
               else jnp.ones((num_tasks,), jnp.float32))
    return _aggregator.AggregatorState(weights=weights,
                                extra=jax.random.PRNGKey(seed))

  def drop(x, key):
    dtype = jnp.promote_types(x.dtype, jnp.float32)
    g = x.astype(dtype)
    total = jnp.sum(g, axis=0)
    mass = jnp.sum(jnp.abs(g), axis=0)
    purity = 0.5 * (1.0 + total / jnp.where(mass > 0, mass, 1.0))
    u = jax.random.uniform(key, purity.shape, dtype)
    keep = (((purity > u) & (g > 0)) | ((purity < u) & (g < 0)))
    return jnp.sum(jnp.where(keep, g, 0.0), axis=0).astype(x.dtype)

  def update_fn(grads, state, params=None, *, losses=None, **extra_args):
    del losses, extra_args
    k = _gram.check_stacked(grads, params, "graddrop")
    if num_tasks is not None and k != num_tasks:
      raise ValueError(
          f"graddrop was built with num_tasks={num_tasks} but the gradients"
          f" have a task axis of size {k}.")
    leaves, treedef = jax.tree.flatten(grads)
    mask = _gram.shared_leaves(shared, grads)
    key, *subs = jax.random.split(state.extra, len(leaves) + 1)
    ones = jnp.ones((k,), jnp.float32)
    heads = iter(_gram.weighted_sums(
        ones, [x for x, m in zip(leaves, mask) if not m]))
    out = [drop(x, sub) if m else next(heads)
           for x, m, sub in zip(leaves, mask, subs)]
    return (jax.tree.unflatten(treedef, out),
            _aggregator.AggregatorState(weights=state.weights, extra=key))

  return _aggregator.with_repr(
      init_fn, update_fn, "graddrop",
      {"seed": seed} | _aggregator.common_hyperparams(num_tasks, shared, False,
                                                      None))
