"""QM9 (11 regression targets) from an .npz dump of PyTorch Geometric's QM9.

The paper (Section 5.1) follows Nash-MTL and FAMO, who use PyTorch Geometric's
``QM9`` dataset with its example's transforms: a complete graph on the atoms
(``Complete``: every ordered pair of distinct atoms is an edge, with the bond
type one-hot where there is a bond and zeros elsewhere) and the interatomic
distance appended to the edge features (``Distance(norm=False)``); 11 of its
19 targets; a random split into 10,000 test, 10,000 validation and the rest
for training; targets standardised with the training mean and std.

PyG stores the dataset as a torch pickle, which needs torch to read. This
reader takes the same arrays written to one ``.npz`` file (no torch needed
here). Produce it once, where torch_geometric is installed::

    import numpy as np
    from torch_geometric.datasets import QM9
    ds = QM9("path/to/QM9")              # downloads and processes once
    data, slices = ds._data, ds.slices   # PyG's in-memory collation
    np.savez("qm9.npz",
             x=data.x.numpy(), pos=data.pos.numpy(),
             edge_index=data.edge_index.numpy(),
             edge_attr=data.edge_attr.numpy(), y=data.y.numpy(),
             node_slice=slices["x"].numpy(),
             edge_slice=slices["edge_index"].numpy())

The ``.npz`` layout (M molecules, N atoms and E bonds in total; node indices
in ``edge_index`` are local to each molecule, as PyG stores them):

==============  ===========  ==============================================
key             shape        meaning
==============  ===========  ==============================================
``x``           (N, 11)      atom features (PyG: type one-hot H C N O F,
                             atomic number, aromatic, sp, sp2, sp3, num H)
``pos``         (N, 3)       coordinates in Å
``edge_index``  (2, E)       directed bonds (source, target), both ways
``edge_attr``   (E, 4)       bond type one-hot (single, double, triple,
                             aromatic)
``y``           (M, 19)      PyG's 19 targets
``node_slice``  (M + 1,)     atoms of molecule m: node_slice[m]:node_slice[m+1]
``edge_slice``  (M + 1,)     bonds of molecule m: edge_slice[m]:edge_slice[m+1]
==============  ===========  ==============================================

Batches are padded to fixed sizes so that one jitted step serves them all
(:class:`GraphBatch`).
"""

import os
from typing import Iterator, NamedTuple

import numpy as np

from fairgrad_jax.datasets import _files

__all__ = ["GraphBatch", "QM9", "QM9_TARGET_NAMES", "QM9_TARGETS"]

# PyG target columns used by Nash-MTL, FAMO and the paper (Table 8 order):
# μ, α, ε_HOMO, ε_LUMO, ⟨R²⟩, ZPVE, U0, U, H, G (atomisation energies), c_v.
QM9_TARGETS = (0, 1, 2, 3, 5, 6, 12, 13, 14, 15, 11)
QM9_TARGET_NAMES = ("mu", "alpha", "homo", "lumo", "r2", "zpve", "U0", "U",
                    "H", "G", "cv")
# QM9's largest molecule has 29 atoms.
QM9_MAX_ATOMS = 29

_NUM_NODE_FEATURES = 11
_NUM_BOND_TYPES = 4
_LAYOUT = """\
  qm9.npz with arrays x (N, 11), pos (N, 3), edge_index (2, E),
  edge_attr (E, 4), y (M, 19), node_slice (M + 1,), edge_slice (M + 1,)
  (PyG's processed QM9 written with numpy.savez; see fairgrad_jax.datasets.qm9)"""
_SPLITS = ("train", "val", "test")


class GraphBatch(NamedTuple):
  """A padded batch of complete molecular graphs.

  Padding atoms belong to an extra graph with index ``num_graphs`` (one past
  the last real one) and padding edges join padding atoms, so segment sums
  with ``num_segments = num_graphs + 1`` keep them apart; the masks say which
  entries are real.

  Attributes:
    nodes: (N_pad, 11) float32 atom features.
    edges: (E_pad, 5) float32: bond type one-hot (zeros for a non-bonded
      pair) and the distance in Å.
    senders: (E_pad,) int32 source atom of each edge (PyG ``edge_index[0]``).
    receivers: (E_pad,) int32 target atom, where messages are aggregated.
    node_graph: (N_pad,) int32 molecule of each atom, ``num_graphs`` for
      padding.
    node_mask: (N_pad,) bool, real atoms.
    edge_mask: (E_pad,) bool, real edges.
    graph_mask: (G,) bool, real molecules (the last batch may be short).
    targets: (G, T) float32 targets (standardised when the dataset is).
  """

  nodes: np.ndarray
  edges: np.ndarray
  senders: np.ndarray
  receivers: np.ndarray
  node_graph: np.ndarray
  node_mask: np.ndarray
  edge_mask: np.ndarray
  graph_mask: np.ndarray
  targets: np.ndarray


def _load_npz(path: str) -> dict[str, np.ndarray]:
  if os.path.isdir(path):
    path = os.path.join(path, "qm9.npz")
  _files.require_file(path, "QM9", _LAYOUT)
  with _files.reading(path, "QM9", "an .npz archive of PyG's QM9 arrays"):
    archive = np.load(path, allow_pickle=False)
    if not isinstance(archive, np.lib.npyio.NpzFile):
      raise ValueError(f"found one .npy array of shape {archive.shape}")
    with archive:
      arrays = {key: archive[key] for key in archive.files}
  expected = {
      "x": (None, _NUM_NODE_FEATURES), "pos": (None, 3),
      "edge_index": (2, None), "edge_attr": (None, _NUM_BOND_TYPES),
      "y": (None, 19), "node_slice": (None,), "edge_slice": (None,),
  }
  missing = sorted(set(expected) - set(arrays))
  if missing:
    raise ValueError(f"QM9: {path!r} lacks {missing}. Expected:\n{_LAYOUT}")
  for key, shape in expected.items():
    actual = arrays[key].shape
    if len(actual) != len(shape) or any(
        s is not None and s != a for s, a in zip(shape, actual)):
      raise ValueError(
          f"QM9: {key!r} in {path!r} has shape {actual}, expected"
          f" {tuple('?' if s is None else s for s in shape)}."
          f" Expected:\n{_LAYOUT}"
      )
  index_names = {"x": ("atom", "feature"), "pos": ("atom", "axis"),
                 "edge_index": ("row", "bond"), "edge_attr": ("bond", "type"),
                 "y": ("molecule", "column"), "node_slice": ("molecule",),
                 "edge_slice": ("molecule",)}
  for key, names in index_names.items():
    if not (np.issubdtype(arrays[key].dtype, np.floating)
            or np.issubdtype(arrays[key].dtype, np.integer)):
      raise ValueError(f"QM9: {key!r} in {path!r} holds"
                       f" {arrays[key].dtype} values, expected real numbers.")
    if key != "y":
      _files.require_finite(arrays[key], "QM9", path, repr(key), names)
  # Only the targets used are checked (the other columns are never read): a
  # NaN would spread to that target of every molecule via the training mean.
  targets = arrays["y"][:, list(QM9_TARGETS)]
  bad = ~np.isfinite(targets)
  if np.any(bad):
    molecule, target = np.argwhere(bad)[0]
    raise ValueError(
        f"QM9: 'y' in {path!r} holds {int(bad.sum())} non-finite target"
        f" value(s), the first {targets[molecule, target]} at molecule"
        f" {molecule}, target {QM9_TARGET_NAMES[target]!r} (index"
        f" ({molecule}, {QM9_TARGETS[target]}) of 'y'); the data must be"
        " finite."
    )
  node_slice = arrays["node_slice"].astype(np.int64)
  edge_slice = arrays["edge_slice"].astype(np.int64)
  num_graphs = arrays["y"].shape[0]
  for key, slices, total in (
      ("node_slice", node_slice, arrays["x"].shape[0]),
      ("edge_slice", edge_slice, arrays["edge_index"].shape[1])):
    if (slices.shape != (num_graphs + 1,) or slices[0] != 0
        or slices[-1] != total or np.any(np.diff(slices) < 0)):
      raise ValueError(
          f"QM9: {key!r} must rise from 0 to {total} in {num_graphs + 1}"
          f" steps (one per molecule, plus one), got {slices[:4]}..."
      )
  for key in ("pos", "edge_attr"):
    rows = arrays[key].shape[0]
    want = (arrays["x"].shape[0] if key == "pos"
            else arrays["edge_index"].shape[1])
    if rows != want:
      raise ValueError(f"QM9: {key!r} has {rows} rows, expected {want}.")
  sizes = np.diff(node_slice)
  edge_graph = np.repeat(np.arange(num_graphs), np.diff(edge_slice))
  edge_index = arrays["edge_index"].astype(np.int64)
  if np.any(edge_index < 0) or np.any(edge_index >= sizes[edge_graph][None]):
    raise ValueError(
        "QM9: edge_index must hold atom indices local to each molecule"
        " (0 <= index < its number of atoms), as PyG stores them."
    )
  if np.any(sizes < 1) or np.any(sizes > QM9_MAX_ATOMS):
    raise ValueError(
        f"QM9: every molecule must have 1..{QM9_MAX_ATOMS} atoms, got sizes"
        f" from {sizes.min()} to {sizes.max()}."
    )
  arrays["node_slice"], arrays["edge_slice"] = node_slice, edge_slice
  arrays["edge_index"] = edge_index
  return arrays


class QM9:
  """QM9 molecules as complete graphs, split and standardised as in the paper.

  Attributes:
    splits: dict 'train' / 'val' / 'test' -> molecule indices.
    target_mean: (11,) training mean of the raw targets.
    target_std: (11,) training std of the raw targets.
    targets: (M, 11) float32 targets, standardised if ``standardize``.

  Examples:
    >>> import os, tempfile
    >>> import numpy as np
    >>> from fairgrad_jax.datasets import QM9
    >>> path = os.path.join(tempfile.mkdtemp(), "qm9.npz")
    >>> np.savez(path, x=np.ones((5, 11)), pos=np.arange(15.0).reshape(5, 3),
    ...          edge_index=np.array([[0, 1], [1, 0]]),
    ...          edge_attr=np.eye(4)[[0, 0]], y=np.arange(57.0).reshape(3, 19),
    ...          node_slice=np.array([0, 2, 3, 5]), edge_slice=[0, 2, 2, 2])
    >>> data = QM9(path, num_val=1, num_test=1)
    >>> batch = next(data.batches("train", batch_size=2))
    >>> batch.nodes.shape, batch.edges.shape, batch.targets.shape
    ((59, 11), (1624, 5), (2, 11))
    >>> os.remove(path)
  """

  def __init__(
      self,
      path: str,
      *,
      num_val: int = 10_000,
      num_test: int = 10_000,
      seed: int = 0,
      standardize: bool = True,
  ):
    """Reads ``path`` (the .npz, or a folder holding ``qm9.npz``).

    Args:
      path: the .npz file or its folder.
      num_val: validation molecules (10,000 in the paper).
      num_test: test molecules (10,000 in the paper).
      seed: seed of the random split.
      standardize: standardise the targets with the training mean and std.

    Raises:
      FileNotFoundError: no such file.
      ValueError: an unreadable file (empty, truncated, damaged; the message
        names it), a missing array, a wrong shape, a NaN or infinity (with
        its index), inconsistent slices or out-of-range bond indices, or a
        split larger than the dataset.
    """
    arrays = _load_npz(path)
    self._x = arrays["x"].astype(np.float32)
    self._pos = arrays["pos"].astype(np.float32)
    self._edge_index = arrays["edge_index"]
    self._edge_attr = arrays["edge_attr"].astype(np.float32)
    self._node_slice = arrays["node_slice"]
    self._edge_slice = arrays["edge_slice"]
    raw = arrays["y"][:, list(QM9_TARGETS)].astype(np.float64)
    num_graphs = raw.shape[0]
    if num_val < 0 or num_test < 0 or num_val + num_test >= num_graphs:
      raise ValueError(
          f"QM9: {num_graphs} molecules cannot give {num_test} test,"
          f" {num_val} validation and at least one training molecule."
      )
    order = np.random.default_rng(seed).permutation(num_graphs)
    self.splits = {
        "test": order[:num_test],
        "val": order[num_test:num_test + num_val],
        "train": order[num_test + num_val:],
    }
    train = raw[self.splits["train"]]
    self.target_mean = train.mean(axis=0)
    std = train.std(axis=0, ddof=1) if len(train) > 1 else np.ones(raw.shape[1])
    self.target_std = np.where(std > 0, std, 1.0)
    self.standardize = standardize
    values = (raw - self.target_mean) / self.target_std if standardize else raw
    self.targets = values.astype(np.float32)

  def __len__(self) -> int:
    return self.targets.shape[0]

  def unstandardize(self, values) -> np.ndarray:
    """Maps standardised predictions back to the targets' units."""
    values = np.asarray(values, np.float64)
    if not self.standardize:
      return values
    return values * self.target_std + self.target_mean

  def graph(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                       np.ndarray]:
    """Molecule ``index`` as a complete graph: (nodes, edges, senders, receivers).

    Edges are all ordered pairs of distinct atoms (source-major, as PyG's
    ``Complete``), with features [bond one-hot, distance].
    """
    n0, n1 = self._node_slice[index], self._node_slice[index + 1]
    e0, e1 = self._edge_slice[index], self._edge_slice[index + 1]
    n = n1 - n0
    bonds = np.zeros((n, n, _NUM_BOND_TYPES), np.float32)
    source, target = self._edge_index[:, e0:e1]
    bonds[source, target] = self._edge_attr[e0:e1]
    senders, receivers = np.nonzero(~np.eye(n, dtype=bool))
    pos = self._pos[n0:n1]
    distance = np.linalg.norm(pos[senders] - pos[receivers], axis=-1)
    edges = np.concatenate(
        [bonds[senders, receivers], distance[:, None].astype(np.float32)],
        axis=1)
    return self._x[n0:n1], edges, senders, receivers

  def batch(self, indices, max_atoms: int = QM9_MAX_ATOMS,
            batch_size: int | None = None) -> GraphBatch:
    """Pads the molecules ``indices`` into one :class:`GraphBatch`.

    Args:
      indices: molecule indices.
      max_atoms: atoms per molecule the padding allows for (29 in QM9).
      batch_size: number of graph slots (>= len(indices)); default
        len(indices). Extra slots are masked out.
    """
    graphs = batch_size or len(indices)
    if len(indices) > graphs:
      raise ValueError(f"{len(indices)} molecules for {graphs} slots.")
    num_nodes = graphs * max_atoms + 1  # +1: at least one padding atom
    num_edges = graphs * max_atoms * (max_atoms - 1)
    pad = num_nodes - 1
    nodes = np.zeros((num_nodes, _NUM_NODE_FEATURES), np.float32)
    edges = np.zeros((num_edges, _NUM_BOND_TYPES + 1), np.float32)
    senders = np.full((num_edges,), pad, np.int32)
    receivers = np.full((num_edges,), pad, np.int32)
    node_graph = np.full((num_nodes,), graphs, np.int32)
    node_mask = np.zeros((num_nodes,), bool)
    edge_mask = np.zeros((num_edges,), bool)
    graph_mask = np.zeros((graphs,), bool)
    targets = np.zeros((graphs, self.targets.shape[1]), np.float32)
    node_at, edge_at = 0, 0
    for slot, index in enumerate(indices):
      x, e, s, r = self.graph(int(index))
      if len(x) > max_atoms:
        raise ValueError(f"molecule {index} has {len(x)} > {max_atoms} atoms.")
      n, m = len(x), len(e)
      nodes[node_at:node_at + n] = x
      node_graph[node_at:node_at + n] = slot
      node_mask[node_at:node_at + n] = True
      edges[edge_at:edge_at + m] = e
      senders[edge_at:edge_at + m] = s + node_at
      receivers[edge_at:edge_at + m] = r + node_at
      edge_mask[edge_at:edge_at + m] = True
      graph_mask[slot] = True
      targets[slot] = self.targets[index]
      node_at += n
      edge_at += m
    return GraphBatch(nodes, edges, senders, receivers, node_graph, node_mask,
                      edge_mask, graph_mask, targets)

  def batches(
      self,
      split: str,
      batch_size: int,
      *,
      shuffle: bool = False,
      seed: int | None = None,
      drop_last: bool = False,
      max_atoms: int = QM9_MAX_ATOMS,
  ) -> Iterator[GraphBatch]:
    """One pass over ``split`` in padded batches of ``batch_size`` molecules.

    Every batch has the same array shapes (a short last batch is padded and
    masked), so one jitted function serves them all.
    """
    _files.check_split(split, _SPLITS, "QM9")
    molecules = self.splits[split]
    for index in _files.batch_indices(len(molecules), batch_size,
                                      shuffle=shuffle, seed=seed,
                                      drop_last=drop_last):
      yield self.batch(molecules[index], max_atoms, batch_size)
