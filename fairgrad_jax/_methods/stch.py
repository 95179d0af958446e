"""Smooth Tchebycheff scalarization (STCH, Lin et al., 2024)."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from optax.experimental import aggregating

from fairgrad_jax import _aggregator
from fairgrad_jax import _checks
from fairgrad_jax import _gram
from fairgrad_jax._methods import _loss

# LibMTL's guard inside the logs, log(l + 1e-20) and log(l/z + 1e-20).
_EPS = 1e-20


class STCHState(NamedTuple):
  """STCH's state (``state.extra``).

  Attributes:
    count: calls so far (int32, saturates at ``warmup_steps +
      average_steps``, when the scalarization starts).
    loss_sum: (K,) sum of the losses of the averaging calls (calls
      ``warmup_steps`` to ``warmup_steps + average_steps − 1``); the nadir
      vector is ``loss_sum / average_steps`` once they are over.
  """

  count: jax.Array
  loss_sum: jax.Array


def stch_weighting(mu: float = 1.0, *, warmup_steps: int = 400,
                   average_steps: int = 100) -> _aggregator.Weighting:
  r"""STCH's :class:`Weighting`: log-loss warm-up, then smooth Tchebycheff.

  For the first ``warmup_steps + average_steps`` calls w_i = 1/(l_i + ε);
  then, with z the average loss of the last ``average_steps`` of those
  calls, u_i = log(l_i/z_i + ε) and

      w_i = K softmax(u/μ)_i / (l_i + ε z_i),   ε = 1e-20

  (see :func:`stch`). The state is a :class:`STCHState` (``init(K)`` needs
  K); the losses are needed at every call.

  Args:
    mu: smoothing μ > 0, finite (LibMTL's default 1).
    warmup_steps: calls of log-loss warm-up before the averaging, int >= 0.
    average_steps: calls whose losses are averaged into the nadir vector z,
      int >= 1 (also log-loss warm-up).

  Returns:
    A :class:`Weighting`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> weighting = fairgrad_jax.stch_weighting(warmup_steps=0,
    ...                                         average_steps=1)
    >>> state = weighting.init(2)
    >>> for l in ([2.0, 4.0], [1.0, 4.0]):
    ...   w, state = weighting(jnp.zeros((2, 2)), state, losses=jnp.array(l))
    >>> w.round(4)  # z = (2, 4): u = log(0.5, 1), w = 2 softmax(u) / l
    Array([0.6667, 0.3333], dtype=float32)

  References:
    Lin, Zhang, Chen, Zhang & Zhang, "Smooth Tchebycheff Scalarization for
    Multi-Objective Optimization", ICML 2024, arXiv:2402.19078;
    LibMTL's ``LibMTL/weighting/STCH.py``.
  """
  mu = _checks.real_hyperparameter("mu", mu, minimum=0.0, strict=True)
  warmup_steps = _checks.int_hyperparameter("warmup_steps", warmup_steps,
                                            minimum=0)
  average_steps = _checks.int_hyperparameter("average_steps", average_steps,
                                             minimum=1)
  start = warmup_steps + average_steps

  def init(num_tasks):
    _loss.needs_num_tasks("stch", num_tasks)
    return STCHState(count=jnp.zeros((), jnp.int32),
                     loss_sum=jnp.zeros((num_tasks,), jnp.float32))

  def apply(gram, extra, *, losses, key, init):
    del key, init
    k = gram.shape[0]
    dtype = gram.dtype
    ok = jnp.all(jnp.isfinite(losses) & (losses >= 0))
    l = jnp.where(ok, losses, 1).astype(dtype)
    warm = 1.0 / (l + _EPS)
    z = extra.loss_sum.astype(dtype) / average_steps
    z_ok = jnp.all(jnp.isfinite(z) & (z > 0))
    z = jnp.where(z_ok, z, 1)
    # u = log(l/z + ε), in logs: no overflow of l/z, nor underflow of εz.
    log_z = jnp.log(z)
    u = jnp.logaddexp(jnp.log(l) - log_z, jnp.log(jnp.asarray(_EPS, dtype)))
    # ∂/∂l_i of LibMTL's loss K μ log Σ_j exp(u_j/μ) (smooth Tchebycheff of
    # the log-normalised losses): K softmax(u/μ)_i ∂u_i/∂l_i, with
    # ∂u_i/∂l_i = 1/(l_i + ε z_i) = exp(−u_i − log z_i); in logs, so that
    # a task with l_i = 0 and a tiny z_i gives its finite weight, not 0/0.
    tch = k * jnp.exp(jax.nn.log_softmax(u / mu) - u - log_z)
    scalarizing = extra.count >= start
    w = jnp.where(scalarizing, tch, warm)
    averaging = (extra.count >= warmup_steps) & ~scalarizing
    new = STCHState(
        count=jnp.minimum(extra.count + 1, start),
        loss_sum=extra.loss_sum + jnp.where(
            averaging, l.astype(extra.loss_sum.dtype), 0))
    return _loss.unless(ok & (z_ok | ~scalarizing), w, new, extra)

  return _loss.loss_weighting(
      "stch", apply, init=init,
      hyperparams={"mu": mu, "warmup_steps": warmup_steps,
                   "average_steps": average_steps})


def stch(
    mu: float = 1.0,
    *,
    warmup_steps: int = 400,
    average_steps: int = 100,
    num_tasks: int | None = None,
    shared: _gram.Mask = None,
    max_norm: float | None = None,
) -> aggregating.Aggregator:
  r"""Smooth Tchebycheff scalarization (STCH) of the task losses.

  Lin et al. replace the Tchebycheff scalarization max_i λ_i (l_i − z*_i)
  by its smooth upper bound μ log Σ_i exp(λ_i (l_i − z*_i)/μ), which is
  differentiable and whose minimisers are (weakly) Pareto optimal. This
  follows the authors' multi-task code as LibMTL ships it (``STCH.py``),
  which differs from the paper's formula: the losses are log-normalised by
  a *nadir* vector z estimated during a warm-up, u_i = log(l_i/z_i + ε),
  instead of shifted by an ideal point z*, λ_i = 1, and the loss is
  multiplied by K. The update is the gradient of

      L = K μ log Σ_i exp(u_i/μ),   i.e.
      w_i = K softmax(u/μ)_i / (l_i + ε z_i),   ε = 1e-20,

  from ``losses=`` (required). Before that, during the warm-up, the update
  is the gradient of Σ_i log(l_i + ε) (w_i = 1/(l_i + ε)), as in LibMTL.
  LibMTL counts the warm-up in epochs (``STCH_warmup_epoch=4``: four epochs,
  then a fifth whose losses are averaged into z, then STCH); here it counts
  calls to ``update``: ``warmup_steps`` calls, then ``average_steps`` calls
  whose losses are averaged into z, then STCH. The defaults, 400 and 100,
  are LibMTL's four epochs and one epoch on NYUv2 (795 images, batch 8:
  100 steps an epoch); set them to your epoch length. μ → 0 gives the
  (log-normalised) Tchebycheff scalarization: all weight on the task with
  the largest l_i/z_i; large μ gives w_i → 1/l_i, the warm-up's weights.

  The losses must be finite and >= 0 (l_i = 0 gives the weight 1/ε = 1e20,
  as in LibMTL; use ``max_norm`` if that can happen). A call with a loss
  that is not gives NaN weights, hence a NaN update that
  ``optax.apply_if_finite`` skips, and leaves the state as it was. So does
  every STCH call if an entry of z is 0 (a task whose loss was exactly 0 in
  every averaging call; LibMTL divides by it and gives NaN too): shift such
  losses by a small constant.

  Args:
    mu: smoothing μ > 0, finite (LibMTL's default 1).
    warmup_steps: calls of log-loss warm-up before the averaging, int >= 0.
    average_steps: calls whose losses are averaged into the nadir vector z,
      int >= 1.
    num_tasks: K (required).
    shared: which leaves are shared (only for the interface).
    max_norm: clip the global norm of the shared update (off).

  Returns:
    An :class:`optax.experimental.aggregating.Aggregator`; ``state.extra`` is
    a :class:`STCHState`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> agg = fairgrad_jax.stch(warmup_steps=1, average_steps=1, num_tasks=2)
    >>> state, g = agg.init(None), {"w": jnp.eye(2)}
    >>> for l in ([8.0, 8.0], [2.0, 4.0], [1.0, 4.0]):
    ...   d, state = agg.update(g, state, losses=jnp.array(l))
    >>> state.extra.loss_sum  # z = the second call's losses
    Array([2., 4.], dtype=float32)
    >>> state.weights.round(4)  # u = log(1/2, 4/4): 2 softmax(u) / l
    Array([0.6667, 0.3333], dtype=float32)

  References:
    Lin, Zhang, Chen, Zhang & Zhang, "Smooth Tchebycheff Scalarization for
    Multi-Objective Optimization", ICML 2024, arXiv:2402.19078;
    LibMTL's ``LibMTL/weighting/STCH.py`` (from the authors' code,
    github.com/Xi-L/STCH).
  """
  _loss.needs_num_tasks("stch", num_tasks)
  return _aggregator.aggregator(
      stch_weighting(mu, warmup_steps=warmup_steps,
                     average_steps=average_steps),
      num_tasks=num_tasks, shared=shared, max_norm=max_norm)
