"""The message-passing network of PyG's QM9 example (as Nash-MTL / FAMO use it).

Gilmer et al.'s MPNN in the form of PyTorch Geometric's ``qm9_nn_conv.py``,
with the task heads of Nash-MTL:

* ``lin0``: atom features -> ``dim``, ReLU;
* 3 rounds of an edge-conditioned convolution (``NNConv``, mean
  aggregation): the message from atom j to atom i is x_j W(e_ij), with
  W(e) = reshape(MLP(e)) a (dim × dim) matrix from a 5 -> 128 -> dim² MLP
  of the edge features, plus a root term x_i Θ and a bias; ReLU; then a GRU
  cell updates the atom states;
* ``Set2Set`` readout (3 processing steps, an LSTM over the attention
  query) -> 2 dim per molecule; ``lin1`` -> dim, ReLU: the shared
  representation;
* one affine head per target (dim -> 1).

Parameters: ``{'encoder': ..., 'heads': TaskDense (K, dim, 1)}``.

The input is a padded :class:`fairgrad_jax.datasets.GraphBatch`; padding atoms
sit in an extra segment and padding edges are masked out, so they change
nothing. The edge network's output is computed once and reused in the three
rounds (PyG recomputes the same values each round). Memory grows as
edges × dim²: about 1.6 GB in float32 for a batch of 120 molecules, as in PyG.

References:
  Gilmer et al., "Neural Message Passing for Quantum Chemistry", ICML 2017,
  arXiv:1704.01212; Vinyals et al., "Order Matters" (Set2Set),
  arXiv:1511.06391; Navon et al., "Multi-Task Learning as a Bargaining Game"
  (Nash-MTL), ICML 2022, arXiv:2202.01017.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from fairgrad_jax.models._heads import TaskDense

__all__ = ["QM9MPNN"]


def _segment_softmax(logits, segments, num_segments):
  maxima = jax.ops.segment_max(logits, segments, num_segments)
  maxima = jnp.where(jnp.isfinite(maxima), maxima, 0.0)
  e = jnp.exp(logits - maxima[segments])
  total = jax.ops.segment_sum(e, segments, num_segments)
  return e / total[segments]


class _MPNNEncoder(nn.Module):
  dim: int
  edge_hidden: int
  num_rounds: int
  set2set_steps: int

  @nn.compact
  def __call__(self, batch):
    dim = self.dim
    num_nodes = batch.nodes.shape[0]
    num_graphs = batch.graph_mask.shape[0]
    node_mask = batch.node_mask[:, None].astype(batch.nodes.dtype)
    edge_mask = batch.edge_mask.astype(batch.nodes.dtype)

    out = nn.relu(nn.Dense(dim, name="lin0")(batch.nodes)) * node_mask
    h = out

    # NNConv's edge network, evaluated once: W(e_ij) of shape (E, dim, dim).
    w = nn.relu(nn.Dense(self.edge_hidden, name="edge_mlp_0")(batch.edges))
    w = nn.Dense(dim * dim, name="edge_mlp_1")(w).reshape(-1, dim, dim)
    in_degree = jax.ops.segment_sum(edge_mask, batch.receivers, num_nodes)
    inv_degree = 1.0 / jnp.maximum(in_degree, 1.0)
    root = nn.Dense(dim, use_bias=False, name="conv_root")
    conv_bias = self.param("conv_bias", nn.initializers.zeros_init(), (dim,))
    gru = nn.GRUCell(features=dim, name="gru")
    for _ in range(self.num_rounds):
      messages = jnp.einsum("ea,eab->eb", out[batch.senders], w)
      messages = messages * edge_mask[:, None]
      aggregated = jax.ops.segment_sum(messages, batch.receivers, num_nodes)
      m = nn.relu(aggregated * inv_degree[:, None] + root(out) + conv_bias)
      h, _ = gru(h, m)
      h = h * node_mask
      out = h

    # Set2Set readout; padding atoms form segment ``num_graphs``.
    segments = batch.node_graph
    lstm = nn.OptimizedLSTMCell(features=dim, name="set2set_lstm")
    carry = (jnp.zeros((num_graphs + 1, dim), out.dtype),
             jnp.zeros((num_graphs + 1, dim), out.dtype))
    q_star = jnp.zeros((num_graphs + 1, 2 * dim), out.dtype)
    for _ in range(self.set2set_steps):
      carry, q = lstm(carry, q_star)
      scores = jnp.sum(out * q[segments], axis=-1)
      attention = _segment_softmax(scores, segments, num_graphs + 1)
      readout = jax.ops.segment_sum(attention[:, None] * out, segments,
                                    num_graphs + 1)
      q_star = jnp.concatenate([q, readout], axis=-1)
    q_star = q_star[:num_graphs]
    return nn.relu(nn.Dense(dim, name="lin1")(q_star))


class QM9MPNN(nn.Module):
  """PyG's QM9 MPNN with one affine head per target.

  Attributes:
    num_tasks: number of targets (11 in the paper).
    dim: width of the atom states (64 in Nash-MTL / FAMO).
    edge_hidden: hidden width of the edge network (128).
    num_rounds: message-passing rounds (3).
    set2set_steps: Set2Set processing steps (3).

  Examples:
    >>> import jax, numpy as np
    >>> from fairgrad_jax.datasets import GraphBatch
    >>> from fairgrad_jax.models import QM9MPNN
    >>> batch = GraphBatch(  # one molecule of 2 atoms, 1 padding atom
    ...     nodes=np.ones((3, 11), np.float32),
    ...     edges=np.ones((2, 5), np.float32),
    ...     senders=np.array([0, 1]), receivers=np.array([1, 0]),
    ...     node_graph=np.array([0, 0, 1]),
    ...     node_mask=np.array([True, True, False]),
    ...     edge_mask=np.array([True, True]), graph_mask=np.array([True]),
    ...     targets=np.zeros((1, 11), np.float32))
    >>> model = QM9MPNN(dim=8, edge_hidden=16)
    >>> # Shapes only (jax.eval_shape); model.init builds the arrays.
    >>> params = jax.eval_shape(model.init, jax.random.key(0), batch)
    >>> jax.eval_shape(model.apply, params, batch).shape  # (tasks, molecules)
    (11, 1)
  """

  num_tasks: int = 11
  dim: int = 64
  edge_hidden: int = 128
  num_rounds: int = 3
  set2set_steps: int = 3

  def setup(self):
    self.encoder = _MPNNEncoder(self.dim, self.edge_hidden, self.num_rounds,
                                self.set2set_steps)
    self.heads = TaskDense(self.num_tasks, 1)

  def __call__(self, batch, task=None):
    """Predictions (K, G), or (G,) for ``task``, G the batch's graph slots."""
    return self.heads(self.encoder(batch), task)[..., 0]
