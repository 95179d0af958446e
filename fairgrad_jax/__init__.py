"""fairgrad_jax: fair multi-task optimisation as jittable Optax aggregators.

FairGrad (Ban & Ji, "Fair Resource Allocation in Multi-Task Learning",
ICML 2024, arXiv:2402.15638) and the methods it is compared with, each an
:class:`optax.experimental.aggregating.Aggregator` that maps stacked per-task
gradients to one update, with its weight solve inside ``jax.jit``.
"""

from fairgrad_jax._aggregation.base import AggregatorState
from fairgrad_jax._aggregation.fairgrad import fairgrad
from fairgrad_jax._aggregation.fairgrad import FairGradInfo
from fairgrad_jax._aggregation.fairgrad import linear_scalarization
from fairgrad_jax._gram import gram_matrix
from fairgrad_jax._losses import fair_loss
from fairgrad_jax._weighting.fairgrad import fairgrad_solve
from fairgrad_jax._weighting.fairgrad import fairgrad_weights
from fairgrad_jax._weighting.fairgrad import FairGradSolution

__version__ = "0.1.0"

__all__ = [
    "AggregatorState",
    "FairGradInfo",
    "FairGradSolution",
    "fair_loss",
    "fairgrad",
    "fairgrad_solve",
    "fairgrad_weights",
    "gram_matrix",
    "linear_scalarization",
]
