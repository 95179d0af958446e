"""Layers shared by the models."""

import jax
import jax.numpy as jnp


def windows_2x2(x):
  """The 2 × 2 windows (stride 2) of (..., H, W, C), even H and W, as
  (..., H/2, W/2, 4, C), each window's entries in row-major order."""
  *batch, h, w, c = x.shape
  n = len(batch)
  x = x.reshape(*batch, h // 2, 2, w // 2, 2, c)
  x = x.transpose(*range(n), n, n + 2, n + 1, n + 3, n + 4)
  return x.reshape(*batch, h // 2, w // 2, 4, c)


def window_max(windows, axis: int = -2):
  """The max over ``axis`` and the one-hot (bool) of its first maximum.

  The max is read at the argmax, so its gradient goes to that one entry, as
  in torch's ``MaxPool2d`` and XLA's ``select_and_scatter`` (flax's
  ``max_pool``). ``jnp.max``'s own gradient instead divides by the number
  of entries equal to the max, which is 0/0 = NaN under ``jit`` when XLA
  computes the entries twice, in one fusion for the max and in another for
  that comparison, and the two copies differ in the last bit: SegNet-MTAN's
  batch-normalised features did that after their first update (issue 16).

  Args:
    windows: an array whose ``axis`` holds the entries of each window.
    axis: the window axis.

  Returns:
    (maxima (``axis`` removed), first (bool, ``windows``' shape, True at the
    first maximum of each window; a constant for differentiation)).
  """
  axis = axis % windows.ndim
  first = jnp.argmax(windows, axis=axis, keepdims=True)
  positions = jax.lax.broadcasted_iota(first.dtype, windows.shape, axis)
  first = jax.lax.stop_gradient(positions == first)
  # One selected entry and zeros: the sum is that entry exactly.
  return jnp.sum(jnp.where(first, windows, 0), axis=axis), first


def max_pool_2x2(x, pad: bool = False):
  """2 × 2 max-pooling with stride 2 of (..., H, W, C), by reshaping.

  The same values as ``flax.linen.max_pool(x, (2, 2), strides=(2, 2))``
  (``padding='SAME'`` when ``pad``: odd sizes are padded with -inf at the
  bottom and right), and the same gradient (to the first maximum of each
  window, see :func:`window_max`), but the backward pass is an elementwise
  select instead of XLA's ``select_and_scatter``, which is about ten times
  slower on CPU under ``vmap``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from fairgrad_jax.models._layers import max_pool_2x2
    >>> x = jnp.arange(9.0).reshape(1, 3, 3, 1)
    >>> max_pool_2x2(x, pad=True)[0, ..., 0]
    Array([[4., 5.],
           [7., 8.]], dtype=float32)
  """
  *batch, h, w, _ = x.shape
  if pad:
    ph, pw = h % 2, w % 2
    if ph or pw:
      widths = [(0, 0)] * len(batch) + [(0, ph), (0, pw), (0, 0)]
      x = jnp.pad(x, widths, constant_values=-jnp.inf)
  else:
    x = x[..., : h - h % 2, : w - w % 2, :]
  return window_max(windows_2x2(x))[0]
