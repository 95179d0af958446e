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
from fairgrad_jax._aggregation.gradient_surgery import cagrad
from fairgrad_jax._aggregation.gradient_surgery import imtl_g
from fairgrad_jax._aggregation.gradient_surgery import nash_mtl
from fairgrad_jax._aggregation.gradient_surgery import pcgrad
from fairgrad_jax._aggregation.graddrop import graddrop
from fairgrad_jax._aggregation.loss_weighting import dwa
from fairgrad_jax._aggregation.loss_weighting import DWAState
from fairgrad_jax._aggregation.loss_weighting import famo
from fairgrad_jax._aggregation.loss_weighting import FAMOState
from fairgrad_jax._aggregation.loss_weighting import rlw
from fairgrad_jax._aggregation.loss_weighting import scale_invariant
from fairgrad_jax._aggregation.loss_weighting import uw
from fairgrad_jax._aggregation.loss_weighting import UWState
from fairgrad_jax._aggregation.mgda import mgda
from fairgrad_jax._aggregation.mgda import MGDAInfo
from fairgrad_jax._weighting.cagrad import cagrad_weights
from fairgrad_jax._weighting.imtl_g import imtl_g_weights
from fairgrad_jax._weighting.mgda import mgda_solve
from fairgrad_jax._weighting.mgda import mgda_weights
from fairgrad_jax._weighting.mgda import MGDASolution
from fairgrad_jax._weighting.nash_mtl import nash_mtl_weights
from fairgrad_jax._weighting.pcgrad import pcgrad_weights
from fairgrad_jax._autogram import weighted_grad
from fairgrad_jax._autogram import WeightedGrad
from fairgrad_jax._gram import gram_matrix
from fairgrad_jax._losses import fair_loss
from fairgrad_jax._masks import shared_mask
from fairgrad_jax._representation import representation_grad
from fairgrad_jax._sharding import data_mesh
from fairgrad_jax._sharding import data_parallel
from fairgrad_jax._sharding import replicate
from fairgrad_jax._sharding import shard_batch
from fairgrad_jax._task_gradients import task_gradients
from fairgrad_jax._weighting.fairgrad import fairgrad_solve
from fairgrad_jax._weighting.fairgrad import fairgrad_weights
from fairgrad_jax._weighting.fairgrad import FairGradSolution

__version__ = "0.1.0"

__all__ = [
    "DWAState",
    "FAMOState",
    "MGDAInfo",
    "MGDASolution",
    "UWState",
    "cagrad",
    "cagrad_weights",
    "dwa",
    "famo",
    "graddrop",
    "imtl_g",
    "imtl_g_weights",
    "mgda",
    "mgda_solve",
    "mgda_weights",
    "nash_mtl",
    "nash_mtl_weights",
    "pcgrad",
    "pcgrad_weights",
    "rlw",
    "scale_invariant",
    "uw",
    "AggregatorState",
    "FairGradInfo",
    "FairGradSolution",
    "WeightedGrad",
    "data_mesh",
    "data_parallel",
    "fair_loss",
    "fairgrad",
    "fairgrad_solve",
    "fairgrad_weights",
    "gram_matrix",
    "linear_scalarization",
    "replicate",
    "representation_grad",
    "shard_batch",
    "shared_mask",
    "task_gradients",
    "weighted_grad",
]
