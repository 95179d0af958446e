"""Per-task layers stacked on a leading task axis, and the shared/task split.

Every model of :mod:`fairgrad_jax.models` keeps its parameters in two
top-level collections, ``'encoder'`` (shared by all tasks) and ``'heads'``
(task-specific). :func:`shared_mask` turns that split into the boolean pytree
that the aggregators take as ``shared=``.

Heads that have the same shape for every task are stored stacked:
:class:`TaskDense` holds K dense layers as one (K, d_in, d_out) kernel. That
makes "the output of task i" a gather, ``kernel[i]``, which works with a
traced ``i``: per-task gradients by ``jax.vmap(jax.grad(task_loss))`` over
task indices then cost one head per task, not K.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["shared_mask", "TaskDense"]

# Each task's kernel initialised as a lecun-normal Dense kernel (fan-in d_in).
_stacked_lecun_normal = nn.initializers.lecun_normal(
    in_axis=-2, out_axis=-1, batch_axis=(0,)
)


class TaskDense(nn.Module):
  """K dense layers, one per task, parameters stacked on axis 0.

  Call with ``task=None`` for every task and with an integer (Python or
  traced) for one:

  * shared input x of shape (..., d_in): ``task=None`` gives (K, ..., d_out),
    ``task=i`` gives (..., d_out);
  * per-task input (``per_task_input=True``, e.g. the output of a previous
    :class:`TaskDense` with ``task=None``) of shape (K, ..., d_in): gives
    (K, ..., d_out).

  Attributes:
    num_tasks: K.
    features: d_out.
    use_bias: add a per-task bias.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from fairgrad_jax.models import TaskDense
    >>> layer = TaskDense(num_tasks=3, features=2)
    >>> params = layer.init(jax.random.key(0), jnp.ones((5, 4)))
    >>> params["params"]["kernel"].shape
    (3, 4, 2)
    >>> layer.apply(params, jnp.ones((5, 4))).shape
    (3, 5, 2)
    >>> layer.apply(params, jnp.ones((5, 4)), task=1).shape
    (5, 2)
  """

  num_tasks: int
  features: int
  use_bias: bool = True
  kernel_init: Any = _stacked_lecun_normal
  bias_init: Any = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x, task=None, per_task_input: bool = False):
    d_in = x.shape[-1]
    kernel = self.param("kernel", self.kernel_init,
                        (self.num_tasks, d_in, self.features))
    bias = (self.param("bias", self.bias_init,
                       (self.num_tasks, self.features))
            if self.use_bias else None)
    if task is not None:
      if per_task_input:
        raise ValueError("per_task_input needs task=None.")
      y = x @ kernel[task]
      return y + bias[task] if bias is not None else y
    if per_task_input:
      if x.shape[0] != self.num_tasks:
        raise ValueError(
            f"per-task input needs a leading axis of {self.num_tasks} tasks,"
            f" got shape {x.shape}."
        )
      y = jnp.einsum("k...i,kio->k...o", x, kernel)
    else:
      y = jnp.einsum("...i,kio->k...o", x, kernel)
    if bias is not None:
      y = y + bias.reshape((self.num_tasks,) + (1,) * (y.ndim - 2)
                           + (self.features,))
    return y


def shared_mask(params) -> Any:
  """The ``shared=`` mask of the ``params`` collection: True under 'encoder'.

  Accepts the ``params`` collection (a dict with keys 'encoder' and 'heads')
  or the full variables dict holding it under 'params', and returns the mask
  of the ``params`` collection in both cases (without the 'params' level):
  it fits gradients taken with respect to ``variables["params"]``, as the
  benchmarks take them. For gradients with respect to the whole variables
  dict, or an NNX state, use :func:`fairgrad_jax.shared_mask` on that tree
  (``fairgrad_jax.shared_mask(variables, "encoder")``), which keeps every
  level of the tree it is given.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from fairgrad_jax.models import MultiLeNet, shared_mask
    >>> model = MultiLeNet()
    >>> params = jax.eval_shape(model.init, jax.random.key(0),
    ...                         jnp.zeros((1, 11, 11, 1)))
    >>> mask = shared_mask(params["params"])
    >>> jax.tree.leaves(mask["encoder"])[0], jax.tree.leaves(mask["heads"])[0]
    (True, False)
  """
  if "params" in params and "encoder" not in params:
    params = params["params"]
  if set(params) != {"encoder", "heads"}:
    raise ValueError(
        "expected parameters with exactly the top-level keys 'encoder' and"
        f" 'heads', got {sorted(params)}."
    )
  return {
      "encoder": jax.tree.map(lambda _: True, params["encoder"]),
      "heads": jax.tree.map(lambda _: False, params["heads"]),
  }
