"""Oxford-IIIT Pet, Cityscapes and ADE20K adapters on miniature fixtures."""

import zipfile

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from segjax import data
from segjax.data import ade20k, cityscapes, pets
from segjax.data.image_io import DataError
from tests.test_data_voc import data_config, read_all

# --- Oxford-IIIT Pet ---


FAKE_TRIMAP = np.array([[2, 2, 3], [3, 1, 1]], np.uint8)


def _fake_pet_examples(n):
    for i in range(n):
        trimap = np.array([[1, 2, 3], [2, 1, 0]], np.uint8) if i == 0 else FAKE_TRIMAP
        yield (
            f"pet{n}_{i}",
            {
                "image": np.full((2, 3, 3), 10 * i, np.uint8),
                "label": 5 + i,
                "species": i % 2,
                "file_name": f"pet{n}_{i}.jpg",
                "segmentation_mask": trimap[..., None],
            },
        )


@pytest.fixture(scope="module")
def fake_pets(tmp_path_factory):
    """A TFDS dataset with the features of ``oxford_iiit_pet`` and known trimaps."""
    features = tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(names=list(pets.BREEDS)),
            "species": tfds.features.ClassLabel(names=list(pets.SPECIES)),
            "file_name": tfds.features.Text(),
            "segmentation_mask": tfds.features.Image(shape=(None, None, 1)),
        }
    )
    return tfds.dataset_builders.store_as_tfds_dataset(
        name="segjax_test_fake_pets",
        version="1.0.0",
        features=features,
        split_datasets={"train": list(_fake_pet_examples(3)), "test": list(_fake_pet_examples(1))},
        data_dir=str(tmp_path_factory.mktemp("pets")),
    )


@pytest.mark.parametrize(
    "mode, species, breed, expected",
    [
        ("binary", 1, 7, [[1, 0, 255], [0, 1, 255]]),
        ("trimap", 1, 7, [[1, 0, 2], [0, 1, 255]]),
        ("species", 0, 7, [[1, 0, 255], [0, 1, 255]]),
        ("species", 1, 7, [[2, 0, 255], [0, 2, 255]]),
        ("breeds", 1, 7, [[8, 0, 255], [0, 8, 255]]),
    ],
)
def test_trimap_mapping(mode, species, breed, expected):
    trimap = tf.constant([[1, 2, 3], [2, 1, 0]], tf.uint8)  # 0 is not a trimap value
    out = pets.trimap_to_classes(trimap, tf.constant(species), tf.constant(breed), mode)
    assert out.dtype == tf.uint8
    np.testing.assert_array_equal(out.numpy(), expected)


def test_pets_source(fake_pets):
    source = pets.source_from_builder(fake_pets, "species")
    assert source.info.splits == {"train": 3, "test": 1}
    assert source.info.class_names == ("background", "cat", "dog")
    train = read_all(source, "train")
    assert sorted(train) == ["pet3_0.jpg", "pet3_1.jpg", "pet3_2.jpg"]
    np.testing.assert_array_equal(train["pet3_0.jpg"]["mask"], [[1, 0, 255], [0, 1, 255]])
    np.testing.assert_array_equal(train["pet3_1.jpg"]["mask"], [[0, 0, 255], [255, 2, 2]])
    assert train["pet3_1.jpg"]["image"].shape == (2, 3, 3)
    parts = [read_all(source, "train", i, 3) for i in range(3)]
    assert sorted(k for p in parts for k in p) == sorted(train)
    assert len(pets.source_from_builder(fake_pets, "breeds").info.class_names) == 38


def test_pets_unknown_mode(tmp_path):
    with pytest.raises(ValueError, match=r"config_name='cats' is not an Oxford-IIIT Pet mode"):
        data.get_source(data_config(tmp_path, name="pets", config_name="cats"))


# --- Cityscapes (the real TFDS builder on miniature manual zips) ---

CITY_LABELS = np.arange(35, dtype=np.uint8)  # every label id 0..34


def _city_zips(manual, rng):
    manual.mkdir(parents=True)
    items = {"train": ["aachen_000000_000019", "bochum_000000_000313"]}
    items["val"] = ["frankfurt_000000_000294"]
    items["test"] = ["berlin_000000_000019"]
    masks = {}
    with (
        zipfile.ZipFile(manual / cityscapes.LEFT_ZIP, "w") as left,
        zipfile.ZipFile(manual / cityscapes.FINE_ZIP, "w") as fine,
    ):
        for split, ids in items.items():
            for image_id in ids:
                city = image_id.split("_")[0]
                image = np.zeros((1024, 2048, 3), np.uint8)
                image[:8, :8] = rng.integers(0, 256, (8, 8, 3))
                mask = np.zeros((1024, 2048), np.uint8)
                mask[0, :35] = CITY_LABELS
                mask[1:4, :4] = rng.integers(0, 35, (3, 4))
                masks[image_id] = (image, mask)
                for arr, zf, name in (
                    (image, left, f"leftImg8bit/{split}/{city}/{image_id}_leftImg8bit.png"),
                    (mask, fine, f"gtFine/{split}/{city}/{image_id}_gtFine_labelIds.png"),
                ):
                    path = manual / "tmp.png"
                    Image.fromarray(arr).save(path, compress_level=1)
                    zf.write(path, name)
                    path.unlink()
    return masks


def test_cityscapes_label_ids_to_train_ids(tmp_path):
    masks = _city_zips(tmp_path / "manual", np.random.default_rng(0))
    source = data.get_source(data_config(tmp_path, name="cityscapes"))
    assert source.info.splits == {"train": 2, "validation": 1, "test": 1}
    assert source.info.num_classes == 19
    examples = read_all(source, "train") | read_all(source, "validation")
    assert sorted(examples) == sorted(k for k in masks if not k.startswith("berlin"))
    table = np.full(256, 255, np.uint8)
    for label_id, train_id in cityscapes.LABEL_TO_TRAIN_ID.items():
        table[label_id] = train_id
    for image_id, ex in examples.items():
        image, raw = masks[image_id]
        np.testing.assert_array_equal(ex["image"], image)
        np.testing.assert_array_equal(ex["mask"], table[raw])
    row = examples["aachen_000000_000019"]["mask"][0, :35]
    # The 19 train ids, each exactly once, at label ids 7, 8, 11, ... 33; everything else 255.
    assert sorted(row[row != 255].tolist()) == list(range(19))
    assert row[[0, 6, 9, 10, 14, 15, 16, 18, 29, 30, 34]].tolist() == [255] * 11
    parts = [read_all(source, "train", i, 2) for i in range(2)]
    assert sorted(k for p in parts for k in p) == ["aachen_000000_000019", "bochum_000000_000313"]


# --- ADE20K ---


def _ade_fixture(manual, rng, *, as_zip=True, bad_label=False):
    root_name = "ADEChallengeData2016"
    files, expected = {}, {}
    for sub, n in (("training", 3), ("validation", 2)):
        for i in range(1, n + 1):
            stem = f"ADE_{'train' if sub == 'training' else 'val'}_{i:08d}"
            h, w = 6, 8 + i
            raw = rng.integers(0, 151, (h, w)).astype(np.uint8)
            raw[0, :3] = (0, 1, 150)
            if bad_label and sub == "training" and i == 2:
                raw[1, 1] = 151
            gray = sub == "validation" and i == 1  # ADE has some grayscale JPEGs
            pixels = rng.integers(0, 256, (h, w) if gray else (h, w, 3), dtype=np.uint8)
            files[f"{root_name}/images/{sub}/{stem}.jpg"] = (pixels, "JPEG")
            files[f"{root_name}/annotations/{sub}/{stem}.png"] = (raw, "PNG")
            expected[stem] = raw
    manual.mkdir(parents=True)
    if as_zip:
        with zipfile.ZipFile(manual / ade20k.ARCHIVE, "w") as zf:
            for name, (arr, fmt) in files.items():
                path = manual / "tmp"
                Image.fromarray(arr).save(path, format=fmt)
                zf.write(path, name)
                path.unlink()
    else:
        for name, (arr, fmt) in files.items():
            (manual / name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(manual / name, format=fmt)
    return expected


def test_ade20k_mapping_and_splits(tmp_path):
    expected = _ade_fixture(tmp_path / "manual", np.random.default_rng(0))
    source = data.get_source(data_config(tmp_path, name="ade20k"))
    assert source.info.splits == {"train": 3, "validation": 2}
    assert source.info.num_classes == 150 == len(ade20k.CLASS_NAMES)
    assert source.info.class_names[0] == "wall" and source.info.class_names[149] == "flag"
    examples = read_all(source, "train") | read_all(source, "validation")
    assert sorted(examples) == sorted(expected)
    for stem, raw in expected.items():
        mask = examples[stem]["mask"]
        np.testing.assert_array_equal(mask, np.where(raw == 0, 255, raw.astype(int) - 1))
        assert mask[0, :3].tolist() == [255, 0, 149]
        assert examples[stem]["image"].shape == (*raw.shape, 3)


def test_ade20k_label_above_150_names_the_file(tmp_path):
    _ade_fixture(tmp_path / "manual", np.random.default_rng(1), as_zip=False, bad_label=True)
    with pytest.raises(DataError, match=r"ADE_train_00000002\.png: ADE20K label 151 outside"):
        data.get_source(data_config(tmp_path, name="ade20k"))


def test_ade20k_missing_prints_instructions(tmp_path):
    (tmp_path / "manual").mkdir()
    with pytest.raises(DataError, match=r"ADEChallengeData2016 not found") as e:
        data.get_source(data_config(tmp_path, name="ade20k"))
    assert ade20k.URL in str(e.value)


# --- Truncated or corrupt archives ---


def _truncate(path):
    """Cuts ``path`` to half its size, as an interrupted download leaves it."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    return size // 2


def test_ade20k_truncated_zip_is_one_line_naming_it(tmp_path):
    _ade_fixture(tmp_path / "manual", np.random.default_rng(2))
    archive = tmp_path / "manual" / ade20k.ARCHIVE
    size = _truncate(archive)
    with pytest.raises(DataError) as e:
        data.get_source(data_config(tmp_path, name="ade20k"))
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"{archive}: archive is truncated or corrupt")
    assert f"{size:,} bytes" in message and ade20k.URL in message


def test_cityscapes_corrupt_zip_is_one_line_naming_it(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    with zipfile.ZipFile(manual / cityscapes.LEFT_ZIP, "w") as left:
        left.writestr("leftImg8bit/train/aachen/readme.txt", "a valid zip")
    fine = manual / cityscapes.FINE_ZIP
    fine.write_bytes(b"PK\x03\x04 not really a zip")  # e.g. an HTML error page saved as .zip
    with pytest.raises(DataError) as e:
        data.get_source(data_config(tmp_path, name="cityscapes"))
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"{fine}: archive is truncated or corrupt")
    assert "cityscapes-dataset.com" in message and "delete it and download it again" in message


def test_cityscapes_missing_zips_is_one_line_naming_them(tmp_path):
    (tmp_path / "manual").mkdir()
    with zipfile.ZipFile(tmp_path / "manual" / cityscapes.LEFT_ZIP, "w") as left:
        left.writestr("leftImg8bit/train/aachen/readme.txt", "present")
    with pytest.raises(FileNotFoundError) as e:
        data.get_source(data_config(tmp_path, name="cityscapes"))
    message = str(e.value)
    assert "\n" not in message and cityscapes.FINE_ZIP in message
    assert cityscapes.LEFT_ZIP not in message and str(tmp_path / "manual") in message
