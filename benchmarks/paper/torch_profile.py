"""``--profile``'s PyTorch side: the authors' training step, timed on CPU.

The same synthetic batch as :mod:`benchmarks.paper.profile` (built by
:mod:`benchmarks.paper.problems`), fed to plain-PyTorch copies of the
authors' models, and two training steps taken the way the authors' code
takes them (github.com/OptMN-Lab/fairgrad):

* LS: ``experiments/*/trainer.py`` with ``--method ls``: forward, the (K,)
  losses, ``WeightMethod.backward`` of ``methods/weight_methods.py``
  (``LinearScalarization``: Σ_i l_i; ``clip_grad_norm_`` of the shared
  parameters *before* ``loss.backward()``, when their gradients are still
  empty, so it changes nothing), one backward pass, Adam;
* FairGrad: ``FairGrad.backward`` of ``methods/weight_methods.py``: K
  backward passes ``losses[i].backward(retain_graph=True)`` (not
  ``torch.autograd.grad``: the task-specific parameters' gradients add up
  over the K passes to those of Σ_i l_i), each followed by a copy of the
  shared gradients into column i of a (P, K) matrix G and their reset; the
  K × K Gram matrix GᵀG; the weights from scipy's ``least_squares`` on
  GᵀG w - w^(-1/α) = 0 with w ≥ 0, started at 1/K; the shared gradients
  overwritten with K · G w (``overwrite_grad``: "to match the sum loss") and
  clipped to global norm 1 (``max_norm=1.0``, the default of
  ``experiments/utils.py``); Adam. No backward pass of a weighted loss; the
  task-specific gradients are neither × K nor clipped.

Models (random weights, ``torch.manual_seed(0)``), each with the widths of
our flax port of ``--model-scale`` (read off the flax module that
:func:`benchmarks.paper.problems.make_problem` builds):

* NYU-v2 and Cityscapes: ``SegNetMtan`` of ``experiments/nyuv2/models.py``
  and ``experiments/cityscapes/models.py`` (the two files differ only in the
  class count, 13 or 7, and in the task count, 3 or 2), written once for K
  tasks; shared parameters: every name without "pred" (the task attention
  modules included), as the authors' ``shared_parameters()``. One change:
  the normals are divided by max(‖y‖, 1e-12) rather than ‖y‖ (a zero
  prediction, possible at tiny widths, would make every gradient NaN).
* CelebA: ``Network`` of ``experiments/celeba/models.py``; 40 heads
  ``Linear(512, 1)``; the authors apply a sigmoid and ``BCELoss``, here the
  logits go to ``binary_cross_entropy_with_logits`` (the same loss, as in
  :mod:`benchmarks.paper.problems`).
* QM9: ``Net`` of ``experiments/quantum_chemistry/models.py`` with
  PyTorch Geometric's ``NNConv(dim, dim, nn, aggr='mean')`` and
  ``Set2Set(dim, processing_steps=3)`` written in torch ops (``index_add_``,
  ``scatter_reduce``): the edge network runs in each of the 3 rounds, as
  PyG's does. The padded :class:`~fairgrad_jax.datasets.GraphBatch` is
  unpadded to PyG's layout (real atoms and edges only).

Parameter counts equal the flax models' except QM9's, which has 6 · dim
more (384 at dim 64): torch's ``GRU`` keeps both an input and a hidden bias
for every gate (6 · dim, flax's ``GRUCell`` 4 · dim) and its ``LSTM`` two
biases per gate (8 · dim, flax's ``OptimizedLSTMCell`` 4 · dim); the extra
biases add to the kept ones, so the functions are the same.

Every step runs once untimed (``compile_s``: its seconds; PyTorch compiles
nothing, it is the first step's allocations and Adam's state), then
``steps`` steps are timed one by one with ``time.perf_counter`` and the
median is reported. torch is optional (``pip install -e ".[peer]"``) and
imported on the first call, never at import; its OpenMP threads are then
made to sleep when idle (``OMP_WAIT_POLICY=PASSIVE`` unless set), so that
they do not spin beside JAX's timings in the same process (see
``benchmarks/peer_speed.py``).

References:
  Ban & Ji, "Fair Resource Allocation in Multi-Task Learning", ICML 2024,
  arXiv:2402.15638 (code: github.com/OptMN-Lab/fairgrad, the files above).
"""

import dataclasses
import functools
import math
import os
import statistics
import time
import types
from typing import Any, Callable

import numpy as np
from scipy.optimize import least_squares

from benchmarks.paper import problems
from benchmarks.paper import protocols

__all__ = ["available", "num_parameters", "profile"]

# The authors' clip of the shared gradient (experiments/utils.py --max_norm).
_MAX_NORM = 1.0

# experiments/celeba/models.py: (channels, 2 × 2 max-pool after) of the
# seven 3 × 3 convolutions.
_CELEBA_CONVS = ((64, True), (128, False), (128, True), (256, False),
                 (256, True), (512, False), (512, False))


@functools.cache
def _torch():
  """torch, imported once, its idle OpenMP threads asleep."""
  os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
  import torch  # pylint: disable=g-import-not-at-top
  return torch


def available() -> bool:
  """Whether torch can be imported (the ``peer`` extra)."""
  try:
    _torch()
  except ImportError:
    return False
  return True


# ----------------------------------------------------------------------------
# The authors' models, defined on first use (torch is imported then).


@functools.cache
def _models() -> types.SimpleNamespace:
  torch = _torch()
  nn = torch.nn
  F = torch.nn.functional  # pylint: disable=invalid-name

  def conv_layer(channel, pred=False):
    # _SegNet.conv_layer of experiments/nyuv2/models.py.
    if not pred:
      return nn.Sequential(
          nn.Conv2d(channel[0], channel[1], kernel_size=3, padding=1),
          nn.BatchNorm2d(channel[1]),
          nn.ReLU(inplace=True))
    return nn.Sequential(
        nn.Conv2d(channel[0], channel[0], kernel_size=3, padding=1),
        nn.Conv2d(channel[0], channel[1], kernel_size=1, padding=0))

  def att_layer(channel):
    # _SegNet.att_layer.
    return nn.Sequential(
        nn.Conv2d(channel[0], channel[1], kernel_size=1, padding=0),
        nn.BatchNorm2d(channel[1]),
        nn.ReLU(inplace=True),
        nn.Conv2d(channel[1], channel[2], kernel_size=1, padding=0),
        nn.BatchNorm2d(channel[2]),
        nn.Sigmoid())

  class SegNetMtan(nn.Module):
    """experiments/{nyuv2,cityscapes}/models.py ``_SegNet``, K = 2 or 3."""

    def __init__(self, filters, class_nb, num_tasks):
      super().__init__()
      f = list(filters)
      self.num_tasks = num_tasks
      self.encoder_block = nn.ModuleList([conv_layer([3, f[0]])])
      self.decoder_block = nn.ModuleList([conv_layer([f[0], f[0]])])
      for i in range(4):
        self.encoder_block.append(conv_layer([f[i], f[i + 1]]))
        self.decoder_block.append(conv_layer([f[i + 1], f[i]]))
      self.conv_block_enc = nn.ModuleList([conv_layer([f[0], f[0]])])
      self.conv_block_dec = nn.ModuleList([conv_layer([f[0], f[0]])])
      for i in range(4):
        if i == 0:
          self.conv_block_enc.append(conv_layer([f[i + 1], f[i + 1]]))
          self.conv_block_dec.append(conv_layer([f[i], f[i]]))
        else:
          self.conv_block_enc.append(nn.Sequential(
              conv_layer([f[i + 1], f[i + 1]]),
              conv_layer([f[i + 1], f[i + 1]])))
          self.conv_block_dec.append(nn.Sequential(
              conv_layer([f[i], f[i]]), conv_layer([f[i], f[i]])))
      # Task attention: one list of five modules per task.
      self.encoder_att = nn.ModuleList(
          [nn.ModuleList([att_layer([f[0], f[0], f[0]])])])
      self.decoder_att = nn.ModuleList(
          [nn.ModuleList([att_layer([2 * f[0], f[0], f[0]])])])
      self.encoder_block_att = nn.ModuleList([conv_layer([f[0], f[1]])])
      self.decoder_block_att = nn.ModuleList([conv_layer([f[0], f[0]])])
      for j in range(num_tasks):
        if j < num_tasks - 1:
          self.encoder_att.append(
              nn.ModuleList([att_layer([f[0], f[0], f[0]])]))
          self.decoder_att.append(
              nn.ModuleList([att_layer([2 * f[0], f[0], f[0]])]))
        for i in range(4):
          self.encoder_att[j].append(
              att_layer([2 * f[i + 1], f[i + 1], f[i + 1]]))
          self.decoder_att[j].append(
              att_layer([f[i + 1] + f[i], f[i], f[i]]))
      for i in range(4):
        if i < 3:
          self.encoder_block_att.append(conv_layer([f[i + 1], f[i + 2]]))
          self.decoder_block_att.append(conv_layer([f[i + 1], f[i]]))
        else:
          self.encoder_block_att.append(conv_layer([f[i + 1], f[i + 1]]))
          self.decoder_block_att.append(conv_layer([f[i + 1], f[i + 1]]))
      self.pred_task1 = conv_layer([f[0], class_nb], pred=True)
      self.pred_task2 = conv_layer([f[0], 1], pred=True)
      if num_tasks > 2:
        self.pred_task3 = conv_layer([f[0], 3], pred=True)
      self.down_sampling = nn.MaxPool2d(kernel_size=2, stride=2,
                                        return_indices=True)
      self.up_sampling = nn.MaxUnpool2d(kernel_size=2, stride=2)
      for m in self.modules():
        if isinstance(m, nn.Conv2d):
          nn.init.xavier_normal_(m.weight)
          nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.BatchNorm2d):
          nn.init.constant_(m.weight, 1)
          nn.init.constant_(m.bias, 0)

    def shared_parameters(self):
      # SegNetMtan.shared_parameters(): the names without "pred".
      return (p for n, p in self.named_parameters() if "pred" not in n)

    def forward(self, x):
      g_encoder = [[None, None] for _ in range(5)]
      g_decoder = [[None, None] for _ in range(5)]
      g_maxpool, g_upsampl, indices = [None] * 5, [None] * 5, [None] * 5
      for i in range(5):
        g_encoder[i][0] = self.encoder_block[i](
            x if i == 0 else g_maxpool[i - 1])
        g_encoder[i][1] = self.conv_block_enc[i](g_encoder[i][0])
        g_maxpool[i], indices[i] = self.down_sampling(g_encoder[i][1])
      for i in range(5):
        g_upsampl[i] = self.up_sampling(
            g_maxpool[-1] if i == 0 else g_decoder[i - 1][-1],
            indices[-i - 1])
        g_decoder[i][0] = self.decoder_block[-i - 1](g_upsampl[i])
        g_decoder[i][1] = self.conv_block_dec[-i - 1](g_decoder[i][0])
      features = []
      for i in range(self.num_tasks):
        a = None
        for j in range(5):
          inputs = (g_encoder[j][0] if j == 0
                    else torch.cat((g_encoder[j][0], a), dim=1))
          a = self.encoder_att[i][j](inputs) * g_encoder[j][1]
          a = F.max_pool2d(self.encoder_block_att[j](a), kernel_size=2,
                           stride=2)
        for j in range(5):
          a = F.interpolate(a, scale_factor=2, mode="bilinear",
                            align_corners=True)
          a = self.decoder_block_att[-j - 1](a)
          mask = self.decoder_att[i][-j - 1](
              torch.cat((g_upsampl[j], a), dim=1))
          a = mask * g_decoder[j][-1]
        features.append(a)
      preds = [F.log_softmax(self.pred_task1(features[0]), dim=1),
               self.pred_task2(features[1])]
      if self.num_tasks > 2:
        t3 = self.pred_task3(features[2])
        # The authors divide by the norm alone; the floor (F.normalize's)
        # keeps a zero prediction, possible at tiny widths, from giving NaN.
        preds.append(t3 / torch.norm(t3, p=2, dim=1, keepdim=True).clamp(
            min=1e-12))
      return preds

  class CelebANetwork(nn.Module):
    """experiments/celeba/models.py ``Network``, logits instead of sigmoids."""

    def __init__(self, num_tasks, width_multiplier):
      super().__init__()
      # CelebACNN's narrowing rule (fairgrad_jax/models/celeba_cnn.py).
      width = lambda c: max(1, int(c * width_multiplier))
      layers, c_in = [], 3
      for channels, pool in _CELEBA_CONVS:
        layers += [nn.Conv2d(c_in, width(channels), 3, stride=1, padding=1,
                             bias=False),
                   nn.BatchNorm2d(width(channels)), nn.ReLU(inplace=True)]
        if pool:
          layers.append(nn.MaxPool2d(2, stride=2, padding=0))
        c_in = width(channels)
      layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
      for _ in range(2):
        layers += [nn.Linear(c_in, width(512), bias=False),
                   nn.BatchNorm1d(width(512)), nn.ReLU(inplace=True)]
        c_in = width(512)
      self.shared_base = nn.Sequential(*layers)
      self.out_layer = nn.ModuleList(
          [nn.Linear(c_in, 1) for _ in range(num_tasks)])

    def shared_parameters(self):
      return self.shared_base.parameters()

    def forward(self, x):
      h = self.shared_base(x)
      return [layer(h) for layer in self.out_layer]

  class NNConv(nn.Module):
    """PyG's ``NNConv(dim, dim, nn, aggr='mean')``: root weight and bias."""

    def __init__(self, in_channels, out_channels, edge_nn):
      super().__init__()
      self.in_channels, self.out_channels = in_channels, out_channels
      self.nn = edge_nn
      self.lin = nn.Linear(in_channels, out_channels, bias=False)
      self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x, edge_index, edge_attr):
      source, target = edge_index  # flow 'source_to_target'
      weight = self.nn(edge_attr).view(-1, self.in_channels,
                                       self.out_channels)
      messages = torch.matmul(x[source].unsqueeze(1), weight).squeeze(1)
      total = x.new_zeros(x.size(0), self.out_channels).index_add_(
          0, target, messages)
      count = x.new_zeros(x.size(0)).index_add_(
          0, target, x.new_ones(target.size(0)))
      out = total / count.clamp(min=1).unsqueeze(-1)
      return out + self.lin(x) + self.bias

  def segment_softmax(src, index, num_segments):
    # torch_geometric.utils.softmax with an index (the maximum detached).
    expanded = index.view(-1, 1).expand_as(src)
    maxima = src.new_full((num_segments, src.size(1)), -math.inf)
    maxima = maxima.scatter_reduce(0, expanded, src.detach(), reduce="amax",
                                   include_self=False)
    out = (src - maxima[index]).exp()
    total = src.new_zeros(num_segments, src.size(1)).index_add_(0, index, out)
    return out / (total + 1e-16)[index]

  class Set2Set(nn.Module):
    """PyG's ``Set2Set(dim, processing_steps)`` (an LSTM 2 dim -> dim)."""

    def __init__(self, in_channels, processing_steps):
      super().__init__()
      self.in_channels, self.out_channels = in_channels, 2 * in_channels
      self.processing_steps = processing_steps
      self.lstm = nn.LSTM(self.out_channels, in_channels)

    def forward(self, x, index, dim_size):
      h = (x.new_zeros((1, dim_size, x.size(-1))),
           x.new_zeros((1, dim_size, x.size(-1))))
      q_star = x.new_zeros(dim_size, self.out_channels)
      for _ in range(self.processing_steps):
        q, h = self.lstm(q_star.unsqueeze(0), h)
        q = q.view(dim_size, self.in_channels)
        e = (x * q[index]).sum(dim=-1, keepdim=True)
        a = segment_softmax(e, index, dim_size)
        r = x.new_zeros(dim_size, self.in_channels).index_add_(0, index, a * x)
        q_star = torch.cat([q, r], dim=-1)
      return q_star

  class MPNN(nn.Module):
    """experiments/quantum_chemistry/models.py ``Net``."""

    def __init__(self, n_tasks, num_features, dim, edge_hidden):
      super().__init__()
      self.lin0 = nn.Linear(num_features, dim)
      edge_nn = nn.Sequential(nn.Linear(5, edge_hidden), nn.ReLU(),
                              nn.Linear(edge_hidden, dim * dim))
      self.conv = NNConv(dim, dim, edge_nn)
      self.gru = nn.GRU(dim, dim)
      self.set2set = Set2Set(dim, processing_steps=3)
      self.lin1 = nn.Linear(2 * dim, dim)
      self.task_specific = nn.ModuleList(
          [nn.Linear(dim, 1) for _ in range(n_tasks)])

    def shared_parameters(self):
      return (p for m in (self.lin0, self.conv, self.gru, self.set2set,
                          self.lin1) for p in m.parameters())

    def forward(self, data):
      out = F.relu(self.lin0(data.x))
      h = out.unsqueeze(0)
      for _ in range(3):
        m = F.relu(self.conv(out, data.edge_index, data.edge_attr))
        out, h = self.gru(m.unsqueeze(0), h)
        out = out.squeeze(0)
      out = self.set2set(out, data.batch, data.num_graphs)
      features = F.relu(self.lin1(out))
      return torch.cat([head(features) for head in self.task_specific], dim=1)

  return types.SimpleNamespace(SegNetMtan=SegNetMtan,
                               CelebANetwork=CelebANetwork, MPNN=MPNN)


def _model(problem: problems.Problem):
  """The authors' model of ``problem`` with its flax model's widths."""
  models = _models()
  flax_model = problem.model
  name = problem.protocol.name
  if name in ("nyuv2", "cityscapes"):
    return models.SegNetMtan(flax_model.filters, problem.num_classes,
                             problem.protocol.num_tasks)
  if name == "celeba":
    return models.CelebANetwork(problem.protocol.num_tasks,
                                flax_model.width_multiplier)
  return models.MPNN(problem.protocol.num_tasks, 11, flax_model.dim,
                     flax_model.edge_hidden)


def _problem(name: str, batch_size: int | None,
             model_scale: int) -> problems.Problem:
  if name not in protocols.PROTOCOLS:
    raise ValueError(f"unknown benchmark {name!r}; choose from"
                     f" {sorted(protocols.PROTOCOLS)}.")
  if model_scale < 1:
    raise ValueError(f"model_scale must be >= 1, got {model_scale}.")
  protocol = protocols.PROTOCOLS[name]
  if batch_size is not None:
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    protocol = dataclasses.replace(protocol, batch_size=batch_size)
  return problems.make_problem(protocol, None, model_scale=model_scale)


def num_parameters(name: str, *, model_scale: int = 1) -> int:
  """Trainable parameters of the authors' model of benchmark ``name``.

  Counted on torch's 'meta' device: no weights are allocated.

  Args:
    name: 'nyuv2', 'cityscapes', 'celeba' or 'qm9'.
    model_scale: every layer width divided by this, as ``--model-scale``.

  Returns:
    The number of scalars in the model's parameters.
  """
  torch = _torch()
  problem = _problem(name, None, model_scale)
  with torch.device("meta"):
    model = _model(problem)
  return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------
# Batches and losses.


def _calc_loss(torch, x_pred, x_output, task_type: str):
  # experiments/nyuv2/trainer.py calc_loss (cityscapes' is the same).
  F = torch.nn.functional  # pylint: disable=invalid-name
  if task_type == "semantic":
    return F.nll_loss(x_pred, x_output, ignore_index=-1)
  binary_mask = (torch.sum(x_output, dim=1) != 0).float().unsqueeze(1)
  count = torch.nonzero(binary_mask, as_tuple=False).size(0)
  if task_type == "depth":
    return torch.sum(torch.abs(x_pred - x_output) * binary_mask) / count
  return 1 - torch.sum((x_pred * x_output) * binary_mask) / count  # normal


def _batch_and_losses(problem: problems.Problem, batch
                      ) -> tuple[Any, Callable[[Any, Any], Any]]:
  """The numpy batch as the authors' loaders give it (torch, channels
  first), and ``losses(model, batch) -> (K,)`` of their trainer.py."""
  torch = _torch()
  F = torch.nn.functional  # pylint: disable=invalid-name
  name = problem.protocol.name
  chw = lambda a: torch.from_numpy(np.ascontiguousarray(
      np.moveaxis(a, -1, 1)))
  if name in ("nyuv2", "cityscapes"):
    data = {"image": chw(batch["image"]),
            "label": torch.from_numpy(batch["label"]).long(),
            "depth": chw(batch["depth"])}
    if "normal" in batch:
      data["normal"] = chw(batch["normal"])

    def mtan_losses(model, b):
      pred = model(b["image"])
      losses = [_calc_loss(torch, pred[0], b["label"], "semantic"),
                _calc_loss(torch, pred[1], b["depth"], "depth")]
      if len(pred) > 2:
        losses.append(_calc_loss(torch, pred[2], b["normal"], "normal"))
      return torch.stack(losses)

    return data, mtan_losses
  if name == "celeba":
    labels = torch.from_numpy(batch["labels"]).float()
    data = {"image": chw(batch["image"]),
            "labels": [labels[:, i:i + 1] for i in range(labels.size(1))]}

    def celeba_losses(model, b):
      logits = model(b["image"])
      return torch.stack([F.binary_cross_entropy_with_logits(p, y)
                          for p, y in zip(logits, b["labels"])])

    return data, celeba_losses
  # QM9: PyG's batch of the real atoms and edges (no padding).
  nodes = np.asarray(batch.node_mask)
  edges = np.asarray(batch.edge_mask)
  renumber = np.cumsum(nodes) - 1  # padded atom index -> real atom index
  edge_index = np.stack([renumber[batch.senders[edges]],
                         renumber[batch.receivers[edges]]])
  graphs = np.asarray(batch.graph_mask)
  data = types.SimpleNamespace(
      x=torch.from_numpy(batch.nodes[nodes]),
      edge_index=torch.from_numpy(edge_index).long(),
      edge_attr=torch.from_numpy(batch.edges[edges]),
      batch=torch.from_numpy(batch.node_graph[nodes]).long(),
      num_graphs=int(graphs.sum()),
      y=torch.from_numpy(batch.targets[graphs]))

  def qm9_losses(model, b):
    return F.mse_loss(model(b), b.y, reduction="none").mean(0)

  return data, qm9_losses


# ----------------------------------------------------------------------------
# The two steps.


def _ls_step(model, optimizer, losses_fn, batch, num_tasks: int):
  """trainer.py with LinearScalarization (methods/weight_methods.py)."""
  torch = _torch()
  optimizer.zero_grad()
  losses = losses_fn(model, batch)
  loss = torch.sum(losses * torch.ones((num_tasks,)))
  # WeightMethod.backward: the clip comes before loss.backward(), on empty
  # gradients (no effect; kept for its cost).
  torch.nn.utils.clip_grad_norm_(list(model.shared_parameters()), _MAX_NORM)
  loss.backward()
  optimizer.step()


def _grad2vec(shared_params, grads, grad_dims, task):
  # FairGrad.grad2vec (methods/weight_methods.py).
  grads[:, task].fill_(0.0)
  cnt = 0
  for param in shared_params:
    grad = param.grad
    if grad is not None:
      grad_cur = grad.data.detach().clone()
      beg = 0 if cnt == 0 else sum(grad_dims[:cnt])
      en = sum(grad_dims[:cnt + 1])
      grads[beg:en, task].copy_(grad_cur.data.view(-1))
    cnt += 1


def _overwrite_grad(shared_parameters, newgrad, grad_dims, n_tasks):
  # FairGrad.overwrite_grad.
  newgrad = newgrad * n_tasks  # "to match the sum loss"
  cnt = 0
  for param in shared_parameters:
    beg = 0 if cnt == 0 else sum(grad_dims[:cnt])
    en = sum(grad_dims[:cnt + 1])
    this_grad = newgrad[beg:en].contiguous().view(param.data.size())
    param.grad = this_grad.data.clone()
    cnt += 1


def _fairgrad(grads, alpha: float, n_tasks: int):
  """FairGrad.fairgrad: GᵀG, then w ≥ 0 with GᵀG w = w^(-1/α) (least
  squares from w = 1/K), and G w."""
  torch = _torch()
  gg = grads.t().mm(grads).cpu()
  x_start = np.ones(n_tasks) / n_tasks
  a = gg.data.cpu().numpy()

  def objfn(x):
    return np.dot(a, x) - np.power(1 / x, 1 / alpha)

  res = least_squares(objfn, x_start, bounds=(0, np.inf))
  ww = torch.Tensor(res.x).to(grads.device)
  return (grads * ww.view(1, -1)).sum(1)


def _fairgrad_step(model, optimizer, losses_fn, batch, num_tasks: int,
                   alpha: float):
  """trainer.py with FairGrad(alpha, max_norm=1.0).backward."""
  torch = _torch()
  optimizer.zero_grad()
  losses = losses_fn(model, batch)
  shared = list(model.shared_parameters())
  grad_dims = [param.data.numel() for param in shared]
  grads = torch.Tensor(sum(grad_dims), num_tasks).to(losses.device)
  for i in range(num_tasks):
    losses[i].backward(retain_graph=i < num_tasks - 1)
    _grad2vec(shared, grads, grad_dims, i)
    for p in shared:
      p.grad = None
  g = _fairgrad(grads, alpha, num_tasks)
  _overwrite_grad(shared, g, grad_dims, num_tasks)
  torch.nn.utils.clip_grad_norm_(shared, _MAX_NORM)
  optimizer.step()


def _is_out_of_memory(error: BaseException) -> bool:
  if isinstance(error, MemoryError):
    return True
  message = str(error).lower()
  return "out of memory" in message or "can't allocate memory" in message


def _timed(step: Callable[[], None], steps: int) -> tuple[float, float]:
  """(median ms of ``steps`` steps, seconds of the first, untimed step);
  (nan, nan) when a step runs out of memory."""
  try:
    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    times = []
    for _ in range(steps):
      start = time.perf_counter()
      step()
      times.append(time.perf_counter() - start)
  except (RuntimeError, MemoryError) as error:
    if not _is_out_of_memory(error):
      raise
    return math.nan, math.nan
  return statistics.median(times) * 1e3, first


def profile(name: str, *, batch_size: int | None = None, steps: int = 3,
            alpha: float = 2.0, model_scale: int = 1,
            threads: int | None = None) -> list[dict]:
  """Milliseconds per training step of the authors' PyTorch code, on CPU.

  Args:
    name: the benchmark, 'nyuv2', 'cityscapes', 'celeba' or 'qm9'.
    batch_size: the minibatch; None: the protocol's (2, 8, 256, 120).
    steps: timed steps per row, after one untimed step.
    alpha: FairGrad's α (2 in every authors' run).
    model_scale: every layer width divided by this (1: the paper's models).
    threads: ``torch.set_num_threads`` for the measurement (restored
      afterwards); None: torch's default.

  Returns:
    Two rows ``{'step', 'ms', 'compile_s'}``: LS, then FairGrad; ``ms`` is
    the median over ``steps`` steps, ``compile_s`` the seconds of the first
    step; both are nan for a step that ran out of memory.

  Raises:
    ValueError: for an unknown ``name`` or a non-positive size.
    ImportError: without torch (see :func:`available`).

  Examples:
    >>> from benchmarks.paper import torch_profile
    >>> rows = torch_profile.profile(  # doctest: +SKIP
    ...     "qm9", batch_size=2, steps=1, model_scale=16)
    >>> [row["step"] for row in rows]  # doctest: +SKIP
    ['torch LS (one backward of Σ l_i)',
     "torch FairGrad α=2 (authors' step: K=11 backward passes, scipy solve)"]
  """
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}.")
  if threads is not None and threads < 1:
    raise ValueError(f"threads must be >= 1 or None, got {threads}.")
  torch = _torch()
  problem = _problem(name, batch_size, model_scale)
  protocol = problem.protocol
  k = protocol.num_tasks
  batch, losses_fn = _batch_and_losses(
      problem, problem.synthetic_batch(np.random.default_rng(0)))

  def fresh():
    # Both rows start from the same weights; Adam with torch's defaults.
    torch.manual_seed(0)
    model = _model(problem).train()
    return model, torch.optim.Adam(model.parameters(),
                                   lr=protocol.learning_rate)

  previous_threads = torch.get_num_threads()
  if threads is not None:
    torch.set_num_threads(threads)
  try:
    rows = []
    model, optimizer = fresh()
    ms, first = _timed(
        lambda: _ls_step(model, optimizer, losses_fn, batch, k), steps)
    rows.append({"step": "torch LS (one backward of Σ l_i)", "ms": ms,
                 "compile_s": first})
    del model, optimizer
    model, optimizer = fresh()
    ms, first = _timed(
        lambda: _fairgrad_step(model, optimizer, losses_fn, batch, k, alpha),
        steps)
    rows.append({"step": f"torch FairGrad α={alpha:g} (authors' step:"
                         f" K={k} backward passes, scipy solve)",
                 "ms": ms, "compile_s": first})
    return rows
  finally:
    torch.set_num_threads(previous_threads)
