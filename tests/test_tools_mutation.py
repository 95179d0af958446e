"""tools/mutation.py: its module map stays in step with the package.

(Running mutmut itself takes minutes per module; this checks only what the
script is configured with, which is what goes stale when a module or a test
file is added, moved or renamed.)
"""

import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mutation():
  spec = importlib.util.spec_from_file_location(
      "mutation", ROOT / "tools" / "mutation.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# Modules left out of MODULES, and why.
LEFT_OUT = {
    # FairGrad's and Nash-MTL's own module and solver: ~1,600 mutants whose
    # tests (reference roots, the hard set) take minutes per mutant; the
    # solver is pinned by tests/test_fairgrad_weights.py, test_solver_hard.py
    # and test_strength_reference.py instead.
    "_methods/fairgrad", "_solvers/fairgrad", "_solvers/_common",
    # Shared plumbing of the loss weightings and stacked-only methods.
    "_methods/_loss", "_methods/_stacked",
}


def test_every_method_module_is_mutated_or_left_out_with_a_reason(mutation):
  paths = {path for path, _ in mutation.MODULES.values()}
  modules = {f"{p.parent.name}/{p.stem}"
             for d in ("_methods", "_solvers")
             for p in (ROOT / "fairgrad_jax" / d).glob("*.py")
             if p.stem != "__init__"}
  # ... and the aggregator builder every method goes through.
  assert modules - LEFT_OUT | {"_aggregator"} == paths
  for path, tests in mutation.MODULES.values():
    assert (ROOT / "fairgrad_jax" / f"{path}.py").is_file(), path
    for test in tests:
      assert (ROOT / test).is_file(), test
  for test in mutation.ALWAYS:
    assert (ROOT / test).is_file(), test


def test_equivalent_mutants_name_mutated_modules(mutation):
  paths = {path.replace("/", ".") for path, _ in mutation.MODULES.values()}
  for name, why in mutation.EQUIVALENT.items():
    module = name.split(".x_")[0].removeprefix("fairgrad_jax.")
    assert module in paths and "__mutmut_" in name and len(why) > 20, name


def test_wilson_interval(mutation):
  low, high = mutation.wilson(9, 10)
  assert 0.59 < low < 0.6 and 0.98 < high < 0.99  # the textbook values
  assert mutation.wilson(0, 0) == (0.0, 1.0)
  low, high = mutation.wilson(50, 100)
  assert abs((low + high) / 2 - 0.5) < 1e-12
