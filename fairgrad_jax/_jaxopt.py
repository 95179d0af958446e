"""The one module that imports jaxopt.

jaxopt is archived and emits a ``DeprecationWarning`` when imported. Everything
the package needs from it goes through this module, which silences exactly
that warning, so a future replacement touches one file.

What we use: implicit differentiation of a root (``custom_root``), so that
FairGrad's weights are differentiable with respect to the Gram matrix and α
without differentiating through the iterations of the solve.
"""

from typing import Callable
import warnings

with warnings.catch_warnings():
  warnings.filterwarnings(
      "ignore",
      message="JAXopt is no longer maintained",
      category=DeprecationWarning,
  )
  import jaxopt  # pylint: disable=g-import-not-at-top


def implicit_root(optimality_fn: Callable, solver_fn: Callable) -> Callable:
  """``solver_fn`` with derivatives by the implicit function theorem.

  Args:
    optimality_fn: ``optimality_fn(root, *args) -> residual``, zero at the
      root that ``solver_fn`` returns.
    solver_fn: ``solver_fn(init, *args) -> (root, aux)``; no derivative flows
      through it (its loop is never differentiated).

  Returns:
    A function with ``solver_fn``'s signature whose ``root`` output has the
    derivatives -(∂F/∂root)⁻¹ ∂F/∂args with respect to ``args`` (``aux``
    has none). The linear system is solved by LU of the materialised
    Jacobian (the roots here are K-vectors).
  """
  return jaxopt.implicit_diff.custom_root(
      optimality_fn, has_aux=True, solve=jaxopt.linear_solve.solve_lu)(
          solver_fn)
