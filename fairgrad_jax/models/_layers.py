"""Layers shared by the models."""

import jax.numpy as jnp


def max_pool_2x2(x, pad: bool = False):
  """2 × 2 max-pooling with stride 2 of (..., H, W, C), by reshaping.

  The same values as ``flax.linen.max_pool(x, (2, 2), strides=(2, 2))``
  (``padding='SAME'`` when ``pad``: odd sizes are padded with -inf at the
  bottom and right), but the backward pass is an elementwise select instead
  of XLA's ``select_and_scatter``, which is about ten times slower on CPU
  under ``vmap``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from fairgrad_jax.models._layers import max_pool_2x2
    >>> x = jnp.arange(9.0).reshape(1, 3, 3, 1)
    >>> max_pool_2x2(x, pad=True)[0, ..., 0]
    Array([[4., 5.],
           [7., 8.]], dtype=float32)
  """
  *batch, h, w, c = x.shape
  if pad:
    ph, pw = h % 2, w % 2
    if ph or pw:
      widths = [(0, 0)] * len(batch) + [(0, ph), (0, pw), (0, 0)]
      x = jnp.pad(x, widths, constant_values=-jnp.inf)
      h, w = h + ph, w + pw
  else:
    x = x[..., : h - h % 2, : w - w % 2, :]
    h, w = h - h % 2, w - w % 2
  x = x.reshape(*batch, h // 2, 2, w // 2, 2, c)
  return jnp.max(x, axis=(-4, -2))
