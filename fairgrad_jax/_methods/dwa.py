"""Dynamic weight average (DWA, Liu, Johns & Davison, 2019)."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from optax.experimental import aggregating

from fairgrad_jax import _aggregator
from fairgrad_jax import _checks
from fairgrad_jax import _gram
from fairgrad_jax._methods import _loss


class DWAState(NamedTuple):
  """DWA's state (``state.extra``).

  Attributes:
    losses: (2, K) losses of the last call (row 0) and of the one before
      (row 1).
    count: how many calls have been made (int32, saturates at 2).
  """

  losses: jax.Array
  count: jax.Array




def dwa_weighting(temperature: float = 2.0) -> _aggregator.Weighting:
  r"""DWA's :class:`Weighting`: weights from the rate of loss decrease.

  w_i = K softmax(r / T)_i, r_i = l_i(t−1)/l_i(t−2), and 1 for the first
  two calls (see :func:`dwa`). The state is a :class:`DWAState`
  (``init(K)`` needs K); the losses are needed at every call.

  Args:
    temperature: T > 0, finite (the paper's 2).

  Returns:
    A :class:`Weighting`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> weighting = fairgrad_jax.dwa_weighting()
    >>> state = weighting.init(2)
    >>> for l in ([1.0, 1.0], [0.5, 1.0], [0.5, 1.0]):
    ...   w, state = weighting(jnp.zeros((2, 2)), state, losses=jnp.array(l))
    >>> w.round(4)
    Array([0.8756, 1.1244], dtype=float32)

  References:
    Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention",
    CVPR 2019, arXiv:1803.10704 (Section 3.3, eq. 7).
  """
  temperature = _checks.real_hyperparameter("temperature", temperature,
                                            minimum=0.0, strict=True)

  def init(num_tasks):
    _loss.needs_num_tasks("dwa", num_tasks)
    return DWAState(losses=jnp.ones((2, num_tasks), jnp.float32),
                    count=jnp.zeros((), jnp.int32))

  def apply(gram, extra, *, losses, key, init):
    del key, init
    k = gram.shape[0]
    prev = extra.losses.astype(gram.dtype)
    ratio = prev[0] / prev[1]
    w = k * jax.nn.softmax(ratio / temperature)
    w = jnp.where(extra.count >= 2, w, jnp.ones_like(w))
    new = DWAState(
        losses=jnp.stack([losses.astype(extra.losses.dtype), extra.losses[0]]),
        count=jnp.minimum(extra.count + 1, 2))
    ok = jnp.all(jnp.isfinite(losses) & (losses > 0))
    return _loss.unless(ok, w, new, extra)

  return _loss.loss_weighting("dwa", apply, init=init,
                              hyperparams={"temperature": temperature})


def dwa(
    temperature: float = 2.0,
    *,
    num_tasks: int | None = None,
    shared: _gram.Mask = None,
    max_norm: float | None = None,
) -> aggregating.Aggregator:
  r"""Dynamic weight average (DWA): weights from the rate of loss decrease.

  w_i(t) = K exp(r_i/T) / Σ_j exp(r_j/T), r_i = l_i(t−1)/l_i(t−2), and
  w_i = 1 for the first two steps; d = Σ_i w_i g_i. The original averages the
  losses over each epoch; here l(t−1), l(t−2) are the ``losses=`` of the two
  previous calls to ``update`` (kept in :class:`DWAState`), so it reacts per
  step. For the epoch version, pass epoch-average losses, e.g. by calling
  with the same averaged losses for a whole epoch. Needs ``losses=`` at every
  call and ``num_tasks``.

  The losses must be finite and > 0 (the rate r_i is a ratio of losses, as in
  the paper, whose losses are positive). A call with a loss that is not
  gives NaN weights, hence a NaN update that ``optax.apply_if_finite``
  skips, and leaves the state as it was: the loss never enters the history,
  so later steps are unaffected. A call whose update is not finite for
  another reason (non-finite gradients) also keeps the state. A task whose
  loss can be exactly 0 (or negative) needs a shift first, e.g. l + 1e-8:
  every call with such a loss is skipped.

  Args:
    temperature: T > 0, finite (the paper's 2).
    num_tasks: K (required).
    shared: which leaves are shared (only for the interface).
    max_norm: clip the global norm of the shared update (off).

  Returns:
    An :class:`optax.experimental.aggregating.Aggregator`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> agg = fairgrad_jax.dwa(num_tasks=2)
    >>> state, g = agg.init(None), {"w": jnp.eye(2)}
    >>> for l in ([1.0, 1.0], [0.5, 1.0], [0.5, 1.0]):
    ...   d, state = agg.update(g, state, losses=jnp.array(l))
    >>> state.weights.round(4)  # r = (0.5, 1): 2 softmax(r / 2)
    Array([0.8756, 1.1244], dtype=float32)

  References:
    Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention",
    CVPR 2019, arXiv:1803.10704 (Section 3.3, eq. 7).
  """
  _loss.needs_num_tasks("dwa", num_tasks)
  return _aggregator.aggregator(dwa_weighting(temperature),
                                num_tasks=num_tasks, shared=shared,
                                max_norm=max_norm)
