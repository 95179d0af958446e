"""The methods the training benchmarks compare, and how to pick them by name.

A :class:`Method` is a row of the tables: single-task training (:data:`STL`,
the baseline Δm% is measured against) or a public ``fairgrad_jax`` weighting
turned into an aggregator by :func:`fairgrad_jax.aggregator` for the problem's
task count, shared-parameter mask and seed. Adding a method to the
comparison is one line of :func:`default_methods`.
"""

import dataclasses
from typing import Callable, Sequence

import fairgrad_jax as fj

STL = "STL"


@dataclasses.dataclass(frozen=True)
class Method:
  """A method of the comparison.

  Attributes:
    name: the name in the tables (and of ``--methods``).
    weighting: the seed's weighting (``seed -> fairgrad_jax.Weighting``;
      methods without randomness ignore the seed), None for :data:`STL`.
    aggregator_kwargs: options of :func:`fairgrad_jax.aggregator` other than
      ``num_tasks`` and ``shared`` (e.g. ``max_norm``).
  """

  name: str
  weighting: Callable[[int], fj.Weighting] | None
  aggregator_kwargs: dict = dataclasses.field(default_factory=dict)

  @property
  def single_task(self) -> bool:
    """Whether this is STL: K single-task models, no aggregator."""
    return self.weighting is None

  def build(self, num_tasks: int, shared, seed: int):
    """The method's aggregator for ``num_tasks`` tasks, the ``shared`` mask
    of the parameters and the run's ``seed``."""
    if self.weighting is None:
      raise ValueError(f"{self.name} trains single-task models; it has no"
                       " aggregator to build.")
    return fj.aggregator(self.weighting(seed), num_tasks=num_tasks,
                         shared=shared, **self.aggregator_kwargs)


def _unseeded(weighting: fj.Weighting) -> Callable[[int], fj.Weighting]:
  """A weighting without randomness: the same one for every seed."""
  return lambda seed: weighting


def default_methods(alphas: Sequence[float] = (1.0, 2.0, 5.0)) -> list[Method]:
  """STL, LS, Mean, MGDA, PCGrad, CAGrad, Nash-MTL, FAMO, STCH, IMTL-L, GLS,
  DB-MTL, UPGrad, DualProj, Aligned-MTL, ConFIG, GradVac, SDMGrad, MoDo,
  CR-MOGM (of MGDA), GradNorm, PBI, COSMOS (equal preferences) and
  FairGrad per α.

  Each with its factory's hyperparameters: CAGrad's c = 0.4, Nash-MTL's
  update clipped to norm 1 (as :func:`fairgrad_jax.nash_mtl`).
  """
  return [
      Method(STL, None),
      Method("LS", _unseeded(fj.linear_scalarization_weighting())),
      Method("Mean", _unseeded(fj.mean_weighting())),
      Method("MGDA", _unseeded(fj.mgda_weighting())),
      Method("PCGrad", lambda seed: fj.pcgrad_weighting(seed=seed)),
      Method("CAGrad", _unseeded(fj.cagrad_weighting(c=0.4))),
      Method("Nash-MTL", _unseeded(fj.nash_mtl_weighting()),
             {"max_norm": 1.0}),
      Method("FAMO", _unseeded(fj.famo_weighting())),
      Method("STCH", _unseeded(fj.stch_weighting())),
      Method("IMTL-L", _unseeded(fj.imtl_l_weighting())),
      Method("GLS", _unseeded(fj.geometric_mean_weighting())),
      Method("DB-MTL", _unseeded(fj.db_mtl_weighting())),
      Method("UPGrad", _unseeded(fj.upgrad_weighting())),
      Method("DualProj", _unseeded(fj.dualproj_weighting())),
      Method("Aligned-MTL", _unseeded(fj.aligned_mtl_weighting())),
      Method("ConFIG", _unseeded(fj.config_weighting())),
      Method("GradVac", lambda seed: fj.gradvac_weighting(seed=seed)),
      Method("SDMGrad", _unseeded(fj.sdmgrad_weighting())),
      Method("MoDo", _unseeded(fj.modo_weighting())),
      Method("CR-MOGM", _unseeded(fj.cr_mogm_weighting())),
      Method("GradNorm", _unseeded(fj.gradnorm_weighting())),
      Method("PBI", _unseeded(fj.pbi_weighting())),
      Method("COSMOS", _unseeded(fj.cosmos_weighting())),
  ] + [Method(f"FairGrad α={a:g}", _unseeded(fj.fairgrad_weighting(float(a))))
       for a in alphas]


def select_methods(methods: Sequence[Method],
                   names: str | None) -> list[Method]:
  """The methods named in a comma-separated list (all when None); case and
  spaces are ignored, an unknown name exits with the choices."""
  if not names:
    return list(methods)
  wanted = [n.strip() for n in names.split(",") if n.strip()]
  by_key = {m.name.lower().replace(" ", ""): m for m in methods}
  chosen = []
  for name in wanted:
    key = name.lower().replace(" ", "")
    if key not in by_key:
      raise SystemExit(f"unknown method {name!r}; choose from "
                       f"{[m.name for m in methods]}")
    chosen.append(by_key[key])
  return chosen
