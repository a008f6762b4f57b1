"""Extra per-pixel fields (U-Net border weights, instance ids) through the training and
evaluation transforms, and the U-Net paper's elastic deformation."""

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from segjax.input import augment

IDENTITY = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


def _seed(*values):
    return tf.constant(values, tf.int64)


def _coded_fields(h, w, seed=0):
    """Fields whose ``instances`` name the source pixel (1 + row·w + col) and whose mask
    (classes 0–4, some 255) and weights are random per pixel."""
    rng = np.random.default_rng(seed)
    mask = rng.integers(0, 5, (h, w)).astype(np.uint8)
    mask[: h // 4, : w // 3] = 255
    return {
        "image": rng.integers(0, 256, (h, w, 3)).astype(np.uint8),
        "mask": mask,
        "weights": rng.uniform(0.5, 10.0, (h, w)).astype(np.float32),
        "instances": (1 + np.arange(h * w, dtype=np.int32)).reshape(h, w),
    }


def _run(fields, seed, **kw):
    tensors = {k: tf.constant(v) for k, v in fields.items()}
    out = augment.train_transform_fields(tensors, seed, **kw)
    return {k: v.numpy() for k, v in out.items()}


# --- numpy references ---


def _keys_cubic(x, a=-0.75):
    """Cubic-convolution kernel (Keys; a = −0.75 as OpenCV's INTER_CUBIC)."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def _cubic_matrix(n_out, n_in):
    """``[n_out, n_in]`` interpolation weights, node i on output position i·(n_out−1)/(n_in−1),
    edge nodes repeated outside."""
    t = np.arange(n_out) * (n_in - 1) / max(n_out - 1, 1)
    base = np.floor(t).astype(int)
    m = np.zeros((n_out, n_in))
    for k in range(-1, 3):
        idx = base + k
        np.add.at(m, (np.arange(n_out), np.clip(idx, 0, n_in - 1)), _keys_cubic(t - idx))
    return m


def _reflect(c, size):
    """Reflection into [0, size−1] about the edge pixel centres (np.pad 'reflect')."""
    last = size - 1
    c = np.where(c < 0, -c, c)
    return np.where(c > last, 2 * last - c, c)


def _reference_elastic(image, labels, shift):
    """Pixel p takes the value at reflect(p + shift(p)): image bilinear, labels nearest."""
    h, w = image.shape[:2]
    rows = _reflect(np.arange(h, dtype=np.float32)[:, None] + shift[..., 0], h)
    cols = _reflect(np.arange(w, dtype=np.float32)[None, :] + shift[..., 1], w)
    r0, c0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
    r1, c1 = np.minimum(r0 + 1, h - 1), np.minimum(c0 + 1, w - 1)
    fr, fc = (rows - r0)[..., None], (cols - c0)[..., None]
    out = (
        image[r0, c0] * (1 - fr) * (1 - fc)
        + image[r0, c1] * (1 - fr) * fc
        + image[r1, c0] * fr * (1 - fc)
        + image[r1, c1] * fr * fc
    )
    nr, nc = np.round(rows).astype(int), np.round(cols).astype(int)
    return out, {k: v[nr, nc] for k, v in labels.items()}, (rows, cols)


# --- tests ---


@pytest.mark.parametrize(
    "kw",
    [
        {"crop_size": (24, 20), "scale_range": (0.5, 2.0)},
        {"crop_size": (40, 48), "scale_range": (0.7, 1.3), "cat_max_ratio": 0.6},  # padded
        {"crop_size": (24, 24), "elastic": augment.ElasticParams(3, 4.0)},
        {"crop_size": (40, 40), "elastic": augment.ElasticParams(4, 6.0), "photometric": True},
    ],
)
def test_every_mask_like_field_takes_the_masks_source_pixel(kw):
    h, w = 30, 36
    fields = _coded_fields(h, w)
    flips, padded = set(), False
    for i in range(5):  # seed (4, 3) flips, the others do not
        seed = _seed(4, i)
        out = _run(fields, seed, **kw)
        assert out["mask"].dtype == np.uint8 and out["weights"].dtype == np.float32
        assert out["instances"].dtype == np.int32
        inside = out["instances"] > 0
        src = out["instances"][inside] - 1
        # The ids name the source pixel: mask and weights come from exactly that pixel.
        np.testing.assert_array_equal(out["mask"][inside], fields["mask"].reshape(-1)[src])
        np.testing.assert_array_equal(out["weights"][inside], fields["weights"].reshape(-1)[src])
        # Outside the image each field has its own fill; the image the normalised mean.
        assert np.all(out["mask"][~inside] == 255) and np.all(out["weights"][~inside] == 0)
        np.testing.assert_array_equal(out["image"][~inside], 0.0)
        padded |= bool((~inside).any())
        flips.add(bool(tf.random.stateless_uniform([4], seed=seed)[3] < 0.5))
    assert flips == {True, False}
    if kw["crop_size"] == (40, 48):
        assert padded


def test_image_and_fields_stay_aligned_under_scale_crop_flip_elastic():
    # The mask is derived from the image (bright blocks are class 1); after the joint geometric
    # ops the class the image shows must still be the mask's, up to bilinear blending at edges
    # (without elastic about 98.5 % of pixels agree, with it 97 %).
    yy, xx = np.mgrid[0:48, 0:64]
    bright = ((xx // 12 + yy // 12) % 2).astype(np.uint8)
    fields = {
        "image": np.repeat(bright[..., None] * 200 + 20, 3, -1).astype(np.uint8),
        "mask": bright,
        "weights": bright.astype(np.float32) * 3.0 + 1.0,
        "instances": bright.astype(np.int32) * 5 + 2,
    }
    agree = []
    for i in range(6):
        out = _run(
            fields,
            _seed(1, i),
            crop_size=(40, 40),
            elastic=augment.ElasticParams(3, 5.0),
            **IDENTITY,
        )
        valid = out["mask"] != 255
        value = out["image"][..., 0]
        agree.append(np.mean((value[valid] > 120) == (out["mask"][valid] == 1)))
        # Pixels the interpolation did not blend (20 or 220, not in between) agree exactly.
        unblended = valid & ((value < 40) | (value > 200))
        np.testing.assert_array_equal(value[unblended] > 120, out["mask"][unblended] == 1)
        np.testing.assert_array_equal(out["weights"][valid], out["mask"][valid] * 3.0 + 1.0)
        np.testing.assert_array_equal(out["instances"][valid], out["mask"][valid] * 5 + 2)
        assert set(np.unique(out["mask"])) <= {0, 1, 255}
    assert min(agree) > 0.93  # blocks of 6–24 px, blended at their edges


def test_elastic_matches_a_numpy_reference_of_the_warp():
    h, w = 26, 22
    fields = _coded_fields(h, w, seed=3)
    params = augment.ElasticParams(3, 6.0)  # large for the crop: many sources are mirrored
    kw = {"crop_size": (20, 18), "scale_range": (1.0, 1.0), "hflip": False, **IDENTITY}
    reflected = 0
    for i in range(3):
        seed = _seed(7, i)
        crop = _run(fields, seed, **kw)  # the same crop without the deformation
        out = _run(fields, seed, elastic=params, **kw)
        shift = augment.elastic_displacement(
            tf.random.experimental.stateless_fold_in(seed, 3), 20, 18, params
        ).numpy()
        labels = {k: crop[k] for k in ("mask", "weights", "instances")}
        ref_image, ref_labels, (rows, cols) = _reference_elastic(crop["image"], labels, shift)
        np.testing.assert_allclose(out["image"], ref_image, atol=1e-3)
        for k, v in ref_labels.items():
            np.testing.assert_array_equal(out[k], v)
        raw_rows = np.arange(20)[:, None] + shift[..., 0]
        reflected += int(np.sum((raw_rows < 0) | (raw_rows > 19)))
        assert rows.min() >= 0 and cols.max() <= 17
    assert reflected > 30


def test_elastic_with_sigma_zero_is_the_identity():
    fields = _coded_fields(30, 36, seed=5)
    for i in range(4):
        kw = {"crop_size": (24, 40), "photometric": i % 2 == 0}
        plain = _run(fields, _seed(2, i), **kw)
        still = _run(fields, _seed(2, i), elastic=augment.ElasticParams(3, 0.0), **kw)
        for k in plain:
            np.testing.assert_array_equal(still[k], plain[k])


def test_default_transform_is_unchanged_by_the_fields_api():
    fields = _coded_fields(30, 36, seed=6)
    kw = {"crop_size": (24, 24), "photometric": True, "cat_max_ratio": 0.7}
    for i in range(3):
        image, mask = augment.train_transform(fields["image"], fields["mask"], _seed(3, i), **kw)
        out = _run(fields, _seed(3, i), **kw)
        np.testing.assert_array_equal(image.numpy(), out["image"])
        np.testing.assert_array_equal(mask.numpy(), out["mask"])


def test_elastic_is_a_pure_function_of_the_seed_in_graph_mode():
    fields = {k: tf.constant(v) for k, v in _coded_fields(30, 36, seed=8).items()}
    kw = {"crop_size": (24, 24), "elastic": augment.ElasticParams(3, 4.0)}
    # As in tf.data: a traced graph with a tensor seed, so every shape must be static.

    @tf.function(autograph=False)
    def graph_fn(seed):
        return augment.train_transform_fields(fields, seed, **kw)

    spec = graph_fn.get_concrete_function(tf.TensorSpec([2], tf.int64)).structured_outputs
    assert spec["weights"].shape == (24, 24) and spec["image"].shape == (24, 24, 3)
    graph = [{k: v.numpy() for k, v in graph_fn(_seed(9, i)).items()} for i in range(3)]
    for i, got in enumerate(graph):
        eager = augment.train_transform_fields(fields, _seed(9, i), **kw)
        for k in got:
            np.testing.assert_array_equal(got[k], eager[k].numpy())
    assert not np.array_equal(graph[0]["instances"], graph[1]["instances"])
    # The displacement field itself: same seed, same field; another seed, another field.
    a = augment.elastic_displacement(_seed(0, 1), 9, 9, augment.ElasticParams()).numpy()
    b = augment.elastic_displacement(_seed(0, 2), 9, 9, augment.ElasticParams()).numpy()
    again = augment.elastic_displacement(_seed(0, 1), 9, 9, augment.ElasticParams()).numpy()
    np.testing.assert_array_equal(a, again)
    assert np.abs(a - b).max() > 1.0


def test_displacement_field_is_bicubic_through_the_grid_nodes():
    params = augment.ElasticParams(3, 10.0)
    h, w = 33, 41  # nodes on rows 0, 16, 32 and columns 0, 20, 40
    nodes_all, dense_all = [], []
    for i in range(64):
        seed = _seed(5, i)
        dense = augment.elastic_displacement(seed, h, w, params).numpy()
        coarse = tf.random.stateless_normal([3, 3, 2], seed=seed).numpy() * 10.0
        np.testing.assert_allclose(dense[::16, ::20], coarse, atol=1e-4)
        ref = np.einsum("hi,ijc,wj->hwc", _cubic_matrix(h, 3), coarse, _cubic_matrix(w, 3))
        np.testing.assert_allclose(dense, ref, atol=0.03)  # TF tabulates the kernel
        nodes_all.append(coarse)
        dense_all.append(dense)
    assert 8.5 < np.std(nodes_all) < 11.5
    assert 6.0 < np.std(dense_all) < 11.0  # between nodes the interpolation averages
    # Smooth: neighbouring pixels move almost alike (a cell of 16–20 px per 10 px sigma).
    assert np.abs(np.diff(dense_all, axis=1)).max() < 5.0


def test_eval_transform_fields_pads_each_field_with_its_fill():
    fields = _coded_fields(20, 25, seed=9)
    out = augment.eval_transform_fields(
        {k: tf.constant(v) for k, v in fields.items()}, pad_size=(24, 32)
    )
    image, mask = augment.eval_transform(
        tf.constant(fields["image"]), tf.constant(fields["mask"]), pad_size=(24, 32)
    )
    np.testing.assert_array_equal(out["image"].numpy(), image.numpy())
    np.testing.assert_array_equal(out["mask"].numpy(), mask.numpy())
    assert out["instances"].shape == (24, 32) and out["instances"].dtype == tf.int32
    for k, fill in (("weights", 0.0), ("instances", 0)):
        got = out[k].numpy()
        np.testing.assert_array_equal(got[:20, :25], fields[k])
        assert np.all(got[20:] == fill) and np.all(got[:, 25:] == fill)
    only_image_mask = augment.eval_transform_fields(
        {"image": fields["image"], "mask": fields["mask"]}, pad_size=(24, 32)
    )
    assert set(only_image_mask) == {"image", "mask"}


def test_bad_fields_and_params_are_reported():
    fields = {k: tf.constant(v) for k, v in _coded_fields(10, 12).items()}
    with pytest.raises(ValueError, match=r"'boxes'"):
        augment.train_transform_fields(
            {**fields, "boxes": fields["mask"]}, _seed(0, 0), crop_size=(8, 8)
        )
    with pytest.raises(ValueError, match=r"expected 'image', 'mask'"):
        augment.eval_transform_fields({"image": fields["image"]}, pad_size=(16, 16))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"'weights' must have the mask"):
        augment.train_transform_fields(
            {**fields, "weights": tf.zeros((10, 11))}, _seed(0, 0), crop_size=(8, 8)
        )
    with pytest.raises(ValueError, match=r"config.data.elastic.grid=1;"):
        augment.ElasticParams(grid=1)
    with pytest.raises(ValueError, match=r"config.data.elastic.sigma=-1.0;"):
        augment.ElasticParams(sigma=-1.0)
    with pytest.raises(ValueError, match=r"sigma=nan"):
        augment.ElasticParams(sigma=float("nan"))


def test_elastic_from_config():
    cfg = ml_collections.ConfigDict({"enabled": False, "grid": 4, "sigma": 7.5})
    assert augment.elastic_from_config(cfg) is None
    cfg.enabled = True
    assert augment.elastic_from_config(cfg) == augment.ElasticParams(grid=4, sigma=7.5)
