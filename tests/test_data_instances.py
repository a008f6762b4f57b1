"""Folder datasets with instance masks: formats, class tables, the stored U-Net weight map, bad
input, and the touching-blobs generator."""

import io
import json
import struct

import ml_collections
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from segjax import losses
from segjax.data import blobs, folder, image_io
from segjax.data.image_io import DataError
from segjax.losses import unet_weight_map as reference_weight_map  # not counted when patched
from tests.test_data_folder import data_config, read_all, rgb, save


def instance_config(tmp, root, **overrides):
    """A folder config for instance masks; keys it lacks (instance_classes, parts of
    weight_map) take the schema's defaults."""
    return data_config(tmp, root, **({"mask_type": "instance"} | overrides))


def weight_map(**options):
    return ml_collections.ConfigDict({"enabled": True, **options})


def tiff_bytes(array: np.ndarray, sample_format: int) -> bytes:
    """A minimal one-strip grey TIFF of ``array`` with the given SampleFormat tag (1 = unsigned,
    2 = signed): Pillow cannot write unsigned 32-bit TIFFs itself."""
    h, w = array.shape
    data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()
    tags = [
        (256, 3, w), (257, 3, h), (258, 3, array.dtype.itemsize * 8), (259, 3, 1), (262, 3, 1),
        (273, 4, None), (277, 3, 1), (278, 3, h), (279, 4, len(data)), (339, 3, sample_format),
    ]  # fmt: skip
    data_offset = 8 + 2 + 12 * len(tags) + 4
    out = b"II*\x00" + struct.pack("<IH", 8, len(tags))
    for tag, kind, value in tags:
        value = data_offset if value is None else value
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, kind, 1) + packed
    return out + struct.pack("<I", 0) + data


def random_instances(h, w, ids, seed):
    """Blocky instance map: every id in ``ids`` on some pixels, background elsewhere."""
    rng = np.random.default_rng(seed)
    inst = np.zeros((h, w), np.int64)
    choice = rng.integers(0, len(ids) + 1, (h, w))
    for i, instance_id in enumerate(ids, start=1):
        inst[choice == i] = instance_id
    inst.ravel()[: len(ids)] = ids  # each id surely present
    return inst


def write_mask(path, inst, kind):
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "png8":
        Image.fromarray(inst.astype(np.uint8)).save(path)
    elif kind in ("png16", "tif16"):
        Image.fromarray(inst.astype(np.uint16)).save(path)
    elif kind == "tif32":  # Pillow's mode "I": signed 32-bit
        Image.fromarray(inst.astype(np.int32)).save(path)
    elif kind == "tif32u":
        path.write_bytes(tiff_bytes(inst.astype(np.uint32), sample_format=1))
    elif kind == "tiffloat":
        Image.fromarray(inst.astype(np.float32)).save(path)


FORMATS = {
    "a": ("png8", ".png", [3, 200, 255]),
    "b": ("png16", ".png", [1, 300, 65535]),
    "c": ("tif16", ".tif", [7, 4000]),
    "d": ("tif32", ".tif", [2, 65000]),
    "e": ("tif32u", ".tif", [9, 65535, 12]),
    "f": ("tiffloat", ".tif", [5, 1000]),
}


@pytest.fixture(scope="module")
def every_format(tmp_path_factory):
    """A flat folder with one instance mask of each format and its expected ids."""
    tmp = tmp_path_factory.mktemp("formats")
    root = tmp / "cells"
    expected = {}
    for i, (stem, (kind, ext, ids)) in enumerate(FORMATS.items()):
        inst = random_instances(5 + i, 7, ids, seed=i)
        image = rgb(5 + i, 7, 50 + i)
        save(image, root / "images" / f"{stem}.png")
        write_mask(root / "masks" / f"{stem}{ext}", inst, kind)
        expected[stem] = (image, inst)
    return tmp, root, expected


def test_every_format_loads_exact_ids_and_a_binary_class_mask(every_format):
    tmp, root, expected = every_format
    source = folder.load(instance_config(tmp, root))
    assert source.info.class_names == folder.INSTANCE_CLASS_NAMES
    assert source.info.fields == ("instances",)
    examples = read_all(source, "train")
    assert sorted(examples) == sorted(expected)
    for stem, (image, inst) in expected.items():
        ex = examples[stem]
        assert ex["instances"].dtype == np.int32 and ex["mask"].dtype == np.uint8
        np.testing.assert_array_equal(ex["instances"], inst, err_msg=stem)
        np.testing.assert_array_equal(ex["mask"], (inst > 0).astype(np.uint8), err_msg=stem)
        np.testing.assert_array_equal(ex["image"], image)
        assert "weights" not in ex


def test_class_mask_datasets_keep_their_fingerprint(tmp_path):
    """Class-mask datasets are named as before instance masks existed: no re-preparation."""
    root = tmp_path / "classes"
    save(rgb(4, 4, 0), root / "images" / "a.png")
    save(np.array([[0, 1, 1, 0]] * 4, np.uint8), root / "masks" / "a.png")
    source = folder.load(data_config(tmp_path, root, num_classes=2))
    assert source.info.fields == ()
    # (number of classes, value_range, skip_bad_examples): the options before issue 14.
    want = f"classes_{folder.fingerprint(str(root), (2, (), False))}"
    assert source.builder.builder_config.name == want


@pytest.fixture(scope="module")
def two_splits(tmp_path_factory):
    """images/{train,val}, the same stem "x" in both, and a class table for 3 classes."""
    tmp = tmp_path_factory.mktemp("table")
    root = tmp / "tabled"
    table, expected = {}, {}
    for split, stem, ids, seed in [
        ("train", "x", [4, 9, 300], 0),
        ("train", "sub/y", [1, 2], 1),
        ("val", "x", [4, 5], 2),
    ]:
        inst = random_instances(6, 8, ids, seed)
        save(rgb(6, 8, seed), root / "images" / split / f"{stem}.png")
        write_mask(root / "masks" / split / f"{stem}.png", inst, "png16")
        classes = {k: 1 + (k + seed) % 2 for k in ids}
        # "x" exists in both splits: the val one is told apart as "val/x".
        name = "val/x" if split == "val" else stem
        table[name] = {str(k): c for k, c in classes.items()}
        expected[(split, stem)] = (inst, classes)
    table["not_in_folder"] = {"1": 1}  # allowed: entries of images that are not there
    (root / "classes.json").write_text(json.dumps(table))
    (root / "classes.txt").write_text("background\nround\nlong\n")
    return tmp, root, expected


def test_class_table_gives_each_instance_its_class(two_splits):
    tmp, root, expected = two_splits
    source = folder.load(instance_config(tmp, root, instance_classes="classes.json"))
    assert source.info.class_names == ("background", "round", "long")
    examples = {("train", k): v for k, v in read_all(source, "train").items()}
    examples |= {("val", k): v for k, v in read_all(source, "val").items()}
    assert sorted(examples) == sorted(expected)
    for key, (inst, classes) in expected.items():
        want = np.zeros(inst.shape, np.uint8)
        for instance_id, cls in classes.items():
            want[inst == instance_id] = cls
        np.testing.assert_array_equal(examples[key]["mask"], want, err_msg=str(key))
        np.testing.assert_array_equal(examples[key]["instances"], inst)


@pytest.fixture(scope="module")
def blob_folder(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("blobs")
    root = tmp / "blobs"
    blobs.write_touching_blobs(root, num_images=3, size=(40, 48), seed=3)
    return tmp, root


def count_weight_maps(monkeypatch):
    calls = []
    original = losses.unet_weight_map

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(losses, "unet_weight_map", counting)
    return calls


def reference_weights(root, split, stem, **options):
    """The weight map recomputed from the mask file itself (read with Pillow)."""
    inst = np.asarray(Image.open(root / "masks" / split / f"{stem}.png")).astype(np.int64)
    return reference_weight_map(inst, (inst > 0).astype(np.int64), **options)


def test_weight_map_is_computed_once_at_preparation_and_matches(blob_folder, monkeypatch):
    tmp, root = blob_folder
    calls = count_weight_maps(monkeypatch)
    cfg = instance_config(tmp, root, weight_map=weight_map(w0=6.0, sigma=3.0))
    source = folder.load(cfg)
    assert source.info.fields == ("instances", "weights")
    assert len(calls) == 3  # one per example, while preparing
    for split in ("train", "val"):
        for stem, ex in read_all(source, split).items():
            assert ex["weights"].dtype == np.float32
            want = reference_weights(root, split, stem, w0=6.0, sigma=3.0)
            np.testing.assert_allclose(ex["weights"], want, rtol=1e-6, err_msg=stem)
            assert ex["weights"][ex["mask"] == 0].max() > 3.0  # border weights in the gaps

    again = folder.load(cfg)
    assert len(calls) == 3  # prepared copy re-used: nothing recomputed
    assert again.builder.builder_config.name == source.builder.builder_config.name

    changed = folder.load(instance_config(tmp, root, weight_map=weight_map(w0=2.0, sigma=3.0)))
    assert len(calls) == 6  # w0 is part of the fingerprint: prepared again
    assert changed.builder.builder_config.name != source.builder.builder_config.name
    ex = read_all(changed, "val")["blob_0002"]
    want = reference_weights(root, "val", "blob_0002", w0=2.0, sigma=3.0)
    np.testing.assert_allclose(ex["weights"], want, rtol=1e-6)


def test_weight_map_options_reach_unet_weight_map(blob_folder):
    tmp, root = blob_folder
    options = {"w0": 4.0, "sigma": 2.0, "border_on_background_only": False}
    cfg = instance_config(tmp, root, weight_map=weight_map(class_weights=(0.5, 2.0), **options))
    ex = read_all(folder.load(cfg), "train")["blob_0000"]
    want = reference_weights(root, "train", "blob_0000", class_weights=(0.5, 2.0), **options)
    np.testing.assert_allclose(ex["weights"], want, rtol=1e-6)


# ---- bad input: one line, naming the file and the value


def assert_one_line(excinfo, *parts):
    message = str(excinfo.value)
    assert "\n" not in message, message
    for part in parts:
        assert str(part) in message, message


@pytest.mark.parametrize(
    "array, sample_format, words",
    [
        (np.array([[0, 70000]], np.int32), 2, ["instance id 70000 exceeds 65535", "uint16"]),
        (np.array([[0, -3]], np.int32), 2, ["instance id -3 is negative"]),
        (np.array([[0, 3_000_000_000]], np.uint32), 1, ["instance id 3000000000 exceeds 65535"]),
    ],
)
def test_ids_that_do_not_fit_uint16(array, sample_format, words):
    with pytest.raises(DataError) as e:
        image_io.decode_instance_mask(tiff_bytes(array, sample_format), path="m/x.tif")
    assert_one_line(e, "m/x.tif", *words)


def encoded(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("mode", ["P", "RGB", "RGBA", "LA", "1"])
def test_palette_colour_and_binary_files_are_not_instance_masks(mode):
    img = Image.fromarray(np.array([[0, 1], [2, 0]], np.uint8)).convert(mode)
    with pytest.raises(DataError) as e:
        image_io.decode_instance_mask(encoded(img), path="m/y.png")
    assert_one_line(e, "m/y.png", repr(mode), "single-channel")


def test_non_integer_float_ids():
    buffer = io.BytesIO()
    Image.fromarray(np.array([[0.0, 1.5]], np.float32)).save(buffer, format="TIFF")
    with pytest.raises(DataError) as e:
        image_io.decode_instance_mask(buffer.getvalue(), path="m/z.tif")
    assert_one_line(e, "m/z.tif", "non-integer")


def test_too_large_id_through_the_builder_names_the_mask(tmp_path):
    root = tmp_path / "big"
    save(rgb(4, 4, 0), root / "images" / "a.png")
    write_mask(root / "masks" / "a.tif", random_instances(4, 4, [1, 70000], 0), "tif32")
    with pytest.raises(DataError) as e:
        folder.load(instance_config(tmp_path, root))
    assert_one_line(e, root / "masks" / "a.tif", "instance id 70000 exceeds 65535")


def table_folder(tmp, table, ids=(1, 2), classes_txt="background\nround\nlong\n"):
    """Flat folder with images a, b (instance ids ``ids``) and ``table`` (dict or raw text)."""
    root = tmp / "t"
    for seed, stem in enumerate("ab"):
        save(rgb(4, 5, seed), root / "images" / f"{stem}.png")
        write_mask(root / "masks" / f"{stem}.png", random_instances(4, 5, list(ids), seed), "png8")
    text = table if isinstance(table, str) else json.dumps(table)
    (root / "table.json").write_text(text)
    (root / "classes.txt").write_text(classes_txt)
    return instance_config(tmp, root, instance_classes="table.json"), root


GOOD = {"1": 1, "2": 2}


@pytest.mark.parametrize(
    "table, words",
    [
        ({"a": GOOD, "b": {"1": 1, "2": 3}}, ["entry 'b' instance 2: class 3 outside [1, 3)"]),
        ({"a": GOOD, "b": {"1": 0, "2": 1}}, ["entry 'b' instance 1: class 0", "background"]),
        ({"a": GOOD, "b": {"1": "round", "2": 1}}, ["class 'round' outside"]),
        ({"a": GOOD, "b": {"0": 1, "2": 1}}, ["instance id '0' is not an integer in 1..65535"]),
        ({"a": GOOD, "b": {"x": 1}}, ["instance id 'x'"]),
        ({"a": GOOD, "b": [1, 2]}, ["entry 'b' is a list"]),
        ([1, 2], ["a JSON list; expected an object"]),
        ('{"a": {"1": 1,}}', ["malformed JSON", "line 1"]),
    ],
)
def test_bad_class_table(tmp_path, table, words):
    cfg, root = table_folder(tmp_path, table)
    with pytest.raises(DataError) as e:
        folder.load(cfg)
    assert_one_line(e, root / "table.json", *words)


def test_table_without_the_image(tmp_path):
    cfg, root = table_folder(tmp_path, {"a": GOOD})
    with pytest.raises(DataError) as e:
        folder.load(cfg)
    assert_one_line(e, root / "masks" / "b.png", "image 'b' has no entry", "table.json")


def test_instance_without_a_class(tmp_path):
    cfg, root = table_folder(tmp_path, {"a": GOOD, "b": {"1": 1}})
    with pytest.raises(DataError) as e:
        folder.load(cfg)
    assert_one_line(e, root / "masks" / "b.png", "instance ids [2] have no class", "'b'")


def test_table_names_an_id_the_mask_lacks(tmp_path):
    cfg, root = table_folder(tmp_path, {"a": GOOD, "b": {"1": 1, "2": 1, "77": 2}})
    with pytest.raises(DataError) as e:
        folder.load(cfg)
    assert_one_line(e, root / "table.json", "'b' names instance ids [77]", "b.png")


def test_missing_table_file(tmp_path):
    cfg, root = table_folder(tmp_path, {"a": GOOD, "b": GOOD})
    cfg.instance_classes = "nope.json"
    with pytest.raises(DataError) as e:
        folder.load(cfg)
    assert_one_line(e, "config.data.instance_classes='nope.json'", root / "nope.json")


def test_bad_examples_are_skipped_and_counted_when_asked(tmp_path):
    cfg, _ = table_folder(tmp_path, {"a": GOOD, "b": {"1": 1}})
    cfg.skip_bad_examples = True
    source = folder.load(cfg)
    assert source.info.splits == {"train": 1}
    assert list(read_all(source, "train")) == ["a"]


@pytest.mark.parametrize(
    "overrides, words",
    [
        (
            {"mask_type": "class", "weight_map": weight_map()},
            ["config.data.weight_map.enabled=True", "config.data.mask_type='instance'"],
        ),
        ({"mask_type": "instances"}, ["config.data.mask_type='instances'", "'instance'"]),
        (
            {"mask_type": "class", "instance_classes": "t.json"},
            ["config.data.instance_classes='t.json'", "mask_type='instance'"],
        ),
        (
            {"weight_map": weight_map(class_weights=(1.0, 2.0, 3.0))},
            ["class_weights has 3 weights for 2 classes"],
        ),
        ({"weight_map": weight_map(sigma=0.0)}, ["sigma=0.0"]),
        ({"num_classes": 1}, ["at least 2 classes"]),
    ],
)
def test_config_errors(every_format, overrides, words):
    tmp, root, _ = every_format
    with pytest.raises(ValueError) as e:
        folder.load(instance_config(tmp, root, **overrides))
    assert not isinstance(e.value, DataError)
    assert_one_line(e, *words)


# ---- the touching-blobs generator


def test_blobs_touch_through_small_gaps_but_never_touch():
    image, inst, classes = blobs.touching_blobs(np.random.default_rng(0), (64, 80))
    assert image.shape == inst.shape == (64, 80)
    assert image.dtype == np.uint8 and inst.dtype == np.uint16
    ids = np.unique(inst)[1:]
    assert sorted(classes) == ids.tolist() and len(ids) >= 15
    assert set(classes.values()) <= {blobs.ROUND, blobs.ELONGATED}
    nearest = []
    for k in ids:
        distance = ndimage.distance_transform_edt(inst != k)
        nearest.append(distance[(inst != k) & (inst != 0)].min())
    nearest = np.array(nearest)
    # No two blobs 8-adjacent (distance >= 2), most with a neighbour across a 1-3 px gap.
    assert nearest.min() >= 2.0
    assert np.mean(nearest <= np.hypot(4, 1)) > 0.8
    # Membranes: blob pixels next to the background are darker than the blobs' interiors.
    fg = inst > 0
    rim = fg & ~ndimage.binary_erosion(fg)
    core = ndimage.binary_erosion(fg, iterations=3)
    assert image[rim].mean() + 40 < image[core].mean()


def test_write_touching_blobs_is_a_deterministic_folder_dataset(tmp_path):
    a = blobs.write_touching_blobs(tmp_path / "a", num_images=4, size=32, seed=7, with_classes=True)
    blobs.write_touching_blobs(tmp_path / "b", num_images=4, size=32, seed=7, with_classes=True)
    assert a == {"train": ["blob_0000", "blob_0001", "blob_0002"], "val": ["blob_0003"]}
    for sub in ("images/train/blob_0001.png", "masks/val/blob_0003.png", "instance_classes.json"):
        assert (tmp_path / "a" / sub).read_bytes() == (tmp_path / "b" / sub).read_bytes()
    mask = Image.open(tmp_path / "a" / "masks" / "val" / "blob_0003.png")
    assert mask.mode.startswith("I")  # 16-bit PNG
    cfg = instance_config(tmp_path, tmp_path / "a", instance_classes="instance_classes.json")
    source = folder.load(cfg)
    assert source.info.class_names == ("background", "round", "elongated")
    table = json.loads((tmp_path / "a" / "instance_classes.json").read_text())
    ex = read_all(source, "val")["blob_0003"]
    for instance_id, cls in table["blob_0003"].items():
        assert set(np.unique(ex["mask"][ex["instances"] == int(instance_id)])) == {cls}
