"""Flax models of the benchmarks: a shared encoder and per-task heads.

Every model's ``params`` collection has exactly two top-level keys:

* ``'encoder'``: the parameters shared by all tasks (FairGrad's Gram matrix
  is built from the gradients of these);
* ``'heads'``: the task-specific parameters.

:func:`shared_mask` maps that split to the ``shared=`` mask of the
aggregators. Heads of equal shape are stacked on a leading task axis
(:class:`TaskDense`) and every such model takes ``task=None`` (all tasks,
outputs stacked on a leading axis K) or ``task=i`` (task i alone; ``i`` may be
traced, so ``jax.vmap(jax.grad(task_loss))`` over task indices gives the
per-task gradients).

This subpackage needs flax (``pip install 'fairgrad_jax[models]'``); the
core package does not. Without flax, importing it raises an ImportError that
says so.

Models:

* :class:`MultiLeNet`: MultiDigits / MultiMNIST (Sener & Koltun).
* :class:`MultiTaskMLP`: GradNorm's synthetic regression.
* :class:`CelebACNN`: the 9-layer CNN of FAMO and the paper (CelebA).
* :class:`QM9MPNN`: PyG's QM9 message-passing network (QM9).
* :class:`SegNetMTAN`: MTAN, SegNet with task attention (NYU-v2,
  Cityscapes).
"""

try:
  import flax  # pylint: disable=unused-import
except ModuleNotFoundError as e:
  if e.name != "flax":
    raise
  raise ImportError(
      "fairgrad_jax.models needs flax, which is not installed: pip install"
      " 'fairgrad_jax[models]' (or pip install flax). The rest of"
      " fairgrad_jax works without it."
  ) from e

# pylint: disable=g-import-not-at-top,wrong-import-position
from fairgrad_jax.models._heads import shared_mask
from fairgrad_jax.models._heads import TaskDense
from fairgrad_jax.models.celeba_cnn import CelebACNN
from fairgrad_jax.models.lenet import MultiLeNet
from fairgrad_jax.models.mlp import MultiTaskMLP
from fairgrad_jax.models.qm9_mpnn import QM9MPNN
from fairgrad_jax.models.segnet_mtan import SegNetMTAN

__all__ = [
    "CelebACNN",
    "MultiLeNet",
    "MultiTaskMLP",
    "QM9MPNN",
    "SegNetMTAN",
    "shared_mask",
    "TaskDense",
]
