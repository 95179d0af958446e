"""The methods the training benchmarks compare, and how to pick them by name.

A :class:`Method` is a row of the tables: single-task training (:data:`STL`,
the baseline Δm% is measured against) or a ``fairgrad_jax`` aggregator built
for the problem's task count, shared-parameter mask and seed.
"""

import dataclasses
import inspect
from typing import Sequence

import fairgrad_jax as fj

STL = "STL"


@dataclasses.dataclass(frozen=True)
class Method:
  """A method of the comparison.

  Attributes:
    name: the name in the tables.
    factory: name of the ``fairgrad_jax`` factory (None for STL).
    kwargs: its hyperparameters (the factory's defaults otherwise).
      ``num_tasks``, ``shared`` and ``seed`` are added when the factory takes
      them.
  """

  name: str
  factory: str | None
  kwargs: dict = dataclasses.field(default_factory=dict)

  def available(self) -> bool:
    return self.factory is None or hasattr(fj, self.factory)

  def build(self, num_tasks: int, shared, seed: int):
    factory = getattr(fj, self.factory)
    accepted = inspect.signature(factory).parameters
    kwargs = dict(self.kwargs)
    for key, value in (("num_tasks", num_tasks), ("shared", shared),
                       ("seed", seed)):
      if key in accepted:
        kwargs[key] = value
    return factory(**kwargs)


def default_methods(alphas: Sequence[float] = (1.0, 2.0, 5.0)) -> list[Method]:
  """STL, LS, MGDA, PCGrad, CAGrad, Nash-MTL, FAMO and FairGrad per α."""
  return [
      Method(STL, None),
      Method("LS", "linear_scalarization"),
      Method("MGDA", "mgda"),
      Method("PCGrad", "pcgrad"),
      Method("CAGrad", "cagrad", {"c": 0.4}),
      Method("Nash-MTL", "nash_mtl"),
      Method("FAMO", "famo"),
  ] + [Method(f"FairGrad α={a:g}", "fairgrad", {"alpha": float(a)})
       for a in alphas]


def select_methods(methods: Sequence[Method], names: str | None) -> list[Method]:
  """The methods named in a comma-separated list (all when None)."""
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


def unavailable_note(missing: Sequence[Method]) -> str:
  if not missing:
    return ""
  names = ", ".join(f"{m.name} (fairgrad_jax.{m.factory})" for m in missing)
  return (f"\nNot run, their factories are not in this build of fairgrad_jax:"
          f" {names}.\n")


def split_available(methods: Sequence[Method]):
  available = [m for m in methods if m.available()]
  missing = [m for m in methods if not m.available()]
  return available, missing
