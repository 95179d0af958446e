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
        problem.encoder, problem.task_head, weights_fn, task_heads=k)(
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


# Arguments are validated before any training (issue 12, item 9): a bad
# count, an --out that cannot be written or a method list without STL is
# refused at once with a message, never after the whole run (nor replaced
# by a default, as `args.x or default` did with 0).


@pytest.fixture
def no_training(monkeypatch):
  """Makes any training fail loudly: the checks must come first."""
  from benchmarks import _training  # pylint: disable=g-import-not-at-top

  def refuse(*args, **kwargs):
    raise AssertionError("training started before the arguments were checked")

  monkeypatch.setattr(_training, "run_benchmark", refuse)


def _a_file_in_the_way(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  return str(blocker / "out")  # a folder under a regular file


@pytest.mark.parametrize("script", [multidigits, synthetic])
@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0"], "--seeds: must be a positive count"),
    (["--seeds", "-2"], "--seeds: must be a positive count"),
    (["--steps", "0"], "--steps: must be a positive count"),
    (["--steps", "-5"], "--steps: must be a positive count"),
    (["--methods", "LS,FairGrad α=2"], "lacks STL"),
])
def test_bad_arguments_are_refused_before_training(
    script, argv, message, tmp_path, no_training, capsys):
  with pytest.raises(SystemExit) as exit_info:
    script.main(["--quick", "--out", str(tmp_path), "--progress", "off"]
                + argv)
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err


@pytest.mark.parametrize("script", [multidigits, synthetic])
def test_unwritable_out_is_refused_before_training(
    script, tmp_path, no_training, capsys):
  out = _a_file_in_the_way(tmp_path)
  with pytest.raises(SystemExit):
    script.main(["--quick", "--out", out, "--progress", "off"])
  assert f"--out {out}: cannot create or write" in capsys.readouterr().err


def test_out_is_created_before_training(tmp_path, no_training):
  out = tmp_path / "new" / "folder"
  with pytest.raises(AssertionError, match="training started"):
    multidigits.main(["--quick", "--out", str(out), "--progress", "off"])
  assert out.is_dir()


def test_synthetic_task_counts_are_checked(tmp_path, no_training, capsys):
  with pytest.raises(SystemExit):
    synthetic.main(["--quick", "--tasks", "10,1", "--out", str(tmp_path)])
  assert "every task count must be 2 or more" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps: must be a positive count"),
    (["--lr", "0"], "--lr: must be > 0"),
    (["--stop-tol", "-1"], "--stop-tol: must be > 0"),
])
def test_toy_arguments_are_checked(argv, message, tmp_path, capsys):
  from benchmarks import toy as toy_benchmark  # pylint: disable=g-import-not-at-top
  with pytest.raises(SystemExit):
    toy_benchmark.main(["--out", str(tmp_path)] + argv)
  assert message in capsys.readouterr().err


def test_toy_unwritable_out_is_refused_before_any_run(
    tmp_path, monkeypatch, capsys):
  from benchmarks import toy as toy_benchmark  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(toy_benchmark, "run_methods", lambda *a: 1 / 0)
  out = _a_file_in_the_way(tmp_path)
  with pytest.raises(SystemExit):
    toy_benchmark.main(["--out", out])
  assert f"--out {out}: cannot create or write" in capsys.readouterr().err


def test_memory_and_time_arguments_are_checked(tmp_path, capsys):
  from benchmarks import memory_and_time  # pylint: disable=g-import-not-at-top
  with pytest.raises(SystemExit):
    memory_and_time.main(["--repeats", "0"])
  assert "--repeats: must be a positive count" in capsys.readouterr().err
  out = _a_file_in_the_way(tmp_path)
  with pytest.raises(SystemExit):
    memory_and_time.main(["--out", out])
  assert f"--out {out}: cannot write" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["toy", "multidigits", "synthetic",
                                  "memory_and_time", "compile_time"])
def test_help_explains_every_option_with_its_default(name, capsys):
  import importlib  # pylint: disable=g-import-not-at-top
  module = importlib.import_module(f"benchmarks.{name}")
  with pytest.raises(SystemExit):
    module.main(["--help"])
  text = capsys.readouterr().out
  options = text[text.index("options:"):]
  # One entry per option: "--name ..." then its sentence; every option other
  # than --help has a help sentence, and defaults are shown.
  entries = [e for e in options.split("\n  --")[1:]
             if not e.startswith("help")]
  assert entries
  for entry in entries:
    words = entry.split(None, 1)
    assert len(words) == 2 and len(words[1].split()) >= 3, entry
  assert "(default:" in options


def test_quick_runs_say_they_are_smoke_runs(tmp_path, monkeypatch, capsys):
  """--quick prints the notice before training (stopped here at once)."""
  from benchmarks import _training  # pylint: disable=g-import-not-at-top

  def stop(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(_training, "run_benchmark", stop)
  for script in (multidigits, synthetic):
    with pytest.raises(KeyboardInterrupt):
      script.main(["--quick", "--out", str(tmp_path), "--progress", "off"])
    out = capsys.readouterr().out
    assert "smoke run (--quick)" in out and "not meaningful" in out, out


def _fake_results(monkeypatch):
  """Replaces training by seeded random results of the right shapes, so that
  the report (tables, notes, figure) of a full-size run can be checked in
  seconds."""
  from benchmarks import _training  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  def fake(problem, methods, *, seeds, steps, chunk, **kwargs):
    del kwargs
    rng = np.random.default_rng(0)
    k = problem.num_tasks
    return {m.name: _training.RunResult(
        metrics=rng.uniform(0.2, 0.9, (len(seeds), k)) * 100,
        curves=np.exp(-np.linspace(0, 3, steps // chunk))[None, :, None]
        * rng.uniform(0.5, 2.0, (len(seeds), 1, k)),
        step_seconds=float(rng.uniform(0.01, 0.1))) for m in methods}

  monkeypatch.setattr(_training, "run_benchmark", fake)


@pytest.mark.parametrize("script", [multidigits, synthetic])
def test_full_report_fits_120_columns_and_explains_its_columns(
    script, tmp_path, monkeypatch, capsys):
  _fake_results(monkeypatch)
  script.main(["--out", str(tmp_path), "--progress", "off"])
  out = capsys.readouterr().out
  too_wide = [line for line in out.splitlines() if len(line) > 120]
  assert not too_wide, too_wide
  assert "Δm%: mean relative" in out and "MR: mean rank" in out
  assert "smoke run" not in out  # not a --quick run
  png = next(tmp_path.glob("*.png"))
  _check_png(png)


def test_aggregator_speed_times_every_method():
  """Every aggregator the package exports has a row (issue 14), built at
  each default K (Krum from K = 3, its minimum)."""
  import fairgrad_jax as fj  # pylint: disable=g-import-not-at-top
  from benchmarks import aggregator_speed  # pylint: disable=g-import-not-at-top
  exported = {n for n in fj.__all__ if n + "_weighting" in fj.__all__}
  exported |= {"graddrop", "moco", "excess_mtl", "trimmed_mean"}
  for k in (2, 10, 40):
    rows = {name.split("(")[0] for name in aggregator_speed.methods(k)}
    assert rows == exported - ({"krum"} if k < 3 else set()), (
        k, rows ^ exported)


def test_compile_time_prints_a_row_per_method(capsys):
  from benchmarks import compile_time  # pylint: disable=g-import-not-at-top
  results = compile_time.main(["--leaves", "2", "5", "--tasks", "2"])
  out = capsys.readouterr().out
  assert "| method | 2 leaves | 5 leaves |" in out
  for name in compile_time.METHODS:
    assert f"| {name} | " in out
    assert results[name, 2] > 0 and results[name, 5] > 0
  assert list(compile_time.tree(5, 2)) == [f"l{i:04d}" for i in range(5)]


def test_solver_speed_hard_drift_table():
  """The drifting hard set on K = 2, α = 2 and 10, three steps: one row per
  (kind, decades), each cell the iterations and the largest move, and a
  star exactly where the first root spans more than 36 decades."""
  from benchmarks import solver_speed  # pylint: disable=g-import-not-at-top
  table = solver_speed.hard_drift_table(ks=(2,), alphas=(2.0, 10.0), steps=3)
  header, _, *rows = table.splitlines()
  assert len(header.strip("|").split("|")) == 5
  assert len(rows) == 3 * 2  # kinds x decades
  for row in rows:
    kind, k, dec, *cells = [c.strip() for c in row.strip("|").split("|")]
    assert k == "2" and kind in ("random", "correlated", "conflicting")
    for cell in cells:
      iters, move = cell.rstrip("*").split(" ")
      assert 0 <= int(iters) <= 100 and float(move.strip("()")) >= 0
  # At α = 2 every root of these 2-task problems fits in float32.
  assert not any(r.split("|")[4].strip().endswith("*") for r in rows)
