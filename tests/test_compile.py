"""fairgrad_jax.lean_compiler_options: what it returns, and that it changes
how a step compiles, not what it computes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import fairgrad_jax as fj
from fairgrad_jax import _compile


@pytest.mark.parametrize("backend", ["gpu", "tpu", "cuda", "rocm"])
def test_nothing_to_set_off_the_cpu(backend):
  assert fj.lean_compiler_options(backend) == {}


def test_the_cpu_gets_the_previous_fusion_emitters():
  # jaxlib >= 0.10 has the option; an XLA without it would make this fail,
  # and the helper's docstring (and the README's figures) would need a look.
  assert fj.lean_compiler_options("cpu") == {
      "xla_cpu_use_fusion_emitters": False}
  if jax.default_backend() == "cpu":
    assert fj.lean_compiler_options() == fj.lean_compiler_options("cpu")


def test_an_option_xla_does_not_know_is_left_out(monkeypatch):
  monkeypatch.setattr(_compile, "_LEAN_CPU",
                      {"xla_cpu_no_such_option_here": False,
                       "xla_cpu_use_fusion_emitters": False})
  assert fj.lean_compiler_options("cpu") == {
      "xla_cpu_use_fusion_emitters": False}


@pytest.mark.parametrize("backend", [0, ["cpu"], b"cpu"])
def test_a_backend_that_is_not_a_name_is_refused(backend):
  with pytest.raises(TypeError, match="backend must be a str"):
    fj.lean_compiler_options(backend)


def test_a_fairgrad_step_computes_the_same_under_the_options():
  """The options pick how XLA emits each fusion; the step's arithmetic is
  the same program. Conflicting tasks with norms over three decades at
  α = 5 (the solve's Newton loop and polishing both run), three steps so
  that the warm start is exercised too."""
  k = 4
  rng = np.random.default_rng(3)
  base = rng.standard_normal((k, 64)).astype(np.float32)
  base[1] = -0.9 * base[0] + 0.1 * base[1]
  scales = np.logspace(-1.5, 1.5, k).astype(np.float32)[:, None]
  params = {"w": jnp.zeros((64,), jnp.float32)}
  opt = optax.chain(fj.fairgrad(5.0, num_tasks=k), optax.sgd(0.1))

  def run(options):
    def step(grads, state, params):
      updates, state = opt.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    step = jax.jit(step, compiler_options=options)
    p, state, out = params, opt.init(params), []
    for t in range(3):
      grads = {"w": jnp.asarray(base * scales * (1.0 + 0.01 * t))}
      p, state = step(grads, state, p)
      out.append((p["w"], state[0].weights))
    return out

  if jax.default_backend() != "cpu":
    pytest.skip("the options are empty off the CPU: nothing to compare")
  lean = fj.lean_compiler_options()
  assert lean
  for (p_d, w_d), (p_l, w_l) in zip(run(None), run(lean)):
    assert np.all(np.isfinite(w_l)) and np.all(w_l > 0)
    np.testing.assert_allclose(w_l, w_d, rtol=2e-5)
    np.testing.assert_allclose(p_l, p_d, rtol=2e-5, atol=1e-7)
