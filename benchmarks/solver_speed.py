"""FairGrad's weight solve: jitted JAX (damped Newton) against the authors' scipy call.

For K in {2, 5, 10, 40} and α in {1, 2, 5}, both solvers get the same Gram
matrices (of 512-dimensional Gaussian task gradients whose norms spread over
two decades). The authors' call is
``scipy.optimize.least_squares(lambda x: A @ x - (1/x)**(1/α), ones(K)/K,
bounds=(0, inf))`` on a float32 Gram matrix, as in their
``methods/weight_methods.py``.

Times are medians over the matrices of each solver's median over ``--calls``
back-to-back calls (steady state, as in a training loop; JAX after warm-up,
with ``block_until_ready``, including the dispatch of one jitted call). Two
more JAX columns: its first call right after scipy's (cold caches, sleeping
runtime threads: on a CPU this costs several times the steady-state call),
and the time per solve inside one jitted ``lax.map`` over the matrices (no
dispatch: the solve's cost inside a jitted training step).

Residuals are ‖GᵀG w - w^(-1/α)‖ / ‖w^(-1/α)‖ evaluated in float64, median
and worst over the matrices. JAX solves in the Gram matrix's dtype: float32
by default, where no answer does better than the exact weights rounded to
float32, so the table also gives scipy's float64 weights rounded to the
solve's dtype. ``--x64`` enables JAX's float64 mode and solves float64 Gram
matrices (tol 1e-8; the final Newton step reaches float64 round-off), for
residuals comparable with scipy's own.

A second table times a training-like sequence: a Gram matrix drifting slowly
over 100 steps, solved cold (the default start) and warm-started from the
previous step's weights, as ``fairgrad(num_tasks=K)`` does.

``--hard`` adds the hard set of ``benchmarks._hard_set`` (issue 11): K ∈
{2, 10, 40, 64}, α ∈ {0.5, 1, 2, 5, 10}, random / correlated / conflicting
directions, norms over 2 and 7 decades. Per (K, α) it prints the median and
max Newton iterations (cold start from the orthogonal closed form), the
worst relative residual (float64 evaluation), the floor for float32 (the
float64 root rounded to float32), the worst weight error against the float64
root over the cases float32 can represent (weights within 1e36 of each
other), how many cannot be, and the time of one scipy call (the authors')
against the jitted solve, cold and warm-started from the root perturbed by
1%. ``--hard-drift`` (with ``--hard`` or ``--hard-only``) also lets the
hard set's gradients drift by 0.1% per step at K = 10 and 40 and prints the
warm-started iterations per step.

Usage:
``python -m benchmarks.solver_speed [--repeats 20] [--calls 5] [--x64]
[--hard] [--hard-ks 2 10 40 64] [--hard-drift] [--out results/]``
"""

import argparse
import functools
import os
import pathlib
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import fairgrad_jax as fj
from benchmarks import _cli
from benchmarks import _hard_set

KS = (2, 5, 10, 40)
ALPHAS = (1.0, 2.0, 5.0)


def gram_matrices(k, n, seed):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    g = rng.normal(size=(k, 512)) * np.logspace(-1, 1, k)[:, None]
    out.append((g @ g.T).astype(np.float32))
  return out


# The authors' exact call, and the float64 relative residual.
scipy_weights = _hard_set.scipy_weights
rel_residual = _hard_set.relative_residual


def timed(fn, *args):
  t0 = time.perf_counter()
  out = fn(*args)
  jax.block_until_ready(out)
  return time.perf_counter() - t0, out


def steady(fn, *args, calls):
  """Median time of ``calls`` back-to-back calls, and the last output."""
  times = []
  for _ in range(calls):
    t, out = timed(fn, *args)
    times.append(t)
  return statistics.median(times), out


TOL = 1e-5  # set to 1e-8 by --x64 (the final Newton step then reaches 1e-16)


def solve_dtype():
  return np.float64 if TOL < 1e-7 else np.float32


def solver_table(repeats, calls):
  """One row per (K, α): medians over ``repeats`` Gram matrices.

  Per matrix, both solvers are timed as the median of ``calls`` back-to-back
  calls (steady state, as in a training loop). "first call" is JAX's first
  call right after scipy's, with cold caches and sleeping threads; "in
  graph" is the time per solve of one jitted ``lax.map`` over all the
  matrices (no dispatch: the solve's cost inside a jitted training step).
  """
  rows = []
  dtype = solve_dtype()
  for k in KS:
    grams = gram_matrices(k, repeats, seed=k)
    for alpha in ALPHAS:
      solve = jax.jit(lambda a, alpha=alpha: fj.fairgrad_solve(a, alpha,
                                                               tol=TOL))
      solve_all = jax.jit(lambda a, alpha=alpha: jax.lax.map(
          lambda x: fj.fairgrad_solve(x, alpha, tol=TOL).weights, a))
      stacked = jnp.asarray(np.stack(grams), dtype)
      jax.block_until_ready(solve(stacked[0]))  # compile
      in_graph = steady(solve_all, stacked, calls=calls)[0] / repeats
      first, jax_times, jax_res, iters = [], [], [], []
      sp_times, sp_res, sp_rounded = [], [], []
      for a in grams:
        t, w = steady(scipy_weights, a, alpha, calls=calls)
        sp_times.append(t)
        sp_res.append(rel_residual(a, w, alpha))
        sp_rounded.append(rel_residual(a, w.astype(dtype), alpha))
        dev = jnp.asarray(a, dtype)
        first.append(timed(solve, dev)[0])  # right after scipy's calls
        t, sol = steady(solve, dev, calls=calls)
        jax_times.append(t)
        jax_res.append(rel_residual(a, sol.weights, alpha))
        iters.append(int(sol.num_iterations))
      med = statistics.median
      ts, tj, tf = med(sp_times), med(jax_times), med(first)
      rows.append((k, alpha, ts * 1e3, tj * 1e3, ts / tj, tf * 1e3, ts / tf,
                   in_graph * 1e3, med(iters), med(sp_res), max(sp_res),
                   med(sp_rounded), max(sp_rounded), med(jax_res),
                   max(jax_res)))
  name = np.dtype(dtype).name
  header = (
      "| K | α | scipy (ms) | jax (ms) | speed-up | jax first call (ms) | "
      "speed-up first call | jax in graph (ms) | Newton iters | "
      f"scipy resid (median / max) | scipy → {name} resid | "
      "jax resid (median / max) |\n"
      "|---|---|---|---|---|---|---|---|---|---|---|---|")
  lines = [header] + [
      f"| {k} | {a:g} | {ts:.2f} | {tj:.3f} | {r:.0f}× | {tf:.3f} | "
      f"{rf:.0f}× | {tg:.3f} | {it:.0f} | {sm:.1e} / {sx:.1e} | "
      f"{rm:.1e} / {rx:.1e} | {jm:.1e} / {jx:.1e} |"
      for (k, a, ts, tj, r, tf, rf, tg, it, sm, sx, rm, rx, jm, jx) in rows
  ]
  return "\n".join(lines)


def warm_start_table(steps, calls):
  lines = ["| K | α | cold (ms) | warm (ms) | cold iters | warm iters | "
           "scipy (ms) | warm resid (max) |", "|---|---|---|---|---|---|---|---|"]
  for k in (10, 40):
    rng = np.random.default_rng(100 + k)
    g = rng.normal(size=(k, 512)) * np.logspace(-1, 1, k)[:, None]
    drift = rng.normal(size=(k, 512))
    grams = []
    for t in range(steps):  # a gradient field moving by ~0.1% per step
      gt = g + 1e-3 * t * drift * np.linalg.norm(g, axis=1, keepdims=True) / 22
      grams.append(jnp.asarray((gt @ gt.T).astype(np.float32),
                               solve_dtype()))
    for alpha in (1.0, 2.0):
      solve = jax.jit(lambda a, w, alpha=alpha: fj.fairgrad_solve(
          a, alpha, init=w, tol=TOL))
      w = jnp.zeros((k,))  # zeros: no previous weights, a cold start
      jax.block_until_ready(solve(grams[0], w))
      cold_t, warm_t, cold_i, warm_i, res, sp_t = [], [], [], [], [], []
      for a in grams:
        t, cold = steady(solve, a, jnp.zeros((k,)), calls=calls)
        cold_t.append(t)
        cold_i.append(int(cold.num_iterations))
        t, warm = steady(solve, a, w, calls=calls)
        warm_t.append(t)
        warm_i.append(int(warm.num_iterations))
        res.append(rel_residual(a, warm.weights, alpha))
        w = warm.weights
        sp_t.append(steady(scipy_weights, np.asarray(a), alpha,
                           calls=calls)[0])
      lines.append(
          f"| {k} | {alpha:g} | {statistics.median(cold_t) * 1e3:.3f} | "
          f"{statistics.median(warm_t) * 1e3:.3f} | "
          f"{statistics.median(cold_i):.0f} | {statistics.median(warm_i):.0f}"
          f" | {statistics.median(sp_t) * 1e3:.2f} | {max(res):.1e} |")
  return "\n".join(lines)


def hard_drift_table(ks=(10, 40), alphas=_hard_set.ALPHAS, steps=30):
  """The hard set's gradients drifting: warm-started iterations per step.

  Each (kind, K, decades) of the hard set's gradients moves by 0.1% of each
  gradient's norm per step, in a random direction, for ``steps`` steps; the
  solve at each step starts from the previous step's weights. Per α: the
  most iterations any step took and the largest move of a log-weight in one
  step (the weights of conflicting tasks over seven decades move by orders
  of magnitude per step at α >= 5, however slowly the gradients drift).
  ``*``: the root spans more than 36 decades (float32 clips it), so no
  count is meaningful there.
  """
  lines = ["| kind | K | decades | " + " | ".join(
      f"α = {a:g}: iters max (max move)" for a in alphas) + " |",
           "|---|---|---|" + "---|" * len(alphas)]
  solve = jax.jit(fj.fairgrad_solve, static_argnames=("alpha",))
  for kind in _hard_set.KINDS:
    for k in ks:
      for dec in _hard_set.DECADES:
        g = _hard_set.gradients(kind, k, dec, seed=0)
        rng = np.random.default_rng(1)
        drift = (rng.normal(size=g.shape) * 1e-3
                 * np.linalg.norm(g, axis=1, keepdims=True)
                 / np.sqrt(g.shape[1]))
        moved = [g + t * drift for t in range(steps)]
        grams = [jnp.asarray((m @ m.T).astype(np.float32)) for m in moved]
        first = np.asarray(grams[0], np.float64)
        first = first / np.max(np.diag(first))
        cells = []
        for alpha in alphas:
          root, _ = _hard_set.float64_root(first, alpha, with_scipy=False)
          clipped = root is None or np.log10(root.max() / root.min()) > 36
          w = solve(grams[0], alpha=alpha).weights
          iters, move = [], 0.0
          for gram in grams[1:]:
            sol = solve(gram, alpha=alpha, init=w)
            iters.append(int(sol.num_iterations))
            move = max(move, float(np.max(np.abs(
                np.log(np.asarray(sol.weights) / np.asarray(w))))))
            w = sol.weights
          cells.append(f"{max(iters)} ({move:.2g}){'*' if clipped else ''}")
        lines.append(f"| {kind} | {k} | {dec} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def hard_table(ks, calls, solve_fn=None, with_scipy=True, scipy_max_k=64,
               echo=False, per_case=False):
  """The hard set: convergence, accuracy and speed per (K, α).

  ``solve_fn(gram, alpha, init)`` -> (weights, iterations[, converged])
  replaces the package's solve (to measure another version of it on the
  same cases). With ``per_case``, a second table follows: one row per case
  (cold and warm iterations, converged, weight error).
  """
  if solve_fn is None:
    @functools.partial(jax.jit, static_argnums=1)
    def solve_fn(gram, alpha, init):
      sol = fj.fairgrad_solve(gram, alpha, init=init)
      return sol.weights, sol.num_iterations, sol.converged
  cases = _hard_set.hard_cases(ks=ks, with_scipy=False)
  case_lines = [
      "| case | cold iters | converged | weight err | warm iters |",
      "|---|---|---|---|---|"]
  lines = [
      "| K | α | iters median / max | resid max | f32 floor max | "
      "weight err max | not representable | scipy (ms) | jax cold (ms) | "
      "jax warm (ms) | warm iters max | speed-up cold / warm |",
      "|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for k in ks:
    for alpha in _hard_set.ALPHAS:
      group = [c for c in cases if c.k == k and c.alpha == alpha]
      iters, res, floor, errs, unrep = [], [], [], [], 0
      t_sp, t_cold, t_warm, warm_iters = [], [], [], []
      for c in group:
        a32 = jnp.asarray(c.gram, jnp.float32)
        cold = jnp.zeros((k,), jnp.float32)  # no usable init: cold start
        jax.block_until_ready(solve_fn(a32, alpha, cold))
        t, (w, it, *conv) = steady(solve_fn, a32, alpha, cold, calls=calls)
        t_cold.append(t)
        iters.append(int(it))
        w = np.asarray(w, np.float64)
        res.append(rel_residual(c.gram, w, alpha) if np.all(w > 0)
                   else np.inf)
        case = [c.name, str(int(it)), str(bool(conv[0])) if conv else "-",
                "no certified root" if c.root is None
                else "not representable", "-"]
        if c.root is None or np.log10(c.root.max() / c.root.min()) > 36:
          unrep += 1
        else:
          errs.append(float(np.max(np.abs(w / c.root - 1.0))))
          floor.append(rel_residual(c.gram, c.root.astype(np.float32),
                                    alpha))
          init = jnp.asarray(c.root * np.exp(0.01 * np.sin(np.arange(k))),
                             jnp.float32)
          t, (_, it, *_) = steady(solve_fn, a32, alpha, init, calls=calls)
          t_warm.append(t)
          warm_iters.append(int(it))
          case[3:] = [f"{errs[-1]:.1e}", str(int(it))]
        case_lines.append("| " + " | ".join(case) + " |")
        if with_scipy and k <= scipy_max_k:
          t_sp.append(timed(scipy_weights, c.gram, alpha)[0])
      med = statistics.median
      sp, tc = (med(t_sp) if t_sp else float("nan")), med(t_cold)
      tw = med(t_warm) if t_warm else float("nan")
      lines.append(
          f"| {k} | {alpha:g} | {med(iters):g} / {max(iters)} | "
          f"{max(res):.1e} | {max(floor) if floor else float('nan'):.1e} | "
          f"{max(errs) if errs else float('nan'):.1e} | {unrep}/{len(group)}"
          f" | {sp * 1e3:.1f} | {tc * 1e3:.3f} | {tw * 1e3:.3f} | "
          f"{max(warm_iters) if warm_iters else 0} | {sp / tc:.0f}× / "
          f"{sp / tw:.0f}× |")
      if echo:
        print(lines[-1] if len(lines) > 3 else "\n".join(lines), flush=True)
  if per_case:
    lines += [""] + case_lines
    if echo:
      print("\n" + "\n".join(case_lines), flush=True)
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                   formatter_class=_cli.HelpFormatter)
  parser.add_argument("--repeats", type=int, default=20,
                      help="Gram matrices per (K, α)")
  parser.add_argument("--steps", type=int, default=100,
                      help="length of the drifting sequence")
  parser.add_argument("--calls", type=int, default=5,
                      help="back-to-back calls timed per matrix (median)")
  parser.add_argument("--x64", action="store_true",
                      help="solve in float64 (tol 1e-8, then a Newton step)")
  parser.add_argument("--hard", action="store_true",
                      help="also run the hard set (issue 11): convergence, "
                      "accuracy against float64 roots, speed-up over scipy")
  parser.add_argument("--hard-ks", type=int, nargs="+",
                      default=list(_hard_set.KS),
                      help="task counts of the hard set (scipy takes about a "
                      "minute per K = 64 case)")
  parser.add_argument("--hard-scipy-max-k", type=int, default=64,
                      help="time the scipy call only up to this K (it takes "
                      "20-60 s per K = 64 case on a 2-core CPU)")
  parser.add_argument("--hard-only", action="store_true",
                      help="run the hard set alone")
  parser.add_argument("--hard-cases", action="store_true",
                      help="also print the hard set case by case (cold and "
                      "warm iterations, converged, weight error)")
  parser.add_argument("--hard-drift", action="store_true",
                      help="also run the hard set's gradients drifting by "
                      "0.1%% per step, warm-started (K = 10, 40)")
  parser.add_argument("--out", type=pathlib.Path, default=None,
                      help="folder for solver_speed.md")
  args = parser.parse_args()
  global TOL
  if args.x64:
    jax.config.update("jax_enable_x64", True)
    TOL = 1e-8
  device = jax.devices()[0]
  precision = "float64" if args.x64 else "float32"
  title = (f"FairGrad weight solve on {device.platform} ({device.device_kind}),"
           f" {precision}")
  print(title, flush=True)
  if args.hard or args.hard_only:
    print(f"\nHard set (load average {os.getloadavg()[0]:.1f}):", flush=True)
    table3 = hard_table(tuple(args.hard_ks), args.calls,
                        scipy_max_k=args.hard_scipy_max_k, echo=True,
                        per_case=args.hard_cases)
    print("Columns: Newton iterations cold; worst float64-evaluated relative "
          "residual; its floor (the float64 root rounded to float32); worst "
          "max_i |w_i/w*_i - 1| over representable cases; cases whose weights "
          "span > 1e36 (or no certified root); one scipy call; jitted solve "
          "cold / warm from the root perturbed by 1%.")
    if args.out is not None:
      args.out.mkdir(parents=True, exist_ok=True)
      (args.out / "solver_speed_hard.md").write_text(f"# {title}\n\n{table3}\n")
    if args.hard_drift:
      print("\nHard set's gradients drifting 0.1% per step, warm-started "
            "(iterations per step, max; largest log-weight move per step):",
            flush=True)
      print(hard_drift_table(), flush=True)
    if args.hard_only:
      return
  table1 = solver_table(args.repeats, args.calls)
  print(table1, flush=True)
  table2 = warm_start_table(args.steps, args.calls)
  print("\nSlowly drifting Gram matrices (training-like), per step:")
  print(table2)
  if args.out is not None:
    args.out.mkdir(parents=True, exist_ok=True)
    name = "solver_speed_x64.md" if args.x64 else "solver_speed.md"
    (args.out / name).write_text(
        f"# {title}\n\n{table1}\n\n## Warm start\n\n{table2}\n")


if __name__ == "__main__":
  main()
