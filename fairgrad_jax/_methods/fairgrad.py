"""FairGrad (Ban & Ji, 2024): the α-fair weighting and its optax aggregator."""

import jax
from optax.experimental import aggregating

from fairgrad_jax import _aggregator
from fairgrad_jax import _gram
from fairgrad_jax._solvers import fairgrad as solver


def fairgrad_weighting(
    alpha: float = 1.0,
    *,
    maxiter: int = 100,
    tol: float = 1e-5,
    regularization: float | None = None,
) -> _aggregator.Weighting:
  r"""FairGrad's :class:`Weighting`: the positive root of GᵀG w = w^(-1/α).

  Solved on device by :func:`fairgrad_solve`, warm-started from the previous
  step's weights; the state is the last solve's :class:`FairGradInfo`.
  Task-specific leaves get the plain Σ_i g_i (``weight_heads=False``), as
  in the authors' code.

  Args:
    alpha: fairness level α >= 0 (a Python number, checked here, or a traced
      array under ``optax.inject_hyperparams``).
    maxiter: Newton iterations per step, at most.
    tol: the solver's tolerance on each task's relative residual.
    regularization: λ in GᵀG + λ diag(GᵀG) (default: 10 machine epsilons).

  Returns:
    A :class:`Weighting` (``degree`` (1-α)/(1+α)).

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax
    >>> weighting = fairgrad_jax.fairgrad_weighting(alpha=1.0)
    >>> weights, info = weighting(jnp.array([[4.0, 0.0], [0.0, 1.0]]))
    >>> weights.round(4), bool(info.converged)
    (Array([0.5, 1. ], dtype=float32), True)

  References:
    Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024,
    arXiv:2402.15638 (Section 4, eq. 4).
  """
  if not solver.is_traced(alpha):
    alpha = solver.check_alpha(alpha)
  return solver.alpha_fair_weighting(
      "fairgrad", alpha, maxiter=maxiter, tol=tol,
      regularization=regularization, weight_heads=False,
      hyperparams={"alpha": alpha})


def fairgrad_weights(gram: jax.Array, alpha: float, **solver_kwargs
                     ) -> jax.Array:
  """FairGrad weights from a Gram matrix (a view of :func:`fairgrad_weighting`).

  Args:
    gram: (K, K) Gram matrix GᵀG of the task gradients.
    alpha: fairness level α >= 0.
    **solver_kwargs: ``init``, ``maxiter``, ``tol``, ``regularization`` of
      :func:`fairgrad_solve`.

  Returns:
    (K,) weights w with GᵀG w = w^(-1/α); the update is d = Σ_i w_i g_i.
    Differentiable with respect to ``gram`` and ``alpha`` (implicitly).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import fairgrad_jax
    >>> g = jnp.array([[1.0, 0.0], [-0.5, 2.0]])  # two task gradients
    >>> w = jax.jit(fairgrad_jax.fairgrad_weights, static_argnums=1)(
    ...     g @ g.T, 2.0)
    >>> d = w @ g
    >>> bool(jnp.allclose(g @ d, w ** (-1 / 2.0), rtol=1e-4))  # (g_iᵀd)^-α = w_i
    True

  References:
    Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024,
    arXiv:2402.15638, Section 4, eq. (4).
  """
  init = solver_kwargs.pop("init", None)
  return fairgrad_weighting(alpha, **solver_kwargs)(gram, init=init)[0]


def fairgrad(
    alpha: float = 1.0,
    *,
    num_tasks: int | None = None,
    shared: _gram.Mask = None,
    scale_by_num_tasks: bool = False,
    max_norm: float | None = None,
    maxiter: int = 100,
    tol: float = 1e-5,
    regularization: float | None = None,
) -> aggregating.Aggregator:
  r"""FairGrad: the α-fair update of the task gradients, as an optax aggregator.

  Given per-task gradients g_1..g_K, FairGrad returns d = Σ_i w_i g_i, the
  direction that maximises the α-fair utility Σ_i (g_iᵀd)^(1-α)/(1-α); its
  weights solve GᵀG w = w^(-1/α), w > 0 (Ban & Ji, eq. 4), here with a
  jittable, globally convergent damped Newton loop (see
  :func:`fairgrad_solve`). It is :func:`aggregator` on
  :func:`fairgrad_weighting`.
  α = 0 is linear scalarization (d = Σ_i g_i), α = 1 proportional fairness
  (the Nash-MTL solution), α = 2 minimum potential delay, α → ∞ max-min
  fairness.

  ``update(grads, state, params=None, **extra_args)`` takes a pytree like the
  params whose leaves have a leading task axis K, e.g. from
  ``jax.vmap(jax.grad(task_loss), in_axes=(None, 0))(params, task_ids)`` or
  ``jax.jacrev(losses_fn)(params)``, and returns one update like the params.
  Extra keyword arguments (``losses=``...) are accepted and ignored.

  The weights are not normalised: they solve GᵀG w = w^(-1/α) with the
  paper's c = 1 (eq. 3), so they scale like ‖g‖^(-2α/(1+α)) and grow as the
  gradients shrink during training; what matters is the direction of
  Σ_i w_i g_i and the ratios of the weights. Adam divides the update by its
  running scale, so their size barely matters there; with plain SGD it
  multiplies the learning rate — cap it with ``max_norm`` (the authors use
  ``max_norm=1.0`` with ``scale_by_num_tasks=True``).

  Behaviour at the edges:

  * a task whose gradient is exactly zero drops out (weight 0);
  * linearly dependent gradients (a Pareto-stationary point) have no root
    (no d has every g_iᵀd > 0): the relative regularization λ bounds the
    weights, and where the computed d then conflicts with a task beyond
    round-off the update is 0 (``Weighting.zero_at_stationary``; the state
    keeps the solve's weights);
  * any non-finite gradient makes the update non-finite (NaN), so that
    ``optax.chain(fairgrad(...), optax.apply_if_finite(optax.adam(...), n))``
    skips the step (``apply_if_finite`` goes after the aggregator, which
    changes the shapes); the state keeps the previous weights. Finite
    gradients never give a NaN update;
  * bf16/f16 gradients: the Gram matrix and the solve are float32, the
    update has the gradients' dtype.

  Args:
    alpha: fairness level α >= 0; a Python number (checked here) or a
      traced array (e.g. under ``optax.inject_hyperparams``; see below).
    num_tasks: K. When given, ``state.weights`` holds the last (K,) weights
      (and ``state.extra`` the solver's :class:`FairGradInfo`), and each solve
      warm-starts from the previous weights. Without it the aggregator still
      works everywhere (no warm start).
    shared: which leaves are shared between tasks: None (all), a pytree of
      bools like the params or a prefix of it, or a callable returning one
      from the per-task gradient tree (as in ``optax.masked``). The Gram
      matrix uses the shared leaves; they get Σ_i w_i g_i, while task-specific
      leaves (heads) get the plain Σ_i g_i, as in the authors' code.
    scale_by_num_tasks: multiply the shared update by K, as the authors' code
      does "to match the sum loss" (off by default).
    max_norm: clip the global norm of the shared update to this value after
      the K scaling; the authors' code uses 1.0 (off by default).
    maxiter: Newton iterations per step, at most.
    tol: the solver's tolerance on each task's relative residual.
    regularization: λ in GᵀG + λ diag(GᵀG); default 10 machine epsilons of
      the solve (see :func:`fairgrad_solve`).

  Returns:
    An :class:`optax.experimental.aggregating.Aggregator`.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import fairgrad_jax
    >>> def losses(params):  # two tasks on shared parameters
    ...   return jnp.stack([jnp.sum((params["w"] - 1.0) ** 2),
    ...                     10 * jnp.sum((params["w"] + 1.0) ** 2)])
    >>> params = {"w": jnp.array([0.5, -0.5])}
    >>> opt = optax.chain(fairgrad_jax.fairgrad(alpha=2.0, num_tasks=2),
    ...                   optax.adam(1e-2))
    >>> state = opt.init(params)
    >>> @jax.jit
    ... def step(params, state):
    ...   grads = jax.jacrev(losses)(params)  # leaves: (K, ...)
    ...   updates, state = opt.update(grads, state, params)
    ...   return optax.apply_updates(params, updates), state
    >>> params, state = step(params, state)
    >>> state[0].weights.shape
    (2,)
    >>> bool(state[0].extra.relative_residual < 1e-4)
    True

    An α schedule: α is a traced hyperparameter under
    ``optax.inject_hyperparams`` (the int and bool arguments stay static),
    and each step's update is the one of ``fairgrad(alpha)`` at that α:

    >>> sched = optax.inject_hyperparams(
    ...     fairgrad_jax.fairgrad,
    ...     static_args=("num_tasks", "maxiter", "scale_by_num_tasks"))(
    ...         alpha=0.0, num_tasks=2)
    >>> sched_state = sched.init(params)
    >>> grads = jax.jacrev(losses)(params)
    >>> update = jax.jit(sched.update)
    >>> for alpha in (0.0, 1.0, 2.0):  # one compilation for every α
    ...   sched_state.hyperparams["alpha"] = jnp.asarray(alpha)
    ...   d, sched_state = update(grads, sched_state, params)
    >>> fixed = fairgrad_jax.fairgrad(alpha=2.0, num_tasks=2)
    >>> d_fixed, _ = fixed.update(grads, fixed.init(params), params)
    >>> bool(jnp.allclose(d["w"], d_fixed["w"], rtol=1e-5))
    True

  References:
    Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024,
    arXiv:2402.15638 (Section 4, Algorithm 1).
  """
  return _aggregator.aggregator(
      fairgrad_weighting(alpha, maxiter=maxiter, tol=tol,
                         regularization=regularization),
      num_tasks=num_tasks, shared=shared,
      scale_by_num_tasks=scale_by_num_tasks, max_norm=max_norm)
