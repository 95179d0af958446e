"""Dual-balancing multi-task learning (DB-MTL, Lin et al., 2023)."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from optax.experimental import aggregating

from fairgrad_jax import _aggregator
from fairgrad_jax import _checks
from fairgrad_jax import _gram
from fairgrad_jax._methods import _loss

# LibMTL's guard in log(l + 1e-8).
_EPS = 1e-8


class DBMTLState(NamedTuple):
  """DB-MTL's state (``state.extra``).

  Attributes:
    loss_scale: (K,) c_i, the moving average of 1/(l_i + 1e-8), the factor
      of the log-loss gradient ∇ log(l_i + 1e-8) = g_i/(l_i + 1e-8); zeros
      before the first call (as LibMTL's buffer).
    count: calls so far, t (int32; β_t = β / t^σ).
  """

  loss_scale: jax.Array
  count: jax.Array


def db_mtl_weighting(beta: float = 0.9,
                     beta_sigma: float = 0.0) -> _aggregator.Weighting:
  r"""DB-MTL's :class:`Weighting`: every task's log-loss gradient rescaled to
  the largest norm.

  c_i ← 1/(l_i + ε) + β_t (c_i − 1/(l_i + ε)), β_t = β / t^σ, then
  w_i = max_j (c_j ‖g_j‖) / ‖g_i‖ (0 for a zero gradient), from the Gram
  matrix's diagonal (see :func:`db_mtl`). The state is a
  :class:`DBMTLState` (``init(K)`` needs K); the losses are needed at every
  call.

  Args:
    beta: β in [0, 1), the moving average's decay (LibMTL's default 0.9).
    beta_sigma: σ >= 0, the decay's power schedule β / t^σ (LibMTL's
      default 0: a constant β).

  Returns:
    A :class:`Weighting`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> weighting = fairgrad_jax.db_mtl_weighting()
    >>> w, state = weighting(jnp.diag(jnp.array([1.0, 16.0])),
    ...                      weighting.init(2), losses=jnp.array([0.5, 1.0]))
    >>> [round(c, 4) for c in state.loss_scale.tolist()]  # (1 − β) / l
    [0.2, 0.1]
    >>> [round(x, 4) for x in w.tolist()]  # max(0.2·1, 0.1·4) / ‖g_i‖
    [0.4, 0.1]

  References:
    Lin, Ye, Xu, Shi, Kwok & Zhang, "Dual-Balancing for Multi-Task
    Learning", arXiv:2308.12029; LibMTL's ``LibMTL/weighting/DB_MTL.py``.
  """
  beta = _checks.real_hyperparameter("beta", beta, minimum=0.0)
  if not beta < 1.0:
    raise ValueError(f"beta must be in [0, 1), got {beta!r}.")
  beta_sigma = _checks.real_hyperparameter("beta_sigma", beta_sigma,
                                           minimum=0.0)

  def init(num_tasks):
    _loss.needs_num_tasks("db_mtl", num_tasks)
    return DBMTLState(loss_scale=jnp.zeros((num_tasks,), jnp.float32),
                      count=jnp.zeros((), jnp.int32))

  def apply(gram, extra, *, losses, key, init):
    del key, init
    dtype = gram.dtype
    ok = jnp.all(jnp.isfinite(losses) & (losses >= 0))
    l = jnp.where(ok, losses, 1).astype(extra.loss_scale.dtype)
    # Saturates far beyond any run: t^σ only grows.
    t = jnp.minimum(extra.count + 1, 2**30)
    beta_t = beta / t.astype(l.dtype) ** beta_sigma
    scale = 1.0 / (l + _EPS)
    c = scale + beta_t * (extra.loss_scale - scale)
    norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
    target = jnp.max(c.astype(dtype) * norms)
    # α_i b_i with b_i ≈ c_i g_i: every task's term has the norm `target`.
    w = jnp.where(norms > 0, target / jnp.where(norms > 0, norms, 1), 0)
    return _loss.unless(ok, w, DBMTLState(c, t), extra)

  return _aggregator.Weighting(
      name="db_mtl", apply=apply, init=init,
      hyperparams={"beta": beta, "beta_sigma": beta_sigma}, degree=1.0,
      weight_heads=False, needs_gram=True, needs_losses=True,
      keep_state_on_bad_step=True)


def db_mtl(
    beta: float = 0.9,
    beta_sigma: float = 0.0,
    *,
    num_tasks: int | None = None,
    shared: _gram.Mask = None,
    max_norm: float | None = None,
) -> aggregating.Aggregator:
  r"""Dual-balancing MTL (DB-MTL): log losses, gradients rescaled to the
  largest norm.

  Lin et al. balance the losses by a log transform (task i's gradient
  becomes ĝ_i = ∇ log(l_i + ε) = g_i/(l_i + ε), ε = 1e-8) and the gradients
  by magnitude: with b_i an exponential moving average of ĝ_i (decay
  β_t = β/t^σ), the update is

      d = Σ_i α_i b_i,   α_i = max_j ‖b_j‖ / ‖b_i‖,

  so that every task contributes a vector of the largest task's norm.
  LibMTL's ``DB_MTL`` keeps b as a K×P buffer of past gradients. An
  aggregator sees one step's gradients (a weighting only their Gram matrix),
  so here the moving average is over the loss factor of ĝ_i,
  c_i ← 1/(l_i + ε) + β_t (c_i − 1/(l_i + ε)) (from zeros, as LibMTL's
  buffer, without bias correction), and the current gradients stand in for
  the buffer's directions, b_i ≈ c_i g_i:

      d = Σ_i w_i g_i,   w_i = max_j (c_j ‖g_j‖) / ‖g_i‖.

  This is LibMTL's update exactly when the task gradients do not change
  between steps (only the losses do; the tests check it) and whenever
  β = 0; otherwise it lacks LibMTL's momentum on the gradients (use an
  optimizer with momentum, e.g. LibMTL's Adam). Two further differences:
  LibMTL's α_i = max_j ‖b_j‖ / (‖b_i‖ + 1e-8) has an absolute 1e-8 that has
  no meaning for gradients of arbitrary scale (here a zero gradient gets
  w_i = 0 and d is homogeneous of degree 1 in the gradients); and LibMTL's
  task-specific parameters get their log-loss gradients g_i/(l_i + ε),
  here their plain gradients (Σ_i g_i on non-shared leaves; each head sees
  its own task only, so this is a per-head scale). LibMTL refuses
  representation-level gradients for DB-MTL; here it runs in every mode
  (on the representation's Gram matrix there). Needs ``losses=`` and
  ``num_tasks``.

  The losses must be finite and >= 0 (log(l + 1e-8)): a call with a loss
  that is not gives NaN weights, hence a NaN update that
  ``optax.apply_if_finite`` skips, and leaves the state as it was; so does
  a call whose update is not finite for another reason.

  Args:
    beta: β in [0, 1), the moving average's decay (LibMTL's default 0.9).
    beta_sigma: σ >= 0, the decay's schedule β / t^σ (LibMTL's default 0).
    num_tasks: K (required).
    shared: which leaves are shared between tasks (the Gram matrix's).
    max_norm: clip the global norm of the shared update (off).

  Returns:
    An :class:`optax.experimental.aggregating.Aggregator`; ``state.extra`` is
    a :class:`DBMTLState`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> agg = fairgrad_jax.db_mtl(num_tasks=2)
    >>> d, state = agg.update({"w": jnp.array([[1.0, 0.0], [0.0, 4.0]])},
    ...                       agg.init(None), losses=jnp.array([0.5, 1.0]))
    >>> [round(x, 4) for x in d["w"].tolist()]  # each term of norm 0.4
    [0.4, 0.4]

  References:
    Lin, Ye, Xu, Shi, Kwok & Zhang, "Dual-Balancing for Multi-Task
    Learning", arXiv:2308.12029; LibMTL's ``LibMTL/weighting/DB_MTL.py``.
  """
  _loss.needs_num_tasks("db_mtl", num_tasks)
  return _aggregator.aggregator(db_mtl_weighting(beta, beta_sigma),
                                num_tasks=num_tasks, shared=shared,
                                max_norm=max_norm)
