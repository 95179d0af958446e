"""Construction-time checks of float hyperparameters.

A factory checks its hyperparameters once, with an error that names the
argument, what is allowed and what was given. A traced value (e.g. under
``optax.inject_hyperparams``) cannot be checked while tracing; it is passed
through unchanged.
"""

import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np


def real_hyperparameter(name: str, value, *, minimum: float,
                        strict: bool = False):
  """Checks that ``value`` is a finite real number >= (or >) ``minimum``.

  Args:
    name: the argument's name, for the error message.
    value: a Python/NumPy number, a 0-d array, or a tracer.
    minimum: the smallest value allowed (-inf: any finite value).
    strict: require value > minimum rather than >=.

  Returns:
    ``value`` as a Python float, or unchanged if it is traced.

  Raises:
    TypeError: ``value`` is not a real number (a bool, a string, a
      non-scalar or complex array...).
    ValueError: ``value`` is NaN, infinite or below ``minimum``.
  """
  if isinstance(value, jax.core.Tracer):
    return value
  if minimum == -math.inf:
    bound = ""
  else:
    bound = f" > {minimum:g}" if strict else f" >= {minimum:g}"
  is_number = (isinstance(value, numbers.Real)
               and not isinstance(value, (bool, np.bool_)))
  if not is_number and isinstance(value, (np.ndarray, jax.Array)):
    is_number = (value.shape == () and (
        jnp.issubdtype(value.dtype, jnp.floating)
        or jnp.issubdtype(value.dtype, jnp.integer)))
  if not is_number:
    raise TypeError(f"{name} must be a finite real number{bound}, got"
                    f" {value!r}.")
  value = float(value)
  if not math.isfinite(value) or value < minimum or (
      strict and value == minimum):
    raise ValueError(f"{name} must be a finite real number{bound}, got"
                     f" {value!r}.")
  return value


def int_hyperparameter(name: str, value, *, minimum: int = 1) -> int:
  """Checks that ``value`` is an int >= ``minimum`` (static: not traced).

  Counts (``maxiter``, ``num_tasks``, ``chunk_size``...) fix the shape of the
  computation, so they must be Python (or NumPy) ints, never bools, floats
  or arrays; with ``optax.inject_hyperparams``, list them in
  ``static_args``.

  Args:
    name: the argument's name, for the error message.
    value: the value given.
    minimum: the smallest value allowed.

  Returns:
    ``value`` as a Python int.

  Raises:
    ValueError: ``value`` is not an int (a bool, float, array...) or is
      below ``minimum`` (ValueError for both, as every count argument of
      the package has always raised).
  """
  if isinstance(value, (bool, np.bool_)) or not isinstance(
      value, (int, np.integer)):
    hint = (" (static: name it in inject_hyperparams' static_args)"
            if isinstance(value, (jax.Array, np.ndarray)) else "")
    raise ValueError(f"{name} must be an int >= {minimum}{hint}, got"
                     f" {value!r}.")
  if value < minimum:
    raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")
  return int(value)


def bool_hyperparameter(name: str, value) -> bool:
  """Checks that ``value`` is a Python (or NumPy) bool; returns it."""
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name} must be a bool (True or False), got {value!r}.")
  return bool(value)


def num_tasks(value) -> int | None:
  """Checks ``num_tasks``: a positive int or None; returns it."""
  if value is not None and (
      not isinstance(value, (int, np.integer))
      or isinstance(value, (bool, np.bool_)) or value < 1):
    raise ValueError(f"num_tasks must be a positive int or None, got"
                     f" {value!r}.")
  return None if value is None else int(value)


def seed(value) -> int:
  """Checks a PRNG seed: an int (not a bool); returns it."""
  if not isinstance(value, (int, np.integer)) or isinstance(
      value, (bool, np.bool_)):
    raise ValueError(f"seed must be an int, got {value!r}.")
  return int(value)
