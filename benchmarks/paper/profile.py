"""``--profile``: milliseconds per training step on synthetic tensors.

The real model and input sizes of the benchmark (or a smaller batch with
``--batch-size``), random inputs, no data needed. Three ways to take a step:

* LS: one backward pass of Σ_i l_i, then Adam (the cost floor);
* FairGrad, stacked: the K per-task gradients (one forward, K backward
  passes, see :func:`benchmarks.paper.train.task_gradients`), the
  :func:`fairgrad_jax.fairgrad` aggregator, the authors' ×K and clip, Adam:
  the training step of this benchmark;
* FairGrad, Gram-only: :func:`fairgrad_jax.weighted_grad` (Gram matrix of
  the shared-parameter gradients without stacking them, the weight solve,
  one more backward pass for Σ w_i g_i), ×K, clip, Adam.

Each step is compiled first (not timed), then ``steps`` steps are timed one
by one (``block_until_ready``) and the median is reported, with the
temporary memory XLA's compiled program asks for (``memory_analysis``:
activations, cotangents, stacked gradients; parameters and inputs apart).
"""

import functools
import math
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fairgrad_jax as fj
from fairgrad_jax import _task_gradients
from benchmarks.paper import problems
from benchmarks.paper import protocols
from benchmarks.paper import train


def _timed(step, args, steps: int) -> tuple[float, float, float]:
  """Median ms of ``steps`` calls, compile seconds, XLA's temp GB."""
  try:
    start = time.perf_counter()
    compiled = step.lower(*args).compile()
    compile_seconds = time.perf_counter() - start
    memory = compiled.memory_analysis()
    temp_gb = (math.nan if memory is None else
               memory.temp_size_in_bytes / 2**30)
    times = []
    for _ in range(steps):
      start = time.perf_counter()
      jax.block_until_ready(compiled(*args))
      times.append(time.perf_counter() - start)
  except jax.errors.JaxRuntimeError as error:  # out of memory
    if "RESOURCE_EXHAUSTED" not in str(error):
      raise
    return math.nan, math.nan, math.nan
  return statistics.median(times) * 1e3, compile_seconds, temp_gb


def _scale_shared(tree, mask, factor):
  return jax.tree.map(lambda x, m: x * factor if m else x, tree,
                      _full_mask(mask, tree))


def _full_mask(mask, tree):
  # Broadcast a prefix mask to every leaf of ``tree``.
  return jax.tree.map(lambda m, sub: jax.tree.map(lambda _: m, sub), mask,
                      tree)


def profile(protocol: protocols.Protocol, *, alpha: float, steps: int,
            model_scale: int = 1, gram_mode: str | None = None) -> list[dict]:
  """Rows ``{'step', 'ms', 'compile_s', 'temp_gb'}`` for the three steps."""
  problem = problems.make_problem(protocol, None, model_scale=model_scale)
  batch = problem.synthetic_batch(np.random.default_rng(0))
  params, batch_stats = train.init_variables(problem, jax.random.key(0),
                                             batch)
  shared = problem.shared_mask(params)
  k = protocol.num_tasks
  adam = optax.adam(protocol.learning_rate)
  clip = optax.masked(optax.clip_by_global_norm(1.0), shared)
  tail = optax.chain(clip, adam)
  rows = []

  # LS: one backward of the summed loss.
  def total(p, s, b):
    losses, new_stats = problem.losses(p, s, b, train=True)
    return jnp.sum(losses), new_stats

  @jax.jit
  def ls_step(p, s, o, b):
    grads, new_stats = jax.grad(total, has_aux=True)(p, s, b)
    updates, o = adam.update(grads, o, p)
    return optax.apply_updates(p, updates), new_stats, o

  ms, comp, temp = _timed(
      ls_step, (params, batch_stats, adam.init(params), batch), steps)
  rows.append({"step": "LS (one backward of Σ l_i)", "ms": ms,
               "compile_s": comp, "temp_gb": temp})

  # FairGrad stacked: the training step of benchmarks.paper.train.
  spec = protocols.find_method("FairGrad")
  opt = train.build_optimizer(spec, alpha=alpha, num_tasks=k, shared=shared,
                              seed=0, main_task=0,
                              learning_rate=protocol.learning_rate)
  step = train.make_step(problem, opt)
  ms, comp, temp = _timed(
      step, (params, batch_stats, opt.init(params), batch), steps)
  size = train.task_batch_size(protocol)
  rows.append({"step": f"FairGrad α={alpha:g}, stacked (K={k} backward"
                       f" passes, {'all' if size >= k else size} at a time)",
               "ms": ms, "compile_s": comp, "temp_gb": temp})

  # FairGrad Gram-only.

  def losses_fn(p, s, b):
    return problem.losses(p, s, b, train=True)[0]

  # As many tasks at once as the stacked step (bounded memory: QM9,
  # CelebA), except for a CNN on a CPU: weighted_grad loops over chunks, and
  # XLA's CPU convolutions run 8-80x slower in a loop body (see
  # fairgrad_jax.task_gradients), so all K at once there. vjp mode costs
  # n + n(n-1)/2 chunk VJPs for n chunks, jvp mode K VJPs and K JVPs
  # whatever the chunk: vjp where all K fit in one chunk on a CPU (faster
  # there for CNNs), jvp otherwise.
  cpu = jax.default_backend() == "cpu"
  convolves = _task_gradients._has_convolution(  # pylint: disable=protected-access
      jax.make_jaxpr(lambda p: problem.losses(p, batch_stats, batch))(
          params).jaxpr)
  chunk = None if size >= k or (cpu and convolves) else size
  mode = gram_mode or ("vjp" if chunk is None and cpu else "jvp")
  grad_fn = fj.weighted_grad(
      losses_fn, functools.partial(fj.fairgrad_weights, alpha=alpha),
      chunk_size=chunk, mode=mode, shared=shared, weight_heads=False)

  @jax.jit
  def gram_step(p, s, o, b, w):
    out = grad_fn(p, s, b, init=w)
    update = _scale_shared(out.update, shared, k)
    updates, o = tail.update(update, o, p)
    return optax.apply_updates(p, updates), o, out.weights

  weights = jnp.full((k,), 1.0 / k, jnp.float32)
  ms, comp, temp = _timed(
      gram_step, (params, batch_stats, tail.init(params), batch, weights),
      steps)
  rows.append({"step": f"FairGrad α={alpha:g}, Gram-only (weighted_grad,"
                       f" mode={mode}, chunk_size={chunk})", "ms": ms,
               "compile_s": comp, "temp_gb": temp})
  return rows


# Training examples per epoch (the releases the loaders read): NYU-v2 and
# Cityscapes as MTAN's .npy release (795 and 2975 training images), CelebA's
# official train split, QM9's 130,831 PyG molecules less the 10,000 + 10,000
# of validation and test.
TRAIN_EXAMPLES = {"nyuv2": 795, "cityscapes": 2975, "celeba": 162_770,
                  "qm9": 110_831}


def _duration(seconds: float) -> str:
  if seconds < 120:
    return f"{seconds:.0f} s"
  if seconds < 2 * 3600:
    return f"{seconds / 60:.0f} min"
  return f"{seconds / 3600:.1f} h"


def markdown(protocol: protocols.Protocol, rows: list[dict], *,
             model_scale: int, steps: int) -> str:
  """The rows as a table, with a one-line head and the epoch's length.

  "× LS" is relative to the first LS row of the same framework (ours, or
  the torch rows of :mod:`benchmarks.paper.torch_profile`).
  """
  sizes = {
      "nyuv2": "288×384 images",
      "cityscapes": "128×256 images",
      "celeba": f"{protocol.image_size}×{protocol.image_size} images",
      "qm9": "molecules of 18 atoms padded to 29, complete graphs",
  }[protocol.name]
  width = "full-width model" if model_scale == 1 else (
      f"model widths / {model_scale}")
  batches = -(-TRAIN_EXAMPLES[protocol.name] // protocol.batch_size)
  head = (f"{protocol.title}: batch {protocol.batch_size}, {sizes}, {width};"
          f" {jax.devices()[0].device_kind} ({jax.default_backend()}),"
          f" median of {steps} steps after compilation; an epoch is"
          f" {batches} steps; load average"
          f" {', '.join(f'{x:.1f}' for x in os.getloadavg())} at the end")
  lines = [head, "",
           "| step | ms / step | × LS | epoch | compile or first step (s) |"
           " XLA temp (GB) |",
           "|---|---:|---:|---:|---:|---:|"]
  ls = {}  # per framework (the torch rows' names start with "torch")
  for row in rows:
    framework = row["step"].split()[0] == "torch"
    ls.setdefault(framework, row["ms"])
    if math.isnan(row["ms"]):
      lines.append(f"| {row['step']} | out of memory | | | | |")
      continue
    temp = row.get("temp_gb")
    lines.append(
        f"| {row['step']} | {row['ms']:.1f} |"
        f" {row['ms'] / ls[framework]:.2f} |"
        f" {_duration(row['ms'] * batches / 1e3)} |"
        f" {row['compile_s']:.1f} |"
        f" {'' if temp is None or math.isnan(temp) else f'{temp:.2f}'} |")
  return "\n".join(lines)
