"""PBI and COSMOS: TorchJD's values, closed forms, bad inputs, extreme losses.

The peer values come from ``tools/peer_reference_more.py``: the gradients
of TorchJD 0.18's ``PBI`` and ``COSMOS`` scalarizers with respect to the
losses (torch autograd, float64), written to
``tests/data/peer_more_methods.json``. Here the weightings run in float32,
vmapped over each case's loss sequence (no jit: a few primitives each).
"""

import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fairgrad_jax as fj

DATA = json.loads((pathlib.Path(__file__).parent / "data" /
                   "peer_more_methods.json").read_text())
CASES = DATA["cases"]


def _weights(weighting, losses_seq):
  losses_seq = jnp.asarray(np.asarray(losses_seq, np.float32))
  k = losses_seq.shape[1]
  gram = jnp.zeros((k, k))
  return np.asarray(jax.vmap(lambda l: weighting(gram, losses=l)[0])(
      losses_seq))


def _max_relative(ours, ref):
  """max |ours − ref| / max |ref| per step (the update's relative error on
  identity gradients), over the steps."""
  ref = np.asarray(ref)
  return float(np.max(np.max(np.abs(ours - ref), axis=-1)
                      / np.max(np.abs(ref), axis=-1)))


# --- TorchJD's values ------------------------------------------------------


# One compile per setting and K: over the default suite's budget.
@pytest.mark.slow
def test_pbi_matches_torchjd():
  worst = 0.0
  for case in CASES:
    for ref in case["pbi"]:
      weighting = fj.pbi_weighting(ref["theta"],
                                   pref_vector=ref["pref_vector"],
                                   reference=ref["reference"])
      ours = _weights(weighting, case["losses"])
      worst = max(worst, _max_relative(ours, ref["weights"]))
      # float32: q = f − d₁ŵ loses the digits that f and d₁ŵ share.
      np.testing.assert_allclose(ours, ref["weights"], rtol=1e-4,
                                 atol=1e-4 * np.max(np.abs(ref["weights"])),
                                 err_msg=f"{case['family']} {ref['theta']}")
  assert worst < 1e-4


# One compile per setting and K: over the default suite's budget.
@pytest.mark.slow
def test_cosmos_matches_torchjd():
  for case in CASES:
    for ref in case["cosmos"]:
      weighting = fj.cosmos_weighting(ref["lambda_"],
                                      pref_vector=ref["pref_vector"])
      ours = _weights(weighting, case["losses"])
      np.testing.assert_allclose(ours, ref["weights"], rtol=2e-5,
                                 atol=2e-5 * np.max(np.abs(ref["weights"])),
                                 err_msg=f"{case['family']} {ref['lambda_']}")


def test_peer_file_covers_the_cases():
  assert {c["k"] for c in CASES} == {2, 3, 5}
  assert {c["family"] for c in CASES} == {"random", "scaled"}
  assert {r["theta"] for r in CASES[0]["pbi"]} == {0.0, 2.0, 5.0}
  assert any(r["reference"] is not None for r in CASES[0]["pbi"])
  # The penalty matters: the weights are not the preference direction.
  ref = CASES[0]["pbi"][0]
  direction = np.asarray(ref["pref_vector"]) / np.linalg.norm(
      ref["pref_vector"])
  assert not np.allclose(ref["weights"][0], direction, atol=1e-2)


# --- Closed forms ----------------------------------------------------------


def test_pbi_closed_forms():
  # θ = 0: the projection d₁, whose gradient is the unit preference.
  w = _weights(fj.pbi_weighting(0.0, pref_vector=[3.0, 4.0]), [[1.0, 7.0]])
  np.testing.assert_allclose(w[0], [0.6, 0.8], rtol=1e-6)
  # l = (3, 1), ŵ = (1, 1)/√2: q = (1, −1), w = ŵ + θ q/‖q‖.
  w = _weights(fj.pbi_weighting(2.0), [[3.0, 1.0]])
  np.testing.assert_allclose(w[0], np.array([3.0, -1.0]) / math.sqrt(2),
                             rtol=1e-6)
  # A reference point shifts the losses: l − z* = (3, 1) again.
  w = _weights(fj.pbi_weighting(2.0, reference=[1.0, -1.0]), [[4.0, 0.0]])
  np.testing.assert_allclose(w[0], np.array([3.0, -1.0]) / math.sqrt(2),
                             rtol=1e-6)
  # On the preference line the penalty has no gradient: ŵ alone.
  w = _weights(fj.pbi_weighting(5.0, pref_vector=[1.0, 2.0, 2.0]),
               [[0.3, 0.6, 0.6], [0.0, 0.0, 0.0]])
  np.testing.assert_allclose(w, np.tile([1 / 3, 2 / 3, 2 / 3], (2, 1)),
                             rtol=1e-6)
  # The weights depend only on the direction of l − z*.
  l = np.array([[0.5, 2.0, 1.0]], np.float32)
  w1 = _weights(fj.pbi_weighting(5.0), l)
  w2 = _weights(fj.pbi_weighting(5.0), l * 1e-20)
  w3 = _weights(fj.pbi_weighting(5.0), l * 1e30)
  # (float32: q = f − d₁ŵ is rounded differently at each scale.)
  np.testing.assert_allclose(w2, w1, rtol=1e-5)
  np.testing.assert_allclose(w3, w1, rtol=1e-5)


def test_cosmos_closed_forms():
  # λ = 0: linear scalarization with weights r.
  w = _weights(fj.cosmos_weighting(0.0, pref_vector=[0.2, 0.8]), [[1.0, 5.0]])
  np.testing.assert_allclose(w[0], [0.2, 0.8], rtol=1e-6)
  # On the preference ray cos = 1 and its gradient is 0.
  w = _weights(fj.cosmos_weighting(3.0, pref_vector=[1.0, 2.0]), [[2.0, 4.0]])
  np.testing.assert_allclose(w[0], [1.0, 2.0], rtol=1e-5, atol=1e-6)
  # r = (1, 0), l = (0, 2): cos = 0, w = r − (λ/2) r̂.
  w = _weights(fj.cosmos_weighting(1.0, pref_vector=[1.0, 0.0]), [[0.0, 2.0]])
  np.testing.assert_allclose(w[0], [0.5, 0.0], atol=1e-7)
  # The penalty's part scales as 1/‖l‖: w − r at l and at 10 l.
  r = np.array([0.25, 0.25, 0.5])
  l = np.array([[1.0, 3.0, 0.5]], np.float32)
  w1 = _weights(fj.cosmos_weighting(2.0, pref_vector=r), l) - r
  w10 = _weights(fj.cosmos_weighting(2.0, pref_vector=r), 10 * l) - r
  np.testing.assert_allclose(w10, w1 / 10, rtol=1e-5)
  # Equal preferences by default (r = 1/K).
  w = _weights(fj.cosmos_weighting(0.0), [[1.0, 2.0, 3.0, 4.0]])
  np.testing.assert_allclose(w[0], np.full(4, 0.25), rtol=1e-6)


def test_the_update_is_the_weighted_sum_on_every_leaf():
  grads = {"s": jnp.array([[1.0, 2.0], [3.0, -1.0]]),
           "h": jnp.array([[0.5], [2.0]])}
  losses = jnp.array([1.0, 3.0])
  for agg, weighting in [
      (fj.pbi(5.0, pref_vector=[1.0, 2.0], shared={"s": True, "h": False}),
       fj.pbi_weighting(5.0, pref_vector=[1.0, 2.0])),
      (fj.cosmos(2.0, shared={"s": True, "h": False}),
       fj.cosmos_weighting(2.0))]:
    d, state = agg.update(grads, agg.init(None), losses=losses)
    w, _ = weighting(jnp.zeros((2, 2)), losses=losses)
    for name in ("s", "h"):  # heads too: the gradient of the scalarization
      np.testing.assert_allclose(d[name], w @ grads[name], rtol=1e-6)
    assert state.weights is None  # built without num_tasks


# --- Bad inputs ------------------------------------------------------------


@pytest.mark.parametrize("make, error, match", [
    (lambda: fj.pbi(-1.0), ValueError, "theta"),
    (lambda: fj.pbi(float("nan")), ValueError, "theta"),
    (lambda: fj.pbi(pref_vector=[1.0, -1.0]), ValueError, "pref_vector"),
    (lambda: fj.pbi(pref_vector=[0.0, 0.0]), ValueError, "pref_vector"),
    (lambda: fj.pbi(pref_vector=1.0), TypeError, "pref_vector"),
    (lambda: fj.pbi(pref_vector=[1.0, 2.0], num_tasks=3), ValueError,
     "pref_vector has 2 entries but num_tasks is 3"),
    (lambda: fj.pbi(reference=[0.0, float("inf")]), ValueError, "reference"),
    (lambda: fj.pbi(reference="0"), TypeError, "reference"),
    (lambda: fj.pbi(reference=[0.0], num_tasks=2), ValueError,
     "reference has 1 entries"),
    (lambda: fj.pbi(pref_vector=[1.0, 1.0], reference=[0.0]), ValueError,
     "reference has 1 entries but pref_vector has 2"),
    (lambda: fj.cosmos(-0.5), ValueError, "lambda_"),
    (lambda: fj.cosmos(True), TypeError, "lambda_"),
    (lambda: fj.cosmos(pref_vector=[0.0, 0.0]), ValueError, "pref_vector"),
    (lambda: fj.cosmos(pref_vector=[1.0, float("nan")]), ValueError,
     "pref_vector"),
    (lambda: fj.cosmos(pref_vector=[1.0], num_tasks=2), ValueError,
     "pref_vector has 1 entries"),
])
def test_bad_hyperparameters_are_refused_by_name(make, error, match):
  with pytest.raises(error, match=match):
    make()


@pytest.mark.parametrize("agg", [
    fj.pbi(pref_vector=[1.0, 2.0, 3.0]), fj.pbi(reference=[0.0, 0.0, 0.0]),
    fj.cosmos(pref_vector=[1.0, 2.0, 3.0])], ids=["pbi", "pbi_ref", "cosmos"])
def test_preference_of_the_wrong_length_is_refused_at_the_update(agg):
  with pytest.raises(ValueError, match="3 entries but there are 2 tasks|"
                     "pref_vector has 3 entries"):
    agg.update({"w": jnp.eye(2)}, agg.init(None), losses=jnp.ones(2))


@pytest.mark.parametrize("agg", [fj.pbi(), fj.cosmos()], ids=["pbi", "cosmos"])
def test_losses_are_required(agg):
  with pytest.raises(ValueError, match="needs the task losses"):
    agg.update({"w": jnp.eye(2)}, agg.init(None))


@pytest.mark.parametrize("weighting", [fj.pbi_weighting(),
                                       fj.cosmos_weighting()],
                         ids=["pbi", "cosmos"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_losses_give_nan(weighting, bad):
  w = _weights(weighting, [[1.0, bad, 2.0]])
  assert np.all(np.isnan(w))


# --- Extreme losses --------------------------------------------------------


def test_finite_on_zero_negative_and_huge_losses():
  seq = [[0.0, 0.0, 0.0], [3e38, 1e30, 1.0], [3e38, 3e38, -3e38],
         [1e-30, 0.0, 2e-30], [-1.0, -2.0, 0.5]]
  for weighting in (fj.pbi_weighting(), fj.pbi_weighting(0.0),
                    fj.pbi_weighting(5.0, reference=[-1.0, 0.0, 2.0]),
                    fj.cosmos_weighting(), fj.cosmos_weighting(8.0)):
    w = _weights(weighting, seq)
    assert np.all(np.isfinite(w)), (weighting, w)
  # Near the top of the range the weights are those of the same direction
  # at scale 1 (1/max|l| would flush to 0: the losses are scaled by a
  # power of two); COSMOS's penalty λ/‖l‖ is then below the range.
  big = _weights(fj.pbi_weighting(5.0), [[3e38, 1.5e38, 0.0]])
  np.testing.assert_allclose(big, _weights(fj.pbi_weighting(5.0),
                                           [[2.0, 1.0, 0.0]]), rtol=1e-6)
  np.testing.assert_allclose(_weights(fj.cosmos_weighting(), seq)[1],
                             np.full(3, 1 / 3), rtol=1e-6)
  # COSMOS at l = 0: the cosine is undefined, the weights are r.
  np.testing.assert_allclose(_weights(fj.cosmos_weighting(), seq)[0],
                             np.full(3, 1 / 3), rtol=1e-6)
  # Tiny losses: the penalty λ/‖l‖ is large but exact (1e-30 scale).
  w = _weights(fj.cosmos_weighting(1.0, pref_vector=[1.0, 0.0]),
               [[0.0, 2e-30]])
  np.testing.assert_allclose(w[0], [1.0 - 0.5e30, 0.0], rtol=1e-6)


def test_reprs():
  assert repr(fj.pbi(num_tasks=2)) == (
      "pbi(theta=5.0, pref_vector=None, reference=None, num_tasks=2)")
  assert repr(fj.pbi_weighting(1, pref_vector=[1, 2])) == (
      "pbi_weighting(theta=1.0, pref_vector=(1.0, 2.0), reference=None)")
  assert repr(fj.cosmos(2.0)) == (
      "cosmos(lambda_=2.0, pref_vector=None, num_tasks=None)")


def test_pbi_passes_shared_to_the_builder():
  """Every leaf gets Σ_i w_i g_i (the gradient of the weighted loss), and
  max_norm clips the shared leaves only, so shared= matters with it
  (mutation testing: dropping shared= in fj.pbi passed every other test)."""
  grads = {"trunk": jnp.array([[3.0, 0.0], [0.0, 4.0]]),
           "head": jnp.array([[1.0, 2.0], [3.0, 4.0]])}
  agg = fj.pbi(num_tasks=2, shared={"trunk": True, "head": False},
               max_norm=0.5)
  out, state = agg.update(grads, agg.init(None),
                          losses=jnp.array([1.0, 3.0]))
  w = np.asarray(state.weights)
  trunk = w @ np.asarray(grads["trunk"])
  assert np.linalg.norm(trunk) > 1.0  # so the clip acts
  np.testing.assert_allclose(out["trunk"], 0.5 * trunk / np.linalg.norm(trunk),
                             rtol=1e-5)
  np.testing.assert_allclose(out["head"], w @ np.asarray(grads["head"]),
                             rtol=1e-5)
