"""fairgrad_jax: fair multi-task optimisation as jittable Optax aggregators.

FairGrad (Ban & Ji, "Fair Resource Allocation in Multi-Task Learning",
ICML 2024, arXiv:2402.15638) and the methods it is compared with. Each
method is a :class:`Weighting` (Gram matrix, losses and state → task
weights), made by its ``*_weighting`` constructor, and runs

* as an :class:`optax.experimental.aggregating.Aggregator` of stacked
  per-task gradients (its factory, e.g. :func:`fairgrad`, or
  :func:`aggregator` on any weighting),
* Gram-only, without the K×P Jacobian (:func:`weighted_grad`),
* on the gradients of a shared representation (:func:`representation_grad`),

with its weight solve inside ``jax.jit``. Data-parallel helpers live in
:mod:`fairgrad_jax.sharding`.
"""

import warnings

from fairgrad_jax import sharding
from fairgrad_jax._aggregator import aggregator
from fairgrad_jax._aggregator import AggregatorState
from fairgrad_jax._aggregator import Weighting
from fairgrad_jax._autogram import weighted_grad
from fairgrad_jax._autogram import WeightedGrad
from fairgrad_jax._compile import lean_compiler_options
from fairgrad_jax._gram import gram_matrix
from fairgrad_jax._losses import fair_loss
from fairgrad_jax._masks import shared_mask
from fairgrad_jax._methods.aligned_mtl import aligned_mtl
from fairgrad_jax._methods.aligned_mtl import aligned_mtl_weighting
from fairgrad_jax._methods.aligned_mtl import aligned_mtl_weights
from fairgrad_jax._methods.cagrad import cagrad
from fairgrad_jax._methods.cagrad import cagrad_weighting
from fairgrad_jax._methods.cagrad import cagrad_weights
from fairgrad_jax._methods.cagrad import CAGradInfo
from fairgrad_jax._methods.config import config
from fairgrad_jax._methods.config import config_weighting
from fairgrad_jax._methods.config import config_weights
from fairgrad_jax._methods.constant import constant
from fairgrad_jax._methods.constant import constant_weighting
from fairgrad_jax._methods.cosmos import cosmos
from fairgrad_jax._methods.cosmos import cosmos_weighting
from fairgrad_jax._methods.cr_mogm import cr_mogm
from fairgrad_jax._methods.cr_mogm import cr_mogm_weighting
from fairgrad_jax._methods.cr_mogm import CRMOGMState
from fairgrad_jax._methods.db_mtl import db_mtl
from fairgrad_jax._methods.db_mtl import db_mtl_weighting
from fairgrad_jax._methods.db_mtl import DBMTLState
from fairgrad_jax._methods.dualproj import dualproj
from fairgrad_jax._methods.dualproj import dualproj_weighting
from fairgrad_jax._methods.dualproj import dualproj_weights
from fairgrad_jax._methods.dualproj import DualProjInfo
from fairgrad_jax._methods.dwa import dwa
from fairgrad_jax._methods.dwa import dwa_weighting
from fairgrad_jax._methods.dwa import DWAState
from fairgrad_jax._methods.excess_mtl import excess_mtl
from fairgrad_jax._methods.excess_mtl import ExcessMTLState
from fairgrad_jax._methods.fairgrad import fairgrad
from fairgrad_jax._methods.fairgrad import fairgrad_weighting
from fairgrad_jax._methods.fairgrad import fairgrad_weights
from fairgrad_jax._methods.famo import famo
from fairgrad_jax._methods.famo import famo_weighting
from fairgrad_jax._methods.famo import FAMOState
from fairgrad_jax._methods.geometric_mean import geometric_mean
from fairgrad_jax._methods.geometric_mean import geometric_mean_weighting
from fairgrad_jax._methods.graddrop import graddrop
from fairgrad_jax._methods.gradnorm import gradnorm
from fairgrad_jax._methods.gradnorm import gradnorm_weighting
from fairgrad_jax._methods.gradnorm import GradNormState
from fairgrad_jax._methods.gradvac import gradvac
from fairgrad_jax._methods.gradvac import gradvac_weighting
from fairgrad_jax._methods.gradvac import GradVacState
from fairgrad_jax._methods.imtl_g import imtl_g
from fairgrad_jax._methods.imtl_g import imtl_g_weighting
from fairgrad_jax._methods.imtl_g import imtl_g_weights
from fairgrad_jax._methods.imtl_l import imtl_l
from fairgrad_jax._methods.imtl_l import imtl_l_weighting
from fairgrad_jax._methods.imtl_l import IMTLLState
from fairgrad_jax._methods.krum import krum
from fairgrad_jax._methods.krum import krum_weighting
from fairgrad_jax._methods.linear_scalarization import linear_scalarization
from fairgrad_jax._methods.linear_scalarization import (
    linear_scalarization_weighting)
from fairgrad_jax._methods.mean import mean
from fairgrad_jax._methods.mean import mean_weighting
from fairgrad_jax._methods.mgda import mgda
from fairgrad_jax._methods.mgda import mgda_weighting
from fairgrad_jax._methods.mgda import mgda_weights
from fairgrad_jax._methods.mgda import MGDAInfo
from fairgrad_jax._methods.moco import moco
from fairgrad_jax._methods.moco import MoCoState
from fairgrad_jax._methods.modo import modo
from fairgrad_jax._methods.modo import modo_weighting
from fairgrad_jax._methods.modo import MoDoState
from fairgrad_jax._methods.nash_mtl import nash_mtl
from fairgrad_jax._methods.nash_mtl import nash_mtl_weighting
from fairgrad_jax._methods.nash_mtl import nash_mtl_weights
from fairgrad_jax._methods.pbi import pbi
from fairgrad_jax._methods.pbi import pbi_weighting
from fairgrad_jax._methods.pcgrad import pcgrad
from fairgrad_jax._methods.pcgrad import pcgrad_weighting
from fairgrad_jax._methods.pcgrad import pcgrad_weights
from fairgrad_jax._methods.rlw import rlw
from fairgrad_jax._methods.rlw import rlw_weighting
from fairgrad_jax._methods.scale_invariant import scale_invariant
from fairgrad_jax._methods.scale_invariant import scale_invariant_weighting
from fairgrad_jax._methods.sdmgrad import sdmgrad
from fairgrad_jax._methods.sdmgrad import sdmgrad_weighting
from fairgrad_jax._methods.sdmgrad import SDMGradState
from fairgrad_jax._methods.stch import stch
from fairgrad_jax._methods.stch import stch_weighting
from fairgrad_jax._methods.stch import STCHState
from fairgrad_jax._methods.trimmed_mean import trimmed_mean
from fairgrad_jax._methods.upgrad import upgrad
from fairgrad_jax._methods.upgrad import upgrad_weighting
from fairgrad_jax._methods.upgrad import upgrad_weights
from fairgrad_jax._methods.upgrad import UPGradInfo
from fairgrad_jax._methods.uw import uw
from fairgrad_jax._methods.uw import uw_weighting
from fairgrad_jax._methods.uw import UWState
from fairgrad_jax._representation import representation_grad
from fairgrad_jax._solvers.fairgrad import fairgrad_solve
from fairgrad_jax._solvers.fairgrad import FairGradInfo
from fairgrad_jax._solvers.fairgrad import FairGradSolution
from fairgrad_jax._solvers.mgda import mgda_solve
from fairgrad_jax._solvers.mgda import MGDASolution
from fairgrad_jax._task_gradients import task_gradients

__version__ = "0.1.0"

__all__ = sorted([
    "AggregatorState",
    "CAGradInfo",
    "CRMOGMState",
    "DBMTLState",
    "DWAState",
    "DualProjInfo",
    "ExcessMTLState",
    "FAMOState",
    "FairGradInfo",
    "FairGradSolution",
    "GradNormState",
    "GradVacState",
    "IMTLLState",
    "MGDAInfo",
    "MGDASolution",
    "MoCoState",
    "MoDoState",
    "SDMGradState",
    "STCHState",
    "UPGradInfo",
    "UWState",
    "WeightedGrad",
    "Weighting",
    "aggregator",
    "aligned_mtl",
    "aligned_mtl_weighting",
    "aligned_mtl_weights",
    "cagrad",
    "cagrad_weighting",
    "cagrad_weights",
    "config",
    "config_weighting",
    "config_weights",
    "constant",
    "constant_weighting",
    "cosmos",
    "cosmos_weighting",
    "cr_mogm",
    "cr_mogm_weighting",
    "db_mtl",
    "db_mtl_weighting",
    "dualproj",
    "dualproj_weighting",
    "dualproj_weights",
    "dwa",
    "dwa_weighting",
    "excess_mtl",
    "fair_loss",
    "fairgrad",
    "fairgrad_solve",
    "fairgrad_weighting",
    "fairgrad_weights",
    "famo",
    "famo_weighting",
    "geometric_mean",
    "geometric_mean_weighting",
    "graddrop",
    "gradnorm",
    "gradnorm_weighting",
    "gradvac",
    "gradvac_weighting",
    "gram_matrix",
    "imtl_g",
    "imtl_g_weighting",
    "imtl_g_weights",
    "imtl_l",
    "imtl_l_weighting",
    "krum",
    "krum_weighting",
    "lean_compiler_options",
    "linear_scalarization",
    "linear_scalarization_weighting",
    "mean",
    "mean_weighting",
    "mgda",
    "mgda_solve",
    "mgda_weighting",
    "mgda_weights",
    "moco",
    "modo",
    "modo_weighting",
    "nash_mtl",
    "nash_mtl_weighting",
    "nash_mtl_weights",
    "pbi",
    "pbi_weighting",
    "pcgrad",
    "pcgrad_weighting",
    "pcgrad_weights",
    "representation_grad",
    "rlw",
    "rlw_weighting",
    "scale_invariant",
    "scale_invariant_weighting",
    "sdmgrad",
    "sdmgrad_weighting",
    "sharding",
    "shared_mask",
    "stch",
    "stch_weighting",
    "task_gradients",
    "trimmed_mean",
    "upgrad",
    "upgrad_weighting",
    "upgrad_weights",
    "uw",
    "uw_weighting",
    "weighted_grad",
])

# The data-parallel helpers moved to fairgrad_jax.sharding; the old names
# still work, with a DeprecationWarning, until the next minor release.
_MOVED_TO_SHARDING = ("data_mesh", "data_parallel", "replicate",
                      "shard_batch")


def __getattr__(name):
  if name in _MOVED_TO_SHARDING:
    warnings.warn(
        f"fairgrad_jax.{name} moved to fairgrad_jax.sharding.{name}; the old"
        " name will be removed in the next minor release.",
        DeprecationWarning, stacklevel=2)
    return getattr(sharding, name)
  raise AttributeError(f"module 'fairgrad_jax' has no attribute {name!r}")
