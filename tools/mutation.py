"""Mutation testing of the weightings with mutmut; prints the score.

Usage (needs the ``dev`` extra: ``pip install -e ".[test,dev]"``)::

  python tools/mutation.py [--modules pcgrad upgrad ...] [--sample 20]
                           [--seed 0] [--max-children 2] [--timeout 1200]

Copies the package and the tests into a temporary directory (the working tree
is never touched), writes a ``[tool.mutmut]`` section into the copy's
pyproject.toml that mutates the chosen modules only (MODULES below: every
method module, the solvers they share and the aggregator builder), and runs
``mutmut run`` against the chosen modules' own test files (no training loops,
slow tests left out). It prints mutmut's per-mutant results and the score,
killed / (killed + survived), with timeouts counted as killed; mutants that no
selected test reaches, and the survivors shown equivalent (EQUIVALENT
below, each with its reason), are listed apart.

All mutants of the 40-odd modules are some 8,500, and each costs a fresh
process that compiles the tests' programs again (JAX's thread pools do not
survive a fork): about 5-20 s each on a 2-core CPU. ``--sample N`` runs a
seeded uniform sample of N mutants per module instead, and the score comes
with a 95% Wilson interval for the whole population of covered mutants.
Two things make each mutant cheaper: the fork server imports JAX, NumPy and
optax once (importing does not start JAX's thread pools), and XLA's
executables go to a persistent compilation cache shared by every mutant, so
a program a mutant does not change is compiled once for the whole run.
"""

import argparse
import json
import math
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent

# Test files that check the methods by value, per subject; every module also
# gets ALWAYS: PROPERTIES (the shared property table, parametrised by method)
PROPERTIES = "tests/test_properties.py"
# ... and the documented defaults of every entry point.
ALWAYS = [PROPERTIES, "tests/test_strength_defaults.py",
          # ... and the tests written against the seed-4 sample's survivors
          # (error messages, dtypes under x64, reprs: across modules).
          "tests/test_strength_mutants_sample4.py"]
_BASELINES = ["tests/test_baselines.py", "tests/test_reliability_inputs.py",
              "tests/test_reliability_losses.py"]
_SIMPLE = ["tests/test_simple_aggregators.py"]
_LOSS = ["tests/test_loss_methods.py", "tests/test_reliability_losses.py"]
_GRADVAC = ["tests/test_gradvac_sdmgrad.py"]
_QP = ["tests/test_upgrad_dualproj.py"]
_ALIGNED = ["tests/test_aligned_mtl_config.py"]
_MGDA = ["tests/test_baselines.py", "tests/test_strength_mutants.py",
         "tests/test_strength_zero_task.py",
         "tests/test_reliability_hyperparams.py",
         "tests/test_weighting_accuracy.py"]
# Short name: (path under fairgrad_jax/, test files).
MODULES = {
    "pcgrad": ("_methods/pcgrad", ["tests/test_strength_pcgrad.py",
                                   "tests/test_strength_zero_task.py",
                                   "tests/test_strength_mutants.py",
                                   "tests/test_baselines.py"]),
    "imtl_g": ("_methods/imtl_g", ["tests/test_strength_zero_task.py",
                                   "tests/test_strength_mutants.py",
                                   "tests/test_baselines.py",
                                   "tests/test_reliability_stationary.py"]),
    "mgda": ("_solvers/mgda", _MGDA),
    "mgda_method": ("_methods/mgda", _MGDA),
    "cagrad": ("_methods/cagrad", _BASELINES + [
        "tests/test_strength_zero_task.py",
        "tests/test_reliability_hyperparams.py"]),
    "nash_mtl": ("_methods/nash_mtl", _BASELINES + [
        "tests/test_strength_zero_task.py"]),
    "famo": ("_methods/famo", _BASELINES),
    "dwa": ("_methods/dwa", _BASELINES),
    "graddrop": ("_methods/graddrop", _BASELINES),
    "rlw": ("_methods/rlw", _BASELINES),
    "scale_invariant": ("_methods/scale_invariant", _BASELINES),
    "linear_scalarization": ("_methods/linear_scalarization", _BASELINES),
    "uw": ("_methods/uw", _LOSS),
    "stch": ("_methods/stch", _LOSS),
    "imtl_l": ("_methods/imtl_l", _LOSS),
    "db_mtl": ("_methods/db_mtl", _LOSS),
    "geometric_mean": ("_methods/geometric_mean", _LOSS),
    "upgrad": ("_methods/upgrad", _QP),
    "dualproj": ("_methods/dualproj", _QP),
    "qp": ("_solvers/qp", _QP),
    "simplex": ("_solvers/simplex", _QP + _GRADVAC),
    "aligned_mtl": ("_methods/aligned_mtl", _ALIGNED),
    "config": ("_methods/config", _ALIGNED),
    "gradvac": ("_methods/gradvac", _GRADVAC),
    "sdmgrad": ("_methods/sdmgrad", _GRADVAC),
    "modo": ("_methods/modo", _GRADVAC),
    "cr_mogm": ("_methods/cr_mogm", _GRADVAC),
    "gradnorm": ("_methods/gradnorm", ["tests/test_gradnorm_moco.py"]),
    "moco": ("_methods/moco", ["tests/test_gradnorm_moco.py"]),
    "excess_mtl": ("_methods/excess_mtl", ["tests/test_gradnorm_moco.py"]),
    "pbi": ("_methods/pbi", ["tests/test_pbi_cosmos.py"]),
    "cosmos": ("_methods/cosmos", ["tests/test_pbi_cosmos.py"]),
    "mean": ("_methods/mean", _SIMPLE),
    "constant": ("_methods/constant", _SIMPLE),
    "krum": ("_methods/krum", _SIMPLE),
    "trimmed_mean": ("_methods/trimmed_mean", _SIMPLE),
    # The builder every method's aggregator comes from (fj.aggregator, the
    # Weighting class, the conflict check, the bad-step guard).
    "aggregator": ("_aggregator", ["tests/test_weighting.py",
                                   "tests/test_reliability_wrappers.py"]),
}
DEFAULT = ["pcgrad", "imtl_g", "mgda"]
# Copied beside the package into the work tree, and by mutmut into its own
# (benchmarks/: test_weighting_accuracy.py, in MGDA's list, imports it).
ALSO_COPY = ("README.md", "tests", "benchmarks")
CONFIG = """
[tool.mutmut]
source_paths = ["fairgrad_jax"]
only_mutate = {only}
pytest_add_cli_args_test_selection = {tests}
pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x", "-m", "not slow",
                       "-k", "not fairgrad and not nash_mtl_matches"]
also_copy = {also_copy}
# JAX's thread pools do not survive a fork: every mutant gets a fresh
# process from a fork server that has imported JAX but not started it.
process_isolation = "forkserver"
forkserver_warmup = "import"
preload_modules_file = "preload.txt"
"""
PRELOAD = ["numpy", "scipy", "scipy.optimize", "jax", "jax.numpy", "optax",
           "chex", "pytest"]
# Every mutant's XLA programs go to one on-disk cache (all entries kept).
CACHE_ENV = {
    "JAX_ENABLE_COMPILATION_CACHE": "true",
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
}
# Mutants that no test can kill because they do not change what the code
# computes, with the reason (mutmut 3.8's names, on the sources of the
# commit that added them; a change to a module renumbers its mutants).
# They are left out of the score and listed apart.
EQUIVALENT = {
    "fairgrad_jax._methods.moco.x_moco__mutmut_255":
        "einsum subscripts 'i...,j...->ij' -> 'I...,J...->IJ': the same"
        " contraction under other letters",
    "fairgrad_jax._methods.pcgrad.x__projected_weights__mutmut_50":
        "diag[j] > 0 -> >= 0: where diag[j] = 0 the row gram[j] is 0 too,"
        " so the step min(dots, 0) / safe[j] is 0 either way",
    "fairgrad_jax._methods.krum.x_krum_weighting__mutmut_18":
        "minimum=1 dropped from the n_selected check: 1 is"
        " _checks.int_hyperparameter's default minimum",
    "fairgrad_jax._methods.modo.x_modo_weighting__mutmut_35":
        "jnp.full(..., float) -> jnp.full(..., None): Python's float as a"
        " dtype is JAX's default float dtype, as None is (float64 under"
        " x64 either way)",
    "fairgrad_jax._methods.trimmed_mean.x_trimmed_mean__mutmut_111":
        "counts += 2 instead of 1: the weights are counts / sum(counts),"
        " unchanged by a common factor",
    "fairgrad_jax._methods.cosmos.x_cosmos_weighting__mutmut_41":
        "l = where(ok, l, 1) instead of 0 for non-finite losses: where not "
        "ok the weights are where(ok, r - penalty, nan) = NaN whatever l is",
    "fairgrad_jax._methods.cosmos.x_cosmos_weighting__mutmut_66":
        "l_hat = scaled / where(nonzero, ‖scaled‖, 2) instead of 1: where "
        "‖scaled‖ = 0 every entry of scaled is 0, so l_hat is 0 either way "
        "(and the penalty is masked by nonzero)",
    "fairgrad_jax._methods.mean.x_mean_weighting__mutmut_2":
        "k = gram.shape[1] instead of shape[0]: the Gram matrix is always "
        "K×K (Weighting.__call__ refuses a non-square one; the aggregator "
        "passes a K×K zero matrix when needs_gram is False)",
    "fairgrad_jax._methods.scale_invariant.x_scale_invariant_weighting__mutmut_9":
        "unless(ok, w, None, state) instead of unless(ok, w, state, state): "
        "the weighting is stateless, its state is always init's None, so "
        "None is returned either way",
    "fairgrad_jax._solvers.simplex.x_project_simplex__mutmut_31":
        "u - css/ind >= 0 instead of > 0: at an index j where u_j = "
        "css_j/j, css_{j-1}/(j-1) = (css_j - u_j)/(j-1) = u_j as well, so θ "
        "= css_ρ/ρ (and the projection) is the same whichever of j-1, j is "
        "ρ",
    "fairgrad_jax._methods.stch.x_stch_weighting__mutmut_74":
        "l = where(ok, losses, 2) instead of 1 for bad losses: where not "
        "ok, _loss.unless returns NaN weights and the old state, so the "
        "placeholder never shows",
    "fairgrad_jax._methods.trimmed_mean.x_trimmed_mean__mutmut_93":
        "stable=True dropped from jnp.argsort: True is jnp.argsort's "
        "default",
}
_NAMES = """
import json, pathlib, sys
from mutmut.mutation.file_mutation import mutate_file_contents
from mutmut.utils.format_utils import get_mutant_name
names = {}
for path in sys.argv[1:]:
  p = pathlib.Path(path)
  mutated = mutate_file_contents(str(p), p.read_text())
  names[path] = [get_mutant_name(p, n) for n in mutated.mutant_names]
print(json.dumps(names))
"""


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
  """95% Wilson score interval of a proportion k / n."""
  if n == 0:
    return 0.0, 1.0
  p = k / n
  centre = (p + z * z / (2 * n)) / (1 + z * z / n)
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
  return centre - half, centre + half


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--modules", nargs="+", default=DEFAULT,
                      help="short names, or 'all' (one of:"
                      f" {', '.join(MODULES)})")
  parser.add_argument("--sample", type=int, default=0,
                      help="mutants per module, drawn with --seed (0: all)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--max-children", type=int, default=2)
  parser.add_argument("--timeout", type=float, default=1200.0,
                      help="seconds for the whole mutmut run")
  parser.add_argument("--keep", action="store_true",
                      help="keep the temporary copy (its path is printed)")
  args = parser.parse_args(argv)
  modules = list(MODULES) if args.modules == ["all"] else args.modules
  unknown = sorted(set(modules) - set(MODULES))
  if unknown:
    parser.error(f"unknown modules {unknown}; known: {', '.join(MODULES)}")

  work = pathlib.Path(tempfile.mkdtemp(prefix="fairgrad_mutmut_"))
  for name in ("fairgrad_jax", "pyproject.toml") + ALSO_COPY:
    src = ROOT / name
    (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)
  only = [f"fairgrad_jax/{MODULES[m][0]}.py" for m in modules]
  tests = sorted({t for m in modules for t in MODULES[m][1]} | set(ALWAYS))
  with open(work / "pyproject.toml", "a", encoding="utf-8") as f:
    f.write(CONFIG.format(only=json.dumps(only), tests=json.dumps(tests),
                          also_copy=json.dumps(list(ALSO_COPY))))
  (work / "preload.txt").write_text("\n".join(PRELOAD) + "\n")
  env = dict(os.environ, **CACHE_ENV,
             JAX_COMPILATION_CACHE_DIR=str(work / "xla_cache"))
  mutmut = [sys.executable, "-m", "mutmut"]
  selected = []
  if args.sample:
    names = json.loads(subprocess.run(
        [sys.executable, "-c", _NAMES] + only, cwd=work, env=env, check=True,
        capture_output=True, text=True).stdout)
    rng = random.Random(args.seed)
    for path in only:
      pool = names[path]
      selected += sorted(rng.sample(pool, min(args.sample, len(pool))))
    total = sum(len(v) for v in names.values())
    print(f"sampling {len(selected)} of {total} mutants (seed {args.seed})")
  print(f"mutating {', '.join(only)} in {work}", flush=True)
  try:
    # Its own session, so that a timeout stops mutmut and its workers.
    with subprocess.Popen(mutmut + ["run", "--max-children",
                                    str(args.max_children)] + selected,
                          cwd=work, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as run:
      try:
        _, err = run.communicate(timeout=args.timeout)
        if run.returncode != 0:
          print(err[-3000:])
      except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGTERM)
        run.communicate()
        print(f"mutmut stopped after {args.timeout:.0f} s: partial results")
    results = subprocess.run(mutmut + ["results", "--all", "true"], cwd=work,
                             env=env, capture_output=True, text=True)
    status = {}
    for line in results.stdout.splitlines():
      name, _, what = line.strip().rpartition(": ")
      if name:
        status[name] = what
    if selected:
      status = {n: s for n, s in status.items() if n in set(selected)}
    print(results.stdout if not selected else "\n".join(
        f"    {n}: {s}" for n, s in sorted(status.items())))
    equivalent = {n: EQUIVALENT[n] for n, s in status.items()
                  if s == "survived" and n in EQUIVALENT}
    for name, why in sorted(equivalent.items()):
      print(f"  equivalent: {name}: {why}")
    status = {n: ("equivalent" if n in equivalent else s)
              for n, s in status.items()}
    counts = {}
    for s in status.values():
      counts[s] = counts.get(s, 0) + 1
    killed = counts.get("killed", 0) + counts.get("timeout", 0)
    survived = counts.get("survived", 0)
    print("mutmut results:", json.dumps(counts, sort_keys=True))
    low, high = wilson(killed, killed + survived)
    print(f"score: {killed} killed of {killed + survived} covered mutants"
          f" = {100.0 * killed / max(killed + survived, 1):.1f}%"
          + (f" (95% interval {100 * low:.0f}-{100 * high:.0f}%)"
             if selected else "")
          + f" (not reached by the tests: {counts.get('no tests', 0)},"
          f" not run: {counts.get('not checked', 0)},"
          f" equivalent: {counts.get('equivalent', 0)})")
    for module in modules:
      path = MODULES[module][0].replace("/", ".")
      mine = [s for n, s in status.items() if f".{path}." in n]
      k = sum(s in ("killed", "timeout") for s in mine)
      sv = sum(s == "survived" for s in mine)
      print(f"  {module:22s} killed {k:4d}  survived {sv:4d}"
            f"  other {len(mine) - k - sv:4d}")
  finally:
    if args.keep:
      print(f"kept {work}")
    else:
      shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  main()
