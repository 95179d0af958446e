"""TorchJD's UPGrad and DualProj on fixed random Jacobians: the peer reference.

Usage (needs torch, torchjd >= 0.18 and its quadprog projector:
``pip install torch "torchjd[quadprog_projector]"``; nothing is imported
from them until the script runs)::

  python tools/peer_reference.py [--out tests/data/peer_upgrad_dualproj.json]

Draws seeded Jacobians J (K×P, float64) for K in {2, 3, 5, 10} in four
families, runs TorchJD's ``UPGradWeighting`` and ``DualProjWeighting`` (with
their default ``QuadprogProjector(norm_eps=1e-4, reg_eps=1e-4)``, quadprog
in float64) on the Gram matrix JJᵀ, with the default (mean) preference
vector and with one non-uniform preference vector, and writes the inputs,
the weights w and the updates Jᵀw with the versions used.
``tests/test_upgrad_dualproj.py`` compares fairgrad_jax against that file;
torch is never a test dependency.

Families (P = 16):

* ``random``: i.i.d. standard normal rows.
* ``conflicting``: rows s_i (b + 0.5 n_i) with signs s_i alternating, so
  that half the tasks oppose the other half.
* ``rank_deficient``: J = B C with B K×r, C r×P, r = max(1, K // 2).
* ``scaled``: ``random`` rows times 10^e, e uniform in [-2, 2] (norms over
  four decades).
"""

import argparse
import importlib.metadata
import json
import pathlib

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
SEED = 14
KS = (2, 3, 5, 10)
FAMILIES = ("random", "conflicting", "rank_deficient", "scaled")
P = 16


def jacobian(rng: np.random.Generator, k: int, family: str) -> np.ndarray:
  """One K×P Jacobian of the given family (see the module docstring)."""
  if family == "random":
    return rng.standard_normal((k, P))
  if family == "conflicting":
    base = rng.standard_normal(P)
    signs = np.where(np.arange(k) % 2 == 0, 1.0, -1.0)
    return signs[:, None] * (base + 0.5 * rng.standard_normal((k, P)))
  if family == "rank_deficient":
    r = max(1, k // 2)
    return rng.standard_normal((k, r)) @ rng.standard_normal((r, P))
  if family == "scaled":
    scales = 10.0 ** rng.uniform(-2.0, 2.0, k)
    return scales[:, None] * rng.standard_normal((k, P))
  raise ValueError(f"unknown family {family!r}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", type=pathlib.Path,
                      default=ROOT / "tests" / "data"
                      / "peer_upgrad_dualproj.json")
  args = parser.parse_args()

  import torch  # pylint: disable=import-outside-toplevel
  from torchjd import aggregation  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(SEED)
  cases = []
  for k in KS:
    for family in FAMILIES:
      jac = jacobian(rng, k, family)
      gram = jac @ jac.T
      prefs = [None, rng.uniform(0.1, 1.0, k)]
      for pref in prefs:
        pref_t = None if pref is None else torch.tensor(pref)
        gram_t = torch.tensor(gram)
        case = {"k": k, "family": family, "jacobian": jac.tolist(),
                "gram": gram.tolist(),
                "pref_vector": None if pref is None else pref.tolist()}
        for name, weighting in (
            ("upgrad", aggregation.UPGradWeighting(pref_t)),
            ("dualproj", aggregation.DualProjWeighting(pref_t))):
          w = weighting(gram_t).numpy()
          case[name] = {"weights": w.tolist(), "update": (w @ jac).tolist()}
        cases.append(case)
  versions = {name: importlib.metadata.version(name)
              for name in ("torchjd", "torch", "quadprog", "qpsolvers")}
  out = {"seed": SEED, "versions": versions,
         "projector": "QuadprogProjector(norm_eps=0.0001, reg_eps=0.0001)",
         "cases": cases}
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(out) + "\n")
  print(f"wrote {len(cases)} cases to {args.out} ({versions})")


if __name__ == "__main__":
  main()
