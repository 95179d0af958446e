"""Jitted per-step aggregation time of every method, relative to LS.

For K ∈ {2, 10, 40} tasks and a P-parameter gradient (default 1M, one leaf
of shape (K, P)), times ``jax.jit(agg.update)`` after warm-up and prints the
median over repeats, and the ratio to linear scalarization at the same K.

    python -m benchmarks.aggregator_speed [--params 1000000] [--repeats 7]
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import fairgrad_jax
from benchmarks import _cli


def methods(k):
  """Every method at K = k with its defaults (Krum needs K >= 3)."""
  out = {
      "linear_scalarization": fairgrad_jax.linear_scalarization(num_tasks=k),
      "fairgrad(α=1)": fairgrad_jax.fairgrad(1.0, num_tasks=k),
      "fairgrad(α=2)": fairgrad_jax.fairgrad(2.0, num_tasks=k),
      "mgda": fairgrad_jax.mgda(num_tasks=k),
      "pcgrad": fairgrad_jax.pcgrad(num_tasks=k),
      "cagrad": fairgrad_jax.cagrad(num_tasks=k),
      "imtl_g": fairgrad_jax.imtl_g(num_tasks=k),
      "upgrad": fairgrad_jax.upgrad(num_tasks=k),
      "dualproj": fairgrad_jax.dualproj(num_tasks=k),
      "nash_mtl": fairgrad_jax.nash_mtl(num_tasks=k),
      "graddrop": fairgrad_jax.graddrop(num_tasks=k),
      "rlw": fairgrad_jax.rlw(num_tasks=k),
      "dwa": fairgrad_jax.dwa(num_tasks=k),
      "uw": fairgrad_jax.uw(num_tasks=k),
      "scale_invariant": fairgrad_jax.scale_invariant(num_tasks=k),
      "famo": fairgrad_jax.famo(num_tasks=k),
      "mean": fairgrad_jax.mean(num_tasks=k),
      "constant": fairgrad_jax.constant([1.0] * k, num_tasks=k),
      "aligned_mtl": fairgrad_jax.aligned_mtl(num_tasks=k),
      "config": fairgrad_jax.config(num_tasks=k),
      "gradvac": fairgrad_jax.gradvac(num_tasks=k),
      "sdmgrad": fairgrad_jax.sdmgrad(num_tasks=k),
      "cr_mogm": fairgrad_jax.cr_mogm(num_tasks=k),
      "modo": fairgrad_jax.modo(num_tasks=k),
      "excess_mtl": fairgrad_jax.excess_mtl(num_tasks=k),
      # The largest trim TrimmedMean allows (2t < K).
      "trimmed_mean": fairgrad_jax.trimmed_mean((k - 1) // 2, num_tasks=k),
      "gradnorm": fairgrad_jax.gradnorm(num_tasks=k),
      "moco": fairgrad_jax.moco(num_tasks=k),
      "db_mtl": fairgrad_jax.db_mtl(num_tasks=k),
      "stch": fairgrad_jax.stch(num_tasks=k),
      "imtl_l": fairgrad_jax.imtl_l(num_tasks=k),
      "geometric_mean": fairgrad_jax.geometric_mean(num_tasks=k),
      "pbi": fairgrad_jax.pbi(num_tasks=k),
      "cosmos": fairgrad_jax.cosmos(num_tasks=k),
  }
  if k >= 3:  # the most Byzantine tasks Krum allows (f + 3 <= K)
    out["krum"] = fairgrad_jax.krum(k - 3, num_tasks=k)
  return out


def time_update(agg, grads, losses, repeats):
  update = jax.jit(agg.update)
  state = agg.init(None)
  for _ in range(2):  # compile and warm up
    out, state = update(grads, state, losses=losses)
    jax.block_until_ready(out)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    out, state = update(grads, state, losses=losses)
    jax.block_until_ready((out, state))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=_cli.HelpFormatter)
  parser.add_argument("--params", type=_cli.positive_int, default=1_000_000,
                      help="length P of each task's gradient")
  parser.add_argument("--tasks", type=_cli.positive_int, nargs="+",
                      default=[2, 10, 40],
                      help="task counts K to time (one column each)")
  parser.add_argument("--repeats", type=_cli.positive_int, default=7,
                      help="timed jitted steps per cell, after warm-up "
                      "(the median is printed)")
  args = parser.parse_args()

  results = {}
  for k in args.tasks:
    key = jax.random.PRNGKey(k)
    grads = {"w": jax.random.normal(key, (k, args.params), jnp.float32)}
    losses = jnp.linspace(1.0, 2.0, k)
    for name, agg in methods(k).items():
      results[name, k] = time_update(agg, grads, losses, args.repeats)

  names = list(methods(max(args.tasks)))
  print(f"{jax.devices()[0].device_kind}, P = {args.params:,} parameters,"
        f" median of {args.repeats} jitted steps after warm-up;"
        " ms (× linear scalarization)")
  header = "| method | " + " | ".join(f"K = {k}" for k in args.tasks) + " |"
  print(header)
  print("|---|" + "---|" * len(args.tasks))
  for name in names:
    cells = []
    for k in args.tasks:
      if (name, k) not in results:
        cells.append("n/a")
        continue
      t = results[name, k]
      ratio = t / results["linear_scalarization", k]
      cells.append(f"{1e3 * t:.2f} ({ratio:.1f}×)")
    print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  main()
