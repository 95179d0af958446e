"""The FairGrad paper's Figure 1: the two-task toy problem, in JAX.

    python -m benchmarks.toy --out results/toy [--steps 35000]

For each method, the five starts run as one jitted ``vmap`` over starts of a
``lax.scan`` over Adam steps (:func:`fairgrad_jax.toy.run_trajectories`).
Writes to ``--out``:

* ``toy_fairgrad.png``: FairGrad with α = 0 (linear scalarization), 1
  (proportional), 2 (minimum potential delay) and 10 (approximate max-min,
  the largest α of the paper's Table 5), in loss space (ℓ1, ℓ2), as the
  paper's Figure 1;
* ``toy_baselines.png``: LS, MGDA, PCGrad, CAGrad, Nash-MTL, UPGrad,
  Aligned-MTL, ConFIG, STCH and FairGrad side by side (STCH takes logs of
  the losses, which reach -2 and -20 on this problem's front: it sees
  ℓ + (2.5, 25), a shift that moves no Pareto-stationary point);
* ``final_points.csv``: every method × start: the last x, its losses, its
  Pareto-stationarity gap (absolute and relative to the smaller gradient),
  the step at which it stopped, and whether it ends on the Pareto front.

As the paper's Appendix A.1 says, "the training process stops when the Pareto
front is reached": a start stops once its relative gap has stayed below
``--stop-tol`` for 100 steps. ``--no-stop`` runs every step: FairGrad's
update does not vanish on the front (near-opposite gradients make its weights
blow up) and Adam normalises it, so with α >= 2 the starts then drift along
the front towards x1 = 7.
"""

import argparse
import csv
import pathlib
import time

import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from tqdm import tqdm  # noqa: E402

import fairgrad_jax as fj  # noqa: E402
from fairgrad_jax import toy  # noqa: E402

from benchmarks import _cli  # noqa: E402

# α of the four panels of the paper's Figure 1 (10 stands for max-min).
FIGURE_ALPHAS = (0.0, 1.0, 2.0, 10.0)
# α for which every start must end Pareto stationary on the front.
ACCEPTANCE_ALPHAS = (1.0, 2.0, 5.0)
PANEL_TITLES = {
    0.0: "FairGrad α=0 (LS)",
    1.0: "FairGrad α=1 (proportional)",
    2.0: "FairGrad α=2 (MPD)",
    5.0: "FairGrad α=5",
    10.0: "FairGrad α=10 (≈ max-min)",
}
# Relative Pareto-stationarity gap below which a final point counts as
# Pareto stationary.
STATIONARY_REL_GAP = 0.01


def fairgrad_methods():
  """(name, title, aggregator) of the FairGrad panels (and α = 5)."""
  alphas = sorted(set(FIGURE_ALPHAS) | set(ACCEPTANCE_ALPHAS))
  return [(f"fairgrad_alpha{a:g}", PANEL_TITLES[a],
           fj.fairgrad(a, num_tasks=2)) for a in alphas]


# STCH's logs need positive losses; the toy's reach -2 and -20 on the front.
STCH_LOSS_SHIFT = (2.5, 25.0)


def shifted_losses(aggregator, shift):
  """``aggregator`` fed ``losses + shift`` (the gradients are unchanged)."""
  shift = jnp.asarray(shift, jnp.float32)

  def update_fn(grads, state, params=None, *, losses, **extra_args):
    return aggregator.update(grads, state, params, losses=losses + shift,
                             **extra_args)

  return optax.GradientTransformationExtraArgs(aggregator.init, update_fn)


def baseline_methods(fairgrad_alpha):
  """(name, title, aggregator) of the baselines the package exports."""
  candidates = [
      ("ls", "LS", lambda: fj.linear_scalarization(num_tasks=2)),
      ("mgda", "MGDA", lambda: fj.mgda(num_tasks=2)),
      ("pcgrad", "PCGrad", lambda: fj.pcgrad(seed=0, num_tasks=2)),
      ("cagrad", "CAGrad (c=0.4)", lambda: fj.cagrad(c=0.4, num_tasks=2)),
      ("nash_mtl", "Nash-MTL", lambda: fj.nash_mtl(num_tasks=2)),
      ("upgrad", "UPGrad", lambda: fj.upgrad(num_tasks=2)),
      ("aligned_mtl", "Aligned-MTL", lambda: fj.aligned_mtl(num_tasks=2)),
      ("config", "ConFIG", lambda: fj.config(num_tasks=2)),
      ("stch", "STCH (ℓ + (2.5, 25))",
       lambda: shifted_losses(fj.stch(num_tasks=2), STCH_LOSS_SHIFT)),
  ]
  methods = [(name, title, make()) for name, title, make in candidates
             if hasattr(fj, name if name != "ls" else "linear_scalarization")]
  methods.append((f"fairgrad_alpha{fairgrad_alpha:g}",
                  f"FairGrad α={fairgrad_alpha:g}",
                  fj.fairgrad(fairgrad_alpha, num_tasks=2)))
  return methods


def record_every_for(num_steps, max_points=1000):
  """The smallest divisor of num_steps that keeps <= max_points records."""
  r = max(1, -(-num_steps // max_points))
  while num_steps % r:
    r += 1
  return r


def run_methods(methods, args, cache):
  """Runs each method (reusing ``cache`` by name); returns {name: traj}."""
  record_every = record_every_for(args.steps)
  out = {}
  bar = tqdm(methods, desc="methods", unit="method")
  for name, title, aggregator in bar:
    bar.set_postfix_str(title)
    if name not in cache:
      t0 = time.perf_counter()
      traj = toy.run_trajectories(
          aggregator, toy.STARTS, args.steps, args.lr,
          record_every=record_every,
          stop_tol=None if args.no_stop else args.stop_tol)
      jax.block_until_ready(traj)
      cache[name] = (traj, time.perf_counter() - t0)
    out[name] = cache[name][0]
  return out


def final_rows(name, traj):
  """One CSV row per start."""
  grads = np.asarray(traj.final_grads)
  gap = np.asarray(toy.pareto_stationarity_gap(grads))
  rel = np.asarray(toy.pareto_stationarity_gap(grads, relative=True))
  x = np.asarray(traj.params[:, -1])
  losses = np.asarray(traj.losses[:, -1])
  rows = []
  for s, start in enumerate(toy.STARTS):
    on_front = bool(rel[s] < STATIONARY_REL_GAP
                    and toy.PARETO_X1_RANGE[0] <= x[s, 0]
                    <= toy.PARETO_X1_RANGE[1])
    rows.append({
        "method": name,
        "start": f"({start[0]:g}, {start[1]:g})",
        "x1": f"{x[s, 0]:.4f}", "x2": f"{x[s, 1]:.4f}",
        "l1": f"{losses[s, 0]:.4f}", "l2": f"{losses[s, 1]:.4f}",
        "gap": f"{gap[s]:.3e}", "rel_gap": f"{rel[s]:.3e}",
        "stopped_at": int(traj.stopped_at[s]),
        "pareto_stationary_on_front": on_front,
    })
  return rows


def plot_panels(trajs, titles, path, num_steps, suptitle):
  """One loss-space panel per method, as the paper's Figure 1."""
  n = len(titles)
  ncols = {6: 3, 9: 3, 10: 5}.get(n, min(n, 4))
  nrows = -(-n // ncols)
  fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 4.0 * nrows),
                           sharex=True, sharey=True, squeeze=False)
  for ax, (name, title) in zip(axes.flat, titles):
    toy.plot_trajectories(ax, trajs[name], title)
    ax.tick_params(labelleft=True, labelbottom=True)
  for ax in list(axes.flat)[n:]:
    ax.set_visible(False)
  handles, labels = axes.flat[0].get_legend_handles_labels()
  # Room above the panels for the title (two lines) and the legend.
  top = 1 - 1.0 / (4.0 * nrows)
  fig.tight_layout(rect=(0, 0, 0.915, top))
  fig.suptitle(suptitle, y=0.995, fontsize=11)
  fig.legend(handles, labels, loc="upper center", ncol=3, frameon=False,
             fontsize=10, bbox_to_anchor=(0.5, top + 0.35 / (4.0 * nrows)))
  cax = fig.add_axes((0.93, 0.12, 0.012, 0.7))
  toy.step_colorbar(fig, num_steps, cax=cax)
  fig.savefig(path, dpi=130, facecolor="white")
  plt.close(fig)


def figure_title(what, args):
  """The two-line title: what is drawn and how it was run."""
  stop = ("every step run (--no-stop)" if args.no_stop else
          f"a start stops once its relative gap stays < {args.stop_tol:g}")
  return (f"{what} on the toy problem of Ban & Ji's Figure 1, in loss space"
          f" (ℓ₁, ℓ₂)\n{len(toy.STARTS)} starts, {args.steps} Adam steps at"
          f" learning rate {args.lr:g}; {stop}")


# The printed table's columns, explained under it.
TABLE_NOTE = (
    "x1, x2: the final point; l1, l2: its losses; rel_gap: its Pareto-"
    "stationarity gap min_γ |γ g1 + (1-γ) g2| relative to the smaller"
    " gradient norm; stopped: the step at which the start stopped, once its"
    " rel_gap stayed below --stop-tol for 100 steps (-1: never stopped, it ran"
    " every step); front: rel_gap < 0.01 with -7 <= x1 <= 7 (on the drawn"
    " Pareto front). The same columns, with the absolute gap, are in"
    " final_points.csv.")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=_cli.HelpFormatter)
  parser.add_argument("--out", type=pathlib.Path, default="results/toy",
                      help="folder for the two figures and final_points.csv;"
                      " created (or refused) before any run.")
  parser.add_argument("--steps", type=_cli.positive_int,
                      default=toy.NUM_STEPS,
                      help="Adam steps per start (the paper's number by"
                      " default).")
  parser.add_argument("--lr", type=_cli.positive_float,
                      default=toy.LEARNING_RATE,
                      help="Adam's learning rate (the paper's by default).")
  parser.add_argument("--stop-tol", type=_cli.positive_float, default=1e-3,
                      help="stop a start once its relative Pareto-"
                      "stationarity gap stays below this for 100 steps.")
  parser.add_argument("--no-stop", action="store_true",
                      help="run every step, never stop at the front (FairGrad"
                      " with α >= 2 then drifts along it).")
  parser.add_argument("--baseline-alpha", type=float, default=2.0,
                      help="FairGrad's α in the baselines figure.")
  args = parser.parse_args(argv)
  if not args.baseline_alpha >= 0:
    parser.error(f"--baseline-alpha must be >= 0, got {args.baseline_alpha}")
  _cli.make_out_dir(parser, args.out)

  t_start = time.perf_counter()
  cache = {}
  fair = fairgrad_methods()
  trajs = run_methods(fair, args, cache)
  plot_panels(trajs, [(f"fairgrad_alpha{a:g}", PANEL_TITLES[a])
                      for a in FIGURE_ALPHAS],
              args.out / "toy_fairgrad.png", args.steps,
              figure_title("FairGrad for four α", args))
  t_fairgrad = time.perf_counter() - t_start

  baselines = baseline_methods(args.baseline_alpha)
  have_baselines = len(baselines) > 2
  if have_baselines:
    trajs |= run_methods(baselines, args, cache)
    plot_panels(trajs, [(name, title) for name, title, _ in baselines],
                args.out / "toy_baselines.png", args.steps,
                figure_title("Baselines and FairGrad", args))
  else:
    print("No baselines exported by fairgrad_jax yet: skipping"
          " toy_baselines.png.")
  t_total = time.perf_counter() - t_start

  rows = [row for name, traj in trajs.items()
          for row in final_rows(name, traj)]
  with open(args.out / "final_points.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)

  print(f"\n{'method':<20} {'start':<12} {'x1':>8} {'x2':>8} {'l1':>8}"
        f" {'l2':>9} {'rel_gap':>10} {'stopped':>8} front")
  for r in rows:
    print(f"{r['method']:<20} {r['start']:<12} {r['x1']:>8} {r['x2']:>8}"
          f" {r['l1']:>8} {r['l2']:>9} {r['rel_gap']:>10}"
          f" {r['stopped_at']:>8} {r['pareto_stationary_on_front']}")
  _cli.print_wrapped(TABLE_NOTE)
  print("\nSeconds per method (compile + run):")
  for name, (_, seconds) in cache.items():
    print(f"  {name:<20} {seconds:6.1f}")
  for a in ACCEPTANCE_ALPHAS:
    ok = all(r["pareto_stationary_on_front"] for r in rows
             if r["method"] == f"fairgrad_alpha{a:g}")
    print(f"FairGrad α={a:g}: every start Pareto stationary on the front:"
          f" {ok}")
  stalled = [r["start"] for r in rows if r["method"] == "fairgrad_alpha0"
             and not r["pareto_stationary_on_front"]]
  print(f"Linear scalarization (α=0) does not reach the front from:"
        f" {', '.join(stalled) or 'none'}")
  print(f"Wall time: FairGrad figure {t_fairgrad:.1f} s, all"
        f" {'figures' if have_baselines else ''} {t_total:.1f} s"
        f" ({args.steps} steps, {len(toy.STARTS)} starts,"
        f" {jax.device_count()} {jax.default_backend()} device(s)).")
  print(f"Wrote {args.out}/")


if __name__ == "__main__":
  main()
