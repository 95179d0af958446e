"""Our run beside the paper's printed rows, in the paper's table format.

The printed rows (Tables 1, 2, 3 and 8 of Ban & Ji 2024) are data in
``tests/data/paper_tables.json``, the file the metric tests check against.
Δm% of our run is computed against the STL baseline of the authors' code
(:attr:`Protocol.stl`) or against a given STL run (``--stl``); our Mean Rank
ranks our row among the paper's methods on the per-task metrics (dense
ties, as the paper), where the paper prints them. The paper's own MR column
is printed as is (it ranks the paper's methods among themselves).
"""

import json
import math
import os
from typing import Sequence

import numpy as np

from benchmarks.paper import protocols
from fairgrad_jax import metrics

PAPER_TABLES = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir,
                            "tests", "data", "paper_tables.json")


def paper_table(benchmark: str) -> dict:
  with open(PAPER_TABLES) as f:
    return json.load(f)[benchmark]


def load_stl(path: str, protocol: protocols.Protocol) -> list[float]:
  """STL metrics from a JSON file: a list of numbers, or a results.json
  (``{"metrics": [...]}``) of this command, e.g. merged from STL runs."""
  with open(path) as f:
    data = json.load(f)
  values = data["metrics"] if isinstance(data, dict) else data
  if (not isinstance(values, list) or len(values) != len(protocol.metric_names)
      or not all(isinstance(v, (int, float)) and v != 0 for v in values)):
    raise ValueError(
        f"{path}: expected {len(protocol.metric_names)} non-zero numbers (the"
        f" metrics {list(protocol.metric_names[:3])}...), as a JSON list or"
        " under the key 'metrics'.")
  return [float(v) for v in values]


def _fmt(value) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "—"
  value = float(value)
  return f"{value:.4f}" if abs(value) < 1 else f"{value:.2f}"


def _row(cells: Sequence[str]) -> str:
  return "| " + " | ".join(cells) + " |"


def summarize(protocol: protocols.Protocol, result: dict,
              stl: Sequence[float] | None = None) -> dict:
  """Δm% and Mean Rank of our run (None where they cannot be computed)."""
  ours = result["metrics"]
  baseline = stl if stl is not None else protocol.stl
  delta = None
  if baseline is not None and ours is not None:
    delta = float(metrics.delta_m(ours, baseline, protocol.higher_is_better))
  rank = None
  table = paper_table(protocol.name)
  rows = [r["metrics"] for r in table["rows"].values()]
  if ours is not None and rows and all(r is not None for r in rows):
    values = np.asarray(rows + [ours], np.float64)
    if np.all(np.isfinite(values)):
      rank = float(metrics.mean_rank(values, protocol.higher_is_better)[-1])
  return {"delta_m": delta, "mean_rank": rank,
          "baseline": ("--stl" if stl is not None else
                       "authors' code" if protocol.stl is not None else None)}


def markdown(protocol: protocols.Protocol, result: dict,
             stl: Sequence[float] | None = None) -> str:
  """The paper's table for the benchmark with our row at the bottom."""
  table = paper_table(protocol.name)
  summary = summarize(protocol, result, stl)
  label = result["method"]
  if result.get("alpha") is not None:
    label += f" α={result['alpha']:g}"
  if result.get("main_task") is not None:
    label += f" (task {result['main_task']})"
  label = f"**ours: {label}, seed {result['seed']}**"
  ours = result["metrics"]
  lines = [f"{protocol.title} ({table['table']} of the paper; ours after"
           f" {result['epochs']} epochs, reported epochs"
           f" {_epochs(result['reported_epochs'])})", ""]
  if protocol.name == "celeba":
    # The paper prints only MR and Δm% for CelebA's 40 tasks.
    lines += [_row(["Method", "mean F1 ↑", "MR ↓", "Δm% ↓"]),
              "|---|---:|---:|---:|"]
    for name, row in table["rows"].items():
      lines.append(_row([name, "—", _fmt(row["mean_rank"]),
                         _fmt(row["delta_m"])]))
    lines.append(_row([label, _fmt(float(np.mean(ours))), "—",
                       _fmt(summary["delta_m"]) if summary["delta_m"]
                       is not None else "— (needs --stl)"]))
    lines += ["", _row(["Attribute", "F1 (ours)"] +
                       (["F1 (STL)"] if stl is not None else [])),
              "|---|---:|" + ("---:|" if stl is not None else "")]
    for i, name in enumerate(protocol.metric_names):
      cells = [name, f"{ours[i]:.4f}"]
      if stl is not None:
        cells.append(f"{stl[i]:.4f}")
      lines.append(_row(cells))
    return "\n".join(lines)

  arrows = ["↑" if h else "↓" for h in protocol.higher_is_better]
  lines += [_row(["Method"] + [f"{n} {a}" for n, a in
                               zip(protocol.metric_names, arrows)]
                 + ["MR ↓", "Δm% ↓"]),
            "|---|" + "---:|" * (len(arrows) + 2)]
  baseline = stl if stl is not None else protocol.stl
  lines.append(_row(["STL" + (" (--stl)" if stl is not None else
                              " (authors' code)")]
                    + [_fmt(v) for v in baseline] + ["", ""]))
  for name, row in table["rows"].items():
    lines.append(_row([name] + [_fmt(v) for v in row["metrics"]]
                      + [_fmt(row["mean_rank"]), _fmt(row["delta_m"])]))
  lines.append(_row([label] + [_fmt(v) for v in ours]
                    + [_fmt(summary["mean_rank"]), _fmt(summary["delta_m"])]))
  lines += ["", "Paper rows as printed (mean of 3 seeds); our MR ranks our row"
            " among them; our Δm% is against the STL row above."]
  return "\n".join(lines)


def _epochs(epochs) -> str:
  if not epochs:
    return "—"
  if len(epochs) > 2 and epochs == list(range(epochs[0], epochs[-1] + 1)):
    return f"{epochs[0]}–{epochs[-1]} (mean)"
  return ", ".join(str(e) for e in epochs)
