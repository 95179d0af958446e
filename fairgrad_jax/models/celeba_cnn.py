"""The 9-layer CNN of FAMO and the paper for CelebA's 40 attributes.

Seven 3 × 3 convolutions (64, 128, 128, 256, 256, 512, 512 channels, no bias,
batch norm and ReLU after each, 2 × 2 max-pools after the 1st, 3rd and 5th),
global average pooling, then two 512-wide dense layers (no bias, batch norm,
ReLU): the shared encoder. One affine head per attribute gives a logit (FAMO
applies a sigmoid and ``BCELoss``; use ``optax.sigmoid_binary_cross_entropy``
on the logits, which is the same loss computed stably).

Parameters: ``{'encoder': ..., 'heads': TaskDense (40, 512, 1)}``; batch norm
statistics live in the ``'batch_stats'`` collection under ``'encoder'``. Call
with ``train=True`` and ``mutable=['batch_stats']`` while training.

With per-task gradients ``jax.vmap(jax.grad(loss), in_axes=(None, ..., 0))``
over task indices, the encoder's forward pass (and so its batch statistics)
does not depend on the task: the updated statistics come back identical for
every task, take those of task 0.

References:
  Liu, Liu, Jin, Stone & Liu, "FAMO: Fast Adaptive Multitask Optimization",
  NeurIPS 2023, arXiv:2306.03792 (the CelebA setup the paper follows).
"""

import flax.linen as nn
import jax.numpy as jnp

from fairgrad_jax.models._heads import TaskDense
from fairgrad_jax.models._layers import max_pool_2x2

__all__ = ["CelebACNN"]

# (channels, max-pool after) of the seven convolutions.
_CONVS = ((64, True), (128, False), (128, True), (256, False), (256, True),
          (512, False), (512, False))


class _CelebAEncoder(nn.Module):
  width_multiplier: float

  @nn.compact
  def __call__(self, images, train: bool):
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9,
                                epsilon=1e-5)
    x = images
    for channels, pool in _CONVS:
      c = max(1, int(channels * self.width_multiplier))
      x = nn.Conv(c, (3, 3), padding=1, use_bias=False)(x)
      x = nn.relu(norm()(x))
      if pool:
        x = max_pool_2x2(x)
    x = jnp.mean(x, axis=(-3, -2))  # AdaptiveAvgPool2d(1) + Flatten
    width = max(1, int(512 * self.width_multiplier))
    for _ in range(2):
      x = nn.relu(norm()(nn.Dense(width, use_bias=False)(x)))
    return x


class CelebACNN(nn.Module):
  """FAMO's CelebA network: a 9-layer CNN encoder, one logit per attribute.

  Attributes:
    num_tasks: number of attributes (40).
    width_multiplier: scales every layer's width (1.0 is the paper's
      network; smaller values are for tests).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from fairgrad_jax.models import CelebACNN
    >>> model = CelebACNN(num_tasks=3, width_multiplier=1 / 32)
    >>> images = jnp.zeros((2, 16, 16, 3))
    >>> # Shapes only (jax.eval_shape); model.init builds the arrays.
    >>> variables = jax.eval_shape(model.init, jax.random.key(0), images)
    >>> sorted(variables), sorted(variables["params"])
    (['batch_stats', 'params'], ['encoder', 'heads'])
    >>> logits, updates = jax.eval_shape(
    ...     lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]),
    ...     variables, images)
    >>> logits.shape  # (tasks, batch)
    (3, 2)
  """

  num_tasks: int = 40
  width_multiplier: float = 1.0

  def setup(self):
    self.encoder = _CelebAEncoder(self.width_multiplier)
    self.heads = TaskDense(self.num_tasks, 1)

  def __call__(self, images, task=None, train: bool = False):
    """Logits (K, B), or (B,) for ``task``; images (B, H, W, 3) in [0, 1]."""
    z = self.encoder(images, train)
    return self.heads(z, task)[..., 0]
