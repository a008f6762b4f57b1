import itertools

import numpy as np
import pytest
import tensorflow as tf

from segjax import data
from segjax.input import augment, pipeline


def _source(config):
    return data.get_source(config.data)


def _take(it, n):
    return list(itertools.islice(it, n))


def test_train_stream_is_a_pure_function_of_seed_and_step(tiny_config):
    src = _source(tiny_config)
    a = _take(pipeline.train_iterator(src, tiny_config), 5)
    b = _take(pipeline.train_iterator(src, tiny_config), 5)
    resumed = _take(pipeline.train_iterator(src, tiny_config, start_step=3), 2)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["mask"], y["mask"])
    for x, y in zip(a[3:], resumed):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["mask"], y["mask"])
    assert a[0]["image"].shape == (8, 32, 32, 3) and a[0]["mask"].dtype == np.uint8
    assert not np.array_equal(a[0]["image"], a[1]["image"])
    tiny_config.seed = 1
    other = _take(pipeline.train_iterator(src, tiny_config), 1)
    assert not np.array_equal(a[0]["image"], other[0]["image"])


def test_resume_across_epoch_boundary(tiny_config):
    src = _source(tiny_config)
    tiny_config.train.batch_size = 40  # 96 examples: the third batch crosses into epoch 2
    full = _take(pipeline.train_iterator(src, tiny_config), 4)
    resumed = _take(pipeline.train_iterator(src, tiny_config, start_step=2), 2)
    np.testing.assert_array_equal(full[2]["mask"], resumed[0]["mask"])
    np.testing.assert_array_equal(full[3]["image"], resumed[1]["image"])


@pytest.mark.parametrize("processes", [2, 4])
def test_global_batch_is_the_same_on_any_number_of_processes(tiny_config, processes):
    src = _source(tiny_config)
    single = _take(pipeline.train_iterator(src, tiny_config, start_step=5), 2)
    parts = [
        _take(
            pipeline.train_iterator(
                src, tiny_config, start_step=5, process_index=p, process_count=processes
            ),
            2,
        )
        for p in range(processes)
    ]
    for step in range(2):
        for key in ("image", "mask"):
            rows = np.concatenate([part[step][key] for part in parts])
            np.testing.assert_array_equal(rows, single[step][key])
    # Each process decodes only its own rows.
    assert parts[0][0]["image"].shape[0] == tiny_config.train.batch_size // processes


def test_every_epoch_visits_every_example_once():
    def order(n, seed):
        positions = tf.data.Dataset.range(3 * n)
        ds = positions.map(lambda g: pipeline.example_index(g, n, seed))
        return np.array(list(ds.as_numpy_iterator())).reshape(3, n)

    epochs = order(37, 3)
    for epoch in epochs:
        assert sorted(epoch) == list(range(37))
    assert len({tuple(e) for e in epochs}) == 3  # a new permutation per epoch
    np.testing.assert_array_equal(order(37, 3), epochs)
    assert not np.array_equal(order(37, 4), epochs)


def test_global_positions_interleave_processes_row_blocks():
    got = [
        list(pipeline.global_positions(2, 6, 3, p).take(6).as_numpy_iterator()) for p in range(2)
    ]
    assert got == [[12, 13, 14, 18, 19, 20], [15, 16, 17, 21, 22, 23]]


@pytest.mark.parametrize("processes", [1, 2, 3])
def test_eval_counts_every_pixel_once(tiny_config, processes):
    src = _source(tiny_config)
    tiny_config.eval.batch_size = 3 * processes  # does not divide 40
    raw = sum(
        int(np.sum(ex["mask"] != 255)) for ex in src.as_dataset("validation").as_numpy_iterator()
    )
    valid_pixels, examples, batches = 0, 0, set()
    for p in range(processes):
        stream = pipeline.eval_stream(
            src, tiny_config, "validation", process_index=p, process_count=processes
        )
        got = list(stream)
        batches.add(len(got))
        assert len(got) == stream.num_batches
        examples += sum(int(b["valid"].sum()) for b in got)
        valid_pixels += sum(int(np.sum(b["mask"] != 255)) for b in got)
    assert batches == {stream.num_batches}  # every process runs the same number of batches
    assert examples == 40
    assert valid_pixels == raw


def test_out_of_range_label_is_reported_with_example_id(tiny_config):
    ds = tf.data.Dataset.from_tensors(
        {
            "image": tf.zeros((4, 4, 3), tf.uint8),
            "mask": tf.fill((4, 4), tf.constant(7, tf.uint8)),
            "id": tf.constant("img_042"),
        }
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"img_042[\s\S]*7[\s\S]*\[0, 4\)"):
        list(ds.map(lambda ex: pipeline._check_labels(ex, 4)).as_numpy_iterator())


def test_augment_keeps_image_and_mask_aligned():
    # The mask is a function of the image (bright pixels = class 1): after scale, crop and
    # flip the relation must still hold wherever the mask is not padding.
    rng = np.random.default_rng(0)
    image = np.zeros((40, 50, 3), np.uint8)
    image[5:25, 10:30] = 255
    image[rng.random((40, 50)) < 0.05] = 255
    mask = (image[..., 0] > 127).astype(np.uint8)
    for s in range(6):
        out_img, out_mask = augment.train_transform(
            image,
            mask,
            tf.constant([s, 3], tf.int64),
            crop_size=(48, 48),
            scale_range=(0.5, 2.0),
            mean=(0.0, 0.0, 0.0),
            std=(1.0, 1.0, 1.0),
        )
        out_img, out_mask = out_img.numpy(), out_mask.numpy()
        keep = out_mask != 255
        bright = out_img[..., 0] > 200
        dark = out_img[..., 0] < 55
        assert np.all(out_mask[keep & bright] == 1)
        assert np.all(out_mask[keep & dark] == 0)
        assert out_img.shape == (48, 48, 3) and out_mask.shape == (48, 48)


def test_instance_batches_are_the_same_on_any_number_of_processes(tmp_path):
    from segjax import config as config_lib

    cfg = config_lib.base_config()
    cfg.data.name, cfg.data.config_name = "instance_shapes", "tiny"
    cfg.data.data_dir = str(tmp_path)
    cfg.data.instances.min_size, cfg.data.instances.max_size = (96, 128), 128
    cfg.data.instances.pad_size, cfg.data.instances.max_instances = (128, 128), 8
    cfg.train.batch_size = 4
    src = _source(cfg)
    transform = pipeline.instance_train_transform(cfg)
    single = _take(pipeline.train_iterator(src, cfg, transform=transform, start_step=7), 1)[0]
    parts = [
        _take(
            pipeline.train_iterator(
                src, cfg, transform=transform, start_step=7, process_index=p, process_count=2
            ),
            1,
        )[0]
        for p in range(2)
    ]
    assert single["image"].shape == (4, 128, 128, 3) and single["masks"].shape == (4, 8, 128, 128)
    assert single["instance_valid"].any()
    for key in ("image", "image_size", "boxes", "labels", "masks", "instance_valid"):
        np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), single[key], key)
