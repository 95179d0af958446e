"""Datasets of the benchmarks, as NumPy arrays (no torch, no downloads).

Two benchmarks run anywhere from data that ships with a package:

* :func:`load_multidigits`: Sener & Koltun's MultiMNIST construction (two
  overlaid digits, two classification tasks) from scikit-learn's digits.
* :func:`make_synthetic_regression`: GradNorm's many-task regression with
  loss scales spread over four decades.

The paper's datasets are read from a local folder in their published layouts
(a missing or malformed folder raises ``FileNotFoundError`` / ``ValueError``
naming the expected layout):

* :class:`CelebA`: 40 binary attributes (official release files).
* :class:`QM9`: 11 molecular properties (PyG's QM9 dumped to .npz).
* :class:`NYUv2`: segmentation, depth, normals (MTAN's .npy release).
* :class:`Cityscapes`: segmentation, depth (MTAN's .npy release).
"""

from fairgrad_jax.datasets.celeba import CELEBA_ATTRIBUTES
from fairgrad_jax.datasets.celeba import CelebA
from fairgrad_jax.datasets.cityscapes import Cityscapes
from fairgrad_jax.datasets.multidigits import ImageSplit
from fairgrad_jax.datasets.multidigits import load_multidigits
from fairgrad_jax.datasets.multidigits import MULTIDIGITS_TASKS
from fairgrad_jax.datasets.multidigits import MultiDigits
from fairgrad_jax.datasets.nyuv2 import NYUV2_NUM_CLASSES
from fairgrad_jax.datasets.nyuv2 import NYUv2
from fairgrad_jax.datasets.qm9 import GraphBatch
from fairgrad_jax.datasets.qm9 import QM9
from fairgrad_jax.datasets.qm9 import QM9_MAX_ATOMS
from fairgrad_jax.datasets.qm9 import QM9_TARGET_NAMES
from fairgrad_jax.datasets.qm9 import QM9_TARGETS
from fairgrad_jax.datasets.synthetic import make_synthetic_regression
from fairgrad_jax.datasets.synthetic import normalized_mse
from fairgrad_jax.datasets.synthetic import RegressionSplit
from fairgrad_jax.datasets.synthetic import SyntheticRegression

__all__ = [
    "CELEBA_ATTRIBUTES",
    "CelebA",
    "Cityscapes",
    "GraphBatch",
    "ImageSplit",
    "load_multidigits",
    "make_synthetic_regression",
    "MULTIDIGITS_TASKS",
    "MultiDigits",
    "normalized_mse",
    "NYUV2_NUM_CLASSES",
    "NYUv2",
    "QM9",
    "QM9_MAX_ATOMS",
    "QM9_TARGET_NAMES",
    "QM9_TARGETS",
    "RegressionSplit",
    "SyntheticRegression",
]
