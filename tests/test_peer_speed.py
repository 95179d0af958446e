"""Smoke test of benchmarks/peer_speed.py: the fairgrad_jax side, tiny."""

import pathlib
import sys

import numpy as np
import pytest

_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # `benchmarks` lives next to the package
  sys.path.insert(0, _ROOT)

from benchmarks import peer_speed  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_quick_runs_our_side(capsys):
  results = peer_speed.main(["--quick", "--ours-only"])
  out = capsys.readouterr().out
  assert "measuring the fairgrad_jax side only" in out
  assert "load average" in out
  assert "OMP_WAIT_POLICY" in out  # torch's idle threads, named in the header
  (k,) = results["steps"]
  steps = results["steps"][k]
  assert set(steps) == {
      "fj LS", "fj stacked (task_gradients)", "fj stacked (jax.jacrev)",
      "fj Gram-only (one chunk)", "fj Gram-only (chunk 1)",
      "fj lean compile, stacked (task_gradients)",
      "fj lean compile, Gram-only (chunk 1)"}
  for first, times in list(steps.values()) + list(
      results["aggregation"][k].values()):
    assert first > 0 and len(times) == 3 and np.all(np.asarray(times) > 0)
  assert set(results["aggregation"][k]) == {
      "fj LS aggregate", "fj.fairgrad aggregate", "fj.upgrad aggregate",
      "fj.gram_matrix", "XLA J @ J.T"}
  assert not any(name.startswith(("torch", "TorchJD"))
                 for name in steps)


def test_the_same_model_and_weights_on_both_sides():
  """The JAX losses of the benchmark's model, against numpy."""
  params = peer_speed.init_params(peer_speed.jax.random.key(0), 4, 8, 3)
  x, y = peer_speed.data(1, 5, 4, 3)
  t = params["trunk"]
  h = np.maximum(x @ t["w1"] + t["b1"], 0)
  h = np.maximum(h @ t["w2"] + t["b2"], 0)
  expected = np.mean((h @ params["heads"]["w"].T + params["heads"]["b"] - y)
                     ** 2, axis=0)
  np.testing.assert_allclose(peer_speed.losses_fn(params, x, y), expected,
                             rtol=1e-4)


@pytest.mark.parametrize("argv", [["--repeats", "0"], ["--tasks", "0"],
                                  ["--threads", "100000"]])
def test_bad_arguments_are_refused(argv):
  with pytest.raises(SystemExit):
    peer_speed.parse_args(argv)
