"""The two-task toy problem of the FairGrad paper's Figure 1.

Two losses of x ∈ R², the second with a gradient about ten times larger than
the first, reused by Ban & Ji (Figure 1 and Appendix A.1) from Nash-MTL, who
modified the CAGrad toy. The expressions follow the reference code,
``AvivNavon/nash-mtl`` ``experiments/toy/problem.py`` (class ``Toy`` with
``scale=0.1``), not the paper's appendix, which misprints two terms (see
:func:`toy_losses`).

Everything here is a pure JAX function: :func:`run_trajectories` runs every
start point of one method as one jitted ``vmap`` over starts of a
``lax.scan`` over optimiser steps.

References:
  Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024,
  arXiv:2402.15638 (Figure 1, Appendix A.1).
  Navon et al., "Multi-Task Learning as a Bargaining Game", ICML 2022,
  arXiv:2202.01017 (Figure 1).
  Liu et al., "Conflict-Averse Gradient Descent for Multi-task Learning",
  NeurIPS 2021, arXiv:2110.14048 (Figure 1).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax.experimental import aggregating

__all__ = [
    "LEARNING_RATE",
    "NUM_STEPS",
    "PARETO_X1_RANGE",
    "PARETO_X2",
    "STARTS",
    "ToyTrajectories",
    "pareto_front",
    "pareto_stationarity_gap",
    "plot_trajectories",
    "run_trajectories",
    "step_colorbar",
    "toy_losses",
]

#: The five start points of the paper's Figure 1, shape (5, 2).
STARTS = np.array(
    [[-8.5, 7.5], [0.0, 0.0], [9.0, 9.0], [-7.5, -0.5], [9.0, -1.0]],
    dtype=np.float32)

#: The reference code draws the Pareto front as the segment x2 = PARETO_X2,
#: x1 ∈ PARETO_X1_RANGE (``experiments/toy/utils.py``, ``plot_2d_pareto``).
PARETO_X2 = -8.3552
PARETO_X1_RANGE = (-7.0, 7.0)

#: Adam's learning rate and the number of steps of the paper's Figure 1.
LEARNING_RATE = 1e-3
NUM_STEPS = 35_000

# Floor of the absolute value inside the logarithms (``LOWER`` in the
# reference code).
_LOWER = 5e-6
# Weight of the first loss (``--scale`` in the reference trainer).
_SCALE_FIRST = 0.1


def _clamp_min(x, lower):
  # torch.clamp(x, lower): the gradient passes where x >= lower (also at the
  # tie, where jnp.maximum would halve it, e.g. for both gates at x2 = 0).
  return jnp.where(x >= lower, x, lower)


def toy_losses(x: jax.Array) -> jax.Array:
  r"""The two task losses (ℓ1, ℓ2) of the toy problem at x = (x1, x2).

  With the gates c1 = max(tanh(x2/2), 0) and c2 = max(tanh(-x2/2), 0):

    ℓ1 = 0.1 [c1 (log max(|0.5(-x1-7) - tanh(-x2)|, 5e-6) + 6)
              + c2 (((-x1+7)² + 0.1(-x2-8)²)/10 - 20)]
    ℓ2 =      c1 (log max(|0.5(-x1+3) + tanh(-x2) + 2|, 5e-6) + 6)
              + c2 (((-x1-7)² + 0.1(-x2-8)²)/10 - 20)

  as in the Nash-MTL reference code. The FairGrad paper's Appendix A.1 prints
  "- tanh(-x2)" in ℓ2's logarithm and (-x1-8)² in the quadratics; the code,
  which made the figure, has "+ tanh(-x2)" and (-x2-8)².

  Args:
    x: shape (2,), or (..., 2) for a batch of points.

  Returns:
    The losses, shape (2,) (or (..., 2)).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from fairgrad_jax import toy
    >>> toy.toy_losses(jnp.zeros(2))  # both gates are closed at x2 = 0
    Array([0., 0.], dtype=float32)
    >>> jax.jacrev(toy.toy_losses)(jnp.array([0.0, 1.0])).shape  # (task, x)
    (2, 2)
  """
  x = jnp.asarray(x)
  x1, x2 = x[..., 0], x[..., 1]
  log1 = jnp.log(_clamp_min(jnp.abs(0.5 * (-x1 - 7) - jnp.tanh(-x2)),
                            _LOWER)) + 6
  log2 = jnp.log(_clamp_min(jnp.abs(0.5 * (-x1 + 3) + jnp.tanh(-x2) + 2),
                            _LOWER)) + 6
  sq1 = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
  sq2 = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
  c1 = _clamp_min(jnp.tanh(x2 * 0.5), 0.0)
  c2 = _clamp_min(jnp.tanh(-x2 * 0.5), 0.0)
  l1 = _SCALE_FIRST * (c1 * log1 + c2 * sq1)
  l2 = c1 * log2 + c2 * sq2
  return jnp.stack([l1, l2], axis=-1)


def pareto_front(num: int = 200) -> jax.Array:
  """Loss values along the reference code's Pareto front, shape (num, 2).

  The points x = (x1, PARETO_X2) with x1 evenly spaced in PARETO_X1_RANGE,
  as the reference code draws the front.

  Examples:
    >>> from fairgrad_jax import toy
    >>> front = toy.pareto_front(3)
    >>> front.shape
    (3, 2)
    >>> bool(front[0, 0] > front[-1, 0]) and bool(front[0, 1] < front[-1, 1])
    True
  """
  x1 = jnp.linspace(*PARETO_X1_RANGE, num)
  x = jnp.stack([x1, jnp.full_like(x1, PARETO_X2)], axis=-1)
  return toy_losses(x)


def pareto_stationarity_gap(grads: jax.Array,
                            relative: bool = False) -> jax.Array:
  r"""Norm of the min-norm convex combination of two task gradients.

  gap = min_{γ∈[0,1]} ‖γ g1 + (1-γ) g2‖, with the closed form
  γ* = clip((g2 - g1)ᵀg2 / ‖g1 - g2‖², 0, 1). It is zero exactly at Pareto
  stationary points (MGDA's criterion). With ``relative=True`` it is divided
  by min(‖g1‖, ‖g2‖), so that "Pareto stationary to 1%" reads gap < 0.01.

  Args:
    grads: shape (..., 2, n): the two task gradients (rows), e.g. the output
      of ``jax.jacrev(toy_losses)(x)``; leading axes are batch axes.
    relative: divide by the smaller gradient norm.

  Returns:
    The gap, shape (...).

  Examples:
    >>> import jax.numpy as jnp
    >>> from fairgrad_jax import toy
    >>> float(toy.pareto_stationarity_gap(jnp.array([[1.0, 0.0], [-2.0, 0.0]])))
    0.0
    >>> round(float(toy.pareto_stationarity_gap(jnp.eye(2))), 4)  # 1/√2
    0.7071
  """
  grads = jnp.asarray(grads)
  g1, g2 = grads[..., 0, :], grads[..., 1, :]
  diff = g1 - g2
  denom = jnp.sum(diff * diff, axis=-1)
  num = -jnp.sum(diff * g2, axis=-1)
  safe = denom > 0
  gamma = jnp.clip(jnp.where(safe, num / jnp.where(safe, denom, 1.0), 0.0),
                   0.0, 1.0)
  gap = jnp.linalg.norm(g2 + gamma[..., None] * diff, axis=-1)
  if relative:
    smaller = jnp.minimum(jnp.linalg.norm(g1, axis=-1),
                          jnp.linalg.norm(g2, axis=-1))
    gap = gap / smaller
  return gap


class ToyTrajectories(NamedTuple):
  """Trajectories of one method from every start.

  Attributes:
    steps: (T,) the step numbers recorded: 0, record_every, ..., num_steps.
    params: (S, T, 2) x at those steps, one row per start.
    losses: (S, T, 2) (ℓ1, ℓ2) at those steps.
    final_grads: (S, 2, 2) the task gradients (task, x) at the last point,
      for :func:`pareto_stationarity_gap`.
    stopped_at: (S,) int32, the step at which a start stopped moving (see
      ``stop_tol``); -1 where it never did, or ``stop_tol`` is None.
  """

  steps: np.ndarray
  params: jax.Array
  losses: jax.Array
  final_grads: jax.Array
  stopped_at: jax.Array


def run_trajectories(
    aggregator: aggregating.Aggregator,
    starts: jax.Array = STARTS,
    num_steps: int = NUM_STEPS,
    learning_rate: float = LEARNING_RATE,
    *,
    record_every: int = 1,
    stop_tol: float | None = None,
    stop_patience: int = 100,
) -> ToyTrajectories:
  r"""Optimises the toy problem from every start with one method.

  Each step is ``optax.chain(aggregator, optax.adam(learning_rate))`` applied
  to the (2, 2) Jacobian ``jax.jacrev(toy_losses)(x)``, as in the paper's
  Figure 1 (Adam, learning rate 1e-3, 35,000 steps). All starts run in one
  jitted ``vmap`` over starts of a ``lax.scan`` over steps (an outer scan
  over the recorded points, an inner one over the ``record_every`` steps
  between them).

  The paper's Appendix A.1 says "the training process stops when the Pareto
  front is reached"; ``stop_tol`` does that: a start whose relative
  :func:`pareto_stationarity_gap` stays below it for ``stop_patience``
  consecutive steps keeps its x from then on. (The patience matters: on the
  line x2 = 0 both gates vanish, both gradients point along x2 and the gap is
  zero for the few steps a trajectory takes to cross it.)
  Without it, a method whose update does not vanish on the front keeps
  moving along it in steps of about ``learning_rate`` (Adam normalises the
  update). FairGrad's does not vanish: where the two gradients are nearly
  opposite its weights grow without bound (eq. 4 has no exact solution), and
  for α > 1 its update even grows as the gradients shrink; with α >= 2 the
  starts then drift along the front towards x1 = 7 over 35,000 steps.

  Args:
    aggregator: an optax aggregator over the two tasks, e.g.
      ``fairgrad_jax.fairgrad(alpha, num_tasks=2)``.
    starts: (S, 2) start points; the paper's five by default.
    num_steps: optimiser steps per start.
    learning_rate: Adam's learning rate.
    record_every: keep x every this many steps (must divide ``num_steps``);
      1 keeps every step.
    stop_tol: stop a start once its relative Pareto-stationarity gap has
      been below this value for ``stop_patience`` steps (None: never stop).
    stop_patience: consecutive steps below ``stop_tol`` before stopping.

  Returns:
    A :class:`ToyTrajectories`.

  Examples:
    >>> import fairgrad_jax
    >>> from fairgrad_jax import toy
    >>> agg = fairgrad_jax.linear_scalarization(num_tasks=2)
    >>> traj = toy.run_trajectories(agg, num_steps=100, record_every=50)
    >>> traj.steps.tolist(), traj.params.shape, traj.losses.shape
    ([0, 50, 100], (5, 3, 2), (5, 3, 2))
  """
  if not (isinstance(num_steps, int) and num_steps >= 1):
    raise ValueError(f"num_steps must be a positive int, got {num_steps!r}.")
  if not (isinstance(record_every, int) and record_every >= 1
          and num_steps % record_every == 0):
    raise ValueError(
        f"record_every must be a positive int dividing num_steps={num_steps},"
        f" got {record_every!r}.")
  if not learning_rate > 0:
    raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}.")
  if stop_tol is not None and not stop_tol > 0:
    raise ValueError(f"stop_tol must be > 0 or None, got {stop_tol!r}.")
  if not (isinstance(stop_patience, int) and stop_patience >= 1):
    raise ValueError(
        f"stop_patience must be a positive int, got {stop_patience!r}.")
  starts = jnp.asarray(starts, jnp.float32)
  if starts.ndim != 2 or starts.shape[1] != 2:
    raise ValueError(f"starts must have shape (S, 2), got {starts.shape}.")

  opt = optax.chain(aggregator, optax.adam(learning_rate))
  num_records = num_steps // record_every
  jacobian = jax.jacrev(toy_losses)

  def step(carry, t):
    x, state, streak, stopped_at = carry
    grads = jacobian(x)
    # The losses go along for the methods that weigh by them (STCH...).
    updates, new_state = opt.update(grads, state, x, losses=toy_losses(x))
    new_x = optax.apply_updates(x, updates)
    if stop_tol is not None:
      gap = pareto_stationarity_gap(grads, relative=True)
      streak = jnp.where(gap < stop_tol, streak + 1, 0)
      stopped_at = jnp.where((stopped_at < 0) & (streak >= stop_patience), t,
                             stopped_at)
      keep = stopped_at >= 0
      new_x, new_state = jax.tree.map(
          lambda old, new: jnp.where(keep, old, new), (x, state),
          (new_x, new_state))
    return (new_x, new_state, streak, stopped_at), None

  def record(carry, t0):
    carry, _ = jax.lax.scan(step, carry, t0 + jnp.arange(record_every))
    return carry, carry[0]

  def one_start(x0):
    carry = (x0, opt.init(x0), jnp.int32(0), jnp.int32(-1))
    (x, _, _, stopped_at), xs = jax.lax.scan(
        record, carry, jnp.arange(num_records) * record_every)
    return jnp.concatenate([x0[None], xs]), jacobian(x), stopped_at

  @jax.jit
  def run(starts):
    params, final_grads, stopped_at = jax.vmap(one_start)(starts)
    return params, toy_losses(params), final_grads, stopped_at

  params, losses, final_grads, stopped_at = run(starts)
  steps = np.arange(num_records + 1) * record_every
  return ToyTrajectories(steps=steps, params=params, losses=losses,
                         final_grads=final_grads, stopped_at=stopped_at)


def plot_trajectories(ax, trajectories: ToyTrajectories,
                      title: str | None = None, *, cmap: str = "magma_r"):
  """Draws one panel of the paper's Figure 1 on a matplotlib ``ax``.

  In loss space (ℓ1, ℓ2): the Pareto front as a thick grey line, each
  trajectory as dots coloured by step (light to dark, ``cmap`` on [0.1, 0.6]
  as in the reference code) up to the step at which it stopped, the start
  points in black and the final points as open circles. Needs matplotlib.

  Args:
    ax: a matplotlib ``Axes``.
    trajectories: the output of :func:`run_trajectories`.
    title: the panel's title.
    cmap: a matplotlib colormap name.

  Returns:
    ``ax``, with the labels "Pareto front", "initial point" and "final
    point" for a legend.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top

  colormap = matplotlib.colormaps[cmap]
  front = np.asarray(pareto_front(1000))
  ax.plot(front[:, 0], front[:, 1], "-", lw=6, color="#72727A",
          solid_capstyle="round", label="Pareto front", zorder=1)
  losses = np.asarray(trajectories.losses)
  steps = np.asarray(trajectories.steps)
  stopped_at = np.asarray(trajectories.stopped_at)
  for s in range(losses.shape[0]):
    keep = steps <= stopped_at[s] if stopped_at[s] >= 0 else steps >= 0
    path = losses[s, keep]
    # Colour by step over the whole run, so that panels compare.
    colours = colormap(0.1 + 0.5 * steps[keep] / steps[-1])
    ax.scatter(path[:, 0], path[:, 1], c=colours, s=4, lw=0, zorder=2)
    ax.scatter(*path[-1], marker="o", s=28, facecolor="none",
               edgecolor=colormap(0.6), lw=1.2, zorder=3,
               label="final point" if s == 0 else None)
  ax.scatter(losses[:, 0, 0], losses[:, 0, 1], color="k", s=50, zorder=4,
             label="initial point")
  if title is not None:
    ax.set_title(title, fontsize=12)
  ax.spines[["top", "right"]].set_visible(False)
  ax.set_xlabel(r"$\ell_1$", fontsize=13)
  ax.set_ylabel(r"$\ell_2$", fontsize=13)
  return ax


def step_colorbar(fig, num_steps: int, *, ax=None, cax=None,
                  cmap: str = "magma_r", **kwargs):
  """The colourbar of :func:`plot_trajectories`' dots: Adam step, 0 to
  ``num_steps``, on the same [0.1, 0.6] slice of ``cmap``.

  Args:
    fig: the matplotlib figure.
    num_steps: the last step of the run (the dark end of the bar).
    ax: axes to take the bar's room from (as ``fig.colorbar``'s ``ax``).
    cax: axes to draw the bar in instead.
    cmap: the colormap given to :func:`plot_trajectories`.
    **kwargs: passed on to ``fig.colorbar`` (e.g. ``fraction``, ``pad``).

  Returns:
    The colorbar.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top

  colormap = matplotlib.colormaps[cmap]
  mappable = matplotlib.cm.ScalarMappable(
      cmap=matplotlib.colors.ListedColormap(
          colormap(np.linspace(0.1, 0.6, 256))),
      norm=matplotlib.colors.Normalize(0, num_steps))
  return fig.colorbar(mappable, ax=ax, cax=cax, label="Adam step", **kwargs)
