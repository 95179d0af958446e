"""Compiler options for a lean compile of a training step on a CPU."""

import functools

import jax
import jax.numpy as jnp

# XLA's CPU fusion emitters (the default in jaxlib 0.10) hold about 1.3 MB
# of memory per fusion of the program while it compiles, and take ~15 ms per
# fusion against ~9 ms for the emitters they replaced: 200 small fusions
# compile with a 270 MB peak against 26 MB. A FairGrad step has a few hundred
# fusions (the weight solve's loop, its polishing, the rare-path branches),
# so its first call peaks far above every later one (issue 13: K = 40, MLP
# 256-1024-1024, 848 MB against 239 MB per step after it; 315 MB with the
# option). The option changes the code XLA emits for each fusion, not the
# program: the hard-set residuals of the weight solve are the same.
_LEAN_CPU = {"xla_cpu_use_fusion_emitters": False}


@functools.lru_cache(maxsize=None)
def _accepted(option: str, value) -> bool:
  """Whether this jaxlib's XLA knows ``option`` (compiles a tiny program)."""
  try:
    jax.jit(jnp.negative, compiler_options={option: value}).lower(
        jnp.zeros((), jnp.float32)).compile()
  except Exception:  # pylint: disable=broad-except
    # An XLA without the option refuses it ("No such compile option", a
    # JaxRuntimeError or XlaRuntimeError by version), a jax.jit without
    # compiler_options raises TypeError: either way there is nothing to set.
    return False
  return True


def lean_compiler_options(backend: str | None = None) -> dict:
  """``compiler_options`` for ``jax.jit`` that cut a step's compile memory.

  On a CPU, XLA's fusion emitters hold about 1.3 MB per fusion of the
  program while it compiles. A multi-task step with FairGrad has a few
  hundred fusions (the weight solve's Newton loop and its polishing), so
  its first call, which compiles it, peaks several hundred MB above every
  later call. XLA's previous emitters compile the same program in a
  fraction of that memory, and sooner. Measured on a 2-core CPU
  (``benchmarks.peer_speed --memory``, K = 40, MLP 256-1024-1024, batch
  256, one run): the stacked FairGrad step's first steps peak at 315 MB
  instead of 848 MB (TorchJD's autojac: 457 MB), its first call is 0.9–1.7
  s shorter at K = 2–40, and later steps run at the same speed. The
  Gram-only step (:func:`weighted_grad`, ``chunk_size=1``) peaks at 117 MB
  instead of 404 MB but ran 10% slower, so this is a choice per step, not
  a default.

  Args:
    backend: ``"cpu"``, ``"gpu"``, ``"tpu"``...; None: JAX's default backend.

  Returns:
    ``{"xla_cpu_use_fusion_emitters": False}`` on a CPU whose XLA accepts
    the option; ``{}`` on other backends (their compilers are unaffected)
    and on an XLA that no longer has it. Pass it as
    ``jax.jit(step, compiler_options=...)``: it applies to that jitted
    function as a whole.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> import fairgrad_jax
    >>> fairgrad_jax.lean_compiler_options("gpu")
    {}
    >>> opts = fairgrad_jax.lean_compiler_options()
    >>> solve = lambda g: fairgrad_jax.fairgrad_weights(g, alpha=2.0)
    >>> lean = jax.jit(solve, compiler_options=opts)
    >>> gram = jnp.array([[1.0, 0.0], [0.0, 4.0]])
    >>> bool(jnp.allclose(lean(gram), jax.jit(solve)(gram)))
    True
  """
  if backend is None:
    backend = jax.default_backend()
  if not isinstance(backend, str):
    raise TypeError(f"backend must be a str such as 'cpu' or None, got"
                    f" {backend!r}.")
  if backend != "cpu":
    return {}
  return {k: v for k, v in _LEAN_CPU.items() if _accepted(k, v)}
