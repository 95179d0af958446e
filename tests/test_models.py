"""Flax models: shapes, the encoder/heads split, and what each part affects."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fairgrad_jax import datasets
from fairgrad_jax import models
from fairgrad_jax.models import segnet_mtan


def _key(seed=0):
  # rbg keys: the same models, much faster to compile on CPU than threefry.
  return jax.random.key(seed, impl="rbg")


def _count(tree) -> int:
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def _perturb(tree, scale=0.1, seed=1):
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(_key(seed), len(leaves))
  return jax.tree.unflatten(treedef, [
      x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def _perturb_task(heads, task, scale=0.1):
  """Perturbs only slice ``task`` of task-stacked head parameters."""
  return jax.tree.map(lambda x: x.at[task].add(scale), heads)


# ----------------------------------------------------------------------------
# TaskDense and shared_mask


class TestTaskDense:

  def test_all_tasks_match_single_tasks(self):
    layer = models.TaskDense(num_tasks=3, features=2)
    x = jax.random.normal(_key(1), (5, 4))
    params = layer.init(_key(), x)
    all_tasks = layer.apply(params, x)
    for k in range(3):
      np.testing.assert_allclose(all_tasks[k], layer.apply(params, x, task=k),
                                 rtol=1e-6)
      kernel = params["params"]["kernel"][k]
      np.testing.assert_allclose(all_tasks[k], x @ kernel, rtol=1e-6)
    h = layer.apply(params, x)  # (3, 5, 2), per task
    second = models.TaskDense(num_tasks=3, features=1)
    p2 = second.init(_key(2), h, per_task_input=True)
    out = second.apply(p2, h, per_task_input=True)
    for k in range(3):
      np.testing.assert_allclose(
          out[k], second.apply(p2, h[k], task=k), rtol=1e-6)
    with pytest.raises(ValueError, match="leading axis"):
      second.apply(p2, h[:2], per_task_input=True)

  def test_traced_task_index(self):
    layer = models.TaskDense(num_tasks=4, features=3)
    x = jnp.ones((2, 5))
    params = layer.init(_key(), x)
    per_task = jax.vmap(lambda k: layer.apply(params, x, task=k))(jnp.arange(4))
    np.testing.assert_allclose(per_task, layer.apply(params, x), rtol=1e-6)

  def test_each_task_initialised_like_dense(self):
    layer = models.TaskDense(num_tasks=8, features=256)
    params = layer.init(_key(), jnp.ones((1, 400)))
    kernel = params["params"]["kernel"]
    # lecun normal: std 1/sqrt(fan_in) for every task's (400, 256) kernel.
    np.testing.assert_allclose(kernel.std(axis=(1, 2)), 1 / 20, rtol=0.05)
    np.testing.assert_array_equal(params["params"]["bias"], 0)


def test_shared_mask():
  params = {"encoder": {"a": jnp.ones(2), "b": {"c": jnp.ones(1)}},
            "heads": {"kernel": jnp.ones((3, 2))}}
  assert models.shared_mask(params) == {
      "encoder": {"a": True, "b": {"c": True}}, "heads": {"kernel": False}}
  assert models.shared_mask({"params": params}) == models.shared_mask(params)
  with pytest.raises(ValueError, match="'encoder' and"):
    models.shared_mask({"encoder": {}, "heads": {}, "extra": {}})


# ----------------------------------------------------------------------------
# MultiLeNet and MultiTaskMLP (the benchmark models)


@pytest.fixture(scope="module")
def lenet():
  model = models.MultiLeNet()
  images = jnp.asarray(
      datasets.load_multidigits(num_train=6, num_val=1, num_test=1)
      .train.images)
  params = model.init(_key(), images)["params"]
  return model, params, images


class TestMultiLeNet:

  def test_layout(self, lenet):
    model, params, images = lenet
    assert set(params) == {"encoder", "heads"}
    assert params["heads"]["hidden"]["kernel"].shape == (2, 50, 50)
    assert params["heads"]["logits"]["kernel"].shape == (2, 50, 10)
    logits = model.apply({"params": params}, images)
    assert logits.shape == (2, 6, 10)
    np.testing.assert_allclose(
        model.apply({"params": params}, images, task=1), logits[1], rtol=1e-5,
        atol=1e-6)

  def test_heads_are_task_specific(self, lenet):
    model, params, images = lenet
    logits = model.apply({"params": params}, images)
    moved = dict(params, heads=_perturb_task(params["heads"], 0))
    out = model.apply({"params": moved}, images)
    assert not np.allclose(out[0], logits[0])
    np.testing.assert_array_equal(out[1], logits[1])
    moved = dict(params, encoder=_perturb(params["encoder"]))
    out = model.apply({"params": moved}, images)
    assert not np.allclose(out[0], logits[0])
    assert not np.allclose(out[1], logits[1])

  def test_per_task_gradients_by_vmap(self, lenet):
    model, params, images = lenet
    labels = jnp.array([[1, 2]] * images.shape[0])

    def task_loss(p, task):
      logits = model.apply({"params": p}, images, task=task)
      return -jnp.mean(jax.nn.log_softmax(logits)[
          jnp.arange(images.shape[0]), labels[:, task]])

    grads = jax.jit(jax.vmap(jax.grad(task_loss), in_axes=(None, 0)))(
        params, jnp.arange(2))
    kernel = grads["heads"]["logits"]["kernel"]  # (task, head, 50, 10)
    assert kernel.shape == (2, 2, 50, 10)
    # The loss of task i reaches only head i.
    assert np.all(kernel[0, 1] == 0) and np.all(kernel[1, 0] == 0)
    assert np.any(kernel[0, 0] != 0) and np.any(kernel[1, 1] != 0)
    reference = jax.grad(task_loss)(params, 1)
    for got, want in zip(jax.tree.leaves(jax.tree.map(lambda g: g[1], grads)),
                         jax.tree.leaves(reference)):
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_multitask_mlp():
  model = models.MultiTaskMLP(num_tasks=5, output_dim=3, hidden=16)
  x = jax.random.normal(_key(3), (7, 10))
  params = model.init(_key(), x)["params"]
  assert [params["encoder"][f"Dense_{i}"]["kernel"].shape
          for i in range(4)] == [(10, 16), (16, 16), (16, 16), (16, 16)]
  assert params["heads"]["kernel"].shape == (5, 16, 3)
  out = model.apply({"params": params}, x)
  assert out.shape == (5, 7, 3)
  z = model.apply({"params": params}, x, method=model.encode)
  assert z.shape == (7, 16) and np.all(z >= 0)
  np.testing.assert_allclose(
      out[2], z @ params["heads"]["kernel"][2] + params["heads"]["bias"][2],
      rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------
# CelebA CNN


class TestCelebACNN:

  def test_full_size_architecture(self):
    model = models.CelebACNN()
    shapes = jax.eval_shape(model.init, _key(), jnp.zeros((2, 64, 64, 3)))
    params = shapes["params"]
    convs = [(3, 64), (64, 128), (128, 128), (128, 256), (256, 256),
             (256, 512), (512, 512)]
    weights = sum(9 * a * b for a, b in convs) + 2 * 512 * 512
    norms = 2 * (sum(b for _, b in convs) + 2 * 512)
    assert _count(params["encoder"]) == weights + norms
    assert params["heads"]["kernel"].shape == (40, 512, 1)
    assert params["heads"]["bias"].shape == (40, 1)
    out = jax.eval_shape(model.apply, shapes, jnp.zeros((2, 64, 64, 3)))
    assert out.shape == (40, 2)

  def test_train_and_eval_modes(self):
    model = models.CelebACNN(num_tasks=3, width_multiplier=1 / 16)
    images = jax.random.uniform(_key(4), (4, 16, 16, 3))
    variables = jax.jit(model.init)(_key(), images)
    train = jax.jit(lambda v, x: model.apply(v, x, train=True,
                                             mutable=["batch_stats"]))
    logits, updates = train(variables, images)
    assert logits.shape == (3, 4)
    before = jax.tree.leaves(variables["batch_stats"])
    after = jax.tree.leaves(updates["batch_stats"])
    assert any(not np.allclose(a, b) for a, b in zip(before, after))
    evaluated = jax.jit(model.apply)(variables, images)
    assert evaluated.shape == (3, 4) and np.all(np.isfinite(evaluated))


# ----------------------------------------------------------------------------
# QM9 MPNN


def _molecule_batch(molecules, slots, max_atoms=4):
  """A GraphBatch from (atom features, bond adjacency, positions) tuples."""
  num_nodes = slots * max_atoms + 1
  num_edges = slots * max_atoms * (max_atoms - 1)
  nodes = np.zeros((num_nodes, 11), np.float32)
  edges = np.zeros((num_edges, 5), np.float32)
  senders = np.full(num_edges, num_nodes - 1)
  receivers = np.full(num_edges, num_nodes - 1)
  node_graph = np.full(num_nodes, slots)
  node_at = edge_at = 0
  for slot, (x, bonds, pos) in enumerate(molecules):
    n = len(x)
    s, r = np.nonzero(~np.eye(n, dtype=bool))
    nodes[node_at:node_at + n] = x
    node_graph[node_at:node_at + n] = slot
    m = len(s)
    edges[edge_at:edge_at + m, :4] = bonds[s, r]
    edges[edge_at:edge_at + m, 4] = np.linalg.norm(pos[s] - pos[r], axis=-1)
    senders[edge_at:edge_at + m] = s + node_at
    receivers[edge_at:edge_at + m] = r + node_at
    node_at += n
    edge_at += m
  return datasets.GraphBatch(
      nodes=nodes, edges=edges, senders=senders, receivers=receivers,
      node_graph=node_graph, node_mask=np.arange(num_nodes) < node_at,
      edge_mask=np.arange(num_edges) < edge_at,
      graph_mask=np.arange(slots) < len(molecules),
      targets=np.zeros((slots, 11), np.float32))


def _random_molecule(rng, n):
  x = rng.normal(size=(n, 11)).astype(np.float32)
  bonds = np.zeros((n, n, 4), np.float32)
  for i in range(n - 1):
    bonds[i, i + 1, i % 4] = bonds[i + 1, i, i % 4] = 1
  pos = rng.normal(size=(n, 3)).astype(np.float32)
  return x, bonds, pos


@pytest.fixture(scope="module")
def mpnn():
  rng = np.random.default_rng(0)
  mol_a, mol_b = _random_molecule(rng, 3), _random_molecule(rng, 4)
  model = models.QM9MPNN(dim=8, edge_hidden=16)
  batch = _molecule_batch([mol_a, mol_b], slots=3)
  params = jax.jit(model.init)(_key(), batch)
  apply = jax.jit(model.apply)
  return model, params, apply, mol_a, mol_b


class TestQM9MPNN:

  def test_shapes_and_layout(self, mpnn):
    model, params, apply, mol_a, mol_b = mpnn
    assert set(params["params"]) == {"encoder", "heads"}
    assert params["params"]["heads"]["kernel"].shape == (11, 8, 1)
    edge_net = params["params"]["encoder"]["edge_mlp_1"]["kernel"]
    assert edge_net.shape == (16, 64)  # 128 -> dim * dim in PyG
    out = apply(params, _molecule_batch([mol_a, mol_b], slots=3))
    assert out.shape == (11, 3) and np.all(np.isfinite(out))

  def test_atom_order_does_not_matter(self, mpnn):
    _, params, apply, mol_a, mol_b = mpnn
    x, bonds, pos = mol_b
    perm = np.array([2, 0, 3, 1])
    permuted = (x[perm], bonds[perm][:, perm], pos[perm])
    a = apply(params, _molecule_batch([mol_a, mol_b], slots=3))
    b = apply(params, _molecule_batch([mol_a, permuted], slots=3))
    np.testing.assert_allclose(a[:, :2], b[:, :2], rtol=1e-4, atol=1e-5)

  def test_molecules_and_padding_are_independent(self, mpnn):
    _, params, apply, mol_a, mol_b = mpnn
    rng = np.random.default_rng(5)
    a = apply(params, _molecule_batch([mol_a, mol_b], slots=3))
    b = apply(params, _molecule_batch([mol_a, _random_molecule(rng, 2)],
                                      slots=3))
    np.testing.assert_allclose(a[:, 0], b[:, 0], rtol=1e-5, atol=1e-6)
    assert not np.allclose(a[:, 1], b[:, 1])
    # Same molecule, other padding: more free slots, fewer real ones.
    c = apply(params, _molecule_batch([mol_a], slots=3))
    np.testing.assert_allclose(a[:, 0], c[:, 0], rtol=1e-5, atol=1e-6)

  def test_reads_loader_batches(self, mpnn, tmp_path):
    _, params, apply, _, _ = mpnn
    # Three molecules of 3, 2 and 1 atoms in the .npz layout.
    np.savez(tmp_path / "qm9.npz", x=np.ones((6, 11)), pos=np.eye(6, 3),
             edge_index=np.array([[0, 1, 0, 1], [1, 0, 1, 0]]),
             edge_attr=np.eye(4)[[0, 0, 1, 1]], y=np.ones((3, 19)),
             node_slice=np.array([0, 3, 5, 6]),
             edge_slice=np.array([0, 2, 4, 4]))
    data = datasets.QM9(str(tmp_path), num_val=1, num_test=1)
    batch = data.batch([0, 1], max_atoms=4, batch_size=3)
    out = apply(params, batch)
    assert out.shape == (11, 3) and np.all(np.isfinite(out))


# ----------------------------------------------------------------------------
# SegNet MTAN


def test_max_pool_and_unpool_match_naive():
  x = np.asarray(jax.random.normal(_key(6), (2, 4, 6, 3)))
  pooled, where = segnet_mtan.max_pool_with_argmax(jnp.asarray(x))
  expected = x.reshape(2, 2, 2, 3, 2, 3).max(axis=(2, 4))
  np.testing.assert_allclose(pooled, expected)
  unpooled = np.asarray(segnet_mtan.max_unpool(pooled, where))
  naive = np.where(x == np.repeat(np.repeat(expected, 2, 1), 2, 2), x, 0.0)
  np.testing.assert_allclose(unpooled, naive)


def _first_max_gradient(x, w):
  """The gradient of sum(w * maxpool_2x2(x)) sent to each window's first
  maximum (row-major), as torch and flax's max_pool send it."""
  b, h, ww, c = x.shape
  grad = np.zeros_like(x)
  for n, i, j, k in np.ndindex(b, h // 2, ww // 2, c):
    window = x[n, 2 * i:2 * i + 2, 2 * j:2 * j + 2, k].reshape(-1)
    r, s = divmod(int(np.argmax(window)), 2)
    grad[n, 2 * i + r, 2 * j + s, k] = w[n, i, j, k]
  return grad


@pytest.mark.parametrize("pool", ["max_pool_2x2", "max_pool_with_argmax"])
def test_max_pool_gradient_goes_to_the_first_maximum(pool):
  from fairgrad_jax.models._layers import max_pool_2x2  # pylint: disable=g-import-not-at-top
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  fn = {"max_pool_2x2": max_pool_2x2,
        "max_pool_with_argmax": lambda x: segnet_mtan.max_pool_with_argmax(
            x)[0]}[pool]
  # Ties, as after a ReLU: integers in 0..2 give windows with 2-4 maxima.
  x = np.asarray(jax.random.randint(_key(10), (2, 4, 6, 3), 0, 3),
                 np.float32)
  w = np.asarray(jax.random.normal(_key(11), (2, 2, 3, 3)))
  grad = jax.jit(jax.grad(lambda x: jnp.sum(fn(x) * w)))(jnp.asarray(x))
  expected = _first_max_gradient(x, w)
  np.testing.assert_array_equal(grad, expected)
  flax_grad = jax.grad(lambda x: jnp.sum(
      nn.max_pool(x, (2, 2), strides=(2, 2)) * w))(jnp.asarray(x))
  np.testing.assert_array_equal(flax_grad, expected)


def test_bilinear_upsampling_aligns_corners():
  x = np.asarray(jax.random.normal(_key(7), (1, 3, 4, 2)))
  up = np.asarray(segnet_mtan.upsample_bilinear_align_corners(jnp.asarray(x)))
  assert up.shape == (1, 6, 8, 2)
  # Corners are kept exactly; interior points interpolate linearly between
  # source positions i * (n - 1) / (2n - 1).
  np.testing.assert_allclose(up[0, [0, -1]][:, [0, -1]],
                             x[0, [0, -1]][:, [0, -1]], rtol=1e-6)
  rows = np.arange(6) * 2 / 5
  cols = np.arange(8) * 3 / 7
  def interp(v, p):
    lo = np.minimum(np.floor(p).astype(int), len(v) - 2)
    f = p - lo
    return v[lo] * (1 - f) + v[lo + 1] * f
  expected = np.stack([np.stack([interp(x[0, :, c, ch], rows)
                                 for c in range(4)], 1) for ch in range(2)], -1)
  expected = np.stack([np.stack([interp(expected[r, :, ch], cols)
                                 for r in range(6)], 0) for ch in range(2)], -1)
  np.testing.assert_allclose(up[0], expected, rtol=1e-5, atol=1e-6)


class TestSegNetMTAN:

  def test_full_size_layout(self):
    model = models.SegNetMTAN()
    shapes = jax.eval_shape(model.init, _key(), jnp.zeros((1, 288, 384, 3)))
    params = shapes["params"]
    assert set(params["heads"]) == {"tasks_0", "tasks_1", "tasks_2"}
    enc = params["encoder"]
    assert enc["encoder_block_0"]["Conv_0"]["kernel"].shape == (3, 3, 3, 64)
    assert enc["encoder_block_4"]["Conv_0"]["kernel"].shape == (3, 3, 512,
                                                                 512)
    head = params["heads"]["tasks_0"]
    assert head["encoder_att_1"]["Conv_0"]["kernel"].shape == (1, 1, 256, 128)
    assert head["decoder_att_4"]["Conv_0"]["kernel"].shape == (1, 1, 1024, 512)
    assert head["pred"]["Conv_1"]["kernel"].shape == (1, 1, 64, 13)
    outputs = jax.eval_shape(model.apply, shapes, jnp.zeros((1, 288, 384, 3)))
    assert [o.shape for o in outputs] == [(1, 288, 384, 13),
                                          (1, 288, 384, 1), (1, 288, 384, 3)]
    city = models.SegNetMTAN(tasks=("segmentation", "depth"), num_classes=7)
    shapes = jax.eval_shape(city.init, _key(), jnp.zeros((1, 128, 256, 3)))
    outputs = jax.eval_shape(city.apply, shapes, jnp.zeros((1, 128, 256, 3)))
    assert [o.shape for o in outputs] == [(1, 128, 256, 7), (1, 128, 256, 1)]

  def test_rejects_bad_configuration(self):
    images = jnp.zeros((1, 32, 32, 3))
    with pytest.raises(ValueError, match="filters"):
      jax.eval_shape(models.SegNetMTAN(filters=(2, 2, 2, 4, 8)).init, _key(),
                     images)
    with pytest.raises(ValueError, match="subset"):
      jax.eval_shape(models.SegNetMTAN(tasks=("edges",)).init, _key(), images)
    with pytest.raises(ValueError, match="divisible by 32"):
      jax.eval_shape(models.SegNetMTAN().init, _key(), jnp.zeros((1, 40, 32,
                                                                  3)))

  @pytest.mark.slow
  def test_forward_and_task_independence(self):
    model = models.SegNetMTAN(num_classes=4, filters=(2, 2, 2, 4, 4))
    images = jax.random.uniform(_key(8), (2, 32, 32, 3))
    variables = jax.jit(model.init)(_key(), images)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=True,
                                             mutable=["batch_stats"])[0])
    seg, depth, normal = apply(variables, images)
    assert seg.shape == (2, 32, 32, 4) and depth.shape == (2, 32, 32, 1)
    np.testing.assert_allclose(np.linalg.norm(normal, axis=-1), 1.0,
                               rtol=1e-5)
    # Task 0's attention and prediction do not touch tasks 1 and 2.
    params = variables["params"]
    heads = dict(params["heads"],
                 tasks_0=_perturb(params["heads"]["tasks_0"], 0.5))
    moved = dict(variables, params=dict(params, heads=heads))
    seg2, depth2, normal2 = apply(moved, images)
    assert not np.allclose(seg, seg2)
    np.testing.assert_array_equal(depth, depth2)
    np.testing.assert_array_equal(normal, normal2)
    moved = dict(variables,
                 params=dict(params, encoder=_perturb(params["encoder"], 0.5)))
    _, depth3, _ = apply(moved, images)
    assert not np.allclose(depth, depth3)
    one = jax.jit(lambda v, x: model.apply(v, x, task=1, train=True,
                                           mutable=["batch_stats"])[0])
    np.testing.assert_allclose(one(variables, images), depth, rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("shape,pad", [((2, 6, 4, 3), False),
                                       ((2, 7, 5, 3), False),
                                       ((2, 7, 5, 3), True)])
def test_max_pool_2x2_matches_flax(shape, pad):
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from fairgrad_jax.models._layers import max_pool_2x2  # pylint: disable=g-import-not-at-top
  x = jax.random.normal(_key(9), shape)
  expected = nn.max_pool(x, (2, 2), strides=(2, 2),
                         padding="SAME" if pad else "VALID")
  np.testing.assert_array_equal(max_pool_2x2(x, pad=pad), expected)


def test_normalize_is_torch_normalize_with_a_finite_gradient_at_zero():
  y = np.array([[3.0, 4.0, 0.0], [1e-13, 0.0, 0.0], [0.0, 0.0, 0.0],
                [-2.0, 1.0, 2.0]], np.float32)
  expected = y / np.maximum(np.linalg.norm(y, axis=-1, keepdims=True), 1e-12)
  np.testing.assert_allclose(segnet_mtan.normalize(jnp.asarray(y)), expected,
                             rtol=1e-6)
  c = jnp.array([0.5, -1.0, 2.0])
  grad = jax.grad(lambda v: jnp.sum(segnet_mtan.normalize(v) * c))
  # torch's gradient of F.normalize at 0 (the norm's subgradient there is 0).
  np.testing.assert_allclose(grad(jnp.zeros(3)), c / 1e-12, rtol=1e-5)
  v = jnp.array([3.0, 4.0, 0.0])
  n = 5.0
  np.testing.assert_allclose(grad(v), c / n - v * jnp.dot(c, v) / n ** 3,
                             rtol=1e-5)
  g = grad(jnp.zeros(3, jnp.bfloat16))
  assert g.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(g)))
  # float16 cannot hold eps² (nor torch's 1/eps gradient): still finite ahead.
  half = segnet_mtan.normalize(jnp.zeros((2, 3), jnp.float16))
  assert half.dtype == jnp.float16 and not np.any(half)
