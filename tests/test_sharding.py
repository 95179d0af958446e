"""Data parallelism: one step on 4 (simulated CPU) devices equals 1 device.

XLA fixes the device count when JAX starts, so the check runs in a fresh
interpreter with ``XLA_FLAGS=--xla_force_host_platform_device_count=4``.
"""

import json
import os
import subprocess
import sys
import textwrap

import jax.numpy as jnp
import pytest

import fairgrad_jax

_SCRIPT = textwrap.dedent("""
    import functools, json
    import jax, jax.numpy as jnp, numpy as np
    import fairgrad_jax

    assert len(jax.devices()) == 4, jax.devices()
    K = 3

    def encoder(params, x, y):
      return jnp.tanh(x @ params["w"])

    def heads(params, z, x, y):
      pred = jnp.einsum("bh,khy->kby", z, params["heads"])
      return jnp.mean((pred - jnp.swapaxes(y, 0, 1)) ** 2, axis=(1, 2))

    def losses(params, x, y):
      return heads(params, encoder(params, x, y), x, y)

    k1, k2, k3, k4 = jax.random.split(jax.random.key(0), 4)
    params = {"w": jax.random.normal(k1, (3, 6)),
              "heads": jax.random.normal(k2, (K, 6, 2))}
    x = jax.random.normal(k3, (8, 3))
    y = jax.random.normal(k4, (8, K, 2))  # batch first
    weights_fn = functools.partial(fairgrad_jax.fairgrad_weights, alpha=2.0)
    steps = {
        "jvp": fairgrad_jax.weighted_grad(losses, weights_fn, chunk_size=1),
        "vjp": fairgrad_jax.weighted_grad(losses, weights_fn, chunk_size=2,
                                          mode="vjp"),
        "representation": fairgrad_jax.representation_grad(
            encoder, heads, weights_fn),
    }
    mesh = fairgrad_jax.data_mesh()
    one = jax.devices()[0]
    result = {}
    for name, step in steps.items():
      single = jax.jit(step)(jax.device_put(params, one),
                             jax.device_put(x, one), jax.device_put(y, one))
      parallel = fairgrad_jax.data_parallel(step, mesh, batch_argnums=(1, 2))
      multi = parallel(params, x, y)
      diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))
                       / (np.max(np.abs(np.asarray(b))) + 1e-30))
                 for a, b in zip(jax.tree.leaves(multi),
                                 jax.tree.leaves(single)))
      hlo = parallel.jitted.lower(
          fairgrad_jax.replicate(params, mesh),
          fairgrad_jax.shard_batch(x, mesh),
          fairgrad_jax.shard_batch(y, mesh)).compile().as_text()
      result[name] = {"diff": diff, "all_reduce": "all-reduce" in hlo,
                      "devices": len(multi.update["w"].sharding.device_set)}
    print(json.dumps(result))
""")


@pytest.mark.slow
def test_four_devices_equal_one_device():
  env = dict(os.environ)
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      " --xla_force_host_platform_device_count=4").strip()
  env["JAX_PLATFORMS"] = "cpu"
  proc = subprocess.run([sys.executable, "-c", _SCRIPT], env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert set(result) == {"jvp", "vjp", "representation"}
  for name, r in result.items():
    assert r["diff"] < 1e-5, (name, r)  # relative to each output's max
    assert r["all_reduce"], (name, "no cross-device reduction in the HLO")
    assert r["devices"] == 4, (name, r)


def test_shard_batch_checks_divisibility():
  mesh = fairgrad_jax.data_mesh()
  n = mesh.shape["data"]
  with pytest.raises(ValueError, match="divisible"):
    fairgrad_jax.shard_batch(jnp.ones((n * 2 + 1, 3)) if n > 1
                             else jnp.ones(()), mesh)
