"""The training loop shared by the benchmarks.

A benchmark is a :class:`Problem` (a model family, a per-task loss and
metric, the data) and a list of :class:`benchmarks._methods.Method`.
:func:`run_benchmark` trains every method for every seed on the same budget
(steps, batch size, Adam's learning-rate schedule, initial parameters and
minibatch order per seed); :mod:`benchmarks._report` turns the results into
Δm%, Mean Rank and relative step times.

How one multi-task step works (the whole step is one ``jax.jit``-ed call;
steps are dispatched from Python, because XLA:CPU runs convolutions inside a
``lax.scan`` loop body several times slower than in a top-level call):

1. draw a minibatch (indices uniformly with replacement);
2. per-task losses and gradients by ``jax.vmap(jax.value_and_grad(task_loss))``
   over the task index: every leaf of ``grads`` gets a leading task axis K;
3. ``optax.chain(aggregator, optax.adam(schedule))`` maps them to one update
   (Adam with a cosine decay of the learning rate to 0 over the run, the same
   for every method, so that the final iterate is a settled one);
   ``losses=`` (the K losses of the minibatch) is passed along: the
   loss-based methods (FAMO) use it, the others ignore it.

STL trains K single-task models (a one-head copy of the same architecture,
task k's loss only) side by side with ``jax.vmap``: same steps, same batches.
"""

import dataclasses
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks import _methods
from fairgrad_jax import models


@dataclasses.dataclass(frozen=True)
class Problem:
  """A benchmark problem.

  Attributes:
    name: short name, used in titles.
    task_names: K task names.
    make_model: ``num_heads -> flax module`` whose params are
      ``{'encoder', 'heads'}`` and whose ``apply(variables, x, task=i)`` gives
      head i's output (``task=None``: all heads, stacked on axis 0).
    loss: ``(outputs of one task (B, ...), targets of that task (B, ...)) ->
      scalar``, jittable.
    metric: ``(predictions (N, ...), targets (N, ...), task) -> float`` on the
      host, the per-task number reported.
    metric_name: e.g. 'accuracy'.
    higher_is_better: the metric's direction.
    train_inputs: (N, ...) training inputs.
    train_targets: (N, K, ...) training targets.
    test_inputs: (M, ...) test inputs.
    test_targets: (M, K, ...) test targets.
    batch_size: minibatch size.
    learning_rate: Adam's initial learning rate (cosine-decayed to 0).
  """

  name: str
  task_names: Sequence[str]
  make_model: Callable[[int], Any]
  loss: Callable[[jax.Array, jax.Array], jax.Array]
  metric: Callable[[np.ndarray, np.ndarray, int], float]
  metric_name: str
  higher_is_better: bool
  train_inputs: np.ndarray
  train_targets: np.ndarray
  test_inputs: np.ndarray
  test_targets: np.ndarray
  batch_size: int
  learning_rate: float

  @property
  def num_tasks(self) -> int:
    return len(self.task_names)


@dataclasses.dataclass
class RunResult:
  """What one method gives over the seeds.

  Attributes:
    metrics: (seeds, K) test metric per task.
    curves: (seeds, steps // chunk, K) mean training loss per task over each
      chunk of steps.
    step_seconds: median wall time of one training step, measured after
      training in rounds that interleave the methods (see
      :func:`run_benchmark`).
  """

  metrics: np.ndarray
  curves: np.ndarray
  step_seconds: float


def _key(seed: int):
  # rbg keys compile much faster than threefry on CPU; streams are as good
  # for sampling minibatches and initial weights.
  return jax.random.key(seed, impl="rbg")


def _progress(total: int, enabled: bool | None):
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  disable = None if enabled is None else not enabled  # None: auto (tty)
  return tqdm(total=total, unit="step", disable=disable, file=sys.stderr,
              dynamic_ncols=True)


class _Runner:
  """Jitted init / train-step / predict functions of one problem."""

  def __init__(self, problem: Problem, steps: int):
    self.problem = problem
    k = problem.num_tasks
    self.model = problem.make_model(k)
    self.single = problem.make_model(1)
    self.tasks = jnp.arange(k)
    example = jnp.asarray(problem.train_inputs[:1])
    self.init = jax.jit(lambda key: self.model.init(key, example)["params"])
    single_init = jax.jit(lambda key: self.single.init(key, example)["params"])
    # K single-task models, stacked on a leading axis (a loop: compiling the
    # vmapped init costs more than K calls).
    self.init_single = lambda keys: jax.tree.map(
        lambda *xs: jnp.stack(xs), *[single_init(key) for key in keys])
    self.adam = optax.adam(
        optax.cosine_decay_schedule(problem.learning_rate, steps))
    self._predict = jax.jit(
        lambda params, x: self.model.apply({"params": params}, x))
    self._predict_single = jax.jit(jax.vmap(
        lambda params, x: self.single.apply({"params": params}, x, task=0),
        in_axes=(0, None)))
    self.train_x = jnp.asarray(problem.train_inputs)
    self.train_y = jnp.asarray(problem.train_targets)

  def _batch(self, key, x, y):
    index = jax.random.randint(key, (self.problem.batch_size,), 0, x.shape[0])
    return x[index], y[index]

  def task_loss(self, params, x, y, task):
    out = self.model.apply({"params": params}, x, task=task)
    return self.problem.loss(out, y[:, task])

  def mtl_step(self, opt):
    """The jitted training step of ``opt`` (one compilation per method)."""
    per_task = jax.vmap(jax.value_and_grad(self.task_loss),
                        in_axes=(None, None, None, 0))

    @jax.jit
    def step(params, state, key, x_all, y_all):
      key, sub = jax.random.split(key)
      x, y = self._batch(sub, x_all, y_all)
      losses, grads = per_task(params, x, y, self.tasks)
      updates, state = opt.update(grads, state, params, losses=losses)
      params = optax.apply_updates(params, updates)
      return params, state, key, losses

    return step

  def stl_step(self):
    """K single-task models, one step each, vmapped over the tasks."""

    def single_loss(params, x, y, task):
      out = self.single.apply({"params": params}, x, task=0)
      return self.problem.loss(out, y[:, task])

    per_model = jax.vmap(jax.value_and_grad(single_loss),
                         in_axes=(0, None, None, 0))

    @jax.jit
    def step(params, state, key, x_all, y_all):
      key, sub = jax.random.split(key)
      x, y = self._batch(sub, x_all, y_all)
      losses, grads = per_model(params, x, y, self.tasks)
      updates, state = jax.vmap(self.adam.update)(grads, state, params)
      params = optax.apply_updates(params, updates)
      return params, state, key, losses

    return step

  def evaluate(self, params, stl: bool) -> np.ndarray:
    x = jnp.asarray(self.problem.test_inputs)
    predictions = np.asarray((self._predict_single if stl
                              else self._predict)(params, x))
    targets = self.problem.test_targets
    return np.array([self.problem.metric(predictions[k], targets[:, k], k)
                     for k in range(self.problem.num_tasks)])


def run_benchmark(
    problem: Problem,
    methods: Sequence[_methods.Method],
    *,
    seeds: Sequence[int],
    steps: int,
    chunk: int,
    timing_rounds: int = 3,
    timing_steps: int = 20,
    progress: bool | None = None,
) -> dict[str, RunResult]:
  """Trains every method for every seed; returns results by method name.

  Step times are measured after training, not during it: the machine's load
  changes over a run, so ``timing_rounds`` rounds each time ``timing_steps``
  steps of every method in turn (from its trained state, compiled already)
  and the median over rounds is reported.

  Args:
    problem: the problem.
    methods: the methods.
    seeds: the seeds; seed s fixes the initial weights and minibatch order,
      the same for every method.
    steps: training steps per run, a multiple of ``chunk``.
    chunk: steps between progress updates and loss-curve points.
    timing_rounds: rounds of the interleaved timing.
    timing_steps: steps per method and round of the timing.
    progress: show a tqdm bar (None: only on a terminal).
  """
  if steps % chunk:
    raise ValueError(f"steps ({steps}) must be a multiple of chunk ({chunk}).")
  runner = _Runner(problem, steps)
  k = problem.num_tasks
  mask = None
  results, last = {}, {}
  bar = _progress(
      len(methods) * (len(seeds) * steps + timing_rounds * timing_steps),
      progress)

  def train(run, params, state, key, num):
    losses = []
    for _ in range(num):
      params, state, key, loss = run(params, state, key, runner.train_x,
                                     runner.train_y)
      losses.append(loss)
    return params, state, key, np.asarray(jnp.stack(losses))  # waits

  for method in methods:
    run = None
    scores, curves = [], []
    for seed in seeds:
      bar.set_description(f"{problem.name}: {method.name}, seed {seed}")
      init_key, data_key = jax.random.split(_key(seed))
      if method.single_task:
        params = runner.init_single(jax.random.split(init_key, k))
        state = jax.vmap(runner.adam.init)(params)
        run = run or runner.stl_step()
      else:
        params = runner.init(init_key)
        if mask is None:
          mask = models.shared_mask(params)
        opt = optax.chain(method.build(k, mask, seed), runner.adam)
        state = opt.init(params)
        if run is None:
          # One compiled function per method: the seeds share it (the
          # aggregators keep their seeds in their state).
          run = runner.mtl_step(opt)
      curve = []
      for _ in range(steps // chunk):
        params, state, data_key, losses = train(run, params, state, data_key,
                                                chunk)
        curve.append(losses.mean(axis=0))
        bar.update(chunk)
      scores.append(runner.evaluate(params, stl=method.single_task))
      curves.append(np.stack(curve))
    results[method.name] = (np.stack(scores), np.stack(curves))
    last[method.name] = (run, params, state, data_key)

  times = {name: [] for name in last}
  for _ in range(timing_rounds):
    for name, (run, params, state, key) in last.items():
      bar.set_description(f"{problem.name}: timing {name}")
      start = time.perf_counter()
      params, state, key, _ = train(run, params, state, key, timing_steps)
      times[name].append((time.perf_counter() - start) / timing_steps)
      last[name] = (run, params, state, key)
      bar.update(timing_steps)
  bar.close()
  return {name: RunResult(metrics=scores, curves=curves,
                          step_seconds=float(np.median(times[name])))
          for name, (scores, curves) in results.items()}
