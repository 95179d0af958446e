"""Mutation testing of the pure weightings with mutmut; prints the score.

Usage (needs the ``dev`` extra: ``pip install -e ".[test,dev]"``)::

  python tools/mutation.py [--modules pcgrad imtl_g mgda] [--max-children 2]
                           [--timeout 1200]

Copies the package and the tests into a temporary directory (the working
tree is never touched), writes a ``[tool.mutmut]`` section into the copy's
pyproject.toml that mutates the chosen modules only (``_methods/pcgrad.py``,
``_methods/imtl_g.py``, ``_solvers/mgda.py``: MODULES below),
runs ``mutmut run`` against a fast subset of the suite (TESTS below: the
weighting tests by value, no training loops, FairGrad's and Nash-MTL's slow
solves left out), then prints mutmut's
per-mutant results and the score: killed / (killed + survived), with
timeouts counted as killed and mutants that no test covers listed apart.
"""

import argparse
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
# The pure weightings that the mutation run covers, by short name.
MODULES = {"pcgrad": "_methods/pcgrad", "imtl_g": "_methods/imtl_g",
           "mgda": "_solvers/mgda"}
TESTS = [
    "tests/test_strength_pcgrad.py",
    "tests/test_strength_zero_task.py",
    "tests/test_strength_mutants.py",
    "tests/test_baselines.py",
]
CONFIG = """
[tool.mutmut]
source_paths = ["fairgrad_jax"]
only_mutate = {only}
pytest_add_cli_args_test_selection = {tests}
pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x", "-m", "not slow",
                       "-k", "not fairgrad and not nash"]
also_copy = ["README.md", "tests"]
# JAX's thread pools do not survive a fork: every mutant gets a fresh
# process from a forkserver that has not imported JAX.
process_isolation = "forkserver"
forkserver_warmup = "none"
"""


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--modules", nargs="+",
                      default=["pcgrad", "imtl_g", "mgda"])
  parser.add_argument("--max-children", type=int, default=2)
  parser.add_argument("--timeout", type=float, default=1200.0,
                      help="seconds for the whole mutmut run")
  parser.add_argument("--keep", action="store_true",
                      help="keep the temporary copy (its path is printed)")
  args = parser.parse_args(argv)

  work = pathlib.Path(tempfile.mkdtemp(prefix="fairgrad_mutmut_"))
  for name in ("fairgrad_jax", "tests", "pyproject.toml", "README.md"):
    src = ROOT / name
    (shutil.copytree if src.is_dir() else shutil.copy)(src, work / name)
  only = [f"fairgrad_jax/{MODULES[m]}.py" for m in args.modules]
  with open(work / "pyproject.toml", "a", encoding="utf-8") as f:
    f.write(CONFIG.format(only=json.dumps(only), tests=json.dumps(TESTS)))
  mutmut = [sys.executable, "-m", "mutmut"]
  print(f"mutating {', '.join(only)} in {work}", flush=True)
  try:
    # Its own session, so that a timeout stops mutmut and its workers.
    with subprocess.Popen(mutmut + ["run", "--max-children",
                                    str(args.max_children)],
                          cwd=work, stdout=subprocess.DEVNULL,
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
                             capture_output=True, text=True)
    subprocess.run(mutmut + ["export-cicd-stats"], cwd=work,
                   capture_output=True, text=True)
    print(results.stdout)
    stats_file = work / "mutants" / "mutmut-cicd-stats.json"
    stats = json.loads(stats_file.read_text())
    killed = stats["killed"] + stats.get("timeout", 0)
    survived = stats["survived"]
    print("mutmut stats:", json.dumps(stats, sort_keys=True))
    print(f"score: {killed} killed of {killed + survived} covered mutants"
          f" = {100.0 * killed / max(killed + survived, 1):.1f}%"
          f" (not covered by the subset: {stats.get('no_tests', 0)})")
  finally:
    if args.keep:
      print(f"kept {work}")
    else:
      shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
  main()
