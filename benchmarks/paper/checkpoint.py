"""Per-epoch checkpoints with orbax: arrays as a pytree, the rest as JSON.

A checkpoint holds everything a run's future depends on, so that a resumed
run ends bit-identical to an uninterrupted one:

* ``state`` (orbax ``StandardSave``): parameters, batch-norm statistics, the
  optimiser state (aggregator state included: FairGrad's warm start, FAMO's
  logits, UW's log-variances, the PRNG keys of PCGrad/RLW/GradDrop, Adam's
  moments and its injected learning rate) and the run's PRNG key (typed keys
  are stored as their raw key data);
* ``host`` (``JsonSave``): the epochs done (the data iterator restarts at the
  next epoch, whose order and augmentation are drawn from that key), the
  learning-rate scheduler's state, the per-epoch history and the model
  selection so far.
"""

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp


def _is_key(x) -> bool:
  return isinstance(x, jax.Array) and jax.dtypes.issubdtype(
      x.dtype, jax.dtypes.prng_key)


def _to_data(tree):
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x,
                      tree)


def _from_data(tree, like):
  # Through host memory: restored arrays come back committed to a device,
  # and jit would compile its functions again for them.
  def restore(x, ref):
    x = jnp.asarray(np.asarray(x))
    return (jax.random.wrap_key_data(x, impl=jax.random.key_impl(ref))
            if _is_key(ref) else x)
  return jax.tree.map(restore, tree, like)


class Checkpointer:
  """The checkpoints of one run, one per epoch, in ``directory``."""

  def __init__(self, directory: str, max_to_keep: int = 2):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True,
            enable_async_checkpointing=False))

  def latest_epoch(self) -> int | None:
    """Epochs done by the latest checkpoint (None: there is none)."""
    return self._manager.latest_step()

  def save(self, epoch: int, state: Any, host: dict) -> None:
    self._manager.save(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_to_data(state)),
        host=ocp.args.JsonSave(host)))
    self._manager.wait_until_finished()

  def restore(self, epoch: int, like: Any) -> tuple[Any, dict]:
    """The state (structured and typed like ``like``) and host dict."""
    restored = self._manager.restore(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_to_data(like)),
        host=ocp.args.JsonRestore()))
    return _from_data(restored["state"], like), restored["host"]

  def restore_raw(self, epoch: int) -> tuple[Any, dict]:
    """The state as orbax stores it (nested dicts, keys as key data)."""
    restored = self._manager.restore(epoch, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(), host=ocp.args.JsonRestore()))
    return restored["state"], restored["host"]

  def close(self) -> None:
    self._manager.close()
