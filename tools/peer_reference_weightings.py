"""TorchJD's GradVac, SDMGrad, MoDo and CR-MOGM over a few steps: the peer reference.

Usage (needs torch and torchjd >= 0.18; nothing is imported from them until
the script runs)::

  python tools/peer_reference_weightings.py [--out tests/data/peer_weightings.json]

Draws seeded Jacobians J (K×P, float64, P = 16) for K in {2, 3, 5, 10} in
the families of ``tools/peer_reference.py`` (``random``, ``conflicting``,
``rank_deficient``, ``scaled``: row norms over four decades) plus
``zero_row`` (``random`` with one row set to 0), and moves each over
three steps, J_t = J R_t with R_t = I + 0.3 N(0, 1)/√P (the rank and the
zero row stay). Per case it also forms a two-batch matrix A_t = J_t J_t'ᵀ,
J_t' = J_t R_t' (not symmetric: what SDMGrad's and MoDo's papers feed their
weight steps). Each stateful TorchJD weighting runs, in float64, on the
three matrices in turn (one instance per sequence):

* ``GradVacWeighting(beta)`` for β = 0.5 (default) and 0.1 on JJᵀ. Its
  task orders come from ``torch.randperm``, which JAX cannot reproduce:
  the script records every permutation it draws (``torch.randperm`` is
  wrapped while it runs), and the tests replay those orders;
* ``SDMGradWeighting()`` on JJᵀ and on A; ``SDMGradWeighting(lambda_=1.0,
  pref_vector=p)`` on JJᵀ;
* ``MoDoWeighting()`` and ``MoDoWeighting(gamma=0.5, rho=0.0)`` on JJᵀ/s²
  and ``MoDoWeighting()`` on A/s², s = mean_i √max(M_ii, 0) of the matrix
  M: fairgrad_jax's MoDo normalises by s² so that its weights do not depend
  on the gradients' scale (see ``fairgrad_jax.modo_weighting``); TorchJD's
  does not, so it gets the normalised matrix;
* ``CRMOGMWeighting(UPGradWeighting())`` (α = 0.9) and the same with
  α = 0.5 and ``initial_weights=p`` on JJᵀ. UPGrad, whose dual-cone QPs
  both libraries solve exactly, isolates CR-MOGM's own averaging; TorchJD's
  ``MGDAWeighting`` stops its Frank–Wolfe at a weight change of 1e-3, and
  its min-norm weights differ from the exact ones (which fairgrad_jax's
  MGDA finds) by up to 5e-2 on these Gram matrices, so CR-MOGM of MGDA is
  not compared.

It writes the inputs (Gram and two-batch matrices, p), the
weights of every step, GradVac's recorded orders, and the versions used.
``tests/test_gradvac_sdmgrad.py`` compares fairgrad_jax against that file;
torch is never a test dependency.
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
SEED = 1414
KS = peer_reference.KS
FAMILIES = peer_reference.FAMILIES + ("zero_row",)
STEPS = 3


def jacobian(rng: np.random.Generator, k: int, family: str) -> np.ndarray:
  """One K×16 Jacobian (the families of tools/peer_reference.py, zero_row)."""
  if family == "zero_row":
    jac = peer_reference.jacobian(rng, k, "random")
    jac[rng.integers(k)] = 0.0
    return jac
  return peer_reference.jacobian(rng, k, family)


def _mix(rng, jac):
  p = jac.shape[1]
  return jac @ (np.eye(p) + 0.3 * rng.standard_normal((p, p)) / np.sqrt(p))


def _normalised(matrix):
  s = np.mean(np.sqrt(np.maximum(np.diagonal(matrix), 0.0)))
  return matrix / (s * s) if s > 0 else matrix


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", type=pathlib.Path,
                      default=ROOT / "tests" / "data" / "peer_weightings.json")
  args = parser.parse_args()

  import torch  # pylint: disable=import-outside-toplevel
  from torchjd import aggregation  # pylint: disable=import-outside-toplevel

  torch.manual_seed(SEED)
  drawn = []
  randperm = torch.randperm

  def recording_randperm(n, *a, **kw):
    perm = randperm(n, *a, **kw)
    drawn.append(perm.tolist())
    return perm

  def run(weighting, matrices):
    return [weighting(torch.tensor(m)).numpy().tolist() for m in matrices]

  def gradvac(beta, grams):
    weighting = aggregation.GradVacWeighting(beta=beta)
    weights, orders = [], []
    for gram in grams:
      drawn.clear()
      weights.append(weighting(torch.tensor(gram)).numpy().tolist())
      k = len(gram)
      assert len(drawn) == k, drawn  # one permutation per task, in order
      orders.append([[[j for j in range(k) if j != i][p] for p in perm]
                     for i, perm in enumerate(drawn)])
    return {"weights": weights, "orders": orders}

  rng = np.random.default_rng(SEED)
  cases = []
  torch.randperm = recording_randperm
  try:
    for k in KS:
      for family in FAMILIES:
        jac = jacobian(rng, k, family)
        jacs = [_mix(rng, jac) for _ in range(STEPS)]
        grams = [j @ j.T for j in jacs]
        two = [j @ _mix(rng, j).T for j in jacs]
        pref = rng.uniform(0.1, 1.0, k)
        pref_t = torch.tensor(pref)
        upgrad = aggregation.UPGradWeighting
        cases.append({
            "k": k, "family": family, "pref_vector": pref.tolist(),
            "grams": [g.tolist() for g in grams],
            "two_batch": [a.tolist() for a in two],
            "gradvac": {"default": gradvac(0.5, grams),
                        "beta_0.1": gradvac(0.1, grams)},
            "sdmgrad": {
                "default": run(aggregation.SDMGradWeighting(), grams),
                "two_batch": run(aggregation.SDMGradWeighting(), two),
                "lambda_1_pref": run(aggregation.SDMGradWeighting(
                    lambda_=1.0, pref_vector=pref_t), grams)},
            "modo": {
                "default": run(aggregation.MoDoWeighting(),
                               [_normalised(g) for g in grams]),
                "gamma_0.5_rho_0": run(
                    aggregation.MoDoWeighting(gamma=0.5, rho=0.0),
                    [_normalised(g) for g in grams]),
                "two_batch": run(aggregation.MoDoWeighting(),
                                 [_normalised(a) for a in two])},
            "cr_mogm": {
                "upgrad": run(aggregation.CRMOGMWeighting(upgrad()), grams),
                "upgrad_alpha_0.5_initial": run(aggregation.CRMOGMWeighting(
                    upgrad(), alpha=0.5, initial_weights=pref_t), grams)},
        })
  finally:
    torch.randperm = randperm
  versions = {name: importlib.metadata.version(name)
              for name in ("torchjd", "torch")}
  out = {"seed": SEED, "steps": STEPS, "versions": versions, "cases": cases}
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(out) + "\n")
  print(f"wrote {len(cases)} cases to {args.out} ({versions})")


if __name__ == "__main__":
  main()
