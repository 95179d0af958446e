"""MultiDigits benchmark: two overlaid digits, two classification tasks.

    python -m benchmarks.multidigits [--quick] [--out results/multidigits]

Sener & Koltun's MultiMNIST construction on scikit-learn's 8×8 digits
(:func:`fairgrad_jax.datasets.load_multidigits`: 10,000 training and 2,000
test canvases of 11×11, fixed split), the MultiLeNet of
:class:`fairgrad_jax.models.MultiLeNet`, cross-entropy per task, test
accuracy per task. Every method trains for the same number of Adam steps on
the same minibatches from the same initial weights (per seed); STL trains one
single-head network per task. Writes ``table.md``, ``table.csv`` and
``multidigits.png`` (per-task accuracy bars and training-loss curves) to
``--out``.
"""

import os

import numpy as np
import optax

from benchmarks import _cli
from benchmarks import _report
from benchmarks import _training
from fairgrad_jax import datasets
from fairgrad_jax import models

STEPS = 1000
QUICK_STEPS = 40
CHUNK = 50
TIMING_ROUNDS = 5
TIMING_STEPS = 20
QUICK_CHUNK = 20
BATCH_SIZE = 128
LEARNING_RATE = 1e-3


def make_problem(num_train: int = 10_000, num_test: int = 2_000
                 ) -> _training.Problem:
  data = datasets.load_multidigits(num_train=num_train, num_val=1_000,
                                   num_test=num_test)

  def loss(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, labels).mean()

  def accuracy(logits, labels, task):
    del task
    return float(np.mean(np.argmax(logits, axis=-1) == labels) * 100.0)

  return _training.Problem(
      name="MultiDigits",
      task_names=datasets.MULTIDIGITS_TASKS,
      make_model=lambda heads: models.MultiLeNet(num_tasks=heads),
      loss=loss,
      metric=accuracy,
      metric_name="accuracy",
      higher_is_better=True,
      train_inputs=data.train.images,
      train_targets=data.train.labels,
      test_inputs=data.test.images,
      test_targets=data.test.labels,
      batch_size=BATCH_SIZE,
      learning_rate=LEARNING_RATE,
  )


def plot(path, problem, results, summaries, steps_per_point, quick=False):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  names = [s.name for s in summaries]
  fig, (bars, curves) = plt.subplots(1, 2, figsize=(13, 5.0))
  width = 0.8 / len(names)
  colors = plt.get_cmap("tab20")(np.linspace(0, 1, len(names)))
  x = np.arange(problem.num_tasks)
  for i, s in enumerate(summaries):
    bars.bar(x + (i - (len(names) - 1) / 2) * width, s.metric_mean, width,
             yerr=s.metric_std, capsize=2, color=colors[i], label=s.name)
  lo = min(s.metric_mean.min() - s.metric_std.max() for s in summaries)
  hi = max(s.metric_mean.max() + s.metric_std.max() for s in summaries)
  bars.set_ylim(lo - 1.0, hi + 0.5)
  bars.set_xticks(x, [f"task: {t} digit" for t in problem.task_names])
  bars.set_ylabel("test accuracy (%), mean ± std over seeds")
  bars.set_title("Per-task test accuracy")
  # Below the axes: the bars fill the panel's height.
  bars.legend(fontsize=7, ncol=5, loc="upper center",
              bbox_to_anchor=(0.5, -0.1), frameon=False)
  for i, name in enumerate(names):
    total = results[name].curves.sum(axis=2).mean(axis=0)  # sum over tasks
    steps = (np.arange(len(total)) + 1) * steps_per_point
    curves.plot(steps, total, color=colors[i], label=name)
  curves.set_yscale("log")
  curves.set_xlabel("training step")
  curves.set_ylabel("training loss, sum over tasks (mean over seeds)")
  curves.set_title("Training loss (STL: sum of the single-task models)")
  curves.legend(fontsize=7, ncol=2)
  _report.plain_log_ticks(curves.yaxis)
  fig.suptitle(f"{problem.name} (two overlaid 8×8 digits, a LeNet with two"
               f" heads): {len(results[names[0]].metrics)} seeds,"
               f" {int(steps[-1])} Adam steps each"
               + (" (--quick smoke run: not meaningful)" if quick else ""))
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


EXPLANATION = (
    "Δm%: mean relative accuracy drop against STL (lower is better), per"
    " seed, mean ± std. MR: mean rank over the multi-task methods (dense"
    " ties). Worst task: the largest per-task drop against STL. Step time:"
    " median wall time of one jitted training step relative to LS (STL: the"
    " two single-task models together).")


def main(argv=None):
  parser = _cli.argument_parser(__doc__,
                                os.path.join("results", "multidigits"))
  args = _cli.parse_args(parser, argv)
  methods = _cli.chosen_methods(parser, args)
  quick = args.quick
  if quick:
    print(_cli.QUICK_NOTICE)
  steps = args.steps or (QUICK_STEPS if quick else STEPS)
  chunk = QUICK_CHUNK if quick else CHUNK
  steps = max(chunk, steps - steps % chunk)
  seeds = list(range(args.seeds or (2 if quick else 3)))

  problem = (make_problem(num_train=2_000, num_test=500) if quick
             else make_problem())
  results = _training.run_benchmark(
      problem, methods, seeds=seeds, steps=steps, chunk=chunk,
      timing_rounds=2 if quick else TIMING_ROUNDS,
      timing_steps=QUICK_CHUNK if quick else TIMING_STEPS,
      progress=_cli.progress_flag(args))
  summaries = _report.summarize(problem, results)

  table = _report.markdown_table(problem, summaries, per_task_columns=True,
                                 digits=2)
  setup = (f"MultiDigits (2 tasks), test accuracy (%) per task, mean ± std"
           f" over {len(seeds)} seeds; {steps} Adam steps (lr"
           f" {problem.learning_rate:g}, cosine-decayed to 0; batch"
           f" {problem.batch_size}) per run;"
           f" {len(problem.train_inputs)} training / {len(problem.test_inputs)}"
           " test canvases.")
  with open(os.path.join(args.out, "table.md"), "w") as f:
    f.write(f"# {problem.name}\n\n"
            + (f"**{_cli.QUICK_NOTICE}**\n\n" if quick else "")
            + f"{setup}\n\n{table}\n"
            + f"\n{EXPLANATION}\n")
  header, rows = _report.csv_rows(problem, summaries)
  _report.write_csv(os.path.join(args.out, "table.csv"), header, rows)
  plot(os.path.join(args.out, "multidigits.png"), problem, results, summaries,
       chunk, quick)
  print()
  _cli.print_wrapped(setup)
  print(table)
  _cli.print_wrapped(f"Per-task columns: test accuracy (%), higher is"
                     f" better. {EXPLANATION}")
  if quick:
    print(_cli.QUICK_NOTICE)
  print(f"\nwrote {args.out}/table.md, table.csv, multidigits.png")
  return summaries


if __name__ == "__main__":
  main()
