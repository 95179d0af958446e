"""Every method's documented defaults, on every one of its entry points.

A method is reachable three ways: the optax factory (``fj.cagrad``), its
weighting (``fj.cagrad_weighting``) and, for the pure Gram weightings, the
weights function (``fj.cagrad_weights``). Each default below is the value
the method's docstring states, with where it comes from (the paper, the
authors' code, TorchJD or LibMTL); the three entry points must agree, or a
user gets a different method depending on how they call it. Mutation
testing (tools/mutation.py) found these defaults otherwise unchecked: a
changed default passed every test that sets the value explicitly.
"""

import inspect

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fairgrad_jax as fj

# name: {parameter: documented default}. Sources in the comments.
DEFAULTS = {
    # FairGrad paper (Ban & Ji 2024): α >= 0; the package's default α = 1
    # (proportional fairness, the fairgrad docstring); solver: "Newton
    # iterations per step, at most" 100, tolerance 1e-5 on each task's
    # relative residual, λ = 10 machine epsilons when None.
    "fairgrad": {"alpha": 1.0, "maxiter": 100, "tol": 1e-5,
                 "regularization": None},
    "nash_mtl": {"maxiter": 100, "tol": 1e-5, "regularization": None},
    # CAGrad (Liu et al. 2021): c = 0.4 and rescale=1, the authors'
    # multi-task supervised settings.
    "cagrad": {"c": 0.4, "rescale": True, "maxiter": 200},
    # MGDA (Sener & Koltun 2018): no normalisation, the paper's.
    "mgda": {"normalization": "none", "maxiter": 250, "tol": 1e-5},
    # Seeds: documented as 0.
    "pcgrad": {"seed": 0},
    "rlw": {"seed": 0},
    "graddrop": {"seed": 0},
    # GradVac (Wang et al. 2021) as LibMTL: β = 0.5, ε = 1e-8.
    "gradvac": {"beta": 0.5, "eps": 1e-8, "seed": 0},
    # SDMGrad as TorchJD and LibMTL's runs: λ = 0.3, inner lr 10,
    # momentum 0.5, 20 inner steps.
    "sdmgrad": {"lambda_": 0.3, "lr": 10.0, "momentum": 0.5, "n_iter": 20,
                "pref_vector": None},
    # MoDo (Chen et al. 2023), TorchJD's: γ = 0.1, ρ = 0.1.
    "modo": {"gamma": 0.1, "rho": 0.1},
    # CR-MOGM: α = 0.9, MGDA's weights wrapped by default.
    "cr_mogm": {"alpha": 0.9, "weighting": None, "initial_weights": None},
    # UPGrad and DualProj (Quinton & Rey 2024), TorchJD's: the mean as
    # preference, ε_norm = ε_reg = 1e-4.
    "upgrad": {"pref_vector": None, "norm_eps": 1e-4, "reg_eps": 1e-4,
               "maxiter": 250, "tol": 1e-6},
    "dualproj": {"pref_vector": None, "norm_eps": 1e-4, "reg_eps": 1e-4,
                 "maxiter": 250, "tol": 1e-6},
    # Aligned-MTL (Senushkin et al. 2023): the smallest singular value's
    # scale, the paper's and TorchJD's; ConFIG: the mean.
    "aligned_mtl": {"pref_vector": None, "scale_mode": "min",
                    "rank_tol": None},
    "config": {"pref_vector": None, "rank_tol": None},
    # Krum: m = 1 (TorchJD's).
    "krum": {"n_selected": 1},
    # DWA (Liu et al. 2019): T = 2.
    "dwa": {"temperature": 2.0},
    # FAMO as the FairGrad paper's runs: γ = 1e-3, the logits' Adam at 0.025,
    # l* = 0.
    "famo": {"gamma": 1e-3, "w_lr": 0.025, "min_losses": 0.0},
    # UW: Adam at 0.025 on log σ².
    "uw": {"learning_rate": 0.025, "optimizer": None},
    # GradNorm (Chen et al. 2018) as LibMTL: α = 1.5, Adam at 1e-4, 100
    # warm-up steps.
    "gradnorm": {"alpha": 1.5, "learning_rate": 1e-4, "warmup_steps": 100,
                 "optimizer": None},
    # IMTL-L: Adam at 1e-4 (LibMTL).
    "imtl_l": {"learning_rate": 1e-4, "optimizer": None},
    # DB-MTL (LibMTL): β = 0.9, constant.
    "db_mtl": {"beta": 0.9, "beta_sigma": 0.0},
    # STCH (Lin et al. 2024) as LibMTL: μ = 1; 400 warm-up steps whose
    # losses are averaged over the last 100.
    "stch": {"mu": 1.0, "warmup_steps": 400, "average_steps": 100},
    # PBI: θ = 5 (the paper's); COSMOS: λ = 1 (TorchJD has none).
    "pbi": {"theta": 5.0, "pref_vector": None, "reference": None},
    "cosmos": {"lambda_": 1.0, "pref_vector": None},
    # MoCo (LibMTL): β = 0.5, σ_β = 0.5, γ = 0.1, σ_γ = 0.5, ρ = 0.
    "moco": {"beta": 0.5, "beta_sigma": 0.5, "gamma": 0.1,
             "gamma_sigma": 0.5, "rho": 0.0},
    # ExcessMTL (LibMTL): η = 1e-2; ε = 0 here (documented).
    "excess_mtl": {"robust_step_size": 1e-2, "eps": 0.0},
}
# Factory-only options, the same for every Gram method.
FACTORY = {"scale_by_num_tasks": False, "max_norm": None}
# Nash-MTL keeps the authors' clip of the shared update to norm 1.
FACTORY_EXCEPTIONS = {"nash_mtl": {"max_norm": 1.0}}


def _entry_points(name):
  for suffix in ("", "_weighting", "_weights"):
    fn = getattr(fj, name + suffix, None)
    if fn is not None:
      yield name + suffix, inspect.signature(fn).parameters


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_documented_defaults_on_every_entry_point(name):
  seen = 0
  for entry, params in _entry_points(name):
    for param, value in DEFAULTS[name].items():
      if param not in params:
        continue  # e.g. the solver options are not on every entry point
      seen += 1
      default = params[param].default
      if default is inspect.Parameter.empty:
        continue  # required there (fairgrad_weights' alpha): no surprise
      assert default == value and type(default) is type(value), (
          f"{entry}({param}=...) defaults to {default!r}, documented"
          f" {value!r}")
  # Every documented default exists on at least one entry point.
  assert seen >= len(DEFAULTS[name])
  factory = inspect.signature(getattr(fj, name)).parameters
  expected = dict(FACTORY, **FACTORY_EXCEPTIONS.get(name, {}))
  for param, value in expected.items():
    if param in factory:
      assert factory[param].default == value, (name, param)


def test_every_method_is_in_the_table():
  """No method of the package escapes the table (a new one must be added)."""
  factories = {n for n in fj.__all__ if n + "_weighting" in fj.__all__}
  plain = {"imtl_g", "mean", "constant", "linear_scalarization",
           "scale_invariant", "geometric_mean"}  # no tunable defaults
  assert factories - plain <= set(DEFAULTS) | {"trimmed_mean"}
  for name in plain & factories:
    params = inspect.signature(getattr(fj, name + "_weighting")).parameters
    assert all(p.default is inspect.Parameter.empty or n in (
        "num_tasks", "shared", "pref_vector") for n, p in params.items()), name


# Arguments a factory requires, for building it here.
_REQUIRED = {"krum": {"n_byzantine": 0}}
_K = 3


def _problem():
  rng = np.random.default_rng(0)
  grads = {"w": jnp.asarray(rng.normal(size=(_K, 6)), jnp.float32)}
  losses = jnp.asarray(rng.uniform(0.5, 2.0, size=_K), jnp.float32)
  return grads, losses


def _run(agg, steps=2):
  """Two updates (the second one from the first one's state)."""
  grads, losses = _problem()
  state = agg.init({"w": jnp.zeros((6,), jnp.float32)})
  out = []
  for step in range(steps):
    update, state = agg.update(jax.tree.map(lambda g: g * (1 + step), grads),
                               state, losses=losses * (1 + step))
    out.append(update)
  return out, state


@pytest.mark.parametrize("name", sorted(DEFAULTS))
def test_a_call_without_the_argument_uses_the_documented_value(name):
  """Each entry point called without an option behaves as with its
  documented value given explicitly.

  The signature test above reads the declared defaults; this checks the
  value a call actually uses (a default can be overridden in the body, and
  mutation testing's trampolines keep the original signature, so only a
  call sees a changed default there: it found rlw's seed and dualproj's tol
  unchecked this way).
  """
  required = _REQUIRED.get(name, {})
  for suffix in ("", "_weighting", "_weights"):
    fn = getattr(fj, name + suffix, None)
    if fn is None:
      continue
    params = inspect.signature(fn).parameters
    explicit = {p: v for p, v in DEFAULTS[name].items() if p in params}
    if suffix == "_weights":
      grads, _ = _problem()
      gram = grads["w"] @ grads["w"].T
      # Required there: fairgrad_weights' α, pcgrad_weights' key.
      needed = {p: {"alpha": 1.0, "key": jax.random.PRNGKey(0)}[p]
                for p, v in params.items()
                if p in ("alpha", "key") and v.default is v.empty}
      explicit = {p: v for p, v in explicit.items() if p not in needed}
      np.testing.assert_array_equal(fn(gram, **needed),
                                    fn(gram, **needed, **explicit))
      continue
    if suffix == "_weighting":
      a = fj.aggregator(fn(**required), num_tasks=_K)
      b = fj.aggregator(fn(**required, **explicit), num_tasks=_K)
    else:
      a = fn(num_tasks=_K, **required)
      b = fn(num_tasks=_K, **required, **explicit)
    assert repr(a) == repr(b), (name + suffix, repr(a), repr(b))
    chex.assert_trees_all_equal(_run(a), _run(b))
