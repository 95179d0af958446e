"""XLA compile time of an aggregator's update against the number of leaves.

A model's gradient is a tree of many leaves (every kernel, bias and norm
scale). The update's program must not grow a branch per leaf: the shared
leaves are packed into a few blocks (small leaves concatenated) before the
products, and the rare paths are chosen once for all of them. For each
method and each leaf count, a tree of that many small leaves (3×3×4×4
kernels and 4-vectors, K tasks) is lowered and compiled once, in this
process, and the seconds are printed (one compile per cell: XLA's cache is
keyed by the program, so every cell is a cold compile).

    python -m benchmarks.compile_time [--leaves 4 40 160] [--tasks 3]
"""

import argparse
import time

import jax
import jax.numpy as jnp

import fairgrad_jax
from benchmarks import _cli

METHODS = {
    "linear_scalarization": fairgrad_jax.linear_scalarization,
    "fairgrad(α=2)": lambda: fairgrad_jax.fairgrad(2.0),
    "mgda": fairgrad_jax.mgda,
    "upgrad": fairgrad_jax.upgrad,
}


def tree(num_leaves: int, k: int) -> dict:
  """``num_leaves`` small stacked leaves: kernels and vectors in turn."""
  shapes = [(3, 3, 4, 4), (4,), (4,), (4,)]
  return {f"l{i:04d}": jnp.ones((k,) + shapes[i % 4])
          for i in range(num_leaves)}


def compile_seconds(make, grads) -> float:
  agg = make()
  params = jax.tree.map(lambda g: g[0], grads)
  update = jax.jit(lambda g, s: agg.update(g, s, params))
  start = time.perf_counter()
  update.lower(grads, agg.init(params)).compile()
  return time.perf_counter() - start


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=_cli.HelpFormatter)
  parser.add_argument("--leaves", type=_cli.positive_int, nargs="+",
                      default=[4, 40, 160],
                      help="numbers of leaves of the gradient tree (one"
                      " column each)")
  parser.add_argument("--tasks", type=_cli.positive_int, default=3,
                      help="task count K (leading axis of every leaf)")
  args = parser.parse_args(argv)
  print(f"{jax.devices()[0].device_kind}, K = {args.tasks}; seconds to"
        " lower and compile jax.jit(agg.update) once")
  print("| method | " + " | ".join(f"{n} leaves" for n in args.leaves)
        + " |")
  print("|---|" + "---:|" * len(args.leaves))
  results = {}
  for name, make in METHODS.items():
    cells = []
    for n in args.leaves:
      results[name, n] = compile_seconds(make, tree(n, args.tasks))
      cells.append(f"{results[name, n]:.2f}")
    print(f"| {name} | " + " | ".join(cells) + " |")
  return results


if __name__ == "__main__":
  main()
