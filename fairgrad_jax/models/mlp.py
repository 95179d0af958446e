"""GradNorm's regression network: a shared ReLU MLP trunk, linear heads.

Chen et al. (2018), Section 4: "a 4-layer fully-connected ReLU-activated
network with 100 neurons per layer as a common trunk", and a final affine
layer per task. Parameters: ``{'encoder': ..., 'heads': TaskDense}``, the
heads stacked on a leading task axis.
"""

import flax.linen as nn

from fairgrad_jax.models._heads import TaskDense

__all__ = ["MultiTaskMLP"]


class _MLPEncoder(nn.Module):
  hidden: int
  num_layers: int

  @nn.compact
  def __call__(self, x):
    for _ in range(self.num_layers):
      x = nn.relu(nn.Dense(self.hidden)(x))
    return x


class MultiTaskMLP(nn.Module):
  """Shared MLP trunk with one affine head per task.

  Attributes:
    num_tasks: K.
    output_dim: outputs per task.
    hidden: width of the trunk.
    num_layers: number of hidden layers of the trunk.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from fairgrad_jax.models import MultiTaskMLP
    >>> model = MultiTaskMLP(num_tasks=3, output_dim=2, hidden=8)
    >>> params = model.init(jax.random.key(0), jnp.zeros((5, 4)))
    >>> model.apply(params, jnp.zeros((5, 4))).shape  # (tasks, batch, out)
    (3, 5, 2)
    >>> params["params"]["heads"]["kernel"].shape
    (3, 8, 2)
  """

  num_tasks: int
  output_dim: int
  hidden: int = 100
  num_layers: int = 4

  def setup(self):
    self.encoder = _MLPEncoder(self.hidden, self.num_layers)
    self.heads = TaskDense(self.num_tasks, self.output_dim)

  def encode(self, x):
    """(B, d_in) -> (B, hidden) shared representation."""
    return self.encoder(x)

  def decode(self, z, task=None):
    """Shared representation -> (K, B, d_out), or (B, d_out) for ``task``."""
    return self.heads(z, task)

  def __call__(self, x, task=None):
    return self.decode(self.encode(x), task)
