"""Penalty-based boundary intersection (PBI, Zhang & Li, 2007) of the losses."""

import math
import numbers
from typing import Sequence

import jax.numpy as jnp
import numpy as np
from optax.experimental import aggregating

from fairgrad_jax import _aggregator
from fairgrad_jax import _checks
from fairgrad_jax import _gram
from fairgrad_jax._methods import _loss
from fairgrad_jax._solvers import qp


def _check_reference(reference) -> tuple[float, ...] | None:
  """The ideal point z* as a tuple of finite floats (None stays None)."""
  if reference is None:
    return None
  message = (f"reference must be None or a 1-D sequence of K finite real"
             f" numbers, got {reference!r}.")
  if isinstance(reference, (str, bytes, numbers.Number)):
    raise TypeError(message)
  arr = np.asarray(reference)
  if arr.ndim != 1 or arr.dtype == np.bool_ or not (
      np.issubdtype(arr.dtype, np.floating)
      or np.issubdtype(arr.dtype, np.integer)):
    raise TypeError(message)
  values = tuple(float(x) for x in arr)
  if not values or not all(math.isfinite(x) for x in values):
    raise ValueError(message)
  return values


def pbi_weighting(theta: float = 5.0, *,
                  pref_vector: Sequence[float] | None = None,
                  reference: Sequence[float] | None = None
                  ) -> _aggregator.Weighting:
  r"""PBI's :class:`Weighting`: the gradient of d₁ + θ d₂ in the losses.

  With f = l − z*, ŵ = p/‖p‖, d₁ = fᵀŵ and the perpendicular part
  q = f − d₁ŵ (d₂ = ‖q‖), the weights are

      w = ∂(d₁ + θ d₂)/∂l = ŵ + θ q/‖q‖

  (ŵ alone where ‖q‖ is below the round-off of computing it, see
  :func:`pbi`). Stateless; the losses are needed at every call.

  Args:
    theta: the penalty θ >= 0 on the distance to the preference line
      (the paper's 5; θ = 0 is the projection d₁, a linear scalarization
      with weights ŵ).
    pref_vector: the preference p (K entries >= 0, not all 0); None: equal
      preferences.
    reference: the ideal point z* (K finite entries, a lower bound on the
      losses); None: the origin.

  Returns:
    A :class:`Weighting`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> w, _ = fairgrad_jax.pbi_weighting(2.0)(
    ...     jnp.zeros((2, 2)), losses=jnp.array([3.0, 1.0]))
    >>> w.round(4)  # ŵ = (1, 1)/√2, q ∝ (1, −1): ŵ + 2 (1, −1)/√2
    Array([ 2.1213, -0.7071], dtype=float32)

  References:
    Zhang & Li, "MOEA/D: A Multiobjective Evolutionary Algorithm Based on
    Decomposition", IEEE Trans. Evol. Comput. 11(6), 2007; TorchJD's
    ``torchjd.scalarization.PBI``.
  """
  theta = _checks.real_hyperparameter("theta", theta, minimum=0.0)
  pref_vector = qp.check_pref_vector(pref_vector)
  if pref_vector is not None and not any(pref_vector):
    raise ValueError(f"pref_vector must have an entry > 0 (it gives the"
                     f" direction ŵ = p/‖p‖), got {pref_vector!r}.")
  reference = _check_reference(reference)
  if (pref_vector is not None and reference is not None
      and len(reference) != len(pref_vector)):
    raise ValueError(f"reference has {len(reference)} entries but"
                     f" pref_vector has {len(pref_vector)}: give one per"
                     " task.")

  def apply(gram, extra, *, losses, key, init):
    del key, init
    k = gram.shape[0]
    dtype = gram.dtype
    if reference is not None and len(reference) != k:
      raise ValueError(f"reference has {len(reference)} entries but there"
                       f" are {k} tasks: give one entry per task.")
    p = qp.preference(pref_vector, k, dtype)
    direction = p / jnp.linalg.norm(p)
    f = losses.astype(dtype)
    if reference is not None:
      f = f - jnp.asarray(reference, dtype)
    ok = jnp.all(jnp.isfinite(f))
    # The weights are invariant to f's scale: work on f / 2^e, 2^e the
    # power of two nearest max|f| (exact; no overflow of ‖f‖² near the top
    # of the range, nor a flushed 1/max|f|).
    f = jnp.where(ok, f, 0)
    f = _gram.times_pow2(f, -_gram.log2_scale([f], dtype))
    q = f - (f @ direction) * direction
    q_norm = jnp.linalg.norm(q)
    # q's entries carry a round-off of about 2ε|f|; a smaller q is the
    # line itself, where d₂ has no gradient (its subgradients are θ times
    # the unit ball of the plane ⟂ ŵ): take the least, 0.
    tol = 4.0 * jnp.finfo(dtype).eps * math.sqrt(k)
    off_line = q_norm > tol * jnp.linalg.norm(f)
    unit = jnp.where(off_line, q / jnp.where(off_line, q_norm, 1), 0)
    w = jnp.where(ok, direction + theta * unit, jnp.nan)
    return w, extra

  return _loss.loss_weighting(
      "pbi", apply, hyperparams={"theta": theta, "pref_vector": pref_vector,
                                 "reference": reference})


def pbi(
    theta: float = 5.0,
    *,
    pref_vector: Sequence[float] | None = None,
    reference: Sequence[float] | None = None,
    num_tasks: int | None = None,
    shared: _gram.Mask = None,
    max_norm: float | None = None,
) -> aggregating.Aggregator:
  r"""Penalty-based boundary intersection (PBI) of the task losses.

  MOEA/D's PBI decomposes the loss vector, relative to an ideal point z*,
  along a preference direction ŵ = p/‖p‖ and across it:

      d₁ = (l − z*)ᵀŵ,   d₂ = ‖(l − z*) − d₁ŵ‖,   L = d₁ + θ d₂,

  and the update is the gradient of L, d = Σ_i w_i g_i with
  w = ŵ + θ q/‖q‖, q = (l − z*) − d₁ŵ: the preference direction plus a
  pull of strength θ back towards the line z* + t ŵ (weights may be
  negative). TorchJD ships it as a scalarizer (``PBI(theta, weights,
  reference)``); this is its gradient, with one difference: TorchJD keeps
  d₂'s gradient finite on the line by an absolute 1e-12 under the square
  root, which changes the weights of losses below about 1e-5; here the
  weights depend only on the direction of l − z* (they are invariant to its
  scale), and on the line (‖q‖ below the round-off of computing it) the
  penalty's gradient is taken as 0, its least subgradient. To trace a
  Pareto front, build one aggregator per preference (TorchJD resamples p
  from a Dirichlet distribution).

  PBI drives the losses towards the preference line, not only down: with
  equal preferences a task whose loss is below the others' gets a negative
  weight (θ = 5, K = 2, l₁ > l₂: w = (4.24, −2.83)), and losses of
  different scales are pulled towards equality. On the package's
  synthetic benchmark (losses over four decades) that raises the smallest
  task's error 6·10⁴-fold (``benchmarks/RESULTS.md``): give a preference in
  proportion to the losses you expect.

  The losses and ``l − z*`` must be finite (any sign); a call with a
  non-finite one gives NaN weights, hence a NaN update that
  ``optax.apply_if_finite`` skips.

  Args:
    theta: the penalty θ >= 0, finite (the paper's 5; 0: the projection d₁
      alone).
    pref_vector: the preference p (K entries >= 0, not all 0); None: equal
      preferences (ŵ = 1/√K).
    reference: the ideal point z* (K finite entries, a lower bound on the
      losses); None: the origin (non-negative losses).
    num_tasks: K (checked against ``pref_vector`` and ``reference``).
    shared: which leaves are shared (only for the interface).
    max_norm: clip the global norm of the shared update (off).

  Returns:
    An :class:`optax.experimental.aggregating.Aggregator`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> agg = fairgrad_jax.pbi(5.0, pref_vector=[1.0, 1.0])
    >>> d, _ = agg.update({"w": jnp.eye(2)}, agg.init(None),
    ...                   losses=jnp.array([2.0, 2.0]))
    >>> d["w"].round(4)  # on the preference line: the direction ŵ alone
    Array([0.7071, 0.7071], dtype=float32)

  References:
    Zhang & Li, "MOEA/D: A Multiobjective Evolutionary Algorithm Based on
    Decomposition", IEEE Trans. Evol. Comput. 11(6), 2007; TorchJD's
    ``torchjd.scalarization.PBI`` (Quinton & Rey, arXiv:2406.16232).
  """
  weighting = pbi_weighting(theta, pref_vector=pref_vector,
                            reference=reference)
  for name in ("pref_vector", "reference"):
    value = weighting.hyperparams[name]
    if num_tasks is not None and value is not None and len(value) != num_tasks:
      raise ValueError(f"{name} has {len(value)} entries but num_tasks is"
                       f" {num_tasks}.")
  return _aggregator.aggregator(weighting, num_tasks=num_tasks, shared=shared,
                                max_norm=max_norm)
