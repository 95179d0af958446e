"""PCGrad at K >= 4 against a NumPy reference of Yu et al.'s Algorithm 1.

The reference works on the gradient vectors themselves (not on the Gram
matrix) in float64, as the authors' code does: every task's running copy
g_i' starts at g_i and is projected, in that task's random order of the other
tasks, against the ORIGINAL g_j whenever g_i'ᵀg_j < 0; the update is
Σ_i g_i'. The orders are the permutations that ``pcgrad_weights`` documents
drawing from its key (one ``jax.random.permutation`` per task, from
``jax.random.split(key, K)``); they are an input of the algorithm, so the
reference draws the same ones.

``test_inputs_tell_the_variants_apart`` checks that the inputs separate the
reference from the plausible wrong implementations (running projections of
the other tasks, the original g_i in the dot product, no shuffling, one order
shared by all tasks) by far more than the tolerance, so that
``test_matches_reference`` fails on each of them (checked by running it on
mutated copies of ``fairgrad_jax/_methods/pcgrad.py``).

Yu, Kumar, Gupta, Levine, Hausman & Finn, "Gradient Surgery for Multi-Task
Learning", NeurIPS 2020, arXiv:2001.06782, Algorithm 1; the authors' code
(github.com/tianheyu927/PCGrad) and its PyTorch port project the running
copy against the original gradients of the shuffled list.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fairgrad_jax

pcgrad_weights = jax.jit(fairgrad_jax.pcgrad_weights)
RTOL = 1e-5  # float32 Gram route vs float64 vectors: measured 2.4e-7


def orders_of(key, k):
  """(K, K): row i is the order in which task i visits the tasks."""
  return np.asarray(jax.vmap(lambda kk: jax.random.permutation(kk, k))(
      jax.random.split(key, k)))


def project(g, gj):
  dot = g @ gj
  return g - dot / (gj @ gj) * gj if dot < 0 else g


def reference(grads, orders):
  """Algorithm 1: running copy of g_i against the original g_j, summed."""
  grads = np.asarray(grads, np.float64)
  out = np.zeros(grads.shape[1])
  for i, order in enumerate(orders):
    g = grads[i].copy()
    for j in order:
      if j != i and grads[j] @ grads[j] > 0:
        g = project(g, grads[j])
    out += g
  return out


def variant_running_others(grads, orders):
  """Wrong: projects against the other tasks' running projections."""
  pc = np.array(grads, np.float64)
  for i, order in enumerate(orders):
    for j in order:
      if j != i and pc[j] @ pc[j] > 0:
        pc[i] = project(pc[i], pc[j])
  return pc.sum(0)


def variant_original_dot(grads, orders):
  """Wrong: the conflict and the coefficient use the original g_i."""
  grads = np.asarray(grads, np.float64)
  out = np.zeros(grads.shape[1])
  for i, order in enumerate(orders):
    g = grads[i].copy()
    for j in order:
      dot = grads[i] @ grads[j]
      if j != i and dot < 0:
        g = g - dot / (grads[j] @ grads[j]) * grads[j]
    out += g
  return out


def variant_no_shuffle(grads, orders):
  k = len(orders)
  return reference(grads, np.tile(np.arange(k), (k, 1)))


def variant_shared_order(grads, orders):
  return reference(grads, np.tile(orders[0], (len(orders), 1)))


VARIANTS = [variant_running_others, variant_original_dot, variant_no_shuffle,
            variant_shared_order]


def conflicting_grads(seed, k, p):
  """K gradients in a low dimension P, with many conflicting pairs."""
  rng = np.random.default_rng(seed)
  g = rng.normal(size=(k, p))
  g[1::2] -= 0.8 * g[0]  # odd tasks lean against task 0
  return g.astype(np.float32)


CASES = [(seed, k, p) for seed in range(4) for k, p in ((4, 5), (6, 8))]


def _close(a, b, rtol):
  return np.linalg.norm(a - b) <= rtol * np.linalg.norm(b)


@pytest.mark.parametrize("seed,k,p", CASES)
def test_matches_reference(seed, k, p):
  g = conflicting_grads(seed, k, p)
  key = jax.random.PRNGKey(100 + seed)
  w = np.asarray(pcgrad_weights(jnp.asarray(g @ g.T), key), np.float64)
  got = w @ g.astype(np.float64)
  want = reference(g, orders_of(key, k))
  np.testing.assert_allclose(got, want, rtol=RTOL,
                             atol=RTOL * np.linalg.norm(want))


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda f: f.__name__)
def test_inputs_tell_the_variants_apart(variant):
  """Each wrong variant misses the reference by > 100 x RTOL somewhere."""
  worst = 0.0
  for seed, k, p in CASES:
    g = conflicting_grads(seed, k, p)
    orders = orders_of(jax.random.PRNGKey(100 + seed), k)
    want = reference(g, orders)
    worst = max(worst, np.linalg.norm(variant(g, orders) - want)
                / np.linalg.norm(want))
  assert worst > 100 * RTOL, worst


def test_aggregator_matches_reference_over_steps():
  """fj.pcgrad splits its key at every step and uses the second half."""
  k, p, seed = 5, 7, 11
  g = conflicting_grads(3, k, p)
  agg = fairgrad_jax.pcgrad(seed=seed, num_tasks=k)
  update = jax.jit(agg.update)
  state = agg.init(None)
  key = jax.random.PRNGKey(seed)
  seen = []
  for _ in range(3):
    key, sub = jax.random.split(key)
    out, state = update({"w": jnp.asarray(g)}, state)
    want = reference(g, orders_of(sub, k))
    np.testing.assert_allclose(np.asarray(out["w"], np.float64), want,
                               rtol=RTOL, atol=RTOL * np.linalg.norm(want))
    np.testing.assert_allclose(
        np.asarray(state.weights, np.float64) @ g.astype(np.float64), want,
        rtol=RTOL, atol=RTOL * np.linalg.norm(want))
    seen.append(want)
  # The steps drew different orders that give different updates.
  assert not _close(seen[0], seen[1], 100 * RTOL)
