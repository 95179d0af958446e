"""The numbers and tables the training benchmarks report.

:func:`summarize` turns :func:`benchmarks._training.run_benchmark`'s results
into Δm% against single-task training, Mean Rank, the worst task and step
times relative to LS; :func:`markdown_table` and :func:`csv_rows` format them,
:func:`plain_log_ticks` labels the figures' log axes.
"""

import csv
import dataclasses
import math
from typing import Sequence

import numpy as np

from benchmarks import _training
from benchmarks._methods import STL
from fairgrad_jax import metrics


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


def summarize(problem: _training.Problem,
              results: dict[str, _training.RunResult]) -> list[Summary]:
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


def markdown_table(problem: _training.Problem, summaries: list[Summary],
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


def csv_rows(problem: _training.Problem, summaries: list[Summary],
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
  with open(path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(header)
    writer.writerows(rows)


def plain_log_ticks(axis) -> None:
  """Tick labels of a log-scale matplotlib axis as plain numbers (0.1, 2,
  50), not 10⁻¹ or 2×10⁰. Call it once the data are plotted: an axis that
  spans less than a decade gets evenly spaced ticks (a log axis shows none
  there), a wider one labels its decades, and 2 and 5 in between while it
  spans at most two decades."""
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top

  ax = axis.axes
  lo, hi = sorted(ax.get_xlim() if axis is ax.xaxis else ax.get_ylim())
  if hi / lo < 10:
    axis.set_major_locator(ticker.MaxNLocator(nbins=6))
    axis.set_minor_locator(ticker.NullLocator())
    evenly = ticker.ScalarFormatter(useOffset=False)  # enough digits
    evenly.set_scientific(False)
    axis.set_major_formatter(evenly)
  else:
    plain = ticker.FuncFormatter(lambda v, _: f"{v:.4g}")
    axis.set_major_formatter(plain)
    axis.set_major_locator(ticker.LogLocator(base=10))
    axis.set_minor_locator(ticker.LogLocator(base=10, subs=(2.0, 5.0)))
    axis.set_minor_formatter(plain if hi / lo <= 100
                             else ticker.NullFormatter())
