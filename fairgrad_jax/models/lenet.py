"""The MultiLeNet of Sener & Koltun (2018) for MultiDigits / MultiMNIST.

A LeNet-style shared encoder, conv → max-pool → ReLU → conv → max-pool →
ReLU → dense → ReLU, and per task a two-layer head, dense → ReLU → dense to
the class logits. Sener & Koltun use 5 × 5 kernels on 28 × 28 MultiMNIST;
MultiDigits' canvases are 11 × 11, so the default kernels are 3 × 3 and the
pools pad ("SAME") to keep the border digits.

Parameters: ``{'encoder': ..., 'heads': {'hidden': TaskDense,
'logits': TaskDense}}``; the heads are stacked on a leading task axis.
"""

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from fairgrad_jax.models._heads import TaskDense
from fairgrad_jax.models._layers import max_pool_2x2

__all__ = ["MultiLeNet"]


class _LeNetEncoder(nn.Module):
  channels: Sequence[int]
  kernel_size: int
  features: int

  @nn.compact
  def __call__(self, images):
    x = images
    for c in self.channels:
      x = nn.Conv(c, (self.kernel_size, self.kernel_size), padding="SAME")(x)
      x = max_pool_2x2(x, pad=True)
      x = nn.relu(x)
    x = x.reshape(x.shape[:-3] + (-1,))
    return nn.relu(nn.Dense(self.features)(x))


class _LeNetHeads(nn.Module):
  num_tasks: int
  hidden: int
  num_classes: int

  @nn.compact
  def __call__(self, z, task=None):
    h = nn.relu(TaskDense(self.num_tasks, self.hidden, name="hidden")(z, task))
    return TaskDense(self.num_tasks, self.num_classes, name="logits")(
        h, task, per_task_input=task is None)


class MultiLeNet(nn.Module):
  """Shared LeNet encoder with one classification head per task.

  Attributes:
    num_tasks: number of tasks (2 for MultiDigits).
    num_classes: classes per task.
    channels: output channels of the two convolutions.
    kernel_size: convolution kernel size.
    features: width of the shared representation.
    head_hidden: width of each head's hidden layer.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from fairgrad_jax.models import MultiLeNet
    >>> model = MultiLeNet()
    >>> images = jnp.zeros((4, 11, 11, 1))
    >>> # Shapes only (jax.eval_shape); model.init builds the arrays.
    >>> params = jax.eval_shape(model.init, jax.random.key(0), images)
    >>> sorted(params["params"])
    ['encoder', 'heads']
    >>> jax.eval_shape(model.apply, params, images).shape  # (K, B, classes)
    (2, 4, 10)
    >>> jax.eval_shape(lambda p, x: model.apply(p, x, task=1), params,
    ...                images).shape
    (4, 10)
  """

  num_tasks: int = 2
  num_classes: int = 10
  channels: Sequence[int] = (10, 20)
  kernel_size: int = 3
  features: int = 50
  head_hidden: int = 50

  def setup(self):
    self.encoder = _LeNetEncoder(self.channels, self.kernel_size, self.features)
    self.heads = _LeNetHeads(self.num_tasks, self.head_hidden, self.num_classes)

  def encode(self, images):
    """(B, H, W, C) images -> (B, features) shared representation."""
    return self.encoder(images)

  def decode(self, z, task=None):
    """Shared representation -> logits, (K, B, classes) or (B, classes)."""
    return self.heads(z, task)

  def __call__(self, images, task=None):
    """Logits of every task (K, B, classes), or of ``task`` (B, classes)."""
    images = jnp.asarray(images)
    return self.decode(self.encode(images), task)
