"""VOC 2012 (+ SBD) builder on a miniature VOCdevkit + SBD fixture in the real layout."""

import tarfile

import ml_collections
import numpy as np
import pytest
import scipy.io
from PIL import Image

from segjax import data
from segjax.data import base, voc
from segjax.data.image_io import DataError

VOC_TRAIN = ["2008_000001", "2008_000002", "2008_000003"]
VOC_VAL = ["2008_000010", "2008_000011", "2008_000012"]
SBD_TRAIN = ["2008_000020", "2008_000021", "2008_000001", "2008_000010"]
SBD_VAL = ["2008_000022", "2008_000011", "2008_000023"]
SBD_ONLY_IMAGE = "2008_000023"  # image only in SBD's img/, not in VOC JPEGImages
EXPECTED_TRAIN_AUG = sorted(
    ["2008_000001", "2008_000002", "2008_000003", "2008_000020", "2008_000021"]
    + ["2008_000022", "2008_000023"]
)


def data_config(tmp, **overrides):
    """A ``config.data`` with every key the loaders read."""
    cfg = ml_collections.ConfigDict(
        {
            "name": "voc",
            "data_dir": str(tmp / "tfds"),
            "manual_dir": str(tmp / "manual"),
            "download": False,
            "skip_bad_examples": False,
            "root": "",
            "config_name": "",
            "value_range": (),
            "num_classes": 0,
            "class_names": (),
            "palette": (),
        }
    )
    cfg.update(overrides)
    return cfg


def _size(image_id):
    return (12, 16) if int(image_id[-1]) % 2 else (16, 10)


def _voc_mask(image_id, rng):
    h, w = _size(image_id)
    mask = rng.integers(0, 21, (h, w)).astype(np.uint8)
    mask[0, :] = 255  # border band, must survive
    return mask


def _save_palette_png(mask, path):
    img = Image.fromarray(mask, mode="P")
    palette = [c for rgb in base.default_palette(256) for c in rgb]
    img.putpalette(palette)
    img.save(path)


def _save_jpeg(image_id, path, rng):
    h, w = _size(image_id)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, quality=95)


def make_fixture(root, *, archives=True, voc_train=None):
    """Writes ``root/manual`` with a miniature VOC 2012 + SBD; returns the expected masks."""
    rng = np.random.default_rng(0)
    staging = root / ("staging" if archives else "manual")
    voc_dir = staging / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (voc_dir / sub).mkdir(parents=True, exist_ok=True)
    sbd_dir = staging / "benchmark_RELEASE" / "dataset"
    for sub in ("img", "cls"):
        (sbd_dir / sub).mkdir(parents=True, exist_ok=True)
    voc_train = VOC_TRAIN if voc_train is None else voc_train
    voc_masks, sbd_masks = {}, {}
    all_ids = sorted(set(voc_train + VOC_VAL + SBD_TRAIN + SBD_VAL))
    for image_id in all_ids:
        if image_id != SBD_ONLY_IMAGE:
            _save_jpeg(image_id, voc_dir / "JPEGImages" / f"{image_id}.jpg", rng)
        if image_id in SBD_TRAIN + SBD_VAL:
            _save_jpeg(image_id, sbd_dir / "img" / f"{image_id}.jpg", rng)
            h, w = _size(image_id)
            seg = rng.integers(0, 21, (h, w)).astype(np.uint8)
            sbd_masks[image_id] = seg
            scipy.io.savemat(
                sbd_dir / "cls" / f"{image_id}.mat",
                {"GTcls": {"Segmentation": seg, "CategoriesPresent": np.unique(seg)}},
            )
        if image_id in voc_train + VOC_VAL:
            voc_masks[image_id] = _voc_mask(image_id, rng)
            png = voc_dir / "SegmentationClass" / f"{image_id}.png"
            _save_palette_png(voc_masks[image_id], png)
    lists = voc_dir / "ImageSets" / "Segmentation"
    (lists / "train.txt").write_text("".join(f"{i}\n" for i in voc_train))
    (lists / "val.txt").write_text("".join(f"{i}\n" for i in VOC_VAL))
    (lists / "trainval.txt").write_text("".join(f"{i}\n" for i in sorted(voc_train + VOC_VAL)))
    (sbd_dir / "train.txt").write_text("".join(f"{i}\n" for i in SBD_TRAIN))
    (sbd_dir / "val.txt").write_text("".join(f"{i}\n" for i in SBD_VAL))
    if archives:
        manual = root / "manual"
        manual.mkdir()
        with tarfile.open(manual / voc.VOC_ARCHIVE, "w") as tar:
            tar.add(staging / "VOCdevkit", arcname="VOCdevkit")
        with tarfile.open(manual / voc.SBD_ARCHIVE, "w:gz") as tar:
            tar.add(staging / "benchmark_RELEASE", arcname="benchmark_RELEASE")
    return voc_masks, sbd_masks


def read_all(source, split, process_index=0, process_count=1):
    ds = source.as_dataset(split, process_index=process_index, process_count=process_count)
    return {ex["id"].decode(): ex for ex in ds.as_numpy_iterator()}


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc_archives")
    voc_masks, sbd_masks = make_fixture(root, archives=True)
    return root, voc_masks, sbd_masks


@pytest.fixture(scope="module")
def voc_source(archives):
    root, _, _ = archives
    return data.get_source(data_config(root, name="voc"))


@pytest.fixture(scope="module")
def aug_source(archives):
    root, _, _ = archives
    return data.get_source(data_config(root, name="voc_aug"))


def test_voc2012_from_archive_split_sizes_and_masks(archives, voc_source):
    _, voc_masks, _ = archives
    assert voc_source.info.splits == {"train": 3, "validation": 3}
    assert voc_source.info.num_classes == 21
    train = read_all(voc_source, "train")
    assert sorted(train) == VOC_TRAIN
    for image_id, ex in train.items():
        np.testing.assert_array_equal(ex["mask"], voc_masks[image_id])
        assert ex["image"].shape == (*voc_masks[image_id].shape, 3)
        assert ex["image"].dtype == np.uint8
        assert (ex["mask"] == 255).sum() == ex["mask"].shape[1]  # border band kept
    assert sorted(read_all(voc_source, "validation")) == VOC_VAL


def test_voc_aug_split_sizes_overlap_removed_and_mask_sources(archives, aug_source):
    _, voc_masks, sbd_masks = archives
    assert aug_source.info.splits == {"train_aug": 7, "validation": 3}
    train = read_all(aug_source, "train_aug")
    assert sorted(train) == EXPECTED_TRAIN_AUG
    assert not set(train) & set(VOC_VAL)  # SBD images in VOC val are removed
    for image_id, ex in train.items():
        # VOC train images keep VOC's annotation (2008_000001 is in both); others use SBD.
        expected = voc_masks[image_id] if image_id in VOC_TRAIN else sbd_masks[image_id]
        np.testing.assert_array_equal(ex["mask"], expected)
    val = read_all(aug_source, "validation")
    assert sorted(val) == VOC_VAL
    for image_id, ex in val.items():
        np.testing.assert_array_equal(ex["mask"], voc_masks[image_id])


def test_image_only_in_sbd_is_read_from_sbd(aug_source):
    train = read_all(aug_source, "train_aug")
    assert train[SBD_ONLY_IMAGE]["image"].shape == (*_size(SBD_ONLY_IMAGE), 3)


@pytest.mark.parametrize("process_count", [1, 2, 3])
@pytest.mark.parametrize("split", ["train_aug", "validation"])
def test_process_parts_cover_split_exactly_once(aug_source, split, process_count):
    seen = []
    for index in range(process_count):
        part = read_all(aug_source, split, index, process_count)
        assert part  # no process gets nothing
        seen += list(part)
    assert sorted(seen) == sorted(read_all(aug_source, split))
    assert len(seen) == len(set(seen)) == aug_source.info.splits[split]


def test_order_is_fixed(aug_source):
    ds1 = aug_source.as_dataset("train_aug")
    ds2 = aug_source.as_dataset("train_aug")
    ids1 = [ex["id"] for ex in ds1.as_numpy_iterator()]
    ids2 = [ex["id"] for ex in ds2.as_numpy_iterator()]
    assert ids1 == ids2


def test_voc2012_from_extracted_folders(tmp_path):
    voc_masks, _ = make_fixture(tmp_path, archives=False)
    source = data.get_source(data_config(tmp_path, name="voc"))
    train = read_all(source, "train")
    assert sorted(train) == VOC_TRAIN
    for image_id, ex in train.items():
        np.testing.assert_array_equal(ex["mask"], voc_masks[image_id])


def test_missing_files_print_manual_instructions(tmp_path):
    (tmp_path / "manual").mkdir()
    with pytest.raises(DataError) as e:
        data.get_source(data_config(tmp_path, name="voc"))
    assert "VOC2012 not found" in str(e.value)
    assert voc.VOC_ARCHIVE in str(e.value) and voc.VOC_URL in str(e.value)


def test_missing_sbd_names_the_archive(tmp_path):
    make_fixture(tmp_path, archives=False)
    import shutil

    shutil.rmtree(tmp_path / "manual" / "benchmark_RELEASE")
    with pytest.raises(DataError, match="SBD dataset not found") as e:
        data.get_source(data_config(tmp_path, name="voc_aug"))
    assert voc.SBD_ARCHIVE in str(e.value)


def test_empty_split_list_is_an_error(tmp_path):
    make_fixture(tmp_path, archives=False, voc_train=[])
    with pytest.raises(DataError, match=r"split 'train' is empty"):
        data.get_source(data_config(tmp_path, name="voc"))


def test_bad_sbd_mat_names_the_file(tmp_path):
    make_fixture(tmp_path, archives=False)
    bad = tmp_path / "manual" / "benchmark_RELEASE" / "dataset" / "cls" / "2008_000020.mat"
    bad.write_bytes(b"not a mat file")
    with pytest.raises(DataError, match=r"2008_000020\.mat: cannot read GTcls\.Segmentation"):
        data.get_source(data_config(tmp_path, name="voc_aug"))


def test_voc_config_name_aug_is_voc_aug(archives, aug_source):
    root, _, _ = archives
    source = data.get_source(data_config(root, name="voc", config_name="aug"))
    assert source.info.splits == aug_source.info.splits


def test_unknown_voc_config_name(tmp_path):
    with pytest.raises(ValueError, match=r"config_name='2007' is not a VOC config"):
        data.get_source(data_config(tmp_path, name="voc", config_name="2007"))


def test_archive_without_voc_inside_is_an_error(tmp_path):
    manual = tmp_path / "manual"
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "readme.txt").write_text("not VOC")
    manual.mkdir()
    with tarfile.open(manual / voc.VOC_ARCHIVE, "w") as tar:
        tar.add(tmp_path / "junk", arcname="junk")
    with pytest.raises(DataError, match=r"VOCtrainval_11-May-2012\.tar: archive does not hold"):
        data.get_source(data_config(tmp_path, name="voc"))


def _truncate(path):
    """Cuts ``path`` to half its size, as an interrupted download leaves it."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)
    return size // 2


@pytest.mark.parametrize(
    "name, archive, url",
    [("voc", voc.VOC_ARCHIVE, voc.VOC_URL), ("voc_aug", voc.SBD_ARCHIVE, voc.SBD_URL)],
)
def test_truncated_archive_is_one_line_naming_it(tmp_path, name, archive, url):
    make_fixture(tmp_path, archives=True)
    size = _truncate(tmp_path / "manual" / archive)
    with pytest.raises(DataError) as e:
        data.get_source(data_config(tmp_path, name=name))
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"{tmp_path / 'manual' / archive}: archive is truncated or corrupt")
    assert f"{size:,} bytes" in message and url in message
    assert "delete it and download it again" in message
