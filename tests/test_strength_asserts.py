"""Stricter versions of weak asserts found in the suite (issue 17).

Each test here pins what a weaker assert elsewhere only gestures at:

* test_fairgrad_aggregator.py::test_chain_with_adam_trains_every_task asserts
  ``1 <= num_iterations <= 100`` with maxiter 100 (true of any run that
  stopped at the cap): here the solver must report convergence at every
  step, with iterations well below the cap, weights at the float64 root of
  the step's Gram matrix, and (where float32 can) the residual it reports.
* test_fairgrad_aggregator.py::test_mask_forms checks only the shape of the
  nested prefix mask's output: here its values.
* test_representation.py::test_one_backward_pass_through_the_encoder checks
  that an HLO substring is absent, with no positive control: here the same
  substring must appear in a step that does run K encoder backward passes.
* test_autogram.py::test_other_gram_weightings guards the weightings with
  ``hasattr`` (a renamed function silently drops out): here every name it
  looks up must exist.
"""

import functools
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

import fairgrad_jax as fj
import test_fairgrad_aggregator as agg_tests
import test_representation as rep_tests

_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # `benchmarks` lives next to the package
  sys.path.insert(0, _ROOT)
from benchmarks import _hard_set  # pylint: disable=g-import-not-at-top,wrong-import-position


def _chain_run(steps):
  """150 FairGrad + Adam steps; per step the trunk's Gram matrix (float32,
  as the aggregator forms it) and the state's diagnostics and weights."""
  opt = optax.chain(
      fj.fairgrad(alpha=2.0, num_tasks=agg_tests.K,
                  shared=agg_tests.HEADS_MASK),
      optax.adam(1e-2))
  step = agg_tests.make_step(opt)
  gram_fn = jax.jit(lambda p: fj.gram_matrix(
      jax.jacrev(agg_tests.losses_fn)(p, agg_tests.X)["trunk"].reshape(
          agg_tests.K, -1)))
  params, state = agg_tests.PARAMS, opt.init(agg_tests.PARAMS)
  grams, infos, weights = [], [], []
  for _ in range(steps):
    grams.append(np.asarray(gram_fn(params), np.float64))
    params, state, _ = step(params, state)
    infos.append(state[0].extra)
    weights.append(np.asarray(state[0].weights, np.float64))
  return grams, infos, weights


def test_chain_solves_converge_below_the_cap():
  """Every solve of the 150-step run converges in a few iterations, to the
  root of the Gram matrix it was given, and reports its own residual.

  The default maxiter is 100; the run's largest count is the assert's
  subject. The roots are float64 ones found without the package
  (``benchmarks._hard_set.float64_root``). As the trunk nears a
  Pareto-stationary point the Gram matrix's condition number reaches
  1e7-1e9: float32 weights cannot bring the residual of such a matrix to
  1e-5 (the float64 root rounded to float32 has a residual of up to 4e-4,
  its "floor"), which is why ``converged`` also accepts a last Newton
  correction below tol. So every step is checked for its weights, and the
  well-conditioned ones for their residual.
  (This test once asserted the residual of the run's last step only: 1e-5
  held there by the luck of where the run ended, 25 of its 150 steps
  reported more with the same solver.)
  """
  grams, infos, weights = _chain_run(150)
  iters = np.array([int(i.num_iterations) for i in infos])
  converged = np.array([bool(i.converged) for i in infos])
  assert converged.all(), np.flatnonzero(~converged)
  # Measured with the damped-Newton solve: 2-4 iterations (median 2) as
  # the trunk nears a Pareto-stationary point; the cap is 100.
  assert iters.max() <= 10, iters
  errors, floors, reported, recomputed = [], [], [], []
  for gram, info, w in zip(grams, infos, weights):
    root, root_res = _hard_set.float64_root(gram, 2.0, with_scipy=False)
    assert root is not None, root_res
    errors.append(np.max(np.abs(w / root - 1.0)))
    floors.append(_hard_set.relative_residual(
        gram, root.astype(np.float32), 2.0))
    reported.append(float(info.relative_residual))
    recomputed.append(_hard_set.relative_residual(gram, w, 2.0))
  errors, floors = np.array(errors), np.array(floors)
  reported, recomputed = np.array(reported), np.array(recomputed)
  # Measured: weights within 1.5e-6 of the root (float32's round-off is
  # 6e-8; the weights of an ill-conditioned step are good to a few ulps
  # times its conditioning).
  assert errors.max() <= 1e-5, (errors.max(), errors.argmax())
  # On the well-conditioned steps (floor <= 1e-7, about a third) the
  # residual itself meets the default tol, and the state reports that of
  # its weights (recomputed here from this test's float32 Gram matrix, whose
  # rounding differs slightly from the aggregator's). Measured over 47-49
  # such steps: reported and recomputed at most 1.7e-6, 5.7e-7 apart.
  easy = floors <= 1e-7
  assert easy.sum() >= 30, easy.sum()
  assert reported[easy].max() <= 1e-5, reported[easy].max()
  assert recomputed[easy].max() <= 1e-5, recomputed[easy].max()
  np.testing.assert_allclose(reported[easy], recomputed[easy], rtol=0,
                             atol=2e-6)


def test_nested_prefix_mask_values():
  """shared={"a": full mask, "b": True}: b enters the Gram matrix."""
  grads = agg_tests.GRADS
  nested = {"a": grads, "b": grads["trunk"]}
  agg = fj.fairgrad(alpha=2.0, shared={"a": {"trunk": True, "heads": False},
                                       "b": True})
  out = agg.update(nested, agg.init(None))[0]
  g = np.asarray(grads["trunk"], np.float64).reshape(agg_tests.K, -1)
  gram = 2.0 * g @ g.T  # trunk twice: a.trunk and b
  w = np.asarray(fj.fairgrad_weights(jnp.asarray(gram, jnp.float32), 2.0),
                 np.float64)
  want = (w @ g).reshape(grads["trunk"].shape[1:])
  np.testing.assert_allclose(out["b"], want, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(out["a"]["trunk"], want, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(out["a"]["heads"], grads["heads"].sum(0),
                             rtol=1e-6)


def test_hlo_substring_has_a_positive_control():
  """The (K, 3, 5) encoder cotangent batch shows up when it exists."""
  params, x, y = rep_tests._problem()
  pattern = "tensor<4x3x5xf32>"
  per_task_encoder = jax.jit(fj.weighted_grad(
      rep_tests._losses, rep_tests._probe, mode="vjp"))
  assert pattern in per_task_encoder.lower(params, x, y).as_text()
  assert pattern not in rep_tests._jitted().lower(params, x, y).as_text()


def test_weightings_named_in_test_autogram_exist():
  for name in ("mgda_weights", "nash_mtl_weights", "cagrad_weights",
               "imtl_g_weights", "pcgrad_weights"):
    assert name in fj.__all__, name
    assert callable(getattr(fj, name)), name


def test_reported_residual_is_that_of_the_stored_weights():
  """FairGrad's state reports the residual of the weights it stores.

  The aggregator solves on the Gram matrix of g_i / σ (σ = 2^e) and stored
  w = w̃ 2^(e(p-1)), p = (1-α)/(1+α). At α = 2 with e = 4 that factor is
  2^(-16/3), not a power of two: converting rounded every weight, and with
  conflicting gradients (GᵀG w cancels) the stored weights' residual was
  not the one reported (measured before on these three cases, reported /
  stored weights': 2.4e-6 / 2.6e-6, 1.5e-6 / 5.6e-8, 2.0e-7 / 5.6e-7; now
  1.48e-6 / 1.50e-6, 0 / 5e-9, 5.15e-7 / 5.14e-7). The weighting now
  solves in the true units there.
  """
  for seed in range(3):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(3, 64))
    g = np.stack([base[0], -base[0] + 0.1 * base[1], base[2]])
    g = (g * (16.0 / np.max(np.abs(g)))).astype(np.float32)  # e = 4
    grads = {"w": jnp.asarray(g)}
    _, state = _stored_weights_update(grads, _STORED_AGG.init(
        {"w": jnp.zeros(64)}))
    gram = np.asarray(fj.gram_matrix(grads), np.float64)
    w = np.asarray(state.weights, np.float64)
    reported = float(state.extra.relative_residual)
    recomputed = _hard_set.relative_residual(gram, w, 2.0)
    assert bool(state.extra.converged), seed
    np.testing.assert_allclose(reported, recomputed, rtol=0.05, atol=2e-8,
                               err_msg=str(seed))


_STORED_AGG = fj.fairgrad(alpha=2.0, num_tasks=3)
_stored_weights_update = jax.jit(_STORED_AGG.update)
