"""The training benchmarks' registry: methods built from the public weightings
are the package's own factories, and ``--methods`` finds them by name."""

import pathlib
import sys

import jax
import numpy as np
import pytest

_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # `benchmarks` lives next to the package
  sys.path.insert(0, _ROOT)

import fairgrad_jax as fj  # pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import _methods  # pylint: disable=g-import-not-at-top,wrong-import-position

# What each default method stood for when the registry named factories: the
# factory call with its hyperparameters, for K tasks, a mask and a seed.
FACTORY_CALLS = {
    "LS": lambda k, shared, seed: fj.linear_scalarization(
        num_tasks=k, shared=shared),
    "Mean": lambda k, shared, seed: fj.mean(num_tasks=k, shared=shared),
    "MGDA": lambda k, shared, seed: fj.mgda(num_tasks=k, shared=shared),
    "PCGrad": lambda k, shared, seed: fj.pcgrad(
        seed=seed, num_tasks=k, shared=shared),
    "CAGrad": lambda k, shared, seed: fj.cagrad(
        c=0.4, num_tasks=k, shared=shared),
    "Nash-MTL": lambda k, shared, seed: fj.nash_mtl(
        num_tasks=k, shared=shared),
    "FAMO": lambda k, shared, seed: fj.famo(num_tasks=k, shared=shared),
    "STCH": lambda k, shared, seed: fj.stch(num_tasks=k, shared=shared),
    "IMTL-L": lambda k, shared, seed: fj.imtl_l(num_tasks=k, shared=shared),
    "GLS": lambda k, shared, seed: fj.geometric_mean(
        num_tasks=k, shared=shared),
    "DB-MTL": lambda k, shared, seed: fj.db_mtl(num_tasks=k, shared=shared),
    "UPGrad": lambda k, shared, seed: fj.upgrad(num_tasks=k, shared=shared),
    "DualProj": lambda k, shared, seed: fj.dualproj(
        num_tasks=k, shared=shared),
    "Aligned-MTL": lambda k, shared, seed: fj.aligned_mtl(
        num_tasks=k, shared=shared),
    "ConFIG": lambda k, shared, seed: fj.config(num_tasks=k, shared=shared),
    "GradVac": lambda k, shared, seed: fj.gradvac(
        seed=seed, num_tasks=k, shared=shared),
    "SDMGrad": lambda k, shared, seed: fj.sdmgrad(num_tasks=k, shared=shared),
    "MoDo": lambda k, shared, seed: fj.modo(num_tasks=k, shared=shared),
    "CR-MOGM": lambda k, shared, seed: fj.cr_mogm(num_tasks=k, shared=shared),
    "GradNorm": lambda k, shared, seed: fj.gradnorm(
        num_tasks=k, shared=shared),
    "PBI": lambda k, shared, seed: fj.pbi(num_tasks=k, shared=shared),
    "COSMOS": lambda k, shared, seed: fj.cosmos(num_tasks=k, shared=shared),
    "FairGrad α=1": lambda k, shared, seed: fj.fairgrad(
        alpha=1.0, num_tasks=k, shared=shared),
    "FairGrad α=2": lambda k, shared, seed: fj.fairgrad(
        alpha=2.0, num_tasks=k, shared=shared),
    "FairGrad α=5": lambda k, shared, seed: fj.fairgrad(
        alpha=5.0, num_tasks=k, shared=shared),
}


def test_every_default_method_has_its_factory_call():
  names = [m.name for m in _methods.default_methods()]
  assert names[0] == _methods.STL
  assert names[1:] == list(FACTORY_CALLS)


@pytest.mark.parametrize("name", list(FACTORY_CALLS))
@pytest.mark.parametrize("num_tasks, shared, seed", [
    (3, None, 0),
    (10, {"encoder": True, "heads": False}, 7),
])
def test_built_aggregator_is_the_factory(name, num_tasks, shared, seed):
  method, = _methods.select_methods(_methods.default_methods(), name)
  assert not method.single_task
  built = method.build(num_tasks, shared, seed)
  assert repr(built) == repr(FACTORY_CALLS[name](num_tasks, shared, seed))


def test_stl_has_no_aggregator():
  stl, = _methods.select_methods(_methods.default_methods(), "STL")
  assert stl.single_task
  with pytest.raises(ValueError, match="STL trains single-task models"):
    stl.build(3, None, 0)


def test_select_methods_finds_them_by_name():
  methods = _methods.default_methods()
  chosen = _methods.select_methods(
      methods, "stl, Nash-MTL,fairgrad α=2 ,FairGradα=5,PCGrad")
  assert [m.name for m in chosen] == [
      "STL", "Nash-MTL", "FairGrad α=2", "FairGrad α=5", "PCGrad"]
  assert _methods.select_methods(methods, None) == methods
  with pytest.raises(SystemExit, match="unknown method 'GradDrop'"):
    _methods.select_methods(methods, "STL,GradDrop")


def _seeded_update(method, opt_seed, state_seed):
  """One update by the aggregator built for ``opt_seed`` from the state that
  the one built for ``state_seed`` starts from."""
  params = {"encoder": jax.numpy.ones(4)}
  grads = {"encoder": jax.random.normal(jax.random.key(0), (3, 4))}
  state = method.build(3, None, state_seed).init(params)
  update, _ = method.build(3, None, opt_seed).update(grads, state, params)
  return update["encoder"]


def test_seeds_live_in_the_aggregator_state():
  """run_benchmark compiles one step per method, with the first seed's
  aggregator, and gives each seed its own initial state: so a method's seed
  must act through its state, not through the aggregator's closure."""
  seeded = [m for m in _methods.default_methods()[1:]
            if repr(m.build(3, None, 0)) != repr(m.build(3, None, 5))]
  assert [m.name for m in seeded] == ["PCGrad", "GradVac"]
  for method in seeded:
    own = _seeded_update(method, 5, 5)
    assert not np.array_equal(own, _seeded_update(method, 0, 0))
    np.testing.assert_array_equal(_seeded_update(method, 0, 5), own)
