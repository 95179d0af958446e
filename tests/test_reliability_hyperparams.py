"""One rule for hyperparameters: refused at construction, by name (issue 12).

Floats (tol, max_norm, c...) must be finite and in range, counts (maxiter)
ints >= 1, flags bools. Every case below used to be accepted and failed, or
gave a silently wrong update, only once the aggregator ran (tol=inf stops
Frank–Wolfe at once, maxiter=0 skips it, c=inf gives NaN, max_norm=inf
divides by inf...). FairGrad's own solve options are checked by its module.
"""

import math

import jax.numpy as jnp
import pytest

import fairgrad_jax as fj

INF, NAN = math.inf, math.nan
G = jnp.eye(3)

CASES = {
    "mgda-tol-inf": (lambda: fj.mgda(tol=INF), "tol"),
    "mgda-maxiter-0": (lambda: fj.mgda(maxiter=0), "maxiter"),
    "mgda-max_norm-inf": (lambda: fj.mgda(max_norm=INF), "max_norm"),
    "mgda-scale_by_num_tasks-str": (
        lambda: fj.mgda(scale_by_num_tasks="yes"), "scale_by_num_tasks"),
    "mgda_solve-maxiter-0": (lambda: fj.mgda_solve(G, maxiter=0), "maxiter"),
    "mgda_solve-tol-inf": (lambda: fj.mgda_solve(G, tol=INF), "tol"),
    "mgda_weights-tol-inf": (lambda: fj.mgda_weights(G, tol=INF), "tol"),
    "cagrad-maxiter-bool": (lambda: fj.cagrad(maxiter=True), "maxiter"),
    "cagrad-rescale-str": (lambda: fj.cagrad(rescale="yes"), "rescale"),
    "cagrad-scale_by_num_tasks-int": (
        lambda: fj.cagrad(scale_by_num_tasks=2), "scale_by_num_tasks"),
    "cagrad_weights-c-inf": (lambda: fj.cagrad_weights(G, c=INF), "c"),
    "cagrad_weights-maxiter-0": (
        lambda: fj.cagrad_weights(G, maxiter=0), "maxiter"),
    "imtl_g-scale_by_num_tasks-none": (
        lambda: fj.imtl_g(scale_by_num_tasks=None), "scale_by_num_tasks"),
    "linear_scalarization-via-fairgrad-max_norm-inf": (
        lambda: fj.fairgrad(0.0, max_norm=INF), "max_norm"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_hyperparameter_is_refused_by_name(case):
  build, name = CASES[case]
  with pytest.raises((ValueError, TypeError), match=rf"^{name} must be"):
    build()


@pytest.mark.parametrize("build", [
    lambda: fj.mgda(tol=1e-3, maxiter=1, max_norm=2.0),
    lambda: fj.cagrad(c=1.0, maxiter=1, rescale=False,
                      scale_by_num_tasks=True),
    lambda: fj.mgda_solve(G, maxiter=1, tol=0.5),
    lambda: fj.cagrad_weights(G, c=0.0, maxiter=1),
])
def test_good_hyperparameters_pass(build):
  build()
