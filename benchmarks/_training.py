"""The training loop and report shared by the benchmarks.

A benchmark is a :class:`Problem` (a model family, a per-task loss and
metric, the data) and a list of :class:`Method`. :func:`run_benchmark` trains
every method for every seed on the same budget (steps, batch size, Adam's
learning-rate schedule, initial parameters and minibatch order per seed);
:func:`summarize` turns the results into Δm%, Mean Rank and relative step
times, and :func:`markdown_table` / :func:`csv_rows` format them.

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

import argparse
import dataclasses
import inspect
import math
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fairgrad_jax as fj
from fairgrad_jax import metrics
from fairgrad_jax import models

from benchmarks._cli import HelpFormatter
from benchmarks._cli import make_out_dir
from benchmarks._cli import positive_int
from benchmarks._cli import print_wrapped

STL = "STL"


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


@dataclasses.dataclass(frozen=True)
class Method:
  """A method of the comparison.

  Attributes:
    name: the name in the tables.
    factory: name of the ``fairgrad_jax`` factory (None for STL).
    kwargs: its hyperparameters (the factory's defaults otherwise).
      ``num_tasks``, ``shared`` and ``seed`` are added when the factory takes
      them.
  """

  name: str
  factory: str | None
  kwargs: dict = dataclasses.field(default_factory=dict)

  def available(self) -> bool:
    return self.factory is None or hasattr(fj, self.factory)

  def build(self, num_tasks: int, shared, seed: int):
    factory = getattr(fj, self.factory)
    accepted = inspect.signature(factory).parameters
    kwargs = dict(self.kwargs)
    for key, value in (("num_tasks", num_tasks), ("shared", shared),
                       ("seed", seed)):
      if key in accepted:
        kwargs[key] = value
    return factory(**kwargs)


def default_methods(alphas: Sequence[float] = (1.0, 2.0, 5.0)) -> list[Method]:
  """STL, LS, MGDA, PCGrad, CAGrad, Nash-MTL, FAMO and FairGrad per α."""
  return [
      Method(STL, None),
      Method("LS", "linear_scalarization"),
      Method("MGDA", "mgda"),
      Method("PCGrad", "pcgrad"),
      Method("CAGrad", "cagrad", {"c": 0.4}),
      Method("Nash-MTL", "nash_mtl"),
      Method("FAMO", "famo"),
  ] + [Method(f"FairGrad α={a:g}", "fairgrad", {"alpha": float(a)})
       for a in alphas]


def select_methods(methods: Sequence[Method], names: str | None) -> list[Method]:
  """The methods named in a comma-separated list (all when None)."""
  if not names:
    return list(methods)
  wanted = [n.strip() for n in names.split(",") if n.strip()]
  by_key = {m.name.lower().replace(" ", ""): m for m in methods}
  chosen = []
  for name in wanted:
    key = name.lower().replace(" ", "")
    if key not in by_key:
      raise SystemExit(f"unknown method {name!r}; choose from "
                       f"{[m.name for m in methods]}")
    chosen.append(by_key[key])
  return chosen


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
    methods: Sequence[Method],
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
    methods: the methods (unavailable ones must be filtered out first).
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
      if method.factory is None:
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
      scores.append(runner.evaluate(params, stl=method.factory is None))
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


@dataclasses.dataclass
class Summary:
  """The reported numbers of one method (see :func:`summarize`)."""

  name: str
  metric_mean: np.ndarray
  metric_std: np.ndarray
  delta_m_mean: float
  delta_m_std: float
  mean_rank: float
  worst_task: float
  relative_time: float
  step_seconds: float


def summarize(problem: Problem, results: dict[str, RunResult]) -> list[Summary]:
  """Δm% (per seed, against the STL mean), Mean Rank, worst task, time.

  Mean Rank ranks the multi-task methods (not STL), on the seed-averaged
  per-task metrics, dense ties as in the paper. STL's own Δm% (its seeds
  against their mean) is 0 on average; its std is the baseline's seed noise.
  ``worst_task`` is the largest per-task relative drop against STL, in %
  (sign as in Δm%). Step times are relative to LS.
  """
  if STL not in results:
    raise ValueError("Δm% needs the STL baseline among the methods.")
  hib = problem.higher_is_better
  baseline = results[STL].metrics.mean(axis=0)
  names = list(results)
  mtl = [n for n in names if n != STL]
  ranks = dict(zip(mtl, metrics.mean_rank(
      np.stack([results[n].metrics.mean(0) for n in mtl]), hib))) if mtl else {}
  ls_time = results["LS"].step_seconds if "LS" in results else math.nan
  sign = -1.0 if hib else 1.0
  out = []
  for name in names:
    r = results[name]
    mean, std = metrics.mean_std(r.metrics)
    deltas = metrics.delta_m(r.metrics, baseline, hib)
    d_mean, d_std = metrics.mean_std(deltas)
    per_task = sign * (mean - baseline) / baseline * 100.0
    out.append(Summary(
        name=name, metric_mean=mean, metric_std=std,
        delta_m_mean=float(d_mean), delta_m_std=float(d_std),
        mean_rank=float(ranks.get(name, math.nan)),
        worst_task=float(per_task.max()),
        relative_time=r.step_seconds / ls_time,
        step_seconds=r.step_seconds))
  return out


def _fmt(mean, std, digits):
  return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(problem: Problem, summaries: list[Summary],
                   per_task_columns: bool, digits: int) -> str:
  """The Markdown table of :func:`summarize`'s numbers."""
  arrow = "↑" if problem.higher_is_better else "↓"
  head = ["Method"]
  if per_task_columns:
    head += [f"{t} {arrow}" for t in problem.task_names]
  head += ["Δm% ↓", "MR ↓", "worst task Δ% ↓", "step time (× LS)"]
  lines = ["| " + " | ".join(head) + " |",
           "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
  for s in summaries:
    row = [s.name]
    if per_task_columns:
      row += [_fmt(m, d, digits) for m, d in zip(s.metric_mean, s.metric_std)]
    if s.name == STL:
      # STL's own seeds against their mean: the baseline's seed noise.
      row += [_fmt(0.0, s.delta_m_std, 2) + " (baseline)", "", "",
              f"{s.relative_time:.2f}"]
    else:
      row += [_fmt(s.delta_m_mean, s.delta_m_std, 2),
              f"{s.mean_rank:.2f}", f"{s.worst_task:+.1f}",
              f"{s.relative_time:.2f}"]
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines)


def csv_rows(problem: Problem, summaries: list[Summary],
             prefix: dict | None = None, num_task_columns: int | None = None,
             task_labels: Sequence[str] | None = None
             ) -> tuple[list[str], list[list]]:
  """Header and rows of the CSV (per-task means and stds in full).

  ``num_task_columns`` (>= K) pads the per-task columns with blanks so that
  problems with different K share one header; ``task_labels`` names them.
  """
  prefix = prefix or {}
  k = problem.num_tasks
  columns = num_task_columns or k
  labels = list(task_labels or problem.task_names)
  header = list(prefix) + ["method"]
  for label in labels[:columns]:
    header += [f"{label} {problem.metric_name} mean",
               f"{label} {problem.metric_name} std"]
  header += ["delta_m_percent mean", "delta_m_percent std", "mean_rank",
             "worst_task_delta_percent", "step_seconds", "step_time_vs_LS"]
  rows = []
  for s in summaries:
    row = list(prefix.values()) + [s.name]
    for m, d in zip(s.metric_mean, s.metric_std):
      row += [f"{m:.6g}", f"{d:.6g}"]
    row += ["", ""] * (columns - k)
    row += [f"{s.delta_m_mean:.6g}", f"{s.delta_m_std:.6g}",
            "" if math.isnan(s.mean_rank) else f"{s.mean_rank:.4g}",
            f"{s.worst_task:.6g}", f"{s.step_seconds:.6g}",
            f"{s.relative_time:.4g}"]
    rows.append(row)
  return header, rows


def write_csv(path: str, header: list[str], rows: list[list]) -> None:
  import csv  # pylint: disable=g-import-not-at-top
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)


def unavailable_note(missing: Sequence[Method]) -> str:
  if not missing:
    return ""
  names = ", ".join(f"{m.name} (fairgrad_jax.{m.factory})" for m in missing)
  return (f"\nNot run, their factories are not in this build of fairgrad_jax:"
          f" {names}.\n")


def split_available(methods: Sequence[Method]):
  available = [m for m in methods if m.available()]
  missing = [m for m in methods if not m.available()]
  return available, missing


# ----------------------------------------------------------------------------
# Command line


def argument_parser(doc: str, default_out: str):
  """The options every training benchmark takes (``doc``: the module's
  docstring, shown by ``--help``)."""
  p = argparse.ArgumentParser(description=doc, formatter_class=HelpFormatter)
  p.add_argument("--out", default=default_out,
                 help="folder for table.md, table.csv and the figure; created"
                 " (or refused) before any training.")
  p.add_argument("--quick", action="store_true",
                 help="smoke run for CI: a few steps on a small dataset, two"
                 " seeds, and only STL, LS and FairGrad α=2 unless --methods"
                 " is given. Its numbers are not meaningful.")
  p.add_argument("--seeds", type=positive_int, default=None,
                 help="number of seeds (initial weights and minibatch"
                 " order); 3 by default, 2 with --quick.")
  p.add_argument("--steps", type=positive_int, default=None,
                 help="Adam steps per run, rounded down to a multiple of the"
                 " progress chunk; the benchmark's own number by default.")
  p.add_argument("--methods", default=None,
                 help="comma-separated method names, e.g. 'STL,LS,FairGrad"
                 " α=2' (spaces ignored); all by default. STL must be among"
                 " them: Δm%% is measured against it.")
  p.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                 help="tqdm progress bar on stderr (auto: only on a"
                 " terminal).")
  return p


def parse_args(parser, argv):
  """Parses and validates, and creates ``--out``, before any training."""
  args = parser.parse_args(argv)
  make_out_dir(parser, args.out)
  return args


def chosen_methods(parser, args):
  """(available, missing) methods of ``--methods``, STL checked up front."""
  methods = select_methods(  # an unknown name: SystemExit with the choices
      default_methods(),
      args.methods or (QUICK_METHODS if args.quick else None))
  if STL not in [m.name for m in methods]:
    parser.error(f"--methods {args.methods!r} lacks {STL}: Δm% and the"
                 " per-task columns are relative to single-task training, so"
                 f" add {STL} to the list.")
  return split_available(methods)


QUICK_NOTICE = ("smoke run (--quick): few steps on a small dataset; the"
                " numbers are not meaningful.")


def plain_log_ticks(axis) -> None:
  """Tick labels of a log-scale matplotlib axis as plain numbers (0.1, 2,
  50), not 10⁻¹ or 2×10⁰. Call it once the data are plotted: an axis that
  spans less than a decade gets evenly spaced ticks (a log axis shows none
  there), a wider one labels its decades, and 2 and 5 in between while it
  spans at most two decades."""
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top

  ax = axis.axes
  lo, hi = sorted(ax.get_xlim() if axis is ax.xaxis else ax.get_ylim())
  plain = ticker.FuncFormatter(lambda v, _: f"{v:.4g}")
  axis.set_major_formatter(plain)
  if hi / lo < 10:
    axis.set_major_locator(ticker.MaxNLocator(nbins=6))
    axis.set_minor_locator(ticker.NullLocator())
    evenly = ticker.ScalarFormatter(useOffset=False)  # enough digits
    evenly.set_scientific(False)
    axis.set_major_formatter(evenly)
  else:
    axis.set_major_locator(ticker.LogLocator(base=10))
    axis.set_minor_locator(ticker.LogLocator(base=10, subs=(2.0, 5.0)))
    axis.set_minor_formatter(plain if hi / lo <= 100
                             else ticker.NullFormatter())


def progress_flag(args) -> bool | None:
  return {"auto": None, "on": True, "off": False}[args.progress]


QUICK_METHODS = "STL,LS,FairGrad α=2"
