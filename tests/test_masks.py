"""fairgrad_jax.shared_mask for flax trees, the mask-mismatch error, and
fairgrad_jax.models without flax."""

import importlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fairgrad_jax as fj

K = 2


def _variables():
  k1, k2 = jax.random.split(jax.random.key(0))
  return {"params": {"encoder": {"kernel": jax.random.normal(k1, (3, 4))},
                     "heads": {"kernel": jax.random.normal(k2, (4, K))}}}


def _losses(variables, x, y):
  p = variables["params"]
  return jnp.mean((jnp.tanh(x @ p["encoder"]["kernel"]) @ p["heads"]["kernel"]
                   - y) ** 2, axis=0)


def _data():
  x = jax.random.normal(jax.random.key(1), (16, 3))
  return x, jnp.stack([x[:, 0], 10 * x[:, 1]], axis=1)


def test_mask_keeps_the_levels_of_the_tree_it_is_given():
  variables = _variables()
  assert fj.shared_mask(variables, "encoder") == {
      "params": {"encoder": {"kernel": True}, "heads": {"kernel": False}}}
  assert fj.shared_mask(variables["params"], ("encoder",)) == {
      "encoder": {"kernel": True}, "heads": {"kernel": False}}
  # A predicate on the key path.
  assert fj.shared_mask(variables, lambda path: path[1] == "encoder") == (
      fj.shared_mask(variables, "encoder"))


def test_mask_of_linen_variables_gives_the_hand_written_update():
  variables = _variables()
  x, y = _data()
  grads = jax.jacrev(_losses)(variables, x, y)
  by_helper = fj.fairgrad(2.0, shared=fj.shared_mask(variables, "encoder"))
  by_hand = fj.fairgrad(2.0, shared={"params": {"encoder": True,
                                                "heads": False}})
  u1, _ = by_helper.update(grads, by_helper.init(variables), variables)
  u2, _ = by_hand.update(grads, by_hand.init(variables), variables)
  jax.tree.map(np.testing.assert_array_equal, u1, u2)


def test_mask_without_the_params_level_names_the_cause():
  variables = _variables()
  x, y = _data()
  grads = jax.jacrev(_losses)(variables, x, y)
  agg = fj.fairgrad(2.0, shared={"encoder": True, "heads": False})
  with pytest.raises(ValueError, match="lacks the 'params' level"):
    agg.update(grads, agg.init(variables), variables)


def test_mask_with_an_extra_params_level_names_the_cause():
  variables = _variables()
  x, y = _data()
  grads = jax.jacrev(lambda p: _losses({"params": p}, x, y))(
      variables["params"])
  agg = fj.fairgrad(2.0, shared=fj.shared_mask(variables, "encoder"))
  with pytest.raises(ValueError, match="has a 'params' level"):
    agg.update(grads, agg.init(variables["params"]), variables["params"])


def test_a_name_that_marks_nothing_is_refused_with_the_names_available():
  with pytest.raises(ValueError, match=r"marks no parameter.*'encoder'"):
    fj.shared_mask(_variables(), "trunk")
  with pytest.raises(ValueError, match="submodule name"):
    fj.shared_mask(_variables(), [])


def test_mask_of_an_nnx_state_trains_with_nnx_optimizer():
  nnx = pytest.importorskip("flax.nnx")

  class Net(nnx.Module):

    def __init__(self, rngs):
      self.encoder = nnx.Linear(3, 8, rngs=rngs)
      self.heads = nnx.Linear(8, K, rngs=rngs)

    def __call__(self, x):
      return self.heads(jnp.tanh(self.encoder(x)))

  model = Net(nnx.Rngs(0))
  state = nnx.state(model, nnx.Param)
  mask = fj.shared_mask(state, "encoder")
  assert jax.tree.structure(mask) == jax.tree.structure(nnx.as_pure(state))
  assert jax.tree.leaves(mask["encoder"]) == [True, True]
  assert jax.tree.leaves(mask["heads"]) == [False, False]
  x, y = _data()
  optimizer = nnx.Optimizer(
      model, optax.chain(fj.fairgrad(2.0, num_tasks=K, shared=mask),
                         optax.adam(1e-2)), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer):
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    losses_fn = lambda p: jnp.mean(
        (nnx.merge(graphdef, p, rest)(x) - y) ** 2, axis=0)
    losses, grads = losses_fn(params), jax.jacrev(losses_fn)(params)
    optimizer.update(model, grads, losses=losses)
    return losses

  first = step(model, optimizer)
  for _ in range(30):
    losses = step(model, optimizer)
  assert bool((losses < first).all()), (first, losses)
  assert bool((jnp.asarray(optimizer.opt_state[0].weights) > 0).all())

  # A plain-dict mask does not fit the State: the error says what to build.
  agg = fj.fairgrad(2.0, shared={"encoder": True, "heads": False})
  grads = jax.tree.map(lambda v: jnp.stack([v, v]), nnx.as_pure(state))
  with pytest.raises(ValueError, match="build the mask from the same tree"):
    agg.update(grads, agg.init(nnx.as_pure(state)), nnx.as_pure(state))


def test_models_without_flax_says_what_to_install(monkeypatch):
  for name in list(sys.modules):
    if name == "flax" or name.startswith(("flax.", "fairgrad_jax.models")):
      monkeypatch.delitem(sys.modules, name)
  monkeypatch.setitem(sys.modules, "flax", None)  # `import flax` fails
  with pytest.raises(ImportError,
                     match=r"pip install 'fairgrad_jax\[models\]'"):
    importlib.import_module("fairgrad_jax.models")
