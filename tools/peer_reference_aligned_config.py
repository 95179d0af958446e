"""TorchJD's Aligned-MTL and ConFIG on fixed random Jacobians: the peer reference.

Usage (needs torch and torchjd >= 0.18; nothing is imported from them until
the script runs)::

  python tools/peer_reference_aligned_config.py [--out tests/data/peer_aligned_mtl_config.json]

Draws seeded Jacobians J (K×P, float64, P = 16) for K in {2, 3, 5, 10} in
the four families of ``tools/peer_reference.py`` (``random``,
``conflicting``, ``rank_deficient``, ``scaled``: row norms over four
decades) plus ``zero_row`` (``random`` with one row set to 0), and runs, in
float64:

* TorchJD's ``AlignedMTLWeighting(pref_vector, scale_mode)`` on the Gram
  matrix JJᵀ: the mean preference with each of the three scale modes, and
  one non-uniform preference vector with "min";
* TorchJD's ``ConFIG(pref_vector)`` on J itself (it is a Jacobian
  aggregator in TorchJD; fairgrad_jax computes it from JJᵀ): its default
  (ones) and the same non-uniform preference vector.

It writes the inputs, Aligned-MTL's weights w and updates wJ, and ConFIG's
updates (TorchJD does not form ConFIG's weights) with the versions used.
``tests/test_aligned_mtl_config.py`` compares fairgrad_jax against that
file; torch is never a test dependency.
"""

import argparse
import importlib.metadata
import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import peer_reference  # pylint: disable=wrong-import-position

ROOT = pathlib.Path(__file__).resolve().parent.parent
SEED = 2305
KS = peer_reference.KS
FAMILIES = peer_reference.FAMILIES + ("zero_row",)
SCALE_MODES = ("min", "median", "rmse")


def jacobian(rng: np.random.Generator, k: int, family: str) -> np.ndarray:
  """One K×16 Jacobian (the families of tools/peer_reference.py, zero_row)."""
  if family == "zero_row":
    jac = peer_reference.jacobian(rng, k, "random")
    jac[rng.integers(k)] = 0.0
    return jac
  return peer_reference.jacobian(rng, k, family)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", type=pathlib.Path,
                      default=ROOT / "tests" / "data"
                      / "peer_aligned_mtl_config.json")
  args = parser.parse_args()

  import torch  # pylint: disable=import-outside-toplevel
  from torchjd import aggregation  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(SEED)
  cases = []
  for k in KS:
    for family in FAMILIES:
      jac = jacobian(rng, k, family)
      gram = jac @ jac.T
      pref = rng.uniform(0.1, 1.0, k)
      jac_t, gram_t, pref_t = (torch.tensor(x) for x in (jac, gram, pref))
      aligned = {}
      for mode in SCALE_MODES:
        w = aggregation.AlignedMTLWeighting(scale_mode=mode)(gram_t).numpy()
        aligned[mode] = {"weights": w.tolist(), "update": (w @ jac).tolist()}
      w = aggregation.AlignedMTLWeighting(pref_t)(gram_t).numpy()
      aligned["min_pref"] = {"weights": w.tolist(),
                             "update": (w @ jac).tolist()}
      config = {
          "default": aggregation.ConFIG()(jac_t).numpy().tolist(),
          "pref": aggregation.ConFIG(pref_t)(jac_t).numpy().tolist()}
      cases.append({"k": k, "family": family, "jacobian": jac.tolist(),
                    "gram": gram.tolist(), "pref_vector": pref.tolist(),
                    "aligned_mtl": aligned, "config_update": config})
  versions = {name: importlib.metadata.version(name)
              for name in ("torchjd", "torch")}
  out = {"seed": SEED, "versions": versions, "cases": cases}
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(out) + "\n")
  print(f"wrote {len(cases)} cases to {args.out} ({versions})")


if __name__ == "__main__":
  main()
