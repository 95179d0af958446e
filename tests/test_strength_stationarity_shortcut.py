"""The stationarity rule's shortcut from the Gram matrix (issue 13).

FairGrad's update is zeroed where it conflicts with a task beyond round-off
(``Weighting.zero_at_stationary``). The rule needs the products g_iᵀd of the
computed d: a pass over the K×P gradients on the stacked path, a JVP through
the model on the Gram-only paths. Where the Gram matrix alone shows every
product positive beyond the rounding the rule allows
(``_aggregator.no_conflict_by_gram``), that work is skipped. These tests
check that the shortcut never hides a conflict the rule would find, that it
changes no update, and that the work is really skipped where it applies.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _asserts
import fairgrad_jax as fj
from fairgrad_jax import _aggregator
from fairgrad_jax import _gram

SHAPES = [(2, 4), (5, 300), (8, 300)]
ALPHAS = [0.5, 1.0, 2.0, 5.0]


@functools.lru_cache(maxsize=None)
def _rule_and_shortcut(alpha):
  """jit: (rule on the computed d, shortcut) for one (K, n) Jacobian."""
  weighting = fj.fairgrad_weighting(alpha)

  def both(jac):
    gram, e = _gram.scaled_gram([jac])
    state = _aggregator.initial_state(weighting, jac.shape[0])
    w_scaled, _, new_state = _aggregator.solve(weighting, gram, e, state,
                                               None)
    d = _gram.weighted_sums(w_scaled, [jac], log2_in=-e,
                            log2_out=e * weighting.degree)
    d_norm, s = _aggregator.norm_and_log2(d, gram.dtype)
    gd = _gram.task_products([jac], d, -e, -s, gram.dtype)
    n = jac[0].size
    rule = _aggregator.conflicts(gram, w_scaled, gd, d_norm,
                                 e * weighting.degree - s, n,
                                 unconverged=_aggregator.unconverged(new_state))
    return rule, _aggregator.no_conflict_by_gram(gram, w_scaled, n)

  return jax.jit(both)


def _stationary(k, n, rng, rank=2):
  """A (k, n) Jacobian of rank <= ``rank`` with w > 0, wᵀG = 0."""
  g = rng.standard_normal((k, rank)) @ rng.standard_normal((rank, n))
  w = rng.uniform(0.2, 1.0, k)
  return g - np.outer(w, w @ g) / (w @ w)


def _jacobian(kind, k, n, rng):
  if kind == "random":
    return rng.standard_normal((k, n))
  if kind == "stationary":
    return _stationary(k, n, rng, rank=int(rng.integers(1, min(k, n) + 1)))
  if kind == "near_stationary":  # two nearly opposite tasks, small others
    base = rng.standard_normal((1, n))
    g = np.concatenate([base, -rng.uniform(0.5, 2.0) * base,
                        0.01 * rng.standard_normal((k - 2, n))])
    return g + 1e-4 * rng.standard_normal((k, n))
  # conflicting, norms over decades
  return (rng.standard_normal((k, n)) * np.exp(rng.uniform(-6, 6, (k, 1)))
          - 0.7 * rng.standard_normal((1, n)))


@pytest.mark.parametrize("alpha", ALPHAS)
def test_shortcut_never_hides_a_conflict(alpha):
  fn = _rule_and_shortcut(alpha)
  rng = np.random.default_rng(int(alpha * 10))
  counts = {"shortcut": 0, "conflict": 0}
  for k, n in SHAPES:
    for kind in ("random", "stationary", "near_stationary", "conflicting"):
      for _ in range(6):
        jac = jnp.asarray(_jacobian(kind, k, n, rng), jnp.float32)
        rule, shortcut = (bool(x) for x in fn(jac))
        assert not (rule and shortcut), (kind, k, n)
        counts["shortcut"] += shortcut
        counts["conflict"] += rule
  # Both outcomes occur, so the check above can fail.
  assert counts["shortcut"] >= 20 and counts["conflict"] >= 10, counts


def test_shortcut_is_false_for_non_finite_input():
  gram = jnp.array([[1.0, 0.0], [0.0, jnp.nan]])
  assert not bool(_aggregator.no_conflict_by_gram(gram, jnp.ones(2), 10))
  assert not bool(_aggregator.no_conflict_by_gram(
      jnp.eye(2), jnp.array([1.0, jnp.inf]), 10))


def _half_space(k, n, seed):
  """Gradients with a common positive direction: no conflict at the root."""
  rng = np.random.default_rng(seed)
  g = rng.standard_normal((k, n))
  g[:, 0] = np.abs(g[:, 0]) + 3.0
  return jnp.asarray(g, jnp.float32)


def test_stacked_update_skips_the_products_only_where_clear(monkeypatch):
  calls = _asserts.count_runs(monkeypatch, _aggregator, "conflicts")
  agg = fj.fairgrad(2.0)
  update = jax.jit(agg.update)
  d, _ = update({"w": _half_space(4, 50, 0)}, agg.init(None))
  jax.block_until_ready(d)
  jax.effects_barrier()
  assert not calls  # clear from the Gram matrix: no pass over the gradients
  stationary = _stationary(4, 50, np.random.default_rng(1))
  d, _ = update({"w": jnp.asarray(stationary, jnp.float32)}, agg.init(None))
  jax.block_until_ready(d)
  jax.effects_barrier()
  assert len(calls) == 1  # near stationarity the rule runs, and zeroes d
  np.testing.assert_array_equal(np.asarray(d["w"]), 0.0)


@pytest.mark.parametrize("mode", ["jvp", "vjp"])
def test_gram_only_update_skips_the_jvp_only_where_clear(monkeypatch, mode):
  calls = _asserts.count_runs(monkeypatch, _aggregator, "conflicts")
  weighting = fj.fairgrad_weighting(alpha=2.0)
  params = {"w": jnp.zeros(50)}
  stationary = _stationary(4, 50, np.random.default_rng(3))
  for jac, expect_calls in ((_half_space(4, 50, 2), 0),
                            (jnp.asarray(stationary, jnp.float32), 1)):
    losses = lambda p, jac=jac: jac @ p["w"]
    grad_fn = fj.weighted_grad(losses, weighting, mode=mode)
    out, _ = jax.jit(lambda p, s, f=grad_fn: f(p, state=s))(
        params, grad_fn.init(4))
    jax.block_until_ready(out)
    jax.effects_barrier()
    assert len(calls) == expect_calls
    calls.clear()
    if expect_calls:
      np.testing.assert_array_equal(np.asarray(out.update["w"]), 0.0)
    else:
      assert np.all(np.asarray(jac @ out.update["w"]) > 0)


def test_shortcut_changes_no_update(monkeypatch):
  """Bitwise the same update with the shortcut and with the rule alone."""
  grads = [{"w": _half_space(6, 300, s)} for s in range(3)]

  def updates():
    agg = fj.fairgrad(5.0)  # a new update function: traced afresh
    update = jax.jit(agg.update)
    return [update(g, agg.init(None))[0]["w"] for g in grads]

  fast = updates()
  monkeypatch.setattr(_aggregator, "no_conflict_by_gram",
                      lambda *args: jnp.zeros((), bool))
  slow = updates()
  for a, b in zip(fast, slow):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
