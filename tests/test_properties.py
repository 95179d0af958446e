"""Shared property tests over every aggregator of the package."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fairgrad_jax
import _asserts

# name -> (factory(K), degree of homogeneity, deterministic, non-conflicting)
METHODS = {
    "linear_scalarization": (
        lambda k: fairgrad_jax.linear_scalarization(num_tasks=k), 1.0, True,
        False),
    "fairgrad_1": (lambda k: fairgrad_jax.fairgrad(1.0, num_tasks=k), 0.0,
                   True, True),
    "fairgrad_2": (lambda k: fairgrad_jax.fairgrad(2.0, num_tasks=k),
                   -1.0 / 3.0, True, True),
    "mgda": (lambda k: fairgrad_jax.mgda(num_tasks=k), 1.0, True, True),
    "mgda_l2": (lambda k: fairgrad_jax.mgda("l2", num_tasks=k), 1.0, True,
                False),
    "mgda_loss+": (lambda k: fairgrad_jax.mgda("loss+", num_tasks=k), 1.0,
                   True, False),
    "pcgrad": (lambda k: fairgrad_jax.pcgrad(num_tasks=k), 1.0, False, False),
    "cagrad": (lambda k: fairgrad_jax.cagrad(num_tasks=k), 1.0, True, False),
    "imtl_g": (lambda k: fairgrad_jax.imtl_g(num_tasks=k), 1.0, True, False),
    "upgrad": (lambda k: fairgrad_jax.upgrad(num_tasks=k), 1.0, True, True),
    "dualproj": (lambda k: fairgrad_jax.dualproj(num_tasks=k), 1.0, True,
                 True),
    "aligned_mtl": (lambda k: fairgrad_jax.aligned_mtl(num_tasks=k), 1.0, True,
                    False),
    # Non-conflicting for independent gradients (these are).
    "config": (lambda k: fairgrad_jax.config(num_tasks=k), 1.0, True, True),
    "nash_mtl": (lambda k: fairgrad_jax.nash_mtl(num_tasks=k), 0.0, True,
                 True),
    "graddrop": (lambda k: fairgrad_jax.graddrop(num_tasks=k), 1.0, False,
                 False),
    "rlw": (lambda k: fairgrad_jax.rlw(num_tasks=k), 1.0, False, False),
    "dwa": (lambda k: fairgrad_jax.dwa(num_tasks=k), 1.0, True, False),
    "uw": (lambda k: fairgrad_jax.uw(num_tasks=k), 1.0, True, False),
    "scale_invariant": (
        lambda k: fairgrad_jax.scale_invariant(num_tasks=k), 1.0, True, False),
    "famo": (lambda k: fairgrad_jax.famo(num_tasks=k), 1.0, True, False),
    # A one-step warm-up and one averaging step: the third step is STCH.
    "stch": (lambda k: fairgrad_jax.stch(warmup_steps=1, average_steps=1,
                                         num_tasks=k), 1.0, True, False),
    "imtl_l": (lambda k: fairgrad_jax.imtl_l(num_tasks=k), 1.0, True, False),
    "geometric_mean": (lambda k: fairgrad_jax.geometric_mean(num_tasks=k),
                       1.0, True, False),
    "db_mtl": (lambda k: fairgrad_jax.db_mtl(num_tasks=k), 1.0, True, False),
    "gradvac": (lambda k: fairgrad_jax.gradvac(num_tasks=k), 1.0, False,
                False),
    "sdmgrad": (lambda k: fairgrad_jax.sdmgrad(num_tasks=k), 1.0, True, False),
    "modo": (lambda k: fairgrad_jax.modo(num_tasks=k), 1.0, True, False),
    # MGDA's weights averaged over steps: the average may conflict.
    "cr_mogm": (lambda k: fairgrad_jax.cr_mogm(num_tasks=k), 1.0, True,
                False),
    # One warm-up call, then s moves (lr 0.1): the third step's weights
    # are learned.
    "gradnorm": (lambda k: fairgrad_jax.gradnorm(
        learning_rate=0.1, warmup_steps=1, num_tasks=k), 1.0, True, False),
    # Normalised gradients times the losses: degree 0.
    "moco": (lambda k: fairgrad_jax.moco(num_tasks=k), 0.0, True, False),
    "excess_mtl": (lambda k: fairgrad_jax.excess_mtl(num_tasks=k), 1.0, True,
                   False),
    "pbi": (lambda k: fairgrad_jax.pbi(num_tasks=k), 1.0, True, False),
    "cosmos": (lambda k: fairgrad_jax.cosmos(num_tasks=k), 1.0, True, False),
    "mean": (lambda k: fairgrad_jax.mean(num_tasks=k), 1.0, True, False),
    # Weights fixed per task position: not permutation-equivariant.
    "constant": (lambda k: fairgrad_jax.constant(
        np.linspace(0.5, 1.5, k), num_tasks=k), 1.0, False, False),
    # m = 2 of K = 3: the closest pair, which ties under f = 0 (Krum alone
    # would pick its first task, not permutation-equivariant).
    "krum": (lambda k: fairgrad_jax.krum(0, n_selected=2, num_tasks=k), 1.0,
             True, False),
    "trimmed_mean": (lambda k: fairgrad_jax.trimmed_mean(1, num_tasks=k),
                     1.0, True, False),
}
# Methods that need more than one task (K = 1 is refused, by name).
MIN_TASKS = {"krum": 3, "trimmed_mean": 3}
NAMES = sorted(METHODS)
DETERMINISTIC = [n for n in NAMES if METHODS[n][2]]
NON_CONFLICTING = [n for n in NAMES if METHODS[n][3]]
# Frank–Wolfe stops on a weight change of 1e-5, not at the exact optimum.
RTOL = {"mgda": 1e-3, "mgda_l2": 1e-3, "mgda_loss+": 1e-3, "cagrad": 1e-3}

K = 3


@functools.lru_cache(maxsize=None)
def _jitted(name, k):
  """One aggregator and one jitted update per (method, K), shared by tests."""
  agg = METHODS[name][0](k)
  return agg, jax.jit(agg.update)


def _losses_seq(k):
  base = np.linspace(1.0, 2.0, k).astype(np.float32)
  return [jnp.asarray(base * f) for f in (1.0, 0.8, 0.7)]


def stepper(name):
  def step(grads, losses_seq):
    k = jax.tree.leaves(grads)[0].shape[0]
    agg, update = _jitted(name, k)
    state = agg.init(None)
    out = None
    for losses in losses_seq:
      out, state = update(grads, state, losses=losses)
    return out, state
  return step


GRADS = _asserts.random_grads(jax.random.PRNGKey(0), K)
LOSSES = _losses_seq(K)


@pytest.mark.parametrize("name", NAMES)
def test_structure_and_finite(name):
  _asserts.assert_structure(stepper(name), GRADS, LOSSES)
  _asserts.assert_finite(stepper(name), GRADS, LOSSES)


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_permutation_equivariance(name):
  _asserts.assert_permutation_equivariant(
      stepper(name), GRADS, LOSSES, np.array([2, 0, 1]),
      rtol=RTOL.get(name, 1e-4))


@pytest.mark.parametrize("scale", [1e-12, 1e-3, 1e3, 1e12])
@pytest.mark.parametrize("name", NAMES)
def test_scaling(name, scale):
  # Same PRNG keys on both sides: random methods are homogeneous too.
  _asserts.assert_scaling(stepper(name), GRADS, LOSSES, METHODS[name][1],
                          scale, rtol=RTOL.get(name, 1e-4))


@pytest.mark.parametrize("name", NON_CONFLICTING)
def test_non_conflicting(name):
  _asserts.assert_non_conflicting(stepper(name), GRADS, LOSSES)


@pytest.mark.parametrize("name", NAMES)
def test_zero_gradient_task(name):
  grads = jax.tree.map(lambda x: x.at[1].set(0.0), GRADS)
  _asserts.assert_finite(stepper(name), grads, LOSSES)


@pytest.mark.parametrize("name", NAMES)
def test_all_zero_gradients(name):
  grads = jax.tree.map(jnp.zeros_like, GRADS)
  _asserts.assert_finite(stepper(name), grads, LOSSES)
  _asserts.assert_zero(stepper(name), grads, LOSSES)


@pytest.mark.parametrize("kind", ["sum", "opposite", "duplicate"])
@pytest.mark.parametrize("name", NAMES)
def test_rank_deficient(name, kind):
  def make(x):
    if kind == "sum":  # g_3 = g_1 + g_2: rank 2
      return x.at[2].set(x[0] + x[1])
    if kind == "opposite":  # g_2 = -g_1: a Pareto-stationary point
      return x.at[1].set(-x[0])
    return x.at[1].set(x[0])  # two identical tasks
  grads = jax.tree.map(make, GRADS)
  _asserts.assert_finite(stepper(name), grads, LOSSES)


@pytest.mark.parametrize("name", NAMES)
def test_single_task(name):
  if name in MIN_TASKS:
    with pytest.raises(ValueError, match=f"{MIN_TASKS[name]} tasks, got 1"):
      METHODS[name][0](1)
    return
  grads = _asserts.random_grads(jax.random.PRNGKey(1), 1)
  _asserts.assert_structure(stepper(name), grads, _losses_seq(1))
  _asserts.assert_single_task_parallel(stepper(name), grads, _losses_seq(1))


@pytest.mark.parametrize("name", NAMES)
def test_repr_names_the_method(name):
  agg = METHODS[name][0](K)
  assert repr(agg).startswith(name.split("_")[0] if name.startswith(
      ("fairgrad", "mgda")) else name)
  assert f"num_tasks={K}" in repr(agg)


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_bfloat16(name):
  grads = jax.tree.map(lambda x: x.astype(jnp.bfloat16), GRADS)
  _asserts.assert_structure(stepper(name), grads, LOSSES)
  _asserts.assert_finite(stepper(name), grads, LOSSES)
