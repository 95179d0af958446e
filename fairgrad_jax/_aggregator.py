"""The extension point: a :class:`Weighting`, and the optax aggregator of one.

A *weighting* maps the K×K Gram matrix of the task gradients (and, for some
methods, the task losses and a state of its own) to K weights. Every method
of the package is one weighting, except those that need the gradients
themselves (GradDrop, trimmed mean, MoCo, ExcessMTL: stacked gradients
only), and one generic builder turns any weighting into

* an optax aggregator of stacked per-task gradients (:func:`aggregator`),
* a Gram-only weighted gradient (:func:`fairgrad_jax.weighted_grad`),
* a representation-level one (:func:`fairgrad_jax.representation_grad`),

with the same weights, state and diagnostics in all three. This split follows
TorchJD (a ``Weighting`` plus a ``GramianWeightedAggregator``).

An aggregator changes the shapes (K stacked gradients in, one update out),
so optax wrappers that assume the input and output shapes agree cannot
wrap a chain that starts with one: ``optax.MultiSteps`` (accumulate the
stacked gradients yourself, see :func:`fairgrad_jax.task_gradients`) and
``optax.apply_if_finite`` (put it after the aggregator). The update raises
a ValueError saying so when it finds itself inside either.
"""

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from optax.experimental import aggregating

from fairgrad_jax import _checks
from fairgrad_jax import _gram


class AggregatorState(NamedTuple):
  """State of every aggregator (and stateful Gram-only function) of the package.

  Attributes:
    weights: (K,) weights of the last step, d = Σ_i weights_i g_i on the
      shared leaves (before ``scale_by_num_tasks`` and ``max_norm``); None when
      the aggregator was built without ``num_tasks``. NaN-free: a step with
      non-finite weights keeps the previous ones. Zeros before the first
      step. The next solve of a warm-started weighting (FairGrad) starts
      from them.
    extra: the weighting's own state (:attr:`Weighting.init`), e.g. a PRNG
      key, learned log-variances, or the last solve's diagnostics (a
      :class:`FairGradInfo`); None when it has none.
  """

  weights: jax.Array | None
  extra: Any


def _no_state(num_tasks):
  del num_tasks


@dataclasses.dataclass(frozen=True, eq=False)
class Weighting:
  r"""A multi-task weighting: Gram matrix (and losses, state) → task weights.

  The one concept every method of the package is built from (GradDrop
  aside, which acts on the gradients' entries). Make one with a method's
  constructor (:func:`fairgrad_weighting`, :func:`mgda_weighting`, ...) or
  write your own; then use it anywhere:

  * ``fairgrad_jax.aggregator(weighting, num_tasks=K)``: an optax aggregator
    of stacked per-task gradients;
  * ``fairgrad_jax.weighted_grad(losses_fn, weighting)``: Gram-only, without
    the K×P Jacobian;
  * ``fairgrad_jax.representation_grad(encoder_fn, heads_fn, weighting)``:
    on the gradients with respect to a shared representation;
  * ``weights, state = weighting(gram, state, losses=...)``: on a Gram
    matrix directly.

  Attributes:
    name: the method's name (``repr`` shows ``name(hyperparams...)`` for the
      aggregator and ``name_weighting(...)`` for the weighting).
    apply: ``(gram, state, *, losses, key, init) -> (weights, state)``, pure
      and jittable. ``gram`` is the (K, K) Gram matrix (the builders pass it
      divided by a power of two σ², σ² ~ its largest entry; see
      ``degree``), in float32 (float64 with x64); ``state`` the method's
      state; ``losses`` the (K,) task losses or None; ``key`` a PRNG key
      that replaces the state's own for this call, or None; ``init`` the
      previous step's weights in the units of ``gram`` (None on the first
      step; a warm start, which the method may ignore). Returns (K,)
      weights and the next state; put per-step diagnostics (a ``...Info``
      NamedTuple) in the state. Under ``jit`` a bad value cannot raise:
      return NaN weights for inputs outside the method's domain.
    init: ``num_tasks -> state``, the state before the first step (None for
      a stateless method). May raise if the method needs ``num_tasks`` and
      gets None.
    hyperparams: the constructor's arguments, for ``repr``.
    degree: p such that the update is homogeneous of degree p in the
      gradients: d(σG) = σ^p d(G) (1 for most methods, 0 for Nash-MTL,
      (1-α)/(1+α) for FairGrad). The builders solve on the well-scaled
      σ-free Gram matrix and map the weights back by w = σ^(p-1) w̃, so
      gradients from 1e-18 to 1e18 give the same update directions.
    weight_heads: whether task-specific (non-shared) leaves get Σ w_i g_i
      (loss-weighting methods, MGDA, Nash-MTL) rather than the plain Σ g_i
      (FairGrad, as in the authors' code; PCGrad, CAGrad, IMTL-G).
    needs_gram: False for methods that ignore the Gram matrix: they get a
      K×K zero matrix and the O(K²P) product is skipped.
    needs_losses: whether ``apply`` needs the losses (the aggregator then
      refuses an ``update`` without ``losses=``).
    keep_state_on_bad_step: keep the whole state (``weights`` and
      ``extra``) after a step whose update is not finite, so that a step
      that ``optax.apply_if_finite`` skips leaves no trace (methods that
      learn from the losses).
    zero_at_stationary: (a bool, or a traced bool for a traced
      hyperparameter) the method's exact update never conflicts with a
      task (g_iᵀd > 0, as at FairGrad's root for α > 0), so a computed update that
      conflicts with a task beyond what the dtype resolves means that no
      such update exists here: a Pareto-stationary point. The builders
      then return 0 on the shared leaves (and on the heads where they are
      weighted); see :func:`conflicts`. The check costs one product of
      the K gradients with d (one JVP Gram-only).

  Examples:
    A weighting of one's own, inverse gradient norms (stateless):

    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> def apply(gram, state, *, losses, key, init):
    ...   del losses, key, init
    ...   return 1.0 / jnp.sqrt(jnp.diagonal(gram)), state
    >>> inverse_norms = fairgrad_jax.Weighting(name="inverse_norms",
    ...                                        apply=apply, degree=0.0)
    >>> agg = fairgrad_jax.aggregator(inverse_norms, num_tasks=2)
    >>> d, state = agg.update({"w": jnp.array([[3.0, 0.0], [0.0, 0.5]])},
    ...                       agg.init(None))
    >>> d["w"]
    Array([1., 1.], dtype=float32)
    >>> agg
    inverse_norms(num_tasks=2)
  """

  name: str
  apply: Callable[..., tuple[jax.Array, Any]]
  init: Callable[[int | None], Any] = _no_state
  hyperparams: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  degree: Any = 1.0
  weight_heads: bool = False
  needs_gram: bool = True
  needs_losses: bool = False
  keep_state_on_bad_step: bool = False
  zero_at_stationary: Any = False

  def __post_init__(self):
    if not isinstance(self.name, str) or not self.name:
      raise TypeError(f"Weighting.name must be a non-empty str, got"
                      f" {self.name!r}.")
    for field in ("apply", "init"):
      if not callable(getattr(self, field)):
        raise TypeError(f"Weighting.{field} must be callable, got"
                        f" {getattr(self, field)!r}.")

  def __call__(self, gram, state=None, *, losses=None, key=None, init=None):
    """``(weights, state)`` of this weighting on one Gram matrix.

    Args:
      gram: (K, K) Gram matrix GᵀG.
      state: the method's state; None: ``self.init(K)``.
      losses: (K,) task losses (for the methods that use them).
      key: a PRNG key for this call (random methods), instead of the
        state's.
      init: (K,) warm start (the previous weights), or None.

    Returns:
      ``(weights, state)``.
    """
    gram = jnp.asarray(gram)
    if gram.ndim != 2 or gram.shape[0] != gram.shape[1]:
      raise ValueError(f"gram must be a (K, K) matrix, got shape"
                       f" {gram.shape}.")
    k = gram.shape[0]
    if state is None:
      state = self.init(k)
    losses = check_losses(self, losses, k)
    return self.apply(gram, state, losses=losses, key=key, init=init)

  def __repr__(self):
    return f"{self.name}_weighting({_format(self.hyperparams)})"


def _format(hyperparams):
  return ", ".join(f"{k}={v!r}" for k, v in hyperparams.items())


def check_losses(weighting: Weighting, losses, k: int):
  """``losses`` as a (K,) array (None stays None unless they are needed)."""
  if losses is None:
    if weighting.needs_losses:
      raise ValueError(
          f"{weighting.name} needs the task losses: update(grads, state,"
          " params, losses=...) with losses of shape (K,).")
    return None
  losses = jnp.asarray(losses)
  if losses.shape != (k,):
    raise ValueError(f"losses must have shape ({k},), got {losses.shape}.")
  if weighting.needs_losses and not (
      jnp.issubdtype(losses.dtype, jnp.floating)
      or jnp.issubdtype(losses.dtype, jnp.integer)):
    raise TypeError(f"{weighting.name} needs real losses, got dtype"
                    f" {losses.dtype}.")
  return losses


def check_weighting(weighting, what="weighting") -> Weighting:
  if not isinstance(weighting, Weighting):
    raise TypeError(f"{what} must be a fairgrad_jax.Weighting (e.g."
                    f" fairgrad_jax.fairgrad_weighting(alpha=2.0)), got"
                    f" {weighting!r}.")
  return weighting


def initial_state(weighting: Weighting,
                  num_tasks: int | None) -> AggregatorState:
  """The state before the first step: no weights yet (zeros), ``init(K)``."""
  weights = None
  if num_tasks is not None:
    # Zeros mean "no previous step": the first solve starts cold.
    weights = jnp.zeros((num_tasks,), jnp.float32)
  return AggregatorState(weights=weights, extra=weighting.init(num_tasks))


def solve(weighting: Weighting, gram, log2_sigma, state: AggregatorState,
          losses, key=None):
  """Runs ``weighting`` on a σ-free Gram matrix; the weights in both units.

  (Or on the true Gram matrix, when converting the weights between the two
  would round them and it is in range: see the comment in the body.)

  Args:
    weighting: the method.
    gram: (K, K) Gram matrix of g_i / σ, σ = 2^log2_sigma.
    log2_sigma: e = log2 σ (exact power of two).
    state: the carried :class:`AggregatorState`.
    losses: (K,) losses or None.
    key: optional PRNG key for this call.

  Returns:
    ``(w_scaled, w_true, new_state)``: the weights of the σ-free problem,
    the weights of the true gradients (w = σ^(p-1) w̃) and the next state
    (the update's finiteness is not checked here: see
    :func:`keep_if_bad_step`).
  """
  p = weighting.degree
  e = log2_sigma
  # The weighting solves in the units 2^e0: e0 = e (σ-free) as a rule. When
  # the weights' change of units 2^(e (p - 1)) is not a power of two (FairGrad
  # at α ∉ {0, 1}: p = (1 - α)/(1 + α)), converting them rounds each weight,
  # and where GᵀG w cancels that moves the residual of the stored weights
  # far from the one the solve reports (3e-6 against 1.4e-7 near a
  # Pareto-stationary point). There, if σ is near 1 (|e| <= 10, gradients'
  # largest entries from 1e-3 to 1e3: nearly always) and the true Gram
  # matrix 4^e · gram stays far inside the normal range, the weighting
  # solves in the true units (e0 = 0): the weights it returns are the
  # stored ones, and the σ-free weights of the update take the rounding
  # instead (a relative 6e-8 per weight in d, which no cancellation
  # amplifies).
  shift = e * (p - 1.0)
  nonzero = jnp.abs(gram) > 0
  log_hi = jnp.log2(jnp.max(jnp.abs(gram)))
  log_lo = jnp.log2(jnp.min(jnp.where(nonzero, jnp.abs(gram), jnp.inf)))
  in_units = ((shift != jnp.round(shift)) & (jnp.abs(e) <= 10.0)
              & jnp.all(jnp.isfinite(gram)) & jnp.any(nonzero)
              & (log_hi + 2.0 * e <= 64.0) & (log_lo + 2.0 * e >= -64.0))
  e0 = jnp.where(in_units, 0.0, e)
  init = None
  if state.weights is not None:
    init = _gram.times_pow2(state.weights.astype(gram.dtype),
                            e0 * (1.0 - p))
  w_solved, extra = weighting.apply(_gram.times_pow2(gram, 2.0 * (e - e0)),
                                    state.extra, losses=losses, key=key,
                                    init=init)
  w_solved = jnp.asarray(w_solved).astype(gram.dtype)
  k = gram.shape[0]
  if w_solved.shape != (k,):
    raise ValueError(f"{weighting.name}: apply must return ({k},) weights,"
                     f" got shape {w_solved.shape}.")
  w_scaled = _gram.times_pow2(w_solved, (e - e0) * (1.0 - p))
  w_true = _gram.times_pow2(w_solved, e0 * (p - 1.0))
  new_weights = state.weights
  if state.weights is not None:
    ok = jnp.all(jnp.isfinite(w_true))
    new_weights = jnp.where(ok, w_true, state.weights).astype(
        state.weights.dtype)
  return w_scaled, w_true, AggregatorState(weights=new_weights, extra=extra)


def conflicts(gram, w_scaled, gd, d_norm, log2_units, num_entries,
              unconverged=False):
  """Whether an update conflicts with a task beyond what the dtype resolves.

  For the methods whose exact update has g_iᵀd > 0 for every task
  (:attr:`Weighting.zero_at_stationary`). Two limits of the computed
  d = Σ_j w_j g_j: the sum's own round-off, about ν = ε Σ_j |w_j| ‖g_j‖
  in norm; and the weights, which come from the Gram matrix, whose
  entries carry round-off ε ‖g_i‖ ‖g_j‖: the angles between gradients,
  and so d's direction among them, are resolved to about √ε (1 - cos θ
  ~ θ²/2 >= ε). A product g_iᵀd below -‖g_i‖ (ν + 4 (√ε + ε √n) ‖d‖)
  (n entries; ε √n for the product's own rounding) is a conflict no
  rounding explains: at a Pareto-stationary point no d has every
  g_iᵀd > 0, and the solve can only return a cancellation of large weights
  (FairGrad's regularized root) or stop short of a root, with cosines to
  -0.97 with some task. Measured: a toy step at α = 5 whose gradients
  have 1 - cos = 5e-7 (a cone float32 barely resolves) gives an
  unconverged solve whose d has cosine -8.7e-4 with a task, inside the
  bound (4√ε = 1.4e-3 in float32); the conflicts at stationary points are
  -0.016 and below.

  An unconverged solve (``unconverged``, from a weighting whose state says
  ``converged``) gets no allowance for the sum's round-off: its weights are
  no root, so a large ν (huge weights cancelling, as when the root runs off
  to infinity at a Pareto-stationary point) explains nothing; a d that
  conflicts beyond the angle bound is then not the method's update
  (measured: cosine -0.11 at α = 5 on a weakly stationary input, where
  ν / ‖d‖ = 0.13 had let it through).

  Args:
    gram: (K, K) Gram matrix of the σ-free gradients g̃_i = g_i / σ.
    w_scaled: (K,) weights of the σ-free problem (d̃ = Σ_j w̃_j g̃_j).
    gd: (K,) g̃_iᵀu, u = d̃ · 2^t for some t (entries O(1), in range).
    d_norm: ‖u‖.
    log2_units: t.
    num_entries: n, the number of shared entries.
    unconverged: bool (scalar): the weights are not a converged solve.

  Returns:
    A bool scalar (False for non-finite inputs: a NaN update stays NaN).
  """
  eps = jnp.finfo(gram.dtype).eps
  norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
  nu = _gram.times_pow2(eps * jnp.sum(jnp.abs(w_scaled) * norms), log2_units)
  nu = jnp.where(unconverged, 0.0, nu)
  angle = _angle_bound(eps, num_entries)
  return jnp.any(gd < -norms * (nu + angle * d_norm))


def _angle_bound(eps, num_entries) -> float:
  """4 (√ε + ε √n): the relative size of a conflict rounding can explain."""
  return 4.0 * (float(np.sqrt(eps)) + eps * float(np.sqrt(num_entries)))


def no_conflict_by_gram(gram, w_scaled, num_entries):
  """Whether the Gram matrix alone shows that :func:`conflicts` is False.

  The products g̃_iᵀd̃ are also (C w̃)_i, C the Gram matrix: the rule needs
  them from the computed d (a pass over the K×P gradients, or a JVP through
  the model on the Gram-only paths) only where they may be negative. They
  differ from (C w̃)_i by the rounding of C, of d's sum and of the products
  (ε √n ‖g̃_i‖ S in the rule's own model, S = Σ_j |w̃_j| ‖g̃_j‖ >= ‖d̃‖;
  at worst about ε n_sum ‖g̃_i‖ S for sums of n_sum terms in float32's
  blocked dot products, 5e-4 for n = 1M), so (C w̃)_i >= 2 · angle ·
  ‖g̃_i‖ S (angle = 4 (√ε + ε √n), 3.2e-3 for n = 1M in float32) makes
  every product of the computed d non-negative, which the rule never calls
  a conflict. FairGrad's root has (C w̃)_i = w̃_i^(-1/α) > 0: the products
  are computed only near Pareto-stationary points or for an unconverged
  solve whose d leans away from some task (issue 13: the pass was 15–20%
  of the aggregation).

  Args:
    gram: (K, K) Gram matrix of the σ-free gradients.
    w_scaled: (K,) weights of the σ-free problem.
    num_entries: n, the number of shared entries.

  Returns:
    A bool scalar; False for non-finite inputs (the rule then decides).
  """
  eps = jnp.finfo(gram.dtype).eps
  norms = jnp.sqrt(jnp.maximum(jnp.diagonal(gram), 0.0))
  w = w_scaled.astype(gram.dtype)
  products = jnp.dot(gram, w, precision=jax.lax.Precision.HIGHEST)
  size = jnp.sum(jnp.abs(w) * norms)
  margin = 2.0 * _angle_bound(eps, num_entries) * size
  return (jnp.all(jnp.isfinite(products)) & jnp.isfinite(size)
          & jnp.all(products >= margin * norms))


def conflicts_unless_clear(gram, w_scaled, num_entries, exact):
  """``exact()`` (the rule on the computed d), run only where
  :func:`no_conflict_by_gram` cannot rule a conflict out; False there."""
  return jax.lax.cond(no_conflict_by_gram(gram, w_scaled, num_entries),
                      lambda: jnp.zeros((), bool), exact)


def unconverged(state: AggregatorState):
  """Whether the weighting's state says its solve did not converge (False
  for the weightings whose state has no ``converged`` flag)."""
  converged = getattr(state.extra, "converged", None)
  return False if converged is None else ~converged


def stationarity_rule(weighting: Weighting) -> bool:
  """Whether the builders check for :attr:`Weighting.zero_at_stationary`
  (a traced flag is checked at run time, and-ed into the result)."""
  flag = weighting.zero_at_stationary
  return weighting.needs_gram and (isinstance(flag, jax.Array) or bool(flag))


def zero_where(zero, tree):
  """``tree`` with every leaf 0 where ``zero`` (a bool scalar)."""
  return jax.tree.map(lambda x: jnp.where(zero, jnp.zeros_like(x), x), tree)


def norm_and_log2(leaves, dtype):
  """(‖x / 2^s‖, s) for the power of two 2^s nearest max |x| (in range)."""
  blocks = [b[0] for b in _gram.packed([x[None] for x in leaves], dtype)[0]]
  s = _gram.log2_scale(blocks, dtype)
  norm = jnp.sqrt(sum(jnp.sum(jnp.square(_gram.times_pow2(x, -s)))
                      for x in blocks))
  return norm, s


def all_finite(tree) -> jax.Array:
  return _gram.all_finite_leaves(jax.tree.leaves(tree))


def keep_if_bad_step(weighting: Weighting, update, new_state, old_state):
  """The old state after a non-finite update, for the methods that ask."""
  if not weighting.keep_state_on_bad_step:
    return new_state
  ok = all_finite(update)
  return jax.tree.map(lambda new, old: jnp.where(ok, new, old), new_state,
                      old_state)


def check_common_options(num_tasks, scale_by_num_tasks, max_norm):
  """The builder's own options, one rule for every method; ``max_norm``."""
  _checks.num_tasks(num_tasks)
  _checks.bool_hyperparameter("scale_by_num_tasks", scale_by_num_tasks)
  if max_norm is None:
    return None
  # Finite and > 0: None (not inf) turns clipping off.
  return _checks.real_hyperparameter("max_norm", max_norm, minimum=0.0,
                                     strict=True)


def common_hyperparams(num_tasks, shared, scale_by_num_tasks, max_norm):
  """The builder's own arguments, for ``repr``, leaving defaults out."""
  out = {"num_tasks": num_tasks}
  if shared is not None:
    out["shared"] = shared
  if scale_by_num_tasks:
    out["scale_by_num_tasks"] = True
  if max_norm is not None:
    out["max_norm"] = max_norm
  return out


class _Aggregator(aggregating.Aggregator):
  """An :class:`optax.experimental.aggregating.Aggregator` with a repr."""

  __slots__ = ()

  def __repr__(self):
    return getattr(self.update, "_fairgrad_repr", super().__repr__())


def with_repr(init_fn, update_fn, name: str, hyperparams: Mapping[str, Any]
              ) -> aggregating.Aggregator:
  """An aggregator whose repr is ``name(hyperparams...)``."""
  update_fn._fairgrad_repr = f"{name}({_format(hyperparams)})"  # pylint: disable=protected-access
  return _Aggregator(init_fn, update_fn)


def aggregator(
    weighting: Weighting,
    *,
    num_tasks: int | None = None,
    shared: _gram.Mask = None,
    scale_by_num_tasks: bool = False,
    max_norm: float | None = None,
) -> aggregating.Aggregator:
  r"""The optax aggregator of a :class:`Weighting`.

  ``update(grads, state, params=None, *, losses=None, **extra_args)`` takes a
  pytree like the params whose leaves have a leading task axis K (e.g. from
  ``jax.vmap(jax.grad(task_loss), in_axes=(None, 0))(params, tasks)`` or
  ``jax.jacrev(losses_fn)(params)``), forms the Gram matrix of the shared
  leaves (exactly rescaled by a power of two, so that it is in range for
  any gradient scale float32 holds), runs the weighting and returns
  d = Σ_i w_i g_i on the shared leaves (in float32, cast to the gradients'
  dtype); task-specific leaves get Σ_i w_i g_i or Σ_i g_i (see
  :attr:`Weighting.weight_heads`). Every method's factory
  (:func:`fairgrad`, :func:`mgda`, ...) is this builder on its weighting.

  Args:
    weighting: the method.
    num_tasks: K; when given, ``state.weights`` keeps the last weights
      (logged, and the warm start of the next solve) and K is checked.
      Methods with per-task state (DWA, UW, FAMO) need it.
    shared: which leaves are shared between tasks: None (all), a pytree of
      bools like the params or a prefix of it, or a callable returning one
      from the per-task gradient tree (as in ``optax.masked``). The Gram
      matrix uses the shared leaves.
    scale_by_num_tasks: multiply the shared update by K.
    max_norm: clip the global norm of the shared update to this value
      (after the K scaling); None: no clipping.

  Returns:
    An :class:`optax.experimental.aggregating.Aggregator` whose state is an
    :class:`AggregatorState`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> agg = fairgrad_jax.aggregator(
    ...     fairgrad_jax.fairgrad_weighting(alpha=2.0), num_tasks=2)
    >>> agg
    fairgrad(alpha=2.0, num_tasks=2)
    >>> d, state = agg.update({"w": jnp.array([[1.0, 0.0], [0.0, 8.0]])},
    ...                       agg.init(None))
    >>> state.weights.round(4)  # w_i = ‖g_i‖^(-4/3) for orthogonal gradients
    Array([1.    , 0.0625], dtype=float32)
  """
  check_weighting(weighting)
  max_norm = check_common_options(num_tasks, scale_by_num_tasks, max_norm)
  initial_state(weighting, num_tasks)  # methods needing K raise now
  name = weighting.name

  def init_fn(params):
    del params
    return initial_state(weighting, num_tasks)

  def update_fn(grads, state, params=None, *, losses=None, **extra_args):
    del extra_args
    k = _gram.check_stacked(grads, params, name)
    if num_tasks is not None and k != num_tasks:
      raise ValueError(
          f"{name} was built with num_tasks={num_tasks} but the gradients"
          f" have a task axis of size {k}."
      )
    losses = check_losses(weighting, losses, k)
    leaves, treedef = jax.tree.flatten(grads)
    mask = _gram.shared_leaves(shared, grads)
    shared_leaves = [x for x, m in zip(leaves, mask) if m]

    # The shared leaves as a few (K, columns) blocks (small leaves
    # concatenated): the same sums, at a fraction of the compile time for a
    # model with many leaves; unpacked at the end.
    blocks, unpack = _gram.packed(shared_leaves)
    if weighting.needs_gram:
      gram, e = _gram.scaled_gram(blocks)
    else:
      gram = jnp.zeros((k, k), _gram.solve_dtype(blocks))
      e = jnp.zeros((), gram.dtype)
    w_scaled, w_true, new_state = solve(weighting, gram, e, state, losses)

    # d = σ^p Σ w̃_i (g_i / σ), multiplied in this order, in float32, with
    # exact powers of two (σ runs from 2^-149 to 2^128 in float32), so that
    # no factor overflows or flushes to zero when d itself is finite. The
    # sum d̃ = Σ w̃_i (g_i / σ) first: the σ-free gradients' entries are at
    # most 2^(1/2) (σ is the power of two nearest the largest; finite where
    # the Gram matrix is), which bounds every partial sum. (Without a Gram
    # matrix, σ = 1: no bound.)
    bound = (jnp.where(jnp.all(jnp.isfinite(gram)), 2.0, jnp.nan)
             if weighting.needs_gram else None)
    sums = _gram.weighted_sums(w_scaled, blocks, log2_in=-e, bound=bound,
                               cast=False)

    # The scaling, the stationarity rule's zero and the consumer's own
    # arithmetic (e.g. Adam's) fuse into one pass over d.
    shared_out = _gram.scaled_out(sums, e * weighting.degree,
                                  k if scale_by_num_tasks else None)
    if stationarity_rule(weighting):
      num_entries = sum(x[0].size for x in blocks)

      def exact():
        # On u = d̃ / 2^s (entries O(1)) and the σ-free gradients; d is d̃
        # times a positive number, 2^(e p) factor, which changes no sign.
        d_norm, s = norm_and_log2(sums, gram.dtype)
        gd = _gram.task_products(blocks, sums, -e, -s, gram.dtype)
        return conflicts(gram, w_scaled, gd, d_norm, -s, num_entries,
                         unconverged=unconverged(new_state))

      zero = weighting.zero_at_stationary & conflicts_unless_clear(
          gram, w_scaled, num_entries, exact)
      shared_out, w_true = zero_where(zero, (shared_out, w_true))
    if max_norm is not None:
      # ‖d‖ = 2^s ‖d / 2^s‖: no overflow of the squares for d near 1e38.
      norm, s = norm_and_log2(shared_out, gram.dtype)
      # Clipped: d / 2^s times max_norm / ‖d / 2^s‖ (2^-s alone may flush).
      clip = _gram.times_pow2(norm, s) > max_norm
      factor = max_norm / jnp.where(norm > 0, norm, 1.0)
      shared_out = [jnp.where(clip, _gram.times_pow2(x, -s) * factor, x)
                    for x in shared_out]

    head_weights = (w_true if weighting.weight_heads
                    else jnp.ones((k,), gram.dtype))
    shared_iter = iter(unpack(shared_out))
    head_iter = iter(_gram.weighted_sums(
        head_weights, [x for x, m in zip(leaves, mask) if not m]))
    out_leaves = [next(shared_iter).astype(x.dtype) if m else next(head_iter)
                  for x, m in zip(leaves, mask)]
    updates = jax.tree.unflatten(treedef, out_leaves)
    # A non-finite update (bad losses or bad gradients) is a step that
    # apply_if_finite skips: methods that learn keep their last good state.
    return updates, keep_if_bad_step(weighting, updates, new_state, state)

  return with_repr(init_fn, update_fn, name, dict(weighting.hyperparams)
                   | common_hyperparams(num_tasks, shared, scale_by_num_tasks,
                                        max_norm))
