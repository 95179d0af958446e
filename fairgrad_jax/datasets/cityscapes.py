"""Cityscapes (2 tasks) in MTAN's preprocessed .npy layout.

The paper (Section 5.1) follows MTAN / CAGrad / Nash-MTL / FAMO: 2,975
training and 500 evaluation images at 128 × 256, with two dense tasks,
7-class semantic segmentation and depth estimation. The files are those of
MTAN's release::

    root/train/image/{i}.npy     (128, 256, 3) float, RGB in [0, 1]
    root/train/label_7/{i}.npy   (128, 256) class ids 0..6, -1 = unlabelled
    root/train/depth/{i}.npy     (128, 256, 1) depth, 0 = no measurement
    root/val/...                 the same for the 500 evaluation images

The release also has label folders for other class sets (``label_19``...);
``num_classes`` picks ``label_<num_classes>``. Examples come back
channel-last: ``image`` (H, W, 3) float32 in [0, 1] (uint8 files are divided
by 255), ``label`` (H, W) int32, ``depth`` (H, W, 1) float32.

References:
  Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention",
  CVPR 2019, arXiv:1803.10704.
"""

import numpy as np

from fairgrad_jax.datasets import _mtan

__all__ = ["Cityscapes"]

_LAYOUT = """\
  root/{train,val}/image/{i}.npy     (H, W, 3)
  root/{train,val}/label_7/{i}.npy   (H, W), classes 0..6, -1 unlabelled
  root/{train,val}/depth/{i}.npy     (H, W, 1)
  (MTAN's preprocessed Cityscapes, i = 0..N-1; label_<C> for C classes)"""


class Cityscapes(_mtan.MTANDataset):
  """One split of Cityscapes from MTAN's .npy files.

  Examples:
    >>> import os, tempfile
    >>> import numpy as np
    >>> from fairgrad_jax.datasets import Cityscapes
    >>> root = tempfile.mkdtemp()
    >>> shapes = {"image": (2, 4, 3), "label_7": (2, 4), "depth": (2, 4, 1)}
    >>> for folder, shape in shapes.items():
    ...   os.makedirs(os.path.join(root, "val", folder))
    ...   np.save(os.path.join(root, "val", folder, "0.npy"), np.zeros(shape))
    >>> example = Cityscapes(root, "val")[0]
    >>> example["label"].dtype, example["depth"].shape
    (dtype('int32'), (2, 4, 1))
    >>> import shutil; shutil.rmtree(root)
  """

  name = "Cityscapes"
  layout = _LAYOUT

  def __init__(self, root: str, split: str = "train", num_classes: int = 7):
    """Checks the folders of ``split`` ('train' or 'val') and counts examples.

    Args:
      root: the dataset folder.
      split: 'train' or 'val'.
      num_classes: reads labels from ``label_<num_classes>`` (7 in the paper).

    Raises:
      FileNotFoundError: a folder is missing or holds no .npy file.
      ValueError: files are misnamed, numbered with gaps, or the folders hold
        different numbers of examples. Shapes, dtypes and finiteness are
        checked on loading, where an unreadable file raises a ValueError
        that names it.
    """
    if int(num_classes) != num_classes or num_classes < 2:
      raise ValueError(f"num_classes must be an integer >= 2, got "
                       f"{num_classes!r}.")
    self.num_classes = int(num_classes)
    super().__init__(root, split, {
        "label": (f"label_{self.num_classes}", ()),
        "depth": ("depth", (1,)),
    })

  def _convert(self, example):
    label = example["label"]
    if np.any((label != np.round(label)) | (label < -1) |
              (label >= self.num_classes)):
      raise ValueError(
          f"{self.name}: labels must be integers in -1..{self.num_classes - 1}."
      )
    return {
        "image": example["image"],
        "label": label.astype(np.int32),
        "depth": example["depth"].astype(np.float32),
    }
