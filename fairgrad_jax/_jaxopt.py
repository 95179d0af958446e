"""The one module that imports jaxopt.

jaxopt is archived and emits a ``DeprecationWarning`` when imported. Everything
the package needs from it goes through this module, which silences exactly
that warning, so a future replacement of the solver touches one file.
"""

import dataclasses
from typing import Callable, NamedTuple
import warnings

import jax
import jax.numpy as jnp

with warnings.catch_warnings():
  warnings.filterwarnings(
      "ignore",
      message="JAXopt is no longer maintained",
      category=DeprecationWarning,
  )
  import jaxopt  # pylint: disable=g-import-not-at-top


class LeastSquaresResult(NamedTuple):
  """What :func:`levenberg_marquardt` returns.

  Attributes:
    params: the final iterate.
    residual: the residual vector at ``params``.
    num_iterations: Levenberg–Marquardt iterations taken (int32).
  """

  params: jax.Array
  residual: jax.Array
  num_iterations: jax.Array


@dataclasses.dataclass(eq=False)
class _ResidualStoppedLM(jaxopt.LevenbergMarquardt):
  """jaxopt's LM, stopped on the scaled residual's max-norm, not on ‖Jᵀr‖.

  jaxopt stops on the norm of the least-squares gradient Jᵀr, which says
  little about the residual itself when J is ill-conditioned. Our equations
  have an exact root, so we stop once every scaled residual
  ``residual_scale_fn(x) * r(x)`` is at most ``tol``, or once the steps stall
  (max |Δx| <= xtol: round-off stops progress before ``tol`` is reached, as
  near a Pareto-stationary point, where the LM damping then grows until the
  step vanishes).
  """

  residual_scale_fn: Callable[..., jax.Array] | None = None

  def __post_init__(self):
    super().__post_init__()
    # jaxopt ignores jac_fun when materialize_jac=True (it always takes
    # jax.jacfwd); use the analytic Jacobian we pass.
    if self.jac_fun is not None:
      self._jac_fun = self.jac_fun

  def _cond_fun(self, inputs):
    (params, state), (args, kwargs) = inputs
    residual = state.residual
    if self.residual_scale_fn is not None:
      residual = residual * self.residual_scale_fn(params, *args, **kwargs)
    stalled = (state.iter_num > 0) & (jnp.max(jnp.abs(state.delta)) <= self.xtol)
    return (jnp.max(jnp.abs(residual)) > self.tol) & ~stalled


def levenberg_marquardt(
    residual_fn: Callable[..., jax.Array],
    jacobian_fn: Callable[..., jax.Array],
    init: jax.Array,
    *args,
    maxiter: int,
    tol: float,
    xtol: float,
    residual_scale_fn: Callable[..., jax.Array] | None = None,
) -> LeastSquaresResult:
  """Solves ``residual_fn(x, *args) = 0`` by Levenberg–Marquardt (jaxopt).

  Runs as one ``lax.while_loop``, so it can be jitted, vmapped and scanned.
  No derivatives flow through the solve (no implicit differentiation).

  Args:
    residual_fn: maps ``(x, *args)`` of shape (n,) to residuals of shape (m,).
    jacobian_fn: maps ``(x, *args)`` to the (m, n) Jacobian of residual_fn.
    init: the starting point, shape (n,).
    *args: extra arrays passed to both functions.
    maxiter: the maximum number of iterations.
    tol: stop once ``max|scale * residual| <= tol``.
    xtol: or once the last step's max |Δx| is at most ``xtol``.
    residual_scale_fn: maps ``(x, *args)`` to per-residual scales for the
      stopping test (default: 1).

  Returns:
    A :class:`LeastSquaresResult`.
  """
  def run(linear_solver, start):
    solver = _ResidualStoppedLM(
        residual_fun=residual_fn,
        jac_fun=jacobian_fn,
        materialize_jac=True,
        solver=linear_solver,
        maxiter=maxiter,
        tol=tol,
        xtol=xtol,
        residual_scale_fn=residual_scale_fn,
        implicit_diff=False,
        jit=True,
        # jaxopt unrolls (a scan over all maxiter steps) whenever
        # implicit_diff=False; a while_loop stops at convergence.
        unroll=False,
    )
    return solver.run(start, *args)

  # Cholesky on the damped normal equations JᵀJ + µI is the fast path (about
  # half the time of QR on a GPU), but it squares J's condition number and
  # breaks down (NaN) in float32 when J is nearly singular, e.g. near a
  # Pareto-stationary point. Then QR of the augmented Jacobian takes over,
  # from the start. Under vmap both branches run, the QR one from the
  # Cholesky result where that is finite (one iteration).
  params, state = run("cholesky", init)
  ok = jnp.all(jnp.isfinite(params)) & jnp.all(jnp.isfinite(state.residual))

  def fallback():
    p, st = run("qr", jnp.where(ok, params, init))
    return p, st.residual, state.iter_num + st.iter_num

  params, residual, iters = jax.lax.cond(
      ok, lambda: (params, state.residual, state.iter_num), fallback)
  return LeastSquaresResult(
      params=params,
      residual=residual,
      num_iterations=jnp.asarray(iters, jnp.int32),
  )
