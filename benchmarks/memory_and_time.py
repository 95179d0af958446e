"""Peak memory and step time: stacked, Gram-only and representation FairGrad.

A multi-task MLP (shared trunk d_in → hidden → hidden, ReLU, about 1.3M
shared parameters by default; one linear head per task, MSE losses) with
K ∈ {2, 10, 40} tasks. For each way of computing the update, the jitted
step (losses → update; the optimizer is left out, it costs the same for all)
is compiled once and measured:

* peak memory: XLA's memory analysis of the compiled step, temp + argument +
  output − aliased bytes (``jit(f).lower(...).compile().memory_analysis()``);
* step time: median wall time over ``--repeats`` calls after two warm-ups.

Rows: one-task gradient (the memory reference), linear scalarization (the
time reference), stacked FairGrad (``jax.jacrev`` + the :func:`fairgrad`
aggregator), Gram-only FairGrad (:func:`weighted_grad`, chunk_size 1 and 8)
and representation-level FairGrad (:func:`representation_grad`). FairGrad
steps warm-start from the previous step's weights, as in training.

    python -m benchmarks.memory_and_time [--tasks 2 10 40] [--out table.md]

On a GPU the default step (batch 256) takes well under a millisecond, so
kernel launches and the weight solve's while loop dominate the times, and
XLA's GEMM workspace (about 30 MiB) the small peaks; ``--batch 4096`` gives
a compute-bound comparison.
"""

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

import fairgrad_jax


def init_params(key, d_in, hidden, k):
  k1, k2, k3 = jax.random.split(key, 3)
  return {
      "trunk": {
          "w1": jax.random.normal(k1, (d_in, hidden)) / np.sqrt(d_in),
          "b1": jnp.zeros((hidden,)),
          "w2": jax.random.normal(k2, (hidden, hidden)) / np.sqrt(hidden),
          "b2": jnp.zeros((hidden,)),
      },
      "heads": jax.random.normal(k3, (k, hidden)) / np.sqrt(hidden),
  }


def encoder(params, x, y):
  del y
  t = params["trunk"]
  h = jax.nn.relu(x @ t["w1"] + t["b1"])
  return jax.nn.relu(h @ t["w2"] + t["b2"])


def heads(params, z, x, y):
  del x
  pred = z @ params["heads"].T  # (B, K)
  return jnp.mean((pred - y) ** 2, axis=0)


def losses(params, x, y):
  return heads(params, encoder(params, x, y), x, y)


def make_steps(k, alpha):
  """name -> (step(params, x, y, carry) -> (update, carry), initial carry)."""
  weights_fn = functools.partial(fairgrad_jax.fairgrad_weights, alpha=alpha)
  agg = fairgrad_jax.fairgrad(alpha, num_tasks=k)

  def single_task(params, x, y, carry):
    return jax.grad(lambda p: losses(p, x, y)[0])(params), carry

  def linear_scalarization(params, x, y, carry):
    return jax.grad(lambda p: jnp.sum(losses(p, x, y)))(params), carry

  def stacked(params, x, y, state):
    jac = jax.jacrev(losses)(params, x, y)
    return agg.update(jac, state)

  def gram_only(chunk_size):
    grad_fn = fairgrad_jax.weighted_grad(losses, weights_fn,
                                         chunk_size=chunk_size)

    def step(params, x, y, init):
      out = grad_fn(params, x, y, init=init)
      return out.update, out.weights

    return step

  representation_fn = fairgrad_jax.representation_grad(encoder, heads,
                                                       weights_fn)

  def representation(params, x, y, init):
    out = representation_fn(params, x, y, init=init)
    return out.update, out.weights

  def solve_alone(params, x, y, init):
    """The weight solve on a fixed Gram matrix: the steps' fixed overhead."""
    del params, x
    gram = jnp.eye(k) + 0.3 + 0.0 * jnp.sum(y)
    w = weights_fn(gram, init=init)
    return w, w

  ones = jnp.ones((k,), jnp.float32)
  return {
      "single-task gradient": (single_task, ones),
      "linear scalarization": (linear_scalarization, ones),
      "stacked FairGrad": (stacked, agg.init(None)),
      "Gram-only FairGrad (chunk 1)": (gram_only(1), ones),
      "Gram-only FairGrad (chunk 8)": (gram_only(min(8, k)), ones),
      "representation FairGrad": (representation, ones),
      "FairGrad solve alone (K×K)": (solve_alone, ones),
  }


def peak_bytes(compiled):
  m = compiled.memory_analysis()
  return (m.temp_size_in_bytes + m.argument_size_in_bytes
          + m.output_size_in_bytes - m.alias_size_in_bytes)


def measure(step, carry, args, repeats):
  jitted = jax.jit(step)
  compiled = jitted.lower(*args, carry).compile()
  for _ in range(2):
    out, carry = compiled(*args, carry)
    jax.block_until_ready((out, carry))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    out, carry = compiled(*args, carry)
    jax.block_until_ready((out, carry))
    times.append(time.perf_counter() - start)
  return peak_bytes(compiled), float(np.median(times))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tasks", type=int, nargs="+", default=[2, 10, 40])
  parser.add_argument("--d-in", type=int, default=256)
  parser.add_argument("--hidden", type=int, default=1024)
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--alpha", type=float, default=2.0)
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--out", type=str, default=None,
                      help="also write the table (markdown) to this file")
  args = parser.parse_args()

  shared = args.d_in * args.hidden + args.hidden ** 2 + 2 * args.hidden
  header = (
      f"MLP {args.d_in}-{args.hidden}-{args.hidden}, {shared:,} shared"
      f" params, batch {args.batch}, FairGrad α={args.alpha};"
      f" device: {jax.devices()[0].device_kind} ({jax.default_backend()})\n\n"
      "| K | method | peak MiB | × 1-task grad | step ms | × LS |\n"
      "|---|---|---|---|---|---|")
  print(header, flush=True)
  rows = [header]
  for k in args.tasks:
    kp, kx, ky = jax.random.split(jax.random.key(k), 3)
    params = init_params(kp, args.d_in, args.hidden, k)
    x = jax.random.normal(kx, (args.batch, args.d_in))
    y = jax.random.normal(ky, (args.batch, k))
    results = {}
    for name, (step, carry) in make_steps(k, args.alpha).items():
      results[name] = measure(step, carry, (params, x, y), args.repeats)
      mem, sec = results[name]
      ref_mem = results.get("single-task gradient", (mem,))[0]
      ref_sec = results.get("linear scalarization", (0, sec))[1]
      row = (f"| {k} | {name} | {mem / 2**20:.1f} | {mem / ref_mem:.2f} |"
             f" {1e3 * sec:.2f} | {sec / ref_sec:.2f} |")
      print(row, flush=True)
      rows.append(row)
  if args.out:
    with open(args.out, "w") as f:
      f.write("\n".join(rows) + "\n")


if __name__ == "__main__":
  main()
