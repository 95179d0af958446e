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
time reference), stacked FairGrad (``jax.jacrev`` or :func:`task_gradients`,
the README's way, + the :func:`fairgrad` aggregator), Gram-only FairGrad
(:func:`weighted_grad`, chunk_size 1 and 8) and representation-level
FairGrad (:func:`representation_grad`, with the (K,)-valued heads function
and with one head per task, ``task_heads=K``; the latter is the way to use
it: each z-gradient runs its own head). FairGrad
steps warm-start from the previous step's weights, as in training.

``--model cnn`` measures FAMO's CelebA CNN at half width instead (1.3M
shared parameters, batch 32 of 32×32 images, z 256-wide, one logit head per
attribute, binary cross-entropy): the setting where representation-level
weighting is used, with a representation much smaller than the encoder. Its
Gram-only rows are compiled for their peak memory but not timed: on a CPU,
XLA runs the batched convolutions of chunked VJPs/JVPs (grouped convolutions,
and convolutions inside loops) 20-40× slower than plain ones (see
:func:`weighted_grad`), seconds to minutes per step.

    python -m benchmarks.memory_and_time [--model mlp|cnn] [--tasks 2 10 40]
        [--out table.md]

On a GPU the default step (batch 256) takes well under a millisecond, so
kernel launches and the weight solve's while loop dominate the times, and
XLA's GEMM workspace (about 30 MiB) the small peaks; ``--batch 4096`` gives
a compute-bound comparison.
"""

import argparse
import functools
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fairgrad_jax
from fairgrad_jax.models import CelebACNN

from benchmarks import _cli


class Problem(NamedTuple):
  """A K-task model split as encoder and heads, with its data.

  encoder(params, x, y) -> z; heads(params, z, x, y) -> (K,) losses;
  task_head(params, z, task, x, y) -> task's loss (its own head only).
  """

  encoder: Callable[..., Any]
  heads: Callable[..., jax.Array]
  task_head: Callable[..., jax.Array]
  params: Any
  x: Any
  y: jax.Array
  description: str

  def losses(self, params, x, y):
    return self.heads(params, self.encoder(params, x, y), x, y)


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


def task_head(params, z, task, x, y):
  """One task's loss from its own head (``representation_grad(task_heads=K)``)."""
  del x
  pred = z @ params["heads"][task]  # (B,)
  return jnp.mean((pred - y[:, task]) ** 2)


def mlp_problem(k, args):
  """The MLP: z is as wide as the trunk (hidden × batch entries)."""
  kp, kx, ky = jax.random.split(jax.random.key(k), 3)
  shared = args.d_in * args.hidden + args.hidden ** 2 + 2 * args.hidden
  return Problem(
      encoder, heads, task_head, init_params(kp, args.d_in, args.hidden, k),
      jax.random.normal(kx, (args.batch, args.d_in)),
      jax.random.normal(ky, (args.batch, k)),
      f"MLP {args.d_in}-{args.hidden}-{args.hidden}, {shared:,} shared params,"
      f" batch {args.batch}")


def cnn_problem(k, args):
  """FAMO's CelebA CNN at half width: 1.29M shared parameters, z 256-wide.

  Binary cross-entropy per attribute on random images and labels; batch norm
  in training mode (its updated statistics are dropped: the step's cost is
  what is measured).
  """
  model = CelebACNN(num_tasks=k, width_multiplier=0.5)
  kp, kx, ky = jax.random.split(jax.random.key(k), 3)
  images = jax.random.uniform(kx, (args.batch, args.image_size,
                                   args.image_size, 3))
  variables = model.init(kp, images)
  x = {"images": images, "stats": variables["batch_stats"]}
  y = jax.random.bernoulli(ky, 0.5, (args.batch, k)).astype(jnp.float32)

  def cnn_encoder(params, x, y):
    del y
    z, _ = model.apply({"params": params, "batch_stats": x["stats"]},
                       x["images"], True, mutable=["batch_stats"],
                       method=lambda m, im, train: m.encoder(im, train))
    return z  # (B, 256)

  def cnn_heads(params, z, x, y):
    del x
    logits = model.apply({"params": params}, z,
                         method=lambda m, z: m.heads(z))[..., 0]  # (K, B)
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, y.T), axis=1)

  def cnn_task_head(params, z, task, x, y):
    del x
    logits = model.apply({"params": params}, z, task,
                         method=lambda m, z, t: m.heads(z, t))[..., 0]
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, y[:, task]))

  shared = sum(a.size for a in jax.tree.leaves(variables["params"]["encoder"]))
  return Problem(
      cnn_encoder, cnn_heads, cnn_task_head, variables["params"], x, y,
      f"CelebA CNN (width 0.5), {shared:,} shared params, batch {args.batch}"
      f" of {args.image_size}×{args.image_size} images")


def make_steps(problem, k, alpha):
  """name -> (step(params, x, y, carry) -> (update, carry), initial carry)."""
  weights_fn = functools.partial(fairgrad_jax.fairgrad_weights, alpha=alpha)
  losses = problem.losses
  agg = fairgrad_jax.fairgrad(alpha, num_tasks=k)

  def single_task(params, x, y, carry):
    return jax.grad(lambda p: losses(p, x, y)[0])(params), carry

  def linear_scalarization(params, x, y, carry):
    return jax.grad(lambda p: jnp.sum(losses(p, x, y)))(params), carry

  def stacked(grads_fn):
    def step(params, x, y, state):
      return agg.update(grads_fn(params, x, y), state)
    return step

  task_grads = fairgrad_jax.task_gradients(losses)

  def gram_only_step(chunk_size):
    grad_fn = fairgrad_jax.weighted_grad(losses, weights_fn,
                                         chunk_size=chunk_size)

    def step(params, x, y, init):
      out = grad_fn(params, x, y, init=init)
      return out.update, out.weights

    return step

  representation_fn = fairgrad_jax.representation_grad(problem.encoder,
                                                       problem.heads,
                                                       weights_fn)

  def representation(params, x, y, init):
    out = representation_fn(params, x, y, init=init)
    return out.update, out.weights

  per_task_fn = fairgrad_jax.representation_grad(
      problem.encoder, problem.task_head, weights_fn, task_heads=k)

  def representation_per_task(params, x, y, init):
    out = per_task_fn(params, x, y, init=init)
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
      "stacked FairGrad (jax.jacrev)": (stacked(jax.jacrev(losses)),
                                        agg.init(None)),
      "stacked FairGrad (task_gradients)": (
          stacked(lambda *args: task_grads(*args)[1]), agg.init(None)),
      "representation FairGrad": (representation, ones),
      "representation FairGrad (per-task heads)": (representation_per_task,
                                                   ones),
      "FairGrad solve alone (K×K)": (solve_alone, ones),
      "Gram-only FairGrad (chunk 1)": (gram_only_step(1), ones),
      "Gram-only FairGrad (chunk 8)": (gram_only_step(min(8, k)), ones),
  }


def peak_bytes(compiled):
  m = compiled.memory_analysis()
  return (m.temp_size_in_bytes + m.argument_size_in_bytes
          + m.output_size_in_bytes - m.alias_size_in_bytes)


def measure(step, carry, args, repeats):
  """(peak bytes, median seconds); repeats=0 compiles only (time NaN)."""
  jitted = jax.jit(step)
  compiled = jitted.lower(*args, carry).compile()
  if repeats == 0:
    return peak_bytes(compiled), float("nan")
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


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=_cli.HelpFormatter)
  parser.add_argument("--model", choices=("mlp", "cnn"), default="mlp",
                      help="the multi-task MLP, or FAMO's CelebA CNN at half"
                      " width.")
  parser.add_argument("--tasks", type=_cli.positive_int, nargs="+",
                      default=[2, 10, 40],
                      help="task counts K, one block of rows each.")
  parser.add_argument("--d-in", type=_cli.positive_int, default=256,
                      help="input width of the MLP.")
  parser.add_argument("--hidden", type=_cli.positive_int, default=1024,
                      help="width of the MLP's two hidden layers.")
  parser.add_argument("--image-size", type=_cli.positive_int, default=32,
                      help="side of the CNN's square input images.")
  parser.add_argument("--batch", type=_cli.positive_int, default=None,
                      help="batch size; 256 for the MLP, 32 for the CNN by"
                      " default.")
  parser.add_argument("--alpha", type=float, default=2.0,
                      help="FairGrad's α.")
  parser.add_argument("--repeats", type=_cli.positive_int, default=10,
                      help="timed calls per step (after two warm-ups); the"
                      " median is reported.")
  parser.add_argument("--out", type=str, default=None,
                      help="also write the table (Markdown) to this file;"
                      " checked to be writable before any measurement.")
  args = parser.parse_args(argv)
  if args.out:
    try:
      with open(args.out, "a"):
        pass
    except OSError as e:
      parser.error(f"--out {args.out}: cannot write this file"
                   f" ({e.strerror or e}).")
  if args.batch is None:
    args.batch = 256 if args.model == "mlp" else 32
  make_problem = mlp_problem if args.model == "mlp" else cnn_problem

  header = None
  rows = []
  for k in args.tasks:
    problem = make_problem(k, args)
    if header is None:
      header = (
          f"{problem.description}, FairGrad α={args.alpha};"
          f" device: {jax.devices()[0].device_kind} ({jax.default_backend()})"
          "\n\n| K | method | peak MiB | × 1-task grad | step ms | × LS |\n"
          "|---|---|---|---|---|---|")
      print(header, flush=True)
      rows.append(header)
    results = {}
    args_ = (problem.params, problem.x, problem.y)
    for name, (step, carry) in make_steps(problem, k, args.alpha).items():
      untimed = args.model == "cnn" and name.startswith("Gram-only")
      results[name] = measure(step, carry, args_,
                              0 if untimed else args.repeats)
      mem, sec = results[name]
      ref_mem = results.get("single-task gradient", (mem,))[0]
      ref_sec = results.get("linear scalarization", (0, sec))[1]
      times = ("not timed | —" if untimed
               else f"{1e3 * sec:.2f} | {sec / ref_sec:.2f}")
      row = (f"| {k} | {name} | {mem / 2**20:.1f} | {mem / ref_mem:.2f} |"
             f" {times} |")
      print(row, flush=True)
      rows.append(row)
  note = ("peak MiB: XLA's peak memory of the compiled step; × 1-task grad:"
          " that peak over one task's gradient step; step ms: median wall"
          " time of one step; × LS: that time over linear scalarization's.")
  _cli.print_wrapped(note)
  rows.append("\n" + note)
  if args.out:
    with open(args.out, "w") as f:
      f.write("\n".join(rows) + "\n")


if __name__ == "__main__":
  main()
