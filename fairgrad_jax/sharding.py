"""Data parallelism with ``jax.sharding``: batch split, params replicated.

The per-task losses are means over the whole batch, so when the batch is
sharded along a ``'data'`` mesh axis and the step is jitted, XLA computes
each device's partial per-task gradients (or Gram blocks) and inserts the
all-reduce that averages them *before* the Gram matrix and the weight solve
(which then run replicated on every device). A step on D devices is the
single-device step on the same global batch, up to summation order.

On a host with several accelerators (GPUs, TPU cores) nothing needs
configuring: ``data_mesh()`` uses ``jax.devices()``. On CPU, simulate D
devices with ``XLA_FLAGS=--xla_force_host_platform_device_count=D`` set
before JAX is imported. On several hosts, call
``jax.distributed.initialize()`` first and pass each host's part of the
batch through ``jax.make_array_from_process_local_data``.
"""

from typing import Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec


def data_mesh(devices: Sequence[jax.Device] | None = None,
              axis_name: str = "data") -> Mesh:
  """A one-axis mesh over ``devices`` (default: all of ``jax.devices()``).

  Examples:
    >>> import fairgrad_jax
    >>> mesh = fairgrad_jax.sharding.data_mesh()
    >>> mesh.axis_names
    ('data',)
  """
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (axis_name,))


def _check_axis(mesh, axis_name):
  if not isinstance(mesh, Mesh):
    raise TypeError(f"mesh must be a jax.sharding.Mesh (e.g. from"
                    f" fairgrad_jax.sharding.data_mesh()), got {type(mesh).__name__}.")
  if axis_name not in mesh.axis_names:
    raise ValueError(
        f"The mesh has no axis {axis_name!r} to split the batch over; its"
        f" axes are {tuple(mesh.axis_names)}. Pass axis_name= naming the"
        " batch axis (e.g. axis_name="
        f"{mesh.axis_names[0]!r}), or build the mesh with"
        " fairgrad_jax.sharding.data_mesh().")


def shard_batch(batch, mesh: Mesh, axis_name: str = "data"):
  """Places every leaf of ``batch`` split along its leading axis over the mesh.

  Raises:
    ValueError: if the mesh has no axis ``axis_name``, or a leaf's leading
      size is not a multiple of the number of devices on it.
  """
  _check_axis(mesh, axis_name)
  num = mesh.shape[axis_name]
  for x in jax.tree.leaves(batch):
    if np.ndim(x) == 0 or np.shape(x)[0] % num:
      raise ValueError(
          f"Every batch leaf needs a leading axis divisible by the {num}"
          f" devices of mesh axis {axis_name!r}; got shape {np.shape(x)}.")
  return jax.device_put(batch, NamedSharding(mesh, PartitionSpec(axis_name)))


def replicate(tree, mesh: Mesh):
  """Places a full copy of every leaf of ``tree`` on every mesh device."""
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def data_parallel(fn: Callable, mesh: Mesh | None = None, *,
                  batch_argnums: Sequence[int] = (1,),
                  axis_name: str = "data") -> Callable:
  """Jits ``fn`` for data parallelism: batch arguments split, the rest copied.

  The positional arguments in ``batch_argnums`` are sharded along their
  leading axis over ``axis_name`` (see :func:`shard_batch`); every other
  argument (params, optimizer state, ``init=`` weights) is replicated, and
  so are the outputs. Works with any step built on :func:`weighted_grad`,
  :func:`representation_grad` or the stacked aggregators, provided the
  losses are means over the batch.

  Args:
    fn: the step, e.g. ``weighted_grad(losses_fn, weights_fn)``.
    mesh: a mesh with a ``axis_name`` axis (default: :func:`data_mesh`).
    batch_argnums: positions of the batch arguments.
    axis_name: the mesh axis the batch is split over.

  Returns:
    The jitted function; its ``jitted`` attribute is the underlying
    ``jax.jit`` object (for ``.lower(...)``).

  Examples:
    >>> import functools, jax.numpy as jnp
    >>> import fairgrad_jax
    >>> def losses(params, x):
    ...   return jnp.mean((x @ params - 1.0) ** 2, axis=0)  # (K,) = (2,)
    >>> weights_fn = functools.partial(fairgrad_jax.fairgrad_weights,
    ...                                alpha=2.0)
    >>> step = fairgrad_jax.sharding.data_parallel(
    ...     fairgrad_jax.weighted_grad(losses, weights_fn))
    >>> out = step(jnp.ones((3, 2)), jnp.ones((8, 3)))  # batch of 8
    >>> out.update.shape
    (3, 2)
  """
  mesh = data_mesh(axis_name=axis_name) if mesh is None else mesh
  _check_axis(mesh, axis_name)
  batch_argnums = tuple(batch_argnums)
  replicated = NamedSharding(mesh, PartitionSpec())
  jitted = jax.jit(fn, out_shardings=replicated)

  def wrapped(*args, **kwargs):
    args = [shard_batch(a, mesh, axis_name) if i in batch_argnums
            else replicate(a, mesh) for i, a in enumerate(args)]
    kwargs = {k: v if v is None else replicate(v, mesh)
              for k, v in kwargs.items()}
    return jitted(*args, **kwargs)

  wrapped.jitted = jitted
  return wrapped
