"""Synthetic many-task regression with loss scales over four decades.

    python -m benchmarks.synthetic [--quick] [--out results/synthetic]

GradNorm's problem (:func:`fairgrad_jax.datasets.make_synthetic_regression`):
K tasks T_i(x) = σ_i tanh((B + ε_i) x) with σ_i spread geometrically over two
decades (1 to 100), so the task losses differ by four orders of magnitude, for
K = 10 and K = 40; GradNorm's network (:class:`fairgrad_jax.models.MultiTaskMLP`,
a 4-layer ReLU trunk of width 100 and a linear head per task), squared error
per task. To fit the 2-core CPU budget the inputs have 100 dimensions (GradNorm:
250), the outputs 20 (GradNorm: 100), and K = 40 trains for fewer steps than
K = 10: the Gram-based methods materialise K per-task gradients per step. The reported per-task metric is the test MSE divided by σ_i²
(scale-free, lower is better); Δm% compares it with single-task training
(STL: one network per task, same budget). Every method trains for the same
number of Adam steps on the same minibatches from the same initial weights
(per seed). Writes ``table.md``, ``table.csv`` and ``synthetic.png``
(per-task error relative to STL against σ_i) to ``--out``.
"""

import argparse
import os
import textwrap

import numpy as np

from benchmarks import _cli
from benchmarks import _methods
from benchmarks import _report
from benchmarks import _training
from fairgrad_jax import datasets
from fairgrad_jax import models

TASK_COUNTS = (10, 40)
STEPS = {10: 800, 40: 250}
QUICK_STEPS = 20
CHUNK = 50
TIMING_ROUNDS = 3
TIMING_STEPS = 20
QUICK_CHUNK = 10
BATCH_SIZE = 32
LEARNING_RATE = 1e-3
INPUT_DIM = 100
OUTPUT_DIM = 20
HIDDEN = 100


def make_problem(num_tasks: int, num_train: int = 2_000,
                 num_test: int = 1_000) -> _training.Problem:
  data = datasets.make_synthetic_regression(
      num_tasks, input_dim=INPUT_DIM, output_dim=OUTPUT_DIM,
      num_train=num_train, num_val=200, num_test=num_test)
  sigmas = data.sigmas

  def loss(predictions, targets):
    return ((predictions - targets) ** 2).mean()

  def normalized_mse(predictions, targets, task):
    return float(np.mean((predictions - targets) ** 2) / sigmas[task] ** 2)

  return _training.Problem(
      name=f"Synthetic K={num_tasks}",
      task_names=tuple(f"σ={s:.3g}" for s in sigmas),
      make_model=lambda heads: models.MultiTaskMLP(
          num_tasks=heads, output_dim=OUTPUT_DIM, hidden=HIDDEN),
      loss=loss,
      metric=normalized_mse,
      metric_name="nMSE",
      higher_is_better=False,
      train_inputs=data.train.inputs,
      train_targets=data.train.targets,
      test_inputs=data.test.inputs,
      test_targets=data.test.targets,
      batch_size=BATCH_SIZE,
      learning_rate=LEARNING_RATE,
  ), sigmas


def plot(path, panels, quick=False):
  """One panel per K: per-task nMSE relative to STL against σ_i."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.6),
                           squeeze=False)
  for ax, (problem, sigmas, summaries) in zip(axes[0], panels):
    names = [s.name for s in summaries]
    colors = plt.get_cmap("tab10")(np.linspace(0, 1, len(names)))
    stl = next(s for s in summaries if s.name == _methods.STL)
    for color, s in zip(colors, summaries):
      if s.name == _methods.STL:
        continue
      ratio = s.metric_mean / stl.metric_mean
      style = "-" if s.name.startswith("FairGrad") else "--"
      ax.plot(sigmas, ratio, style, marker="o", ms=3, color=color,
              label=f"{s.name} (Δm {s.delta_m_mean:+.0f}%)")
    ax.axhline(1.0, color="black", lw=1, label="STL")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(r"task scale $\sigma_i$ (its loss scales as $\sigma_i^2$)")
    ax.set_ylabel("test nMSE / STL's test nMSE (mean over seeds)")
    ax.set_title(f"{problem.name}: per-task error relative to STL")
    ax.legend(fontsize=7)
    _report.plain_log_ticks(ax.xaxis)
    _report.plain_log_ticks(ax.yaxis)
  title = ("GradNorm's synthetic regression: each task's test error over"
           " single-task training's (below 1: better than STL)"
           + (", --quick smoke run: not meaningful" if quick else ""))
  fig.suptitle(textwrap.fill(title, 60 * len(panels)), fontsize=11)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


EXPLANATION = (
    "Δm%: mean relative nMSE increase against STL over the K tasks (lower is"
    " better), per seed, mean ± std. MR: mean rank over the multi-task"
    " methods (dense ties). Worst task: the largest per-task increase against"
    " STL. Step time: median wall time of one jitted training step relative"
    " to LS (STL: the K single-task models together).")


def task_counts_arg(text: str) -> list[int]:
  """argparse type of --tasks: comma-separated task counts, each >= 2."""
  try:
    counts = [int(k) for k in text.split(",")]
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"expected comma-separated integers, got {text!r}") from None
  if any(k < 2 for k in counts):
    raise argparse.ArgumentTypeError(
        f"every task count must be 2 or more, got {text!r}")
  return counts


def main(argv=None):
  parser = _cli.argument_parser(__doc__, os.path.join("results", "synthetic"))
  parser.add_argument("--tasks", type=task_counts_arg, default=None,
                      help="comma-separated task counts K, one table and"
                      " panel each; 10,40 by default, 10 with --quick.")
  args = _cli.parse_args(parser, argv)
  methods = _cli.chosen_methods(parser, args)
  quick = args.quick
  if quick:
    print(_cli.QUICK_NOTICE)
  chunk = QUICK_CHUNK if quick else CHUNK
  seeds = list(range(args.seeds or (2 if quick else 3)))
  task_counts = args.tasks or ([10] if quick else list(TASK_COUNTS))

  sections, csv_rows, panels = [], [], []
  for k in task_counts:
    steps = args.steps or (QUICK_STEPS if quick else STEPS.get(k, 500))
    steps = max(chunk, steps - steps % chunk)
    problem, sigmas = (make_problem(k, num_train=500, num_test=200) if quick
                       else make_problem(k))
    results = _training.run_benchmark(
        problem, methods, seeds=seeds, steps=steps, chunk=chunk,
        timing_rounds=2 if quick else TIMING_ROUNDS,
        timing_steps=QUICK_CHUNK if quick else TIMING_STEPS,
        progress=_cli.progress_flag(args))
    summaries = _report.summarize(problem, results)
    table = _report.markdown_table(problem, summaries,
                                   per_task_columns=k <= 10, digits=3)
    setup = (f"K = {k} tasks, σ_i from {sigmas[0]:g} to {sigmas[-1]:g};"
             f" test MSE / σ_i² per task, mean ± std over {len(seeds)} seeds;"
             f" {steps} Adam steps (lr {problem.learning_rate:g},"
             f" cosine-decayed to 0; batch {problem.batch_size}) per run.")
    sections.append(f"## {problem.name}\n\n{setup} Task i of the CSV is"
                    f" σ_i; tasks are sorted by σ.\n\n{table}\n")
    labels = [f"task{i + 1}" for i in range(max(task_counts))]
    header, rows = _report.csv_rows(
        problem, summaries, prefix={"K": k},
        num_task_columns=max(task_counts), task_labels=labels)
    csv_rows.extend(rows)
    panels.append((problem, sigmas, summaries))
    # The console gets the summary columns only (fits 120 columns); the
    # per-task nMSE are in table.md and table.csv.
    print(f"\n{problem.name}")
    _cli.print_wrapped(setup)
    print(_report.markdown_table(problem, summaries,
                                 per_task_columns=False, digits=3))

  _cli.print_wrapped(
      f"{EXPLANATION} Per-task nMSE (test MSE / σ_i², lower is better): in"
      f" {args.out}/table.md and table.csv.")
  if quick:
    print(_cli.QUICK_NOTICE)
  with open(os.path.join(args.out, "table.md"), "w") as f:
    f.write("# Synthetic regression (GradNorm)\n\n"
            + (f"**{_cli.QUICK_NOTICE}**\n\n" if quick else "")
            + "\n".join(sections)
            + f"\n{EXPLANATION}\n")
  _report.write_csv(os.path.join(args.out, "table.csv"), header, csv_rows)
  plot(os.path.join(args.out, "synthetic.png"), panels, quick)
  print(f"\nwrote {args.out}/table.md, table.csv, synthetic.png")
  return panels


if __name__ == "__main__":
  main()
