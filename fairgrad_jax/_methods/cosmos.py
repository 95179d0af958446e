"""COSMOS's cosine-penalised linear scalarization (Ruchte & Grabocka, 2021)."""

from typing import Sequence

import jax.numpy as jnp
from optax.experimental import aggregating

from fairgrad_jax import _aggregator
from fairgrad_jax import _checks
from fairgrad_jax import _gram
from fairgrad_jax._methods import _loss
from fairgrad_jax._solvers import qp


def cosmos_weighting(lambda_: float = 1.0, *,
                     pref_vector: Sequence[float] | None = None
                     ) -> _aggregator.Weighting:
  r"""COSMOS's :class:`Weighting`: the gradient of rᵀl − λ cos(r, l).

  With r̂ = r/‖r‖ and l̂ = l/‖l‖ the weights are

      w = r − (λ/‖l‖) (r̂ − cos(r, l) l̂)

  (w = r where l = 0, see :func:`cosmos`). Stateless; the losses are
  needed at every call.

  Args:
    lambda_: the cosine penalty λ >= 0 (no single value in the paper: 0.01
      to 8 by dataset; TorchJD has no default; here 1).
    pref_vector: the preference r (K entries >= 0, not all 0); None: equal
      preferences 1/K.

  Returns:
    A :class:`Weighting`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> w, _ = fairgrad_jax.cosmos_weighting(1.0, pref_vector=[1.0, 0.0])(
    ...     jnp.zeros((2, 2)), losses=jnp.array([0.0, 2.0]))
    >>> w.round(4)  # r − (1/2)(r̂ − 0 · l̂): cos(r, l) = 0
    Array([0.5, 0. ], dtype=float32)

  References:
    Ruchte & Grabocka, "Scalable Pareto Front Approximation for Deep
    Multi-Objective Learning", ICDM 2021, arXiv:2103.13392; TorchJD's
    ``torchjd.scalarization.COSMOS``.
  """
  lambda_ = _checks.real_hyperparameter("lambda_", lambda_, minimum=0.0)
  pref_vector = qp.check_pref_vector(pref_vector)
  if pref_vector is not None and not any(pref_vector):
    raise ValueError(f"pref_vector must have an entry > 0 (cos(r, l) needs"
                     f" r != 0), got {pref_vector!r}.")

  def apply(gram, extra, *, losses, key, init):
    del key, init
    k = gram.shape[0]
    dtype = gram.dtype
    r = qp.preference(pref_vector, k, dtype)
    l = losses.astype(dtype)
    ok = jnp.all(jnp.isfinite(l))
    # ‖l‖ = 2^e ‖l / 2^e‖, 2^e the power of two nearest max |l| (exact):
    # no overflow of the squares near the top of the range, nor underflow
    # of tiny losses' squares.
    l = jnp.where(ok, l, 0)
    e = _gram.log2_scale([l], dtype)
    scaled = _gram.times_pow2(l, -e)
    scaled_norm = jnp.linalg.norm(scaled)
    nonzero = scaled_norm > 0
    l_hat = scaled / jnp.where(nonzero, scaled_norm, 1)
    r_hat = r / jnp.linalg.norm(r)
    cos = r_hat @ l_hat
    # ∂cos/∂l = (r̂ − cos l̂)/‖l‖; undefined at l = 0, where only rᵀl
    # remains (the weights of a linear scalarization).
    inv_norm = _gram.times_pow2(1.0 / jnp.where(nonzero, scaled_norm, 1), -e)
    penalty = jnp.where(nonzero, lambda_ * inv_norm * (r_hat - cos * l_hat),
                        0)
    w = jnp.where(ok, r - penalty, jnp.nan)
    return w, extra

  return _loss.loss_weighting(
      "cosmos", apply,
      hyperparams={"lambda_": lambda_, "pref_vector": pref_vector})


def cosmos(
    lambda_: float = 1.0,
    *,
    pref_vector: Sequence[float] | None = None,
    num_tasks: int | None = None,
    shared: _gram.Mask = None,
    max_norm: float | None = None,
) -> aggregating.Aggregator:
  r"""COSMOS: linear scalarization of the losses with a cosine penalty.

  Ruchte & Grabocka approximate the Pareto front with one network
  conditioned on a preference r, trained on

      L = rᵀl − λ cos(r, l),   i.e.   w = ∂L/∂l = r − (λ/‖l‖)(r̂ − cos(r, l) l̂),

  r̂ = r/‖r‖, l̂ = l/‖l‖: the linear scalarization's weights r, plus a
  pull of the loss vector towards the preference ray (the weights may be
  negative). The update is d = Σ_i w_i g_i. This is TorchJD's ``COSMOS``
  scalarizer (``COSMOS(lambda_, weights)``) differentiated; the
  conditioning of the model on r (r concatenated to its input, r resampled
  from a Dirichlet distribution at every step) is the user's, as in
  TorchJD: build one aggregator per preference. Two differences from
  TorchJD: torch's ``cosine_similarity`` bounds the norms below by 1e-8,
  which changes losses of norm below 1e-8; and at l = 0, where the cosine
  is undefined, the weights here are r (the penalty's term is dropped).
  The penalty's part of w scales as λ/‖l‖: it dominates when the losses
  are small compared with λ.

  The losses must be finite (any sign); a call with a non-finite one gives
  NaN weights, hence a NaN update that ``optax.apply_if_finite`` skips.

  Args:
    lambda_: the cosine penalty λ >= 0, finite (λ = 0: linear scalarization
      with weights r). The paper uses 0.01 to 8 depending on the dataset
      and TorchJD has no default; the default here is 1.
    pref_vector: the preference r (K entries >= 0, not all 0); None: equal
      preferences 1/K.
    num_tasks: K (checked against ``pref_vector``).
    shared: which leaves are shared (only for the interface).
    max_norm: clip the global norm of the shared update (off).

  Returns:
    An :class:`optax.experimental.aggregating.Aggregator`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> agg = fairgrad_jax.cosmos(2.0, pref_vector=[0.5, 0.5])
    >>> d, _ = agg.update({"w": jnp.eye(2)}, agg.init(None),
    ...                   losses=jnp.array([1.0, 1.0]))
    >>> d["w"].round(4)  # l on the preference ray: cos = 1, no penalty
    Array([0.5, 0.5], dtype=float32)

  References:
    Ruchte & Grabocka, "Scalable Pareto Front Approximation for Deep
    Multi-Objective Learning", ICDM 2021, arXiv:2103.13392; TorchJD's
    ``torchjd.scalarization.COSMOS`` (Quinton & Rey, arXiv:2406.16232).
  """
  weighting = cosmos_weighting(lambda_, pref_vector=pref_vector)
  pref = weighting.hyperparams["pref_vector"]
  if num_tasks is not None and pref is not None and len(pref) != num_tasks:
    raise ValueError(f"pref_vector has {len(pref)} entries but num_tasks is"
                     f" {num_tasks}.")
  return _aggregator.aggregator(weighting, num_tasks=num_tasks, shared=shared,
                                max_norm=max_norm)
