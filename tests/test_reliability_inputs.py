"""Misuse gives a clear error at trace time (issue 12, item 5, cryptic errors).

Each case used to pass silently (a plain gradient taken for K stacked ones,
integer gradients cast back to zeros) or fail deep inside JAX (K = 0, tuple
or integer losses, an aggregator factory as ``weights_fn``, a mesh axis not
named 'data', complex gradients). Each now raises a ``ValueError`` or
``TypeError`` that names the argument and what was expected.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fairgrad_jax

# Every aggregator factory, built with K = 2 where it needs K.
AGGREGATORS = {
    "fairgrad": lambda: fairgrad_jax.fairgrad(2.0, num_tasks=2),
    "linear_scalarization": fairgrad_jax.linear_scalarization,
    "mgda": fairgrad_jax.mgda,
    "pcgrad": fairgrad_jax.pcgrad,
    "cagrad": fairgrad_jax.cagrad,
    "imtl_g": fairgrad_jax.imtl_g,
    "nash_mtl": fairgrad_jax.nash_mtl,
    "graddrop": fairgrad_jax.graddrop,
    "rlw": fairgrad_jax.rlw,
    "dwa": lambda: fairgrad_jax.dwa(num_tasks=2),
    "uw": lambda: fairgrad_jax.uw(num_tasks=2),
    "scale_invariant": fairgrad_jax.scale_invariant,
    "famo": lambda: fairgrad_jax.famo(num_tasks=2),
}
NAMES = sorted(AGGREGATORS)
LOSSES = jnp.array([1.0, 2.0])
PARAMS = {"w": jnp.ones((2,)), "b": jnp.ones((2, 3))}


def _update(name, grads, params=None):
  agg = AGGREGATORS[name]()
  return agg.update(grads, agg.init(params), params, losses=LOSSES)


@pytest.mark.parametrize("name", NAMES)
def test_plain_gradient_with_params_is_refused(name):
  # Every leaf's leading size is 2 = K: before, it passed for two tasks.
  plain = jax.tree.map(jnp.ones_like, PARAMS)
  with pytest.raises(ValueError, match=r"\(K, \*param.shape\).*plain"):
    _update(name, plain, PARAMS)


@pytest.mark.parametrize("name", NAMES)
def test_stacked_gradient_with_params_passes(name):
  stacked = jax.tree.map(lambda x: jnp.stack([x, -0.5 * x]), PARAMS)
  out, _ = _update(name, stacked, PARAMS)
  assert jax.tree.map(jnp.shape, out) == jax.tree.map(jnp.shape, PARAMS)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_, jnp.complex64])
@pytest.mark.parametrize("name", NAMES)
def test_non_real_float_gradients_are_refused(name, dtype):
  grads = {"w": jnp.ones((2, 3), dtype)}
  name_of_dtype = "bool" if dtype is jnp.bool_ else dtype.__name__
  with pytest.raises(TypeError, match=f"real floating-point.*{name_of_dtype}"):
    _update(name, grads)


@pytest.mark.parametrize("name", NAMES)
def test_zero_tasks_are_refused(name):
  with pytest.raises(ValueError, match="K = 0"):
    _update(name, {"w": jnp.ones((0, 3))})


def test_gram_matrix_of_zero_tasks_is_refused():
  with pytest.raises(ValueError, match="K = 0"):
    fairgrad_jax.gram_matrix({"w": jnp.ones((0, 3))})


def _losses(params, x):
  return jnp.stack([jnp.sum(params["w"] * x), jnp.sum((params["w"] * x) ** 2)])


_P = {"w": jnp.array([1.0, -2.0, 0.5])}
_X = jnp.array([0.5, 1.0, 2.0])


@pytest.mark.parametrize("mode", ["jvp", "vjp"])
@pytest.mark.parametrize("bad, error, match", [
    (lambda p, x: (jnp.sum(p["w"]), jnp.sum(p["w"] ** 2)), TypeError,
     "one \\(K,\\) array.*tuple.*jnp.stack"),
    (lambda p, x: jnp.array([1, 2]) + jnp.sum(p["w"] > 0), TypeError,
     "real floating-point losses.*int32"),
    (lambda p, x: jnp.zeros((0,)) * jnp.sum(p["w"]), ValueError, "K = 0"),
])
def test_weighted_grad_bad_losses(bad, error, match, mode):
  grad_fn = fairgrad_jax.weighted_grad(bad, fairgrad_jax.mgda_weights,
                                       mode=mode)
  with pytest.raises(error, match=match):
    grad_fn(_P, _X)


@pytest.mark.parametrize("bad, error, match", [
    (lambda p, x: (jnp.sum(p["w"]), jnp.sum(p["w"] ** 2)), TypeError,
     "tuple"),
    (lambda p, x: jnp.zeros((0,)) * jnp.sum(p["w"]), ValueError, "K = 0"),
])
def test_task_gradients_bad_losses(bad, error, match):
  with pytest.raises(error, match=match):
    fairgrad_jax.task_gradients(bad)(_P, _X)


@pytest.mark.parametrize("factory, instead", [
    (fairgrad_jax.fairgrad, "fairgrad_weights"),
    (fairgrad_jax.mgda, "mgda_weights"),
    (fairgrad_jax.cagrad, "cagrad_weights"),
    (fairgrad_jax.imtl_g, "imtl_g_weights"),
    (fairgrad_jax.nash_mtl, "nash_mtl_weights"),
    (fairgrad_jax.pcgrad, "pcgrad_weights"),
    (fairgrad_jax.famo, "no Gram weighting"),
])
def test_aggregator_factory_as_weights_fn_is_refused(factory, instead):
  # Before: fairgrad got the Gram matrix as alpha ("alpha must be a finite
  # number >= 0, got Array([[...]])"), imtl_g a positional-argument error.
  with pytest.raises(TypeError, match=f"aggregator factory.*{instead}"):
    fairgrad_jax.weighted_grad(_losses, factory)
  with pytest.raises(TypeError, match=f"aggregator factory.*{instead}"):
    fairgrad_jax.representation_grad(lambda p, x: x, lambda p, z, x: z,
                                     factory)


def test_aggregator_as_weights_fn_is_refused():
  with pytest.raises(TypeError, match="optax aggregator mgda"):
    fairgrad_jax.weighted_grad(_losses, fairgrad_jax.mgda())


def test_weighted_grad_good_call_still_works():
  out = fairgrad_jax.weighted_grad(
      _losses, functools.partial(fairgrad_jax.fairgrad_weights, alpha=2.0))(
          _P, _X)
  assert np.all(np.isfinite(np.asarray(out.update["w"])))


def test_mesh_without_a_data_axis_is_named():
  mesh = fairgrad_jax.data_mesh(axis_name="batch")
  step = lambda p, x: _losses(p, x)
  # Before: KeyError: 'data' from inside jax.sharding.
  with pytest.raises(ValueError, match="no axis 'data'.*'batch'.*axis_name="):
    fairgrad_jax.data_parallel(step, mesh)
  with pytest.raises(ValueError, match="no axis 'data'"):
    fairgrad_jax.shard_batch(jnp.ones((4, 3)), mesh)
  parallel = fairgrad_jax.data_parallel(step, mesh, axis_name="batch")
  assert parallel(_P, _X[None].repeat(len(jax.devices()), 0)).shape == (2,)
