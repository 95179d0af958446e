"""MTAN: SegNet with task-specific attention (NYU-v2, Cityscapes).

Liu, Johns & Davison's Multi-Task Attention Network, the backbone of the
paper's dense-prediction experiments (Section 5.1, after CAGrad, Nash-MTL and
FAMO). A SegNet encoder-decoder (five stages, filters 64-128-256-512-512,
3 × 3 conv + batch norm + ReLU blocks, max-pooling with indices and
max-unpooling) is shared; each task reads it through its own attention
modules (1 × 1 conv + BN + ReLU + 1 × 1 conv + BN + sigmoid masks on every
stage) and its own prediction layer (3 × 3 conv, 1 × 1 conv). The 3 × 3
conv blocks that carry the attended features from stage to stage
(``encoder_block_att``/``decoder_block_att``) are shared between tasks, as in
MTAN.

Outputs, channel-last: segmentation logits (B, H, W, classes) (MTAN returns
their log-softmax), depth (B, H, W, 1), and surface normals (B, H, W, 3)
scaled to unit length.

Parameters: ``{'encoder': ..., 'heads': {'tasks_0': ..., 'tasks_1': ...}}``,
batch norm statistics in ``'batch_stats'`` with the same layout. 'encoder'
holds the SegNet and the shared attention conv blocks; 'heads' holds each
task's attention masks and prediction layer. (Nash-MTL's PyTorch code hands
only the prediction layers to the aggregator as task-specific and counts the
attention masks as shared; build a mask with ``heads/tasks_*/pred*`` False
and the rest True to reproduce that.)

Heads differ in shape between tasks, so per-task gradients come from
``jax.jacrev`` of a function returning the (K,) losses rather than from
``vmap`` over a task index. Inputs need a height and width divisible by 32
(NYU-v2: 288 × 384, Cityscapes: 128 × 256).

References:
  Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention",
  CVPR 2019, arXiv:1803.10704. Badrinarayanan, Kendall & Cipolla, "SegNet",
  TPAMI 2017, arXiv:1511.00561.
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from fairgrad_jax.models._layers import max_pool_2x2
from fairgrad_jax.models._layers import window_max
from fairgrad_jax.models._layers import windows_2x2

__all__ = ["max_pool_with_argmax", "max_unpool", "normalize", "SegNetMTAN",
           "upsample_bilinear_align_corners"]

TASK_CHANNELS = {"segmentation": None, "depth": 1, "normal": 3}

_xavier = nn.initializers.xavier_normal()
_zeros = nn.initializers.zeros_init()


def max_pool_with_argmax(x):
  """2 × 2 max-pool (stride 2) and the one-hot position of each maximum.

  The gradient of the pooled values goes to the first maximum of each
  window, as torch's ``MaxPool2d`` sends it (see
  :func:`fairgrad_jax.models._layers.window_max`).

  Args:
    x: (B, H, W, C) with even H and W.

  Returns:
    (pooled (B, H/2, W/2, C), where (B, H/2, W/2, 4, C)): ``where`` marks the
    first maximum of each window in row-major order, as PyTorch's indices.
  """
  pooled, first = window_max(windows_2x2(x))
  return pooled, first.astype(x.dtype)


def max_unpool(y, where):
  """Inverse of :func:`max_pool_with_argmax`: y placed at the maxima, 0 else.

  Examples:
    >>> import jax.numpy as jnp
    >>> from fairgrad_jax.models.segnet_mtan import max_pool_with_argmax
    >>> from fairgrad_jax.models.segnet_mtan import max_unpool
    >>> x = jnp.array([[1., 5.], [2., 3.]]).reshape(1, 2, 2, 1)
    >>> pooled, where = max_pool_with_argmax(x)
    >>> max_unpool(pooled, where)[0, ..., 0]
    Array([[0., 5.],
           [0., 0.]], dtype=float32)
  """
  b, h, w, _, c = where.shape
  out = where * y[:, :, :, None, :]
  out = out.reshape(b, h, w, 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
  return out.reshape(b, 2 * h, 2 * w, c)


def _linear_resize_axis(x, axis: int, size: int):
  n = x.shape[axis]
  if n == 1:
    return jnp.repeat(x, size, axis=axis)
  position = jnp.arange(size) * ((n - 1) / (size - 1))
  low = jnp.clip(jnp.floor(position).astype(jnp.int32), 0, n - 2)
  frac = (position - low).astype(x.dtype)
  shape = [1] * x.ndim
  shape[axis] = size
  frac = frac.reshape(shape)
  return (jnp.take(x, low, axis=axis) * (1 - frac)
          + jnp.take(x, low + 1, axis=axis) * frac)


def normalize(y, eps: float = 1e-12):
  """``y / max(‖y‖, eps)`` over the last axis, with a finite gradient at 0.

  PyTorch's ``F.normalize(y, dim=1)``, which MTAN applies to its normal
  predictions.  Written as ``y / jnp.maximum(jnp.linalg.norm(y), eps)`` the
  gradient is NaN wherever ``y`` is exactly 0 (the norm's derivative 0/0
  times the zero that ``maximum`` routes to it), which happens at
  initialisation (zero biases) for a pixel whose features a ReLU zeroed: one
  such pixel made every parameter NaN after the first step.  Clamping the
  squared norm instead gives torch's gradient there, ``I / eps``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from fairgrad_jax.models.segnet_mtan import normalize
    >>> normalize(jnp.array([3., 4.]))
    Array([0.6, 0.8], dtype=float32)
    >>> bool(jnp.all(jnp.isfinite(jax.grad(lambda y: normalize(y)[0])(
    ...     jnp.zeros(3)))))
    True
  """
  squared = jnp.sum(jnp.square(y), axis=-1, keepdims=True)
  # eps² is 1e-24; float16 cannot hold it, so the floor is at least its
  # tiny (the value stays finite there; its gradient at 0 does not fit).
  floor = max(eps * eps, float(jnp.finfo(squared.dtype).tiny))
  return y * jax.lax.rsqrt(jnp.maximum(squared, floor))


def upsample_bilinear_align_corners(x, scale: int = 2):
  """Bilinear ×``scale`` upsampling of (B, H, W, C) with aligned corners.

  PyTorch's ``F.interpolate(..., mode='bilinear', align_corners=True)``,
  which MTAN uses; ``jax.image.resize`` uses half-pixel centres instead.

  Examples:
    >>> import jax.numpy as jnp
    >>> from fairgrad_jax.models.segnet_mtan import (
    ...     upsample_bilinear_align_corners)
    >>> x = jnp.array([0., 3.]).reshape(1, 1, 2, 1)
    >>> upsample_bilinear_align_corners(x)[0, 0, :, 0]
    Array([0., 1., 2., 3.], dtype=float32)
  """
  _, h, w, _ = x.shape
  x = _linear_resize_axis(x, 1, h * scale)
  return _linear_resize_axis(x, 2, w * scale)


class _ConvBlock(nn.Module):
  """3 × 3 conv + batch norm + ReLU (MTAN's ``conv_layer``)."""

  features: int

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(self.features, (3, 3), padding=1, kernel_init=_xavier,
                bias_init=_zeros)(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9,
                     epsilon=1e-5)(x)
    return nn.relu(x)


class _ConvBlocks(nn.Module):
  features: int
  depth: int

  @nn.compact
  def __call__(self, x, train: bool):
    for _ in range(self.depth):
      x = _ConvBlock(self.features)(x, train)
    return x


class _Attention(nn.Module):
  """1 × 1 conv + BN + ReLU + 1 × 1 conv + BN + sigmoid (MTAN's att_layer)."""

  hidden: int
  features: int

  @nn.compact
  def __call__(self, x, train: bool):
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9,
                                epsilon=1e-5)
    x = nn.Conv(self.hidden, (1, 1), kernel_init=_xavier, bias_init=_zeros)(x)
    x = nn.relu(norm()(x))
    x = nn.Conv(self.features, (1, 1), kernel_init=_xavier,
                bias_init=_zeros)(x)
    return nn.sigmoid(norm()(x))


class _Prediction(nn.Module):
  features: int

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(x.shape[-1], (3, 3), padding=1, kernel_init=_xavier,
                bias_init=_zeros)(x)
    return nn.Conv(self.features, (1, 1), kernel_init=_xavier,
                   bias_init=_zeros)(x)


class _SharedSegNet(nn.Module):
  """The shared part: SegNet and the attention path's conv blocks."""

  filters: Sequence[int]

  def setup(self):
    f = self.filters
    self.encoder_block = [_ConvBlock(f[0])] + [_ConvBlock(f[i + 1])
                                               for i in range(4)]
    self.decoder_block = [_ConvBlock(f[0])] + [_ConvBlock(f[i])
                                               for i in range(4)]
    self.conv_block_enc = [_ConvBlocks(f[0], 1), _ConvBlocks(f[1], 1)] + [
        _ConvBlocks(f[i + 1], 2) for i in range(1, 4)]
    self.conv_block_dec = [_ConvBlocks(f[0], 1), _ConvBlocks(f[0], 1)] + [
        _ConvBlocks(f[i], 2) for i in range(1, 4)]
    self.encoder_block_att = [_ConvBlock(f[1]), _ConvBlock(f[2]),
                              _ConvBlock(f[3]), _ConvBlock(f[4]),
                              _ConvBlock(f[4])]
    self.decoder_block_att = [_ConvBlock(f[0]), _ConvBlock(f[0]),
                              _ConvBlock(f[1]), _ConvBlock(f[2]),
                              _ConvBlock(f[4])]

  def __call__(self, x, train: bool):
    """Returns the SegNet features the attention modules read."""
    g_encoder, g_decoder, g_upsampled, where = [], [], [], []
    h = x
    for i in range(5):
      first = self.encoder_block[i](h, train)
      second = self.conv_block_enc[i](first, train)
      g_encoder.append((first, second))
      h, w = max_pool_with_argmax(second)
      where.append(w)
    for i in range(5):
      up = max_unpool(h, where[-i - 1])
      first = self.decoder_block[-i - 1](up, train)
      h = self.conv_block_dec[-i - 1](first, train)
      g_upsampled.append(up)
      g_decoder.append(h)
    return g_encoder, g_upsampled, g_decoder

  def attend_encoder(self, j: int, x, train: bool):
    return self.encoder_block_att[j](x, train)

  def attend_decoder(self, j: int, x, train: bool):
    return self.decoder_block_att[j](x, train)


class _TaskAttention(nn.Module):
  """One task's attention masks and prediction layer."""

  filters: Sequence[int]
  out_channels: int

  def setup(self):
    f = self.filters
    self.encoder_att = [_Attention(f[0], f[0])] + [
        _Attention(f[j], f[j]) for j in range(1, 5)]
    self.decoder_att = [_Attention(f[0], f[0])] + [
        _Attention(f[j - 1], f[j - 1]) for j in range(1, 5)]
    self.pred = _Prediction(self.out_channels)

  def __call__(self, shared: _SharedSegNet, features, train: bool):
    g_encoder, g_upsampled, g_decoder = features
    a = None
    for j in range(5):
      inputs = (g_encoder[j][0] if j == 0
                else jnp.concatenate([g_encoder[j][0], a], axis=-1))
      masked = self.encoder_att[j](inputs, train) * g_encoder[j][1]
      a = shared.attend_encoder(j, masked, train)
      a = max_pool_2x2(a)
    for j in range(5):
      a = upsample_bilinear_align_corners(a)
      a = shared.attend_decoder(4 - j, a, train)
      mask = self.decoder_att[4 - j](
          jnp.concatenate([g_upsampled[j], a], axis=-1), train)
      a = mask * g_decoder[j]
    return self.pred(a)


class _TaskHeads(nn.Module):
  filters: Sequence[int]
  out_channels: Sequence[int]

  def setup(self):
    self.tasks = [_TaskAttention(self.filters, c) for c in self.out_channels]


class SegNetMTAN(nn.Module):
  """MTAN (SegNet + task attention) for dense multi-task prediction.

  Attributes:
    tasks: the tasks in output order, from 'segmentation', 'depth',
      'normal' (NYU-v2: all three; Cityscapes: the first two).
    num_classes: segmentation classes (NYU-v2 13, Cityscapes 7).
    filters: the five stage widths; MTAN's (64, 128, 256, 512, 512). The
      last two must be equal (MTAN's attention path assumes it).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from fairgrad_jax.models import SegNetMTAN
    >>> model = SegNetMTAN(num_classes=5, filters=(2, 2, 2, 4, 4))
    >>> images = jnp.zeros((1, 32, 32, 3))
    >>> # Shapes only (jax.eval_shape); model.init builds the arrays.
    >>> variables = jax.eval_shape(model.init, jax.random.key(0), images)
    >>> sorted(variables["params"]), sorted(variables["params"]["heads"])
    (['encoder', 'heads'], ['tasks_0', 'tasks_1', 'tasks_2'])
    >>> [p.shape for p in jax.eval_shape(model.apply, variables, images)]
    [(1, 32, 32, 5), (1, 32, 32, 1), (1, 32, 32, 3)]
  """

  tasks: Sequence[str] = ("segmentation", "depth", "normal")
  num_classes: int = 13
  filters: Sequence[int] = (64, 128, 256, 512, 512)

  def setup(self):
    if len(self.filters) != 5 or self.filters[3] != self.filters[4]:
      raise ValueError(
          f"filters must be 5 widths with the last two equal, got"
          f" {tuple(self.filters)}."
      )
    unknown = [t for t in self.tasks if t not in TASK_CHANNELS]
    if unknown or not self.tasks:
      raise ValueError(
          f"tasks must be a non-empty subset of {tuple(TASK_CHANNELS)}, got"
          f" {tuple(self.tasks)}."
      )
    channels = [self.num_classes if t == "segmentation" else TASK_CHANNELS[t]
                for t in self.tasks]
    self.encoder = _SharedSegNet(tuple(self.filters))
    self.heads = _TaskHeads(tuple(self.filters), tuple(channels))

  def __call__(self, images, task: int | None = None, train: bool = False):
    """Per-task predictions (a tuple), or that of ``task`` (a Python int).

    Args:
      images: (B, H, W, 3), H and W divisible by 32.
      task: None for every task, or the index of one task (static).
      train: batch statistics (True; pass ``mutable=['batch_stats']``) or
        running averages (False).
    """
    _, height, width, _ = images.shape
    if height % 32 or width % 32:
      raise ValueError(
          f"image height and width must be divisible by 32, got {height} x"
          f" {width}."
      )
    features = self.encoder(images, train)
    indices = range(len(self.tasks)) if task is None else [task]
    outputs = []
    for i in indices:
      y = self.heads.tasks[i](self.encoder, features, train)
      if self.tasks[i] == "normal":
        y = normalize(y)
      outputs.append(y)
    return tuple(outputs) if task is None else outputs[0]
