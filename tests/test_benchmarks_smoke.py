"""Smoke tests: the --quick benchmarks run end to end and write their outputs."""

import csv
import os
import pathlib
import sys

import pytest

_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # `benchmarks` lives next to the package
  sys.path.insert(0, _ROOT)

from benchmarks import multidigits  # pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import synthetic  # pylint: disable=g-import-not-at-top,wrong-import-position

QUICK_NAMES = ["STL", "LS", "FairGrad α=2"]


def _read_csv(path):
  with open(path, newline="") as f:
    return list(csv.DictReader(f))


def _check_png(path):
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert os.path.getsize(path) > 10_000


@pytest.mark.slow
def test_multidigits_quick(tmp_path):
  summaries = multidigits.main(
      ["--quick", "--out", str(tmp_path), "--progress", "off"])
  assert [s.name for s in summaries] == QUICK_NAMES
  stl = summaries[0]
  # STL's seeds against their own mean: 0 on average.
  assert stl.delta_m_mean == pytest.approx(0.0, abs=1e-9)
  assert stl.delta_m_std >= 0.0
  for s in summaries:
    assert s.metric_mean.shape == (2,)
    assert ((s.metric_mean >= 0) & (s.metric_mean <= 100)).all()
    assert s.step_seconds > 0
  assert summaries[1].relative_time == pytest.approx(1.0)  # LS is the unit
  rows = _read_csv(tmp_path / "table.csv")
  assert [r["method"] for r in rows] == QUICK_NAMES
  assert set(rows[0]) >= {"top-left accuracy mean", "delta_m_percent mean",
                          "mean_rank", "step_time_vs_LS"}
  table = (tmp_path / "table.md").read_text()
  assert "| FairGrad α=2 |" in table and "Δm% ↓" in table
  _check_png(tmp_path / "multidigits.png")


@pytest.mark.slow
def test_synthetic_quick(tmp_path):
  panels = synthetic.main(
      ["--quick", "--out", str(tmp_path), "--progress", "off"])
  (problem, sigmas, summaries), = panels  # --quick: K = 10 only
  assert problem.num_tasks == 10 and len(sigmas) == 10
  assert [s.name for s in summaries] == QUICK_NAMES
  for s in summaries:
    assert s.metric_mean.shape == (10,) and (s.metric_mean > 0).all()
  rows = _read_csv(tmp_path / "table.csv")
  assert [r["K"] for r in rows] == ["10"] * 3
  assert "task10 nMSE mean" in rows[0]
  assert "## Synthetic K=10" in (tmp_path / "table.md").read_text()
  _check_png(tmp_path / "synthetic.png")


def test_unknown_method_is_rejected(tmp_path):
  with pytest.raises(SystemExit, match="unknown method"):
    multidigits.main(["--quick", "--methods", "LS,Magic", "--out",
                      str(tmp_path)])


def test_solver_speed_table(monkeypatch):
  """The solver benchmark's table on one small cell: parseable numbers."""
  from benchmarks import solver_speed  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(solver_speed, "KS", (3,))
  monkeypatch.setattr(solver_speed, "ALPHAS", (2.0,))
  table = solver_speed.solver_table(repeats=2, calls=2)
  header, _, row = table.splitlines()
  cells = [c.strip() for c in row.strip("|").split("|")]
  assert len(cells) == len(header.strip("|").split("|")) == 12
  assert cells[:2] == ["3", "2"]
  assert float(cells[2]) > 0 and float(cells[3]) > 0  # scipy and jax ms
  jax_median = float(cells[11].split("/")[0])
  assert jax_median < 1e-6  # float32 round-off, after the Newton step


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_memory_and_time_problems(model):
  """The benchmark's models: per-task heads give the all-heads update, and
  every step of the table compiles and returns params-shaped updates."""
  import argparse  # pylint: disable=g-import-not-at-top
  import functools  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import fairgrad_jax  # pylint: disable=g-import-not-at-top
  from benchmarks import memory_and_time as mt  # pylint: disable=g-import-not-at-top
  args = argparse.Namespace(d_in=6, hidden=8, batch=4, image_size=8)
  k = 3
  problem = (mt.mlp_problem if model == "mlp" else mt.cnn_problem)(k, args)
  weights_fn = functools.partial(fairgrad_jax.fairgrad_weights, alpha=2.0)
  with jax.default_matmul_precision("highest"):
    every = fairgrad_jax.representation_grad(
        problem.encoder, problem.heads, weights_fn)(
            problem.params, problem.x, problem.y)
    own = fairgrad_jax.representation_grad(
        problem.encoder, problem.task_head, weights_fn, num_tasks=k)(
            problem.params, problem.x, problem.y)
  np.testing.assert_allclose(own.weights, every.weights, rtol=1e-4)
  # Batch-norm gradients cancel to round-off: tolerance relative to the leaf.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, b, rtol=1e-4, atol=1e-5 * float(np.max(np.abs(b)))),
               own.update, every.update)
  if model == "mlp":  # the CNN's Gram-only steps are slow on CPU (see there)
    for name, (step, carry) in mt.make_steps(problem, k, 2.0).items():
      out, _ = jax.jit(step)(problem.params, problem.x, problem.y, carry)
      if name != "FairGrad solve alone (K×K)":
        assert (jax.tree.structure(out)
                == jax.tree.structure(problem.params)), name
        assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(out))
