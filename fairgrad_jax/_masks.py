"""The ``shared=`` mask of a flax model (linen variables or NNX state).

The aggregators take ``shared=``, a pytree of bools with the structure of the
gradients (or a prefix of it). Flax adds levels that a hand-written mask
misses: linen's ``model.init`` returns ``{"params": {...}}``, NNX's
``nnx.state`` / ``nnx.split`` return an ``nnx.State`` whose leaves are
``nnx.Param`` variables. :func:`shared_mask` builds the mask from the very
tree that is differentiated, so the levels agree by construction, and
:func:`mask_mismatch_hint` names the likely cause when they do not.

Nothing here imports flax: NNX variables are recognised only when
``flax.nnx`` has already been imported (otherwise there can be none).
"""

import sys
from typing import Any, Callable, Sequence

import jax

__all__ = ["shared_mask"]

# The variable collections of a linen ``model.init`` (the common ones).
_LINEN_COLLECTIONS = ("params", "batch_stats", "cache", "intermediates")


def _is_nnx_variable(x) -> bool:
  nnx = sys.modules.get("flax.nnx")
  return nnx is not None and isinstance(x, nnx.Variable)


def _key_name(key) -> Any:
  """'encoder' for DictKey('encoder'), GetAttrKey('encoder'), ...; 0 for [0]."""
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return getattr(key, attr)
  return key


def _names(tree) -> list:
  """The top-level names of a dict-like tree, or [] for other nodes."""
  keys = getattr(tree, "keys", None)
  return sorted(map(str, keys())) if callable(keys) else []


def shared_mask(
    params: Any,
    shared: str | Sequence[str] | Callable[[tuple], bool],
) -> Any:
  """The ``shared=`` mask of a flax model's parameters, by submodule name.

  Build it from the tree you differentiate, so that it has the same levels
  as the per-task gradients:

  * linen: the variables of ``model.init`` (``{"params": {...}}``) when the
    losses are a function of them, or ``variables["params"]`` when they are a
    function of that;
  * NNX: ``nnx.state(model, nnx.Param)`` (what ``nnx.Optimizer(...,
    wrt=nnx.Param)`` updates) or the params of ``nnx.split(model,
    nnx.Param, ...)``;
  * any nested dict of arrays.

  Args:
    params: the parameter tree (arrays, or NNX variables).
    shared: the names of the shared submodules (a str or a sequence of str):
      a leaf is shared when one of the keys on its path is one of them, so
      ``"encoder"`` marks every leaf under ``params["encoder"]`` (and under
      ``variables["params"]["encoder"]``). Or a predicate on the leaf's key
      path, a tuple such as ``("params", "encoder", "Dense_0", "kernel")``
      (list indices as ints).

  Returns:
    A pytree of Python bools with the structure of ``params`` (an NNX
    variable becomes one bool); pass it as ``shared=`` to any aggregator.

  Raises:
    ValueError: when no leaf is marked shared (with the names available).

  Examples:
    >>> import jax.numpy as jnp
    >>> import fairgrad_jax as fj
    >>> variables = {"params": {"encoder": {"kernel": jnp.ones((3, 4))},
    ...                         "heads": {"kernel": jnp.ones((4, 2))}}}
    >>> fj.shared_mask(variables, "encoder")
    {'params': {'encoder': {'kernel': True}, 'heads': {'kernel': False}}}
    >>> fj.shared_mask(variables["params"], ["encoder"])
    {'encoder': {'kernel': True}, 'heads': {'kernel': False}}
  """
  if callable(shared):
    is_shared = shared
  else:
    names = {shared} if isinstance(shared, str) else set(shared)
    if not names or not all(isinstance(n, str) for n in names):
      raise ValueError(
          "`shared` must be a submodule name, a sequence of names or a"
          f" predicate on the key path; got {shared!r}.")
    is_shared = lambda path: any(key in names for key in path)

  def mark(path, _):
    return bool(is_shared(tuple(_key_name(k) for k in path)))

  mask = jax.tree_util.tree_map_with_path(mark, params,
                                          is_leaf=_is_nnx_variable)
  if not any(jax.tree.leaves(mask)):
    inner = params
    if set(_names(params)) & set(_LINEN_COLLECTIONS):
      inner = params["params"] if "params" in _names(params) else params
    raise ValueError(
        f"`shared={shared!r}` marks no parameter as shared; the parameters'"
        f" top-level names are {_names(params)}"
        + (f" and under 'params' {_names(inner)}" if inner is not params
           else "")
        + ". Give the name of the shared submodule (e.g. 'encoder')."
    )
  return mask


def mask_mismatch_hint(mask: Any, grads: Any) -> str:
  """A sentence naming the likely cause when ``mask`` does not fit ``grads``.

  Returns "" when no common cause is recognised.
  """
  if callable(mask):
    return ""
  grad_names, mask_names = _names(grads), _names(mask)
  type_note = ""
  if type(mask) is not type(grads) and grad_names and mask_names:
    type_note = (f" The gradients are a {type(grads).__name__}, the mask a"
                 f" {type(mask).__name__}: build the mask from the same tree,"
                 " e.g. fairgrad_jax.shared_mask(nnx.state(model, nnx.Param),"
                 " 'encoder').")
  if "params" in grad_names and "params" not in mask_names and mask_names:
    if set(mask_names) <= set(_names(grads["params"])):
      return (" The mask lacks the 'params' level of the gradients (flax"
              " variables {'params': {...}}): build it with"
              " fairgrad_jax.shared_mask(variables, 'encoder'), or"
              " differentiate variables['params'] instead." + type_note)
  if "params" in mask_names and "params" not in grad_names and grad_names:
    if set(_names(mask["params"])) >= set(grad_names):
      return (" The mask has a 'params' level that the gradients lack: build"
              " it from the tree you differentiate, e.g."
              " fairgrad_jax.shared_mask(variables['params'], 'encoder')."
              + type_note)
  if type_note:
    return type_note
  if grad_names and mask_names and set(mask_names) != set(grad_names):
    return (f" The mask's top-level names are {mask_names}, the gradients'"
            f" {grad_names}.")
  return ""
