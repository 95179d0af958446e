"""Dataset readers: construction, layouts written here, and their errors."""

import os

import numpy as np
import pytest

from fairgrad_jax import datasets

# ----------------------------------------------------------------------------
# MultiDigits


@pytest.fixture(scope="module")
def sklearn_digits():
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  digits = load_digits()
  return digits.images.astype(np.float32), digits.target


def _source_index(images, patch):
  """Index of the sklearn digit equal to ``patch`` (8x8, in [0, 1])."""
  matches = np.flatnonzero(
      np.all(np.isclose(images / 16.0, patch[None]), axis=(1, 2)))
  assert len(matches) == 1
  return int(matches[0])


class TestMultiDigits:

  def test_shapes_and_ranges(self):
    data = datasets.load_multidigits(num_train=50, num_val=10, num_test=20)
    assert data.train.images.shape == (50, 11, 11, 1)
    assert data.val.images.shape == (10, 11, 11, 1)
    assert data.test.labels.shape == (20, 2)
    assert data.train.images.dtype == np.float32
    assert data.train.labels.dtype == np.int32
    for split in data:
      assert split.images.min() >= 0.0 and split.images.max() <= 1.0
      assert set(np.unique(split.labels)) <= set(range(10))

  def test_split_is_fixed(self):
    a = datasets.load_multidigits(num_train=30, num_val=5, num_test=5)
    b = datasets.load_multidigits(num_train=30, num_val=5, num_test=5)
    c = datasets.load_multidigits(num_train=30, num_val=5, num_test=5, seed=1)
    np.testing.assert_array_equal(a.train.images, b.train.images)
    np.testing.assert_array_equal(a.test.labels, b.test.labels)
    assert not np.array_equal(a.train.images, c.train.images)

  def test_overlay_construction(self, sklearn_digits):
    images, labels = sklearn_digits
    data = datasets.load_multidigits(num_train=20, num_val=5, num_test=20,
                                     shift=3)
    canvas = data.train.images[..., 0]
    # Where the two digits do not overlap, each shows alone.
    corner_tl = canvas[:, :3, :3]
    corner_br = canvas[:, 8:, 8:]
    overlap = canvas[:, 3:8, 3:8]
    for n in range(20):
      tl = np.flatnonzero(
          np.all(np.isclose(images[:, :3, :3] / 16, corner_tl[n]), (1, 2))
          & (labels == data.train.labels[n, 0]))
      br = np.flatnonzero(
          np.all(np.isclose(images[:, 5:, 5:] / 16, corner_br[n]), (1, 2))
          & (labels == data.train.labels[n, 1]))
      # Some source digit with the right label explains each corner, and
      # one such pair explains the overlap as a pixelwise maximum.
      explained = any(
          np.allclose(np.maximum(images[i, 3:, 3:], images[j, :5, :5]) / 16,
                      overlap[n]) for i in tl for j in br)
      assert explained, n

  def test_source_pools_are_disjoint(self, sklearn_digits):
    images, labels = sklearn_digits
    # shift=8: the digits do not overlap, each is recoverable exactly.
    data = datasets.load_multidigits(num_train=300, num_val=50, num_test=100,
                                     shift=8)
    used = {}
    for name, split in zip(("train", "val", "test"), data):
      canvas = split.images[..., 0]
      indices = set()
      for n in range(len(canvas)):
        for k, patch in enumerate((canvas[n, :8, :8], canvas[n, 8:, 8:])):
          index = _source_index(images, patch)
          assert labels[index] == split.labels[n, k]
          indices.add(index)
      used[name] = indices
    assert not used["train"] & used["test"]
    assert not used["train"] & used["val"]
    assert not used["val"] & used["test"]

  @pytest.mark.parametrize("kwargs", [
      dict(num_train=0), dict(num_test=2.5), dict(shift=0), dict(shift=9)])
  def test_rejects_bad_arguments(self, kwargs):
    with pytest.raises(ValueError):
      datasets.load_multidigits(**kwargs)


# ----------------------------------------------------------------------------
# Synthetic regression


class TestSynthetic:

  def test_shapes_and_scales(self):
    data = datasets.make_synthetic_regression(
        40, input_dim=20, output_dim=3, num_train=64, num_val=8, num_test=16)
    assert data.train.inputs.shape == (64, 20)
    assert data.train.targets.shape == (64, 40, 3)
    assert data.test.targets.shape == (16, 40, 3)
    sigmas = data.sigmas
    assert sigmas[0] == pytest.approx(1.0)
    assert sigmas[-1] == pytest.approx(100.0)
    ratios = sigmas[1:] / sigmas[:-1]
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-5)  # geometric
    scaled = data.train.targets / sigmas[None, :, None]
    assert np.abs(scaled).max() < 1.0  # σ_i tanh(.)

  def test_tanh_is_neither_linear_nor_saturated(self):
    data = datasets.make_synthetic_regression(
        4, num_train=400, num_val=1, num_test=1)
    pre = np.arctanh(data.train.targets / data.sigmas[None, :, None])
    assert 0.8 < pre.std() < 1.2

  def test_tasks_share_structure_but_differ(self):
    data = datasets.make_synthetic_regression(
        3, input_dim=50, output_dim=20, num_train=500, num_val=1, num_test=1)
    scaled = data.train.targets / data.sigmas[None, :, None]
    corr = np.corrcoef(scaled[:, 0].ravel(), scaled[:, 1].ravel())[0, 1]
    # B has variance 10 and ε_i 3.5: a correlation near 10 / 13.5.
    assert 0.6 < corr < 0.9

  def test_fixed_problem(self):
    a = datasets.make_synthetic_regression(2, num_train=3, num_val=1,
                                           num_test=1)
    b = datasets.make_synthetic_regression(2, num_train=3, num_val=1,
                                           num_test=1)
    np.testing.assert_array_equal(a.train.targets, b.train.targets)

  def test_normalized_mse(self):
    targets = np.zeros((2, 2, 3))
    predictions = np.ones((2, 2, 3)) * np.array([1.0, 20.0])[None, :, None]
    got = datasets.normalized_mse(predictions, targets, [1.0, 10.0])
    np.testing.assert_allclose(got, [1.0, 4.0])

  def test_rejects_bad_arguments(self):
    with pytest.raises(ValueError, match="sigma"):
      datasets.make_synthetic_regression(3, sigma_min=2.0, sigma_max=1.0)
    with pytest.raises(ValueError, match="num_tasks"):
      datasets.make_synthetic_regression(0)


# ----------------------------------------------------------------------------
# CelebA


def _write_celeba(root, layout="drive", names=None, rows=None, partition=None):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if layout == "drive":
    anno, evald, imgs = (os.path.join(root, "Anno"), os.path.join(root, "Eval"),
                         os.path.join(root, "Img", "img_align_celeba"))
  else:
    base = os.path.join(root, "celeba")
    anno = evald = base
    imgs = os.path.join(base, "img_align_celeba")
  for folder in (anno, evald, imgs):
    os.makedirs(folder, exist_ok=True)
  names = names or datasets.CELEBA_ATTRIBUTES
  rng = np.random.default_rng(0)
  if rows is None:
    labels = rng.integers(0, 2, (4, 40))
    rows = [f"{n + 1:06d}.jpg " + "  ".join("1" if v else "-1" for v in row)
            for n, row in enumerate(labels)]
  for n in range(len(rows)):
    color = (60 * n, 100, 200)
    Image.new("RGB", (18, 22), color).save(
        os.path.join(imgs, f"{n + 1:06d}.jpg"), quality=100)
  with open(os.path.join(anno, "list_attr_celeba.txt"), "w") as f:
    f.write(f"{len(rows)}\n" + " ".join(names) + " \n" + "\n".join(rows)
            + "\n")
  partition = partition or [0, 0, 1, 2]
  with open(os.path.join(evald, "list_eval_partition.txt"), "w") as f:
    f.write("".join(f"{n + 1:06d}.jpg {p}\n" for n, p in enumerate(partition)))
  return rows


class TestCelebA:

  @pytest.mark.parametrize("layout", ["drive", "torchvision"])
  def test_reads_both_layouts(self, tmp_path, layout):
    rows = _write_celeba(str(tmp_path), layout)
    train = datasets.CelebA(str(tmp_path), "train", image_size=(6, 5))
    test = datasets.CelebA(str(tmp_path), "test")
    assert len(train) == 2 and len(test) == 1
    assert train.files == ["000001.jpg", "000002.jpg"]
    expected = np.array([[v == "1" for v in row.split()[1:]] for row in rows])
    np.testing.assert_array_equal(train.labels, expected[:2])
    np.testing.assert_array_equal(test.labels, expected[3:])
    images, labels = next(train.batches(2))
    assert images.shape == (2, 6, 5, 3) and images.dtype == np.float32
    assert labels.shape == (2, 40)
    # Uniform images keep their colour (scaled to [0, 1]) through the resize.
    np.testing.assert_allclose(images[1, 0, 0], [60 / 255, 100 / 255,
                                                 200 / 255], atol=0.02)
    assert test.load_images([0]).shape == (1, 64, 64, 3)

  def test_batches_cover_split(self, tmp_path):
    _write_celeba(str(tmp_path), partition=[0, 0, 0, 0])
    data = datasets.CelebA(str(tmp_path), "train", image_size=4)
    batches = list(data.batches(3, shuffle=True, seed=1))
    assert [len(b[1]) for b in batches] == [3, 1]
    seen = np.concatenate([b[1] for b in batches])
    assert sorted(map(tuple, seen)) == sorted(map(tuple, data.labels))
    assert len(list(data.batches(3, drop_last=True))) == 1

  def test_missing_folder_names_layout(self, tmp_path):
    with pytest.raises(FileNotFoundError, match="list_attr_celeba.txt"):
      datasets.CelebA(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="img_align_celeba"):
      datasets.CelebA(str(tmp_path / "nowhere"))

  def test_malformed_annotations(self, tmp_path):
    _write_celeba(str(tmp_path / "a"), names=["Smiling"] * 40)
    with pytest.raises(ValueError, match="attribute names"):
      datasets.CelebA(str(tmp_path / "a"))
    _write_celeba(str(tmp_path / "b"),
                  rows=["000001.jpg 1 1", "000002.jpg" + " 1" * 40,
                        "000003.jpg" + " 1" * 40, "000004.jpg" + " 1" * 40])
    with pytest.raises(ValueError, match="line 3"):
      datasets.CelebA(str(tmp_path / "b"))
    _write_celeba(str(tmp_path / "c"), partition=[0, 0, 5, 0])
    with pytest.raises(ValueError, match="0, 1 or 2"):
      datasets.CelebA(str(tmp_path / "c"))
    with pytest.raises(ValueError, match="split"):
      datasets.CelebA(str(tmp_path / "c"), "validation")

  def test_missing_image(self, tmp_path):
    _write_celeba(str(tmp_path))
    os.remove(tmp_path / "Img" / "img_align_celeba" / "000002.jpg")
    data = datasets.CelebA(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="000002.jpg"):
      data.load_images([1])


# ----------------------------------------------------------------------------
# NYU-v2 and Cityscapes (MTAN's .npy layout)


def _write_mtan(root, split, shapes, num=3, seed=0):
  rng = np.random.default_rng(seed)
  for folder, shape in shapes.items():
    os.makedirs(os.path.join(root, split, folder), exist_ok=True)
    for i in range(num):
      if folder.startswith("label"):
        array = rng.integers(-1, 7, shape).astype(np.float32)
      else:
        array = rng.random(shape).astype(np.float32)
      np.save(os.path.join(root, split, folder, f"{i}.npy"), array)


NYU_SHAPES = {"image": (4, 6, 3), "label": (4, 6), "depth": (4, 6, 1),
              "normal": (4, 6, 3)}
CITY_SHAPES = {"image": (2, 8, 3), "label_7": (2, 8), "depth": (2, 8, 1)}


class TestMTANLayouts:

  def test_nyuv2_reads_examples(self, tmp_path):
    _write_mtan(str(tmp_path), "train", NYU_SHAPES, num=3)
    _write_mtan(str(tmp_path), "val", NYU_SHAPES, num=2)
    train = datasets.NYUv2(str(tmp_path), "train")
    assert len(train) == 3 and len(datasets.NYUv2(str(tmp_path), "val")) == 2
    example = train[1]
    np.testing.assert_array_equal(
        example["depth"], np.load(tmp_path / "train" / "depth" / "1.npy"))
    assert example["label"].dtype == np.int32
    assert example["label"].min() >= -1
    batches = list(train.batches(2, shuffle=True, seed=0))
    assert [b["image"].shape for b in batches] == [(2, 4, 6, 3), (1, 4, 6, 3)]
    assert batches[0]["normal"].shape == (2, 4, 6, 3)

  def test_cityscapes_reads_examples(self, tmp_path):
    _write_mtan(str(tmp_path), "val", CITY_SHAPES, num=2)
    data = datasets.Cityscapes(str(tmp_path), "val")
    batch = next(data.batches(2))
    assert set(batch) == {"image", "label", "depth"}
    assert batch["label"].shape == (2, 2, 8)
    np.testing.assert_array_equal(
        batch["label"][1], np.load(tmp_path / "val" / "label_7" / "1.npy"))

  def test_missing_folders_name_layout(self, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"label/\{i\}\.npy"):
      datasets.NYUv2(str(tmp_path / "nowhere"))
    shapes = dict(NYU_SHAPES)
    del shapes["normal"]
    _write_mtan(str(tmp_path), "train", shapes)
    with pytest.raises(FileNotFoundError, match="normal"):
      datasets.NYUv2(str(tmp_path), "train")
    with pytest.raises(FileNotFoundError, match="val"):
      datasets.NYUv2(str(tmp_path), "val")
    _write_mtan(str(tmp_path / "city"), "train", {"image": (2, 8, 3),
                                                  "depth": (2, 8, 1)})
    with pytest.raises(FileNotFoundError, match="label_7"):
      datasets.Cityscapes(str(tmp_path / "city"))
    with pytest.raises(ValueError, match="split"):
      datasets.Cityscapes(str(tmp_path / "city"), "test")

  def test_malformed_folders(self, tmp_path):
    _write_mtan(str(tmp_path), "train", NYU_SHAPES, num=3)
    depth_2 = tmp_path / "train" / "depth" / "2.npy"
    saved = np.load(depth_2)
    os.remove(depth_2)
    with pytest.raises(ValueError, match="different numbers"):
      datasets.NYUv2(str(tmp_path))
    np.save(depth_2, saved)
    os.remove(tmp_path / "train" / "image" / "1.npy")
    with pytest.raises(ValueError, match=r"without gaps.*1\.npy"):
      datasets.NYUv2(str(tmp_path))
    np.save(tmp_path / "train" / "image" / "1.npy", np.zeros((4, 6, 3)))
    np.save(tmp_path / "train" / "image" / "a.npy", np.zeros(3))
    with pytest.raises(ValueError, match="0.npy, 1.npy"):
      datasets.NYUv2(str(tmp_path))
    os.remove(tmp_path / "train" / "image" / "a.npy")
    assert len(datasets.NYUv2(str(tmp_path))) == 3

  def test_shape_and_label_checks(self, tmp_path):
    _write_mtan(str(tmp_path), "train", NYU_SHAPES, num=2)
    np.save(tmp_path / "train" / "depth" / "1.npy", np.zeros((4, 6)))
    data = datasets.NYUv2(str(tmp_path))
    data[0]  # fine
    with pytest.raises(ValueError, match=r"\(H, W, 1\)"):
      data[1]
    np.save(tmp_path / "train" / "depth" / "1.npy", np.zeros((4, 6, 1)))
    np.save(tmp_path / "train" / "label" / "1.npy", np.full((4, 6), 13.0))
    with pytest.raises(ValueError, match="-1..12"):
      data[1]
    with pytest.raises(IndexError):
      data[2]


# ----------------------------------------------------------------------------
# QM9


def _write_qm9(path, **overrides):
  # Molecule 0: 3 atoms, bonds 0-1 (single) and 1-2 (double), both ways.
  # Molecule 1: 2 atoms, bond 0-1 (triple). Molecules 2, 3: 1 atom each.
  sizes = [3, 2, 1, 1]
  x = np.arange(7 * 11, dtype=np.float32).reshape(7, 11)
  pos = np.array([[0, 0, 0], [1, 0, 0], [1, 2, 0], [0, 0, 0], [0, 0, 3],
                  [5, 5, 5], [1, 1, 1]], np.float32)
  edge_index = np.array([[0, 1, 1, 2, 0, 1], [1, 0, 2, 1, 1, 0]])
  edge_attr = np.eye(4, dtype=np.float32)[[0, 0, 1, 1, 2, 2]]
  y = np.arange(4 * 19, dtype=np.float32).reshape(4, 19) ** 1.5
  arrays = dict(x=x, pos=pos, edge_index=edge_index, edge_attr=edge_attr, y=y,
                node_slice=np.concatenate([[0], np.cumsum(sizes)]),
                edge_slice=np.array([0, 4, 6, 6, 6]))
  arrays.update(overrides)
  arrays = {k: v for k, v in arrays.items() if v is not None}
  np.savez(path, **arrays)
  return arrays


class TestQM9:

  def test_complete_graph_of_a_molecule(self, tmp_path):
    _write_qm9(tmp_path / "qm9.npz")
    data = datasets.QM9(str(tmp_path), num_val=1, num_test=1)
    nodes, edges, senders, receivers = data.graph(0)
    assert nodes.shape == (3, 11)
    # All 6 ordered pairs of distinct atoms, source-major as PyG's Complete.
    assert list(zip(senders, receivers)) == [(0, 1), (0, 2), (1, 0), (1, 2),
                                             (2, 0), (2, 1)]
    # Bond one-hot where bonded (0-1 single, 1-2 double), zeros elsewhere.
    np.testing.assert_array_equal(
        edges[:, :4], [[1, 0, 0, 0], [0, 0, 0, 0], [1, 0, 0, 0],
                       [0, 1, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0]])
    np.testing.assert_allclose(edges[:, 4], [1, np.sqrt(5), 1, 2, np.sqrt(5),
                                             2], rtol=1e-6)

  def test_split_and_standardisation(self, tmp_path):
    arrays = _write_qm9(tmp_path / "data.npz")
    data = datasets.QM9(str(tmp_path / "data.npz"), num_val=1, num_test=1)
    splits = data.splits
    assert [len(splits[s]) for s in ("train", "val", "test")] == [2, 1, 1]
    assert sorted(np.concatenate(list(splits.values()))) == [0, 1, 2, 3]
    raw = arrays["y"][:, list(datasets.QM9_TARGETS)]
    train = raw[splits["train"]]
    np.testing.assert_allclose(data.target_mean, train.mean(0), rtol=1e-6)
    np.testing.assert_allclose(data.targets[splits["train"]].mean(0), 0,
                               atol=1e-5)
    np.testing.assert_allclose(data.unstandardize(data.targets), raw,
                               rtol=1e-5, atol=1e-3)  # float32 targets
    other = datasets.QM9(str(tmp_path / "data.npz"), num_val=1, num_test=1,
                         seed=3)
    same = datasets.QM9(str(tmp_path / "data.npz"), num_val=1, num_test=1)
    np.testing.assert_array_equal(same.splits["test"], splits["test"])
    assert any(not np.array_equal(other.splits[s], splits[s])
               for s in splits)

  def test_padded_batch(self, tmp_path):
    _write_qm9(tmp_path / "qm9.npz")
    data = datasets.QM9(str(tmp_path), num_val=1, num_test=1,
                        standardize=False)
    batch = data.batch([1, 0], max_atoms=3, batch_size=3)
    assert batch.nodes.shape == (10, 11)  # 3 slots x 3 atoms + 1
    assert batch.edges.shape == (18, 5)  # 3 slots x 3 x 2
    assert batch.node_mask.sum() == 5 and batch.edge_mask.sum() == 8
    np.testing.assert_array_equal(batch.graph_mask, [True, True, False])
    np.testing.assert_array_equal(batch.node_graph[:5], [0, 0, 1, 1, 1])
    assert np.all(batch.node_graph[5:] == 3)
    # Molecule 1 first: atoms 0-1, edges both ways with the triple bond.
    np.testing.assert_array_equal(batch.senders[:2], [0, 1])
    np.testing.assert_array_equal(batch.edges[:2, 2], [1, 1])
    np.testing.assert_allclose(batch.edges[:2, 4], [3, 3])
    # Molecule 0 is offset by 2 atoms.
    assert batch.senders[2:8].min() == 2 and batch.receivers[2:8].max() == 4
    # Padding edges point at the padding atom.
    assert np.all(batch.senders[8:] == 9) and np.all(batch.receivers[8:] == 9)
    np.testing.assert_allclose(batch.targets[0],
                               data.targets[1])
    assert np.all(batch.targets[2] == 0)
    with pytest.raises(ValueError, match="atoms"):
      data.batch([0], max_atoms=2)

  def test_batches_over_split(self, tmp_path):
    _write_qm9(tmp_path / "qm9.npz")
    data = datasets.QM9(str(tmp_path), num_val=1, num_test=1)
    batches = list(data.batches("train", 1, shuffle=True, seed=0))
    assert len(batches) == 2
    assert all(b.nodes.shape == (30, 11) for b in batches)  # 29 + 1
    with pytest.raises(ValueError, match="split"):
      next(data.batches("validation", 1))

  def test_errors_name_layout(self, tmp_path):
    with pytest.raises(FileNotFoundError, match="qm9.npz"):
      datasets.QM9(str(tmp_path))
    _write_qm9(tmp_path / "a.npz", pos=None)
    with pytest.raises(ValueError, match=r"lacks \['pos'\]"):
      datasets.QM9(str(tmp_path / "a.npz"), num_val=1, num_test=1)
    _write_qm9(tmp_path / "b.npz", edge_attr=np.zeros((6, 5)))
    with pytest.raises(ValueError, match="edge_attr"):
      datasets.QM9(str(tmp_path / "b.npz"), num_val=1, num_test=1)
    _write_qm9(tmp_path / "c.npz", node_slice=np.array([0, 3, 5, 6, 8]))
    with pytest.raises(ValueError, match="node_slice"):
      datasets.QM9(str(tmp_path / "c.npz"), num_val=1, num_test=1)
    _write_qm9(tmp_path / "d.npz",
               edge_index=np.array([[0, 1, 1, 2, 0, 2], [1, 0, 2, 1, 1, 0]]))
    with pytest.raises(ValueError, match="local to each molecule"):
      datasets.QM9(str(tmp_path / "d.npz"), num_val=1, num_test=1)
    _write_qm9(tmp_path / "e.npz")
    with pytest.raises(ValueError, match="training molecule"):
      datasets.QM9(str(tmp_path / "e.npz"), num_val=2, num_test=2)
    (tmp_path / "f.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="cannot read"):
      datasets.QM9(str(tmp_path / "f.npz"))


# ----------------------------------------------------------------------------
# Damaged files and bad values: errors name the file (and the index)


class TestUnreadableAndNonFiniteData:

  def test_qm9_non_finite_target_is_refused_with_its_index(self, tmp_path):
    # Before, the NaN reached the training mean and so the standardised
    # target 'U0' of every molecule.
    y = np.arange(4 * 19, dtype=np.float32).reshape(4, 19)
    y[2, 12] = np.nan  # column 12 is U0
    _write_qm9(tmp_path / "qm9.npz", y=y)
    with pytest.raises(ValueError, match=r"qm9\.npz.*molecule 2, target 'U0'"):
      datasets.QM9(str(tmp_path), num_val=1, num_test=1)
    y[2, 12] = 1.0
    y[1, 4] = np.inf  # column 4 (gap) is not a target used: ignored
    _write_qm9(tmp_path / "qm9.npz", y=y)
    data = datasets.QM9(str(tmp_path), num_val=1, num_test=1)
    assert np.all(np.isfinite(data.targets))

  def test_qm9_non_finite_features_are_refused_with_their_index(self,
                                                                 tmp_path):
    pos = np.zeros((7, 3), np.float32)
    pos[5, 1] = -np.inf
    _write_qm9(tmp_path / "qm9.npz", pos=pos)
    with pytest.raises(ValueError,
                       match=r"'pos' in .*qm9\.npz.*\(5, 1\) \(atom 5, axis 1"):
      datasets.QM9(str(tmp_path), num_val=1, num_test=1)

  @pytest.mark.parametrize("damage", ["empty", "truncated"])
  def test_qm9_unreadable_file_is_named(self, tmp_path, damage):
    path = tmp_path / "qm9.npz"
    _write_qm9(path)
    data = path.read_bytes()
    path.write_bytes(b"" if damage == "empty" else data[:len(data) // 2])
    with pytest.raises(ValueError, match=r"cannot read .*qm9\.npz.*\.npz"):
      datasets.QM9(str(tmp_path), num_val=1, num_test=1)

  def test_nyuv2_uint8_images_are_scaled_to_unit_range(self, tmp_path):
    _write_mtan(str(tmp_path), "train", NYU_SHAPES, num=1)
    pixels = np.full((4, 6, 3), 200, np.uint8)
    np.save(tmp_path / "train" / "image" / "0.npy", pixels)
    image = datasets.NYUv2(str(tmp_path))[0]["image"]
    assert image.dtype == np.float32
    np.testing.assert_allclose(image, 200 / 255, rtol=1e-6)
    np.save(tmp_path / "train" / "image" / "0.npy", pixels.astype(np.uint16))
    with pytest.raises(ValueError, match=r"0\.npy.*uint16.*uint8"):
      datasets.NYUv2(str(tmp_path))[0]

  def test_mtan_non_finite_values_are_refused_with_file_and_index(self,
                                                                  tmp_path):
    _write_mtan(str(tmp_path), "train", NYU_SHAPES, num=2)
    depth = np.ones((4, 6, 1), np.float32)
    depth[3, 2, 0] = np.nan
    np.save(tmp_path / "train" / "depth" / "1.npy", depth)
    data = datasets.NYUv2(str(tmp_path))
    data[0]  # fine
    with pytest.raises(ValueError,
                       match=r"depth.*1\.npy.*\(3, 2, 0\)"):
      data[1]

  @pytest.mark.parametrize("damage", ["empty", "truncated"])
  def test_mtan_unreadable_file_is_named(self, tmp_path, damage):
    _write_mtan(str(tmp_path), "val", CITY_SHAPES, num=2)
    path = tmp_path / "val" / "label_7" / "1.npy"
    data = path.read_bytes()
    path.write_bytes(b"" if damage == "empty" else data[:len(data) - 8])
    cityscapes = datasets.Cityscapes(str(tmp_path), "val")
    with pytest.raises(ValueError, match=r"cannot read .*label_7.*1\.npy"):
      cityscapes[1]

  def test_celeba_truncated_image_is_named(self, tmp_path):
    _write_celeba(str(tmp_path))
    path = tmp_path / "Img" / "img_align_celeba" / "000002.jpg"
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    celeba = datasets.CelebA(str(tmp_path), image_size=4)
    celeba.load_images([0])  # fine
    with pytest.raises(ValueError, match=r"cannot read .*000002\.jpg"):
      celeba.load_images([1])

  def test_celeba_binary_annotation_file_is_named(self, tmp_path):
    _write_celeba(str(tmp_path))
    (tmp_path / "Anno" / "list_attr_celeba.txt").write_bytes(bytes(range(256)))
    with pytest.raises(ValueError,
                       match=r"cannot read .*list_attr_celeba\.txt.*text"):
      datasets.CelebA(str(tmp_path))
    _write_celeba(str(tmp_path))
    (tmp_path / "Eval" / "list_eval_partition.txt").write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError,
                       match=r"cannot read .*list_eval_partition\.txt"):
      datasets.CelebA(str(tmp_path))
