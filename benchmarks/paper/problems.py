"""The four benchmarks: model, per-task losses, data order and metrics.

Each :class:`Problem` reads its dataset with the loaders of
:mod:`fairgrad_jax.datasets` and computes the losses and metrics of the
authors' ``trainer.py`` / ``utils.py`` (see :mod:`benchmarks.paper.protocols`
for the files). Minibatch order and augmentation are drawn from
``numpy.random.default_rng([seed, epoch, ...])``, so the data of an epoch
depends on nothing but the seed and the epoch: that is what makes a resumed
run identical to an uninterrupted one.
"""

from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.paper import protocols
from fairgrad_jax import datasets
from fairgrad_jax import metrics
from fairgrad_jax import models

Batch = Any
_MTAN_FILTERS = (64, 128, 256, 512, 512)


def _narrow(width: int, scale: int) -> int:
  return max(1, width // scale)


# ----------------------------------------------------------------------------
# Augmentation of the MTAN layouts (experiments/nyuv2/data.py RandomScaleCrop,
# then a horizontal flip with probability 1/2), on channel-last arrays.


def _resize_bilinear(x: np.ndarray, height: int, width: int) -> np.ndarray:
  """torch's interpolate(mode='bilinear', align_corners=True), (h, w, C)."""
  h0, w0 = x.shape[:2]
  ys = np.linspace(0.0, h0 - 1, height) if height > 1 else np.zeros(1)
  xs = np.linspace(0.0, w0 - 1, width) if width > 1 else np.zeros(1)
  y0 = np.floor(ys).astype(int)
  x0 = np.floor(xs).astype(int)
  y1 = np.minimum(y0 + 1, h0 - 1)
  x1 = np.minimum(x0 + 1, w0 - 1)
  wy = (ys - y0)[:, None, None]
  wx = (xs - x0)[None, :, None]
  top = x[y0][:, x0] * (1 - wx) + x[y0][:, x1] * wx
  bottom = x[y1][:, x0] * (1 - wx) + x[y1][:, x1] * wx
  return (top * (1 - wy) + bottom * wy).astype(x.dtype)


def _resize_nearest(x: np.ndarray, height: int, width: int) -> np.ndarray:
  """torch's interpolate(mode='nearest'): source index floor(i · in/out)."""
  h0, w0 = x.shape[:2]
  rows = np.minimum((np.arange(height) * (h0 / height)).astype(int), h0 - 1)
  cols = np.minimum((np.arange(width) * (w0 / width)).astype(int), w0 - 1)
  return x[rows][:, cols]


def scale_crop_flip(example: dict, rng: np.random.Generator,
                    scales: Sequence[float] = (1.0, 1.2, 1.5)) -> dict:
  """A random crop of 1/s of the image (s in ``scales``) resized back, and a
  flip; depth is divided by s and the normals' x component changes sign
  under the flip, as in the authors' ``RandomScaleCrop``."""
  height, width = example["image"].shape[:2]
  s = scales[rng.integers(len(scales))]
  h, w = int(height / s), int(width / s)
  i = rng.integers(0, height - h + 1)
  j = rng.integers(0, width - w + 1)
  crop = lambda a: a[i:i + h, j:j + w]
  out = {
      "image": _resize_bilinear(crop(example["image"]), height, width),
      "label": _resize_nearest(crop(example["label"]), height, width),
      "depth": _resize_nearest(crop(example["depth"]), height, width) / s,
  }
  if "normal" in example:
    out["normal"] = _resize_bilinear(crop(example["normal"]), height, width)
  if rng.random() < 0.5:
    out = {k: v[:, ::-1] for k, v in out.items()}
    if "normal" in out:
      out["normal"] = out["normal"] * np.array([-1.0, 1.0, 1.0], np.float32)
  return {k: np.ascontiguousarray(v, dtype=example[k].dtype)
          for k, v in out.items()}


# ----------------------------------------------------------------------------
# Losses (experiments/nyuv2/trainer.py calc_loss and the others).


def segmentation_loss(logits, label):
  """Cross-entropy over the labelled pixels (nll_loss, ignore_index=-1)."""
  log_p = jax.nn.log_softmax(logits.astype(jnp.float32))
  valid = label >= 0
  picked = jnp.take_along_axis(log_p, jnp.maximum(label, 0)[..., None],
                               axis=-1)[..., 0]
  return -jnp.sum(picked * valid) / jnp.maximum(jnp.sum(valid), 1)


def _pixel_mask(target):
  # The authors' binary mask: the target's channels do not sum to 0.
  return (jnp.sum(target, axis=-1, keepdims=True) != 0).astype(jnp.float32)


def depth_loss(pred, depth):
  """L1 over the pixels with a depth measurement."""
  mask = _pixel_mask(depth)
  return jnp.sum(jnp.abs(pred - depth) * mask) / jnp.maximum(jnp.sum(mask), 1)


def normal_loss(pred, normal):
  """1 - mean cosine over the labelled pixels."""
  mask = _pixel_mask(normal)
  return 1.0 - jnp.sum(pred * normal * mask) / jnp.maximum(jnp.sum(mask), 1)


# ----------------------------------------------------------------------------


class Problem:
  """One benchmark: what the training loop needs to know about it.

  Attributes:
    protocol: the :class:`~benchmarks.paper.protocols.Protocol`.
    model: the flax module.
    has_batch_stats: whether the model keeps batch-norm statistics.
    eval_splits: the splits evaluated after every epoch.
  """

  protocol: protocols.Protocol
  model: Any
  has_batch_stats: bool = True
  eval_splits: tuple[str, ...] = ("test",)

  def apply(self, variables, batch, train: bool):
    """Outputs, and the new batch statistics when ``train`` (else None)."""
    raise NotImplementedError

  def task_losses(self, outputs, batch) -> jax.Array:
    raise NotImplementedError

  def num_train_batches(self) -> int:
    raise NotImplementedError

  def train_batches(self, seed: int, epoch: int) -> Iterator[Batch]:
    raise NotImplementedError

  def example_batch(self) -> Batch:
    raise NotImplementedError

  def evaluate(self, predict: Callable[[Batch], Any], split: str
               ) -> np.ndarray:
    """The protocol's metrics on ``split``, in the paper's units."""
    raise NotImplementedError

  def shared_mask(self, params):
    return models.shared_mask(params)

  def losses(self, params, batch_stats, batch, train: bool = True):
    """(K,) losses and the new batch statistics (None without them)."""
    variables = {"params": params}
    if self.has_batch_stats:
      variables["batch_stats"] = batch_stats
    outputs, new_stats = self.apply(variables, batch, train)
    return self.task_losses(outputs, batch), new_stats


class _Images(Problem):
  """Shared by the image problems: apply with batch norm."""

  def apply(self, variables, batch, train):
    if train:
      out, updates = self.model.apply(variables, batch["image"], train=True,
                                      mutable=["batch_stats"])
      return out, updates["batch_stats"]
    return self.model.apply(variables, batch["image"], train=False), None


class MTAN(_Images):
  """NYU-v2 and Cityscapes: SegNet-MTAN on MTAN's .npy layout."""

  def __init__(self, protocol, root: str | None, *, model_scale: int = 1):
    self.protocol = protocol
    nyu = protocol.name == "nyuv2"
    self.num_classes = datasets.NYUV2_NUM_CLASSES if nyu else 7
    self.model = models.SegNetMTAN(
        tasks=protocol.task_names, num_classes=self.num_classes,
        filters=tuple(_narrow(f, model_scale) for f in _MTAN_FILTERS))
    self.image_shape = (288, 384) if nyu else (128, 256)
    if root is not None:
      reader = datasets.NYUv2 if nyu else datasets.Cityscapes
      self.train = reader(root, "train")
      self.test = reader(root, "val")  # MTAN's "val" is the papers' test set

  def shared_mask(self, params):
    # The authors' SegNetMtan.shared_parameters(): every parameter whose name
    # lacks "pred", so the task attention masks count as shared.
    mask = models.shared_mask(params)
    heads = {
        name: {key: key != "pred" for key in head}
        for name, head in params["heads"].items()
    }
    return {**mask, "heads": heads}

  def task_losses(self, outputs, batch):
    losses = [segmentation_loss(outputs[0], batch["label"]),
              depth_loss(outputs[1], batch["depth"])]
    if len(outputs) > 2:
      losses.append(normal_loss(outputs[2], batch["normal"]))
    return jnp.stack(losses)

  def num_train_batches(self):
    return -(-len(self.train) // self.protocol.batch_size)

  def train_batches(self, seed, epoch):
    order = np.random.default_rng([seed, epoch]).permutation(len(self.train))
    augment = np.random.default_rng([seed, epoch, 1])
    size = self.protocol.batch_size
    for start in range(0, len(order), size):
      examples = [self.train[int(i)] for i in order[start:start + size]]
      if self.protocol.augmentation:
        examples = [scale_crop_flip(e, augment) for e in examples]
      yield {k: np.stack([e[k] for e in examples]) for k in examples[0]}

  def example_batch(self):
    return next(self.test.batches(1))

  def synthetic_batch(self, rng: np.random.Generator) -> Batch:
    """A training batch of the real sizes, random values (for --profile)."""
    b = self.protocol.batch_size
    h, w = self.image_shape
    batch = {
        "image": rng.random((b, h, w, 3), np.float32),
        "label": rng.integers(-1, self.num_classes, (b, h, w)).astype(
            np.int32),
        "depth": rng.random((b, h, w, 1), np.float32) + 0.1,
    }
    if self.protocol.num_tasks > 2:
      normal = rng.normal(size=(b, h, w, 3)).astype(np.float32)
      batch["normal"] = normal / np.linalg.norm(normal, axis=-1, keepdims=True)
    return batch

  def evaluate(self, predict, split):
    del split  # one evaluation split: MTAN's "val" folder
    confusion = np.zeros((self.num_classes, self.num_classes), np.int64)
    per_batch = []
    for batch in self.test.batches(self.protocol.eval_batch_size):
      outputs = [np.asarray(o) for o in predict(batch)]
      confusion += metrics.confusion_matrix(
          outputs[0].argmax(-1), batch["label"], self.num_classes)
      row = []
      if np.any(batch["depth"] != 0):
        row += list(metrics.depth_errors(outputs[1], batch["depth"]))
      else:  # no measured pixel in this batch: the authors' code gives NaN
        row += [np.nan, np.nan]
      if len(outputs) > 2:
        if np.any(batch["normal"] != 0):
          e = metrics.normal_errors(outputs[2], batch["normal"])
          row += [e.mean, e.median, 100 * e.within_11_25, 100 * e.within_22_5,
                  100 * e.within_30]
        else:
          row += [np.nan] * 5
      per_batch.append(row)
    scores = metrics.segmentation_scores(confusion)
    # The authors average each batch's errors over the batches (not pixels).
    errors = np.nanmean(np.asarray(per_batch, np.float64), axis=0)
    return np.concatenate([[100 * scores.mean_iou, 100 * scores.pixel_accuracy],
                           errors])


class CelebA(_Images):
  """CelebA: FAMO's 9-layer CNN, 40 binary attributes."""

  eval_splits = ("val", "test")

  def __init__(self, protocol, root: str | None, *, model_scale: int = 1):
    self.protocol = protocol
    self.model = models.CelebACNN(num_tasks=protocol.num_tasks,
                                  width_multiplier=1.0 / model_scale)
    if root is not None:
      self.splits = {split: datasets.CelebA(root, split,
                                            image_size=protocol.image_size)
                     for split in ("train", "val", "test")}

  def task_losses(self, outputs, batch):
    labels = batch["labels"].T.astype(outputs.dtype)  # (K, B)
    return optax.sigmoid_binary_cross_entropy(outputs, labels).mean(axis=1)

  def num_train_batches(self):
    return -(-len(self.splits["train"]) // self.protocol.batch_size)

  def train_batches(self, seed, epoch):
    data = self.splits["train"]
    order = np.random.default_rng([seed, epoch]).permutation(len(data))
    size = self.protocol.batch_size
    for start in range(0, len(order), size):
      index = order[start:start + size]
      yield {"image": data.load_images(index), "labels": data.labels[index]}

  def example_batch(self):
    data = self.splits["train"]
    return {"image": data.load_images([0]), "labels": data.labels[:1]}

  def synthetic_batch(self, rng):
    b, s = self.protocol.batch_size, self.protocol.image_size
    return {"image": rng.random((b, s, s, 3), np.float32),
            "labels": rng.integers(0, 2, (b, self.protocol.num_tasks)).astype(
                np.int32)}

  def evaluate(self, predict, split):
    data = self.splits[split]
    positive, labels = [], []
    for images, y in data.batches(self.protocol.eval_batch_size):
      logits = np.asarray(predict({"image": images, "labels": y}))  # (K, B)
      positive.append((logits > 0).T)  # sigmoid > 0.5
      labels.append(y)
    return metrics.binary_f1(np.concatenate(positive).astype(np.float64),
                             np.concatenate(labels))


class QM9(Problem):
  """QM9: PyG's MPNN on complete molecular graphs, 11 regression targets."""

  has_batch_stats = False
  eval_splits = ("val", "test")

  def __init__(self, protocol, root: str | None, *, model_scale: int = 1,
               seed: int = 0):
    self.protocol = protocol
    self.model = models.QM9MPNN(num_tasks=protocol.num_tasks,
                                dim=_narrow(64, model_scale),
                                edge_hidden=_narrow(128, model_scale))
    if root is not None:
      # The authors split with dataset.shuffle() after set_seed(seed): the
      # split depends on the run's seed.
      self.data = datasets.QM9(root, num_val=protocol.num_val,
                               num_test=protocol.num_test, seed=seed,
                               standardize=protocol.scale_targets)
      self.std = (self.data.target_std if protocol.scale_targets
                  else np.ones(protocol.num_tasks))

  def apply(self, variables, batch, train):
    del train
    return self.model.apply(variables, batch), None

  def task_losses(self, outputs, batch):
    mask = batch.graph_mask.astype(outputs.dtype)  # (G,)
    error = jnp.square(outputs - batch.targets.T) * mask  # (K, G)
    return error.sum(axis=1) / jnp.maximum(mask.sum(), 1)

  def num_train_batches(self):
    return -(-len(self.data.splits["train"]) // self.protocol.batch_size)

  def train_batches(self, seed, epoch):
    molecules = self.data.splits["train"]
    order = np.random.default_rng([seed, epoch]).permutation(len(molecules))
    size = self.protocol.batch_size
    for start in range(0, len(order), size):
      yield self.data.batch(molecules[order[start:start + size]],
                            batch_size=size)

  def example_batch(self):
    return self.data.batch(self.data.splits["train"][:1],
                           batch_size=self.protocol.batch_size)

  def synthetic_batch(self, rng, atoms: int = 18):
    """120 molecules of ``atoms`` atoms (QM9's mean is 18) in the padded
    layout of the loader (29 atoms per slot)."""
    g, slot = self.protocol.batch_size, datasets.QM9_MAX_ATOMS
    nodes = np.zeros((g * slot + 1, 11), np.float32)
    edges = np.zeros((g * slot * (slot - 1), 5), np.float32)
    senders = np.full(len(edges), g * slot, np.int32)
    receivers = senders.copy()
    node_graph = np.full(len(nodes), g, np.int32)
    node_mask = np.zeros(len(nodes), bool)
    edge_mask = np.zeros(len(edges), bool)
    s, r = np.nonzero(~np.eye(atoms, dtype=bool))
    for m in range(g):
      n0, e0 = m * atoms, m * atoms * (atoms - 1)
      nodes[n0:n0 + atoms] = rng.random((atoms, 11))
      node_graph[n0:n0 + atoms] = m
      node_mask[n0:n0 + atoms] = True
      e = slice(e0, e0 + len(s))
      edges[e] = rng.random((len(s), 5))
      senders[e], receivers[e] = s + n0, r + n0
      edge_mask[e] = True
    return datasets.GraphBatch(
        nodes, edges, senders, receivers, node_graph, node_mask, edge_mask,
        np.ones(g, bool), rng.normal(size=(g, 11)).astype(np.float32))

  def evaluate(self, predict, split):
    total = np.zeros(self.protocol.num_tasks)
    count = 0
    for batch in self.data.batches(split, self.protocol.eval_batch_size):
      out = np.asarray(predict(batch), np.float64).T  # (G, K)
      real = batch.graph_mask
      error = np.abs(out[real] - batch.targets[real]) * self.std
      total += error.sum(axis=0)
      count += int(real.sum())
    mae = total / count
    mae[list(protocols.QM9_MEV)] *= 1000.0  # eV -> meV
    return mae


def make_problem(protocol, root: str | None, *, model_scale: int = 1,
                 seed: int = 0) -> Problem:
  """The problem of ``protocol`` reading ``root`` (None: no data, --profile)."""
  if protocol.name in ("nyuv2", "cityscapes"):
    return MTAN(protocol, root, model_scale=model_scale)
  if protocol.name == "celeba":
    return CelebA(protocol, root, model_scale=model_scale)
  if protocol.name == "qm9":
    return QM9(protocol, root, model_scale=model_scale, seed=seed)
  raise ValueError(f"unknown benchmark {protocol.name!r}")
