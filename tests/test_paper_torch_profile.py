"""benchmarks/paper/torch_profile.py: the authors' PyTorch step, tiny.

torch is an optional extra (``pip install -e ".[peer]"``), never a test
dependency: without it this file is skipped.
"""
# The step's pieces are checked one by one:
# pylint: disable=protected-access

import dataclasses
import math
import pathlib
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `benchmarks` lives next to the package
  sys.path.insert(0, str(ROOT))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position

from benchmarks.paper import problems  # pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks.paper import protocols  # pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks.paper import torch_profile  # pylint: disable=g-import-not-at-top,wrong-import-position

BENCHMARKS = ("nyuv2", "cityscapes", "celeba", "qm9")
# Tiny runs: widths / 16; batch 1 for the dense benchmarks (full-size
# images), 2 where BatchNorm1d (CelebA) or a molecule pair (QM9) needs it.
TINY_BATCH = {"nyuv2": 1, "cityscapes": 1, "celeba": 2, "qm9": 2}


def test_available():
  assert torch_profile.available()


@pytest.mark.parametrize("name", BENCHMARKS)
def test_profile_two_rows_of_positive_times(name):
  before = torch.get_num_threads()
  rows = torch_profile.profile(name, batch_size=TINY_BATCH[name], steps=1,
                               model_scale=16, threads=1)
  assert torch.get_num_threads() == before  # restored
  assert [row["step"].split(" (")[0] for row in rows] == [
      "torch LS", "torch FairGrad α=2"]
  k = protocols.PROTOCOLS[name].num_tasks
  assert f"K={k} backward passes" in rows[1]["step"]
  for row in rows:
    assert set(row) == {"step", "ms", "compile_s"}
    assert math.isfinite(row["ms"]) and row["ms"] > 0
    assert math.isfinite(row["compile_s"]) and row["compile_s"] > 0


def _flax_parameters(name: str, model_scale: int) -> int:
  """Our flax model's parameter count, from the shapes of its init."""
  protocol = dataclasses.replace(protocols.PROTOCOLS[name], batch_size=1)
  problem = problems.make_problem(protocol, None, model_scale=model_scale)
  if name == "qm9":
    inputs = problem.synthetic_batch(np.random.default_rng(0), atoms=3)
  else:  # the counts do not depend on the image size
    size = 64 if name == "celeba" else 32
    inputs = jax.ShapeDtypeStruct((1, size, size, 3), np.float32)
  variables = jax.eval_shape(problem.model.init, jax.random.key(0), inputs)
  return sum(math.prod(leaf.shape)
             for leaf in jax.tree.leaves(variables["params"]))


@pytest.mark.parametrize("model_scale", [1, 16])
@pytest.mark.parametrize("name", BENCHMARKS)
def test_parameter_counts_match_our_flax_models(name, model_scale):
  ours = _flax_parameters(name, model_scale)
  theirs = torch_profile.num_parameters(name, model_scale=model_scale)
  if name == "qm9":
    # torch's GRU has an input and a hidden bias per gate (6 dim; flax's
    # GRUCell 4 dim) and its LSTM (Set2Set) two per gate (8 dim; flax's
    # OptimizedLSTMCell 4 dim): 6 dim more scalars, the same functions.
    dim = max(1, 64 // model_scale)
    assert theirs == ours + 6 * dim
  else:
    assert theirs == ours
  if model_scale == 1:  # the paper's models
    assert theirs == {"nyuv2": 44_229_073, "cityscapes": 41_206_984,
                      "celeba": 5_197_160, "qm9": 617_675}[name]


def test_fairgrad_by_hand():
  # G = c I: GᵀG w = w^(-1/2) gives c² w = w^(-1/2), w = c^(-4/3); the
  # update Σ w_i g_i is c w in every coordinate.
  for c in (1.0, 2.0):
    grads = c * torch.eye(3)
    g = torch_profile._fairgrad(grads, 2.0, 3)
    np.testing.assert_allclose(g.numpy(), np.full(3, c ** (-1 / 3)),
                               rtol=1e-5)


def test_fairgrad_step_is_the_authors_update():
  """Shared: clip(K Σ w_i g_i, 1); heads: Σ_i ∇l_i; from autograd.grad."""
  problem = torch_profile._problem("qm9", 2, 16)
  batch, losses_fn = torch_profile._batch_and_losses(
      problem, problem.synthetic_batch(np.random.default_rng(0)))
  torch.manual_seed(0)
  model = torch_profile._model(problem).train()
  shared = list(model.shared_parameters())
  heads = list(model.task_specific.parameters())
  k = problem.protocol.num_tasks

  losses = losses_fn(model, batch)
  columns = []
  for i in range(k):
    grads = torch.autograd.grad(losses[i], shared, retain_graph=True,
                                allow_unused=True)
    columns.append(torch.cat([
        (g if g is not None else torch.zeros_like(p)).reshape(-1)
        for g, p in zip(grads, shared)]))
  jacobian = torch.stack(columns, dim=1)  # (P, K), as the authors' grads
  head_grads = torch.autograd.grad(losses.sum(), heads)
  expected = k * torch_profile._fairgrad(jacobian, 2.0, k)
  expected = expected / max(1.0, expected.norm().item())

  class NoStep:

    def zero_grad(self):
      model.zero_grad(set_to_none=True)

    def step(self):
      pass

  torch_profile._fairgrad_step(model, NoStep(), losses_fn, batch, k, 2.0)
  update = torch.cat([p.grad.reshape(-1) for p in shared])
  np.testing.assert_allclose(update.numpy(), expected.numpy(), rtol=1e-4,
                             atol=1e-7)
  for p, g in zip(heads, head_grads):
    np.testing.assert_allclose(p.grad.numpy(), g.numpy(), rtol=1e-5,
                               atol=1e-7)


def test_out_of_memory_is_nan_and_other_errors_raise():
  def oom():
    raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data."
                       " DefaultCPUAllocator: can't allocate memory: you"
                       " tried to allocate 1099511627776 bytes.")

  ms, first = torch_profile._timed(oom, 1)
  assert math.isnan(ms) and math.isnan(first)

  def bug():
    raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

  with pytest.raises(RuntimeError, match="shapes"):
    torch_profile._timed(bug, 1)


def test_bad_arguments():
  with pytest.raises(ValueError, match="unknown benchmark"):
    torch_profile.profile("mnist")
  with pytest.raises(ValueError, match="steps"):
    torch_profile.profile("qm9", steps=0)
  with pytest.raises(ValueError, match="model_scale"):
    torch_profile.profile("qm9", model_scale=0)
