"""NYU-v2 (3 tasks) in MTAN's preprocessed .npy layout.

The paper (Section 5.1) follows MTAN / CAGrad / Nash-MTL / FAMO: 795 training
and 654 evaluation images at 288 × 384, with three dense tasks, 13-class
semantic segmentation, depth estimation and surface normal prediction. The
files are those of MTAN's release::

    root/train/image/{i}.npy    (288, 384, 3) float, RGB in [0, 1]
    root/train/label/{i}.npy    (288, 384) class ids 0..12, -1 = unlabelled
    root/train/depth/{i}.npy    (288, 384, 1) depth, 0 = no measurement
    root/train/normal/{i}.npy   (288, 384, 3) unit normals, 0 = unlabelled
    root/val/...                the same for the 654 evaluation images

Examples come back channel-last (as flax convolutions take them): ``image``
(H, W, 3) float32 in [0, 1] (uint8 files are divided by 255), ``label``
(H, W) int32, ``depth`` (H, W, 1) float32, ``normal`` (H, W, 3) float32.
The metrics of Table 2 are in
:mod:`fairgrad_jax.metrics` (``segmentation_scores``, ``depth_errors``,
``normal_errors``).

References:
  Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention",
  CVPR 2019, arXiv:1803.10704.
"""

import numpy as np

from fairgrad_jax.datasets import _mtan

__all__ = ["NYUV2_NUM_CLASSES", "NYUv2"]

NYUV2_NUM_CLASSES = 13

_LAYOUT = """\
  root/{train,val}/image/{i}.npy   (H, W, 3)
  root/{train,val}/label/{i}.npy   (H, W), classes 0..12, -1 unlabelled
  root/{train,val}/depth/{i}.npy   (H, W, 1)
  root/{train,val}/normal/{i}.npy  (H, W, 3)
  (MTAN's preprocessed NYU-v2, i = 0..N-1)"""


class NYUv2(_mtan.MTANDataset):
  """One split of NYU-v2 from MTAN's .npy files.

  Examples:
    >>> import os, tempfile
    >>> import numpy as np
    >>> from fairgrad_jax.datasets import NYUv2
    >>> root = tempfile.mkdtemp()
    >>> shapes = {"image": (4, 6, 3), "label": (4, 6), "depth": (4, 6, 1),
    ...           "normal": (4, 6, 3)}
    >>> for folder, shape in shapes.items():
    ...   os.makedirs(os.path.join(root, "train", folder))
    ...   np.save(os.path.join(root, "train", folder, "0.npy"), np.zeros(shape))
    >>> batch = next(NYUv2(root, "train").batches(1))
    >>> {key: value.shape for key, value in batch.items()}
    {'image': (1, 4, 6, 3), 'label': (1, 4, 6), 'depth': (1, 4, 6, 1), 'normal': (1, 4, 6, 3)}
    >>> import shutil; shutil.rmtree(root)
  """

  name = "NYU-v2"
  layout = _LAYOUT

  def __init__(self, root: str, split: str = "train"):
    """Checks the folders of ``split`` ('train' or 'val') and counts examples.

    Raises:
      FileNotFoundError: a folder is missing or holds no .npy file.
      ValueError: files are misnamed, numbered with gaps, or the folders hold
        different numbers of examples. Shapes, dtypes and finiteness are
        checked on loading, where an unreadable file raises a ValueError
        that names it.
    """
    super().__init__(root, split, {
        "label": ("label", ()),
        "depth": ("depth", (1,)),
        "normal": ("normal", (3,)),
    })

  def _convert(self, example):
    label = example["label"]
    if np.any((label != np.round(label)) | (label < -1) |
              (label >= NYUV2_NUM_CLASSES)):
      raise ValueError(
          f"{self.name}: labels must be integers in -1..{NYUV2_NUM_CLASSES - 1}."
      )
    return {
        "image": example["image"],
        "label": label.astype(np.int32),
        "depth": example["depth"].astype(np.float32),
        "normal": example["normal"].astype(np.float32),
    }
