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
by one (``block_until_ready``) and the median is reported.
"""

import functools
import math
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fairgrad_jax as fj
from benchmarks.paper import problems
from benchmarks.paper import protocols
from benchmarks.paper import train


def _timed(step, args, steps: int) -> tuple[float, float]:
  start = time.perf_counter()
  try:
    out = step(*args)
    jax.block_until_ready(out)
  except jax.errors.JaxRuntimeError as error:  # out of memory
    if "RESOURCE_EXHAUSTED" not in str(error):
      raise
    return math.nan, math.nan
  compile_seconds = time.perf_counter() - start
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    out = step(*args)
    jax.block_until_ready(out)
    times.append(time.perf_counter() - start)
  return statistics.median(times) * 1e3, compile_seconds


def _scale_shared(tree, mask, factor):
  return jax.tree.map(lambda x, m: x * factor if m else x, tree,
                      _full_mask(mask, tree))


def _full_mask(mask, tree):
  # Broadcast a prefix mask to every leaf of ``tree``.
  return jax.tree.map(lambda m, sub: jax.tree.map(lambda _: m, sub), mask,
                      tree)


def profile(protocol: protocols.Protocol, *, alpha: float, steps: int,
            model_scale: int = 1, gram_mode: str | None = None) -> list[dict]:
  """Rows ``{'step', 'ms', 'compile_s'}`` for the three steps."""
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

  ms, comp = _timed(ls_step, (params, batch_stats, adam.init(params), batch),
                    steps)
  rows.append({"step": "LS (one backward of Σ l_i)", "ms": ms,
               "compile_s": comp})

  # FairGrad stacked: the training step of benchmarks.paper.train.
  spec = protocols.find_method("FairGrad")
  opt = train.build_optimizer(spec, alpha=alpha, num_tasks=k, shared=shared,
                              seed=0, main_task=0,
                              learning_rate=protocol.learning_rate)
  step = train.make_step(problem, opt)
  ms, comp = _timed(step, (params, batch_stats, opt.init(params), batch),
                    steps)
  how = "lax.map" if protocol.sequential_tasks else "vmap"
  rows.append({"step": f"FairGrad α={alpha:g}, stacked ({how} of K={k}"
                       " backward passes)",
               "ms": ms, "compile_s": comp})

  # FairGrad Gram-only.
  mode = gram_mode or ("vjp" if jax.default_backend() == "cpu" else "jvp")

  def losses_fn(p, s, b):
    return problem.losses(p, s, b, train=True)[0]

  chunk = 1 if protocol.sequential_tasks else None  # bounded memory (QM9)
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
  ms, comp = _timed(gram_step, (params, batch_stats, tail.init(params), batch,
                                weights), steps)
  rows.append({"step": f"FairGrad α={alpha:g}, Gram-only (weighted_grad,"
                       f" mode={mode}, chunk_size={chunk})", "ms": ms,
               "compile_s": comp})
  return rows


def markdown(protocol: protocols.Protocol, rows: list[dict], *,
             model_scale: int, steps: int) -> str:
  sizes = {
      "nyuv2": "288×384 images",
      "cityscapes": "128×256 images",
      "celeba": f"{protocol.image_size}×{protocol.image_size} images",
      "qm9": "molecules of 18 atoms padded to 29, complete graphs",
  }[protocol.name]
  width = "full-width model" if model_scale == 1 else (
      f"model widths / {model_scale}")
  head = (f"{protocol.title}: batch {protocol.batch_size}, {sizes}, {width};"
          f" {jax.devices()[0].device_kind} ({jax.default_backend()}),"
          f" median of {steps} steps after compilation")
  ls = rows[0]["ms"]
  lines = [head, "", "| step | ms / step | × LS | compile (s) |",
           "|---|---:|---:|---:|"]
  for row in rows:
    if math.isnan(row["ms"]):
      lines.append(f"| {row['step']} | out of memory | | |")
      continue
    lines.append(f"| {row['step']} | {row['ms']:.1f} | {row['ms'] / ls:.2f} |"
                 f" {row['compile_s']:.1f} |")
  return "\n".join(lines)
