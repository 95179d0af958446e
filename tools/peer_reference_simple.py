"""TorchJD's simple aggregators on fixed random Jacobians: the peer reference.

Usage (needs torch and torchjd >= 0.18; nothing is imported from them until
the script runs)::

  python tools/peer_reference_simple.py [--out tests/data/peer_simple.json]

Draws seeded Jacobians J (K×16, float64) for K in {2, 3, 5, 10} in the four
families of ``tools/peer_reference.py`` (``random``, ``conflicting``,
``rank_deficient``, ``scaled``: row norms over four decades) plus
``byzantine`` (rows b + 0.3 n_i around a common b, with max(1, (K − 3) // 2)
of them replaced by 10 n_j: outliers), and runs TorchJD 0.18 in float64:

* ``Mean``, ``Sum``: weights (``MeanWeighting``, ``SumWeighting``) and
  updates;
* ``Constant(c)``, c uniform in [-1, 2] (any sign; one c per K): its
  update;
* ``KrumWeighting(f, m)`` on JJᵀ for every (f, m) with f in {0, 1, K − 3},
  m in {1, 2, K − f − 2} that TorchJD accepts (K >= f + 3, m <= K): the
  weights, the update wJ, and the scores (the same lines as TorchJD's
  ``forward`` up to the sum, so that the test can tell a tie);
* ``TrimmedMean(t)`` on J for t in {0, 1, (K − 1) // 2} with K >= 2t + 1;
* ``RandomWeighting`` (Lin et al.'s RLW, softmax of a standard normal
  draw): per K, the mean and variance of each weight over 20000 draws
  (seeded), and the standard deviation of the squared deviations (for the
  test's tolerance on the variance).

It writes the inputs, the values and the versions used.
``tests/test_simple_aggregators.py`` compares fairgrad_jax against that
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
SEED = 1714
KS = peer_reference.KS
FAMILIES = peer_reference.FAMILIES + ("byzantine",)
RANDOM_DRAWS = 20000


def jacobian(rng: np.random.Generator, k: int, family: str) -> np.ndarray:
  """One K×16 Jacobian (the families of tools/peer_reference.py, byzantine)."""
  if family == "byzantine":
    p = peer_reference.P
    jac = rng.standard_normal(p) + 0.3 * rng.standard_normal((k, p))
    bad = rng.choice(k, size=max(1, (k - 3) // 2), replace=False)
    jac[bad] = 10.0 * rng.standard_normal((len(bad), p))
    return jac
  return peer_reference.jacobian(rng, k, family)


def krum_settings(k: int) -> list[tuple[int, int]]:
  """(f, m) pairs TorchJD accepts for K tasks, f in {0, 1, K-3}, m in
  {1, 2, K-f-2}."""
  pairs = []
  for f in sorted({0, 1, k - 3}):
    if f < 0 or k < f + 3:
      continue
    for m in sorted({1, 2, k - f - 2}):
      if 1 <= m <= k:
        pairs.append((f, m))
  return pairs


def trim_numbers(k: int) -> list[int]:
  return sorted({t for t in (0, 1, (k - 1) // 2) if k >= 2 * t + 1})


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", type=pathlib.Path,
                      default=ROOT / "tests" / "data" / "peer_simple.json")
  args = parser.parse_args()

  import torch  # pylint: disable=import-outside-toplevel
  from torchjd import aggregation  # pylint: disable=import-outside-toplevel

  def krum_scores(gram_t, f):
    # TorchJD 0.18 KrumWeighting.forward, up to the scores.
    norms2 = torch.diagonal(gram_t)
    dist2 = norms2.unsqueeze(0) + norms2.unsqueeze(1) - 2 * gram_t
    dist = torch.sqrt(dist2.clamp(min=0.0))
    n_closest = gram_t.shape[0] - f - 2
    smallest, _ = torch.topk(dist, k=n_closest + 1, largest=False)
    return smallest[:, 1:].sum(dim=1)

  rng = np.random.default_rng(SEED)
  cases = []
  for k in KS:
    const = rng.uniform(-1.0, 2.0, k)  # one Constant per K
    for family in FAMILIES:
      jac = jacobian(rng, k, family)
      gram = jac @ jac.T
      jac_t, gram_t = torch.tensor(jac), torch.tensor(gram)
      case = {"k": k, "family": family, "jacobian": jac.tolist(),
              "gram": gram.tolist(), "constant_weights": const.tolist()}
      case["mean"] = {
          "weights": aggregation.MeanWeighting()(jac_t).numpy().tolist(),
          "update": aggregation.Mean()(jac_t).numpy().tolist()}
      case["sum"] = {
          "weights": aggregation.SumWeighting()(jac_t).numpy().tolist(),
          "update": aggregation.Sum()(jac_t).numpy().tolist()}
      case["constant_update"] = aggregation.Constant(
          torch.tensor(const))(jac_t).numpy().tolist()
      krum = []
      for f, m in krum_settings(k):
        w = aggregation.KrumWeighting(n_byzantine=f, n_selected=m)(
            gram_t).numpy()
        update = aggregation.Krum(n_byzantine=f, n_selected=m)(jac_t).numpy()
        krum.append({"n_byzantine": f, "n_selected": m,
                     "weights": w.tolist(), "update": update.tolist(),
                     "scores": krum_scores(gram_t, f).numpy().tolist()})
      case["krum"] = krum
      case["trimmed_mean"] = [
          {"trim_number": t,
           "update": aggregation.TrimmedMean(t)(jac_t).numpy().tolist()}
          for t in trim_numbers(k)]
      cases.append(case)

  torch.manual_seed(SEED)
  random = []
  for k in KS:
    weighting = aggregation.RandomWeighting()
    matrix = torch.zeros((k, 1), dtype=torch.float64)
    draws = torch.stack([weighting(matrix) for _ in range(RANDOM_DRAWS)])
    draws = draws.numpy()
    dev2 = (draws - draws.mean(axis=0)) ** 2
    random.append({"k": k, "draws": RANDOM_DRAWS,
                   "mean": draws.mean(axis=0).tolist(),
                   "var": draws.var(axis=0).tolist(),
                   "std_of_squared_deviation": dev2.std(axis=0).tolist()})

  versions = {name: importlib.metadata.version(name)
              for name in ("torchjd", "torch")}
  out = {"seed": SEED, "versions": versions, "cases": cases,
         "random": random}
  args.out.parent.mkdir(parents=True, exist_ok=True)
  args.out.write_text(json.dumps(out) + "\n")
  print(f"wrote {len(cases)} cases and {len(random)} random-weight summaries"
        f" to {args.out} ({versions})")


if __name__ == "__main__":
  main()
