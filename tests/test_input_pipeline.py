import itertools

import numpy as np
import pytest
import tensorflow as tf

from segjax import augment, data, input_pipeline


def _source(config):
    return data.get_source(config.data)


def _take(it, n):
    return list(itertools.islice(it, n))


def test_train_stream_is_a_pure_function_of_seed_and_step(tiny_config):
    src = _source(tiny_config)
    a = _take(input_pipeline.train_iterator(src, tiny_config), 5)
    b = _take(input_pipeline.train_iterator(src, tiny_config), 5)
    resumed = _take(input_pipeline.train_iterator(src, tiny_config, start_step=3), 2)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["mask"], y["mask"])
    for x, y in zip(a[3:], resumed):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["mask"], y["mask"])
    assert a[0]["image"].shape == (8, 32, 32, 3) and a[0]["mask"].dtype == np.uint8
    assert not np.array_equal(a[0]["image"], a[1]["image"])
    tiny_config.seed = 1
    other = _take(input_pipeline.train_iterator(src, tiny_config), 1)
    assert not np.array_equal(a[0]["image"], other[0]["image"])


def test_resume_across_epoch_boundary(tiny_config):
    src = _source(tiny_config)
    tiny_config.train.batch_size = 40  # 96 examples: the third batch crosses into epoch 2
    full = _take(input_pipeline.train_iterator(src, tiny_config), 4)
    resumed = _take(input_pipeline.train_iterator(src, tiny_config, start_step=2), 2)
    np.testing.assert_array_equal(full[2]["mask"], resumed[0]["mask"])
    np.testing.assert_array_equal(full[3]["image"], resumed[1]["image"])


@pytest.mark.parametrize("processes", [1, 2, 3])
def test_eval_counts_every_pixel_once(tiny_config, processes):
    src = _source(tiny_config)
    tiny_config.eval.batch_size = 3 * processes  # does not divide 40
    raw = sum(
        int(np.sum(ex["mask"] != 255)) for ex in src.as_dataset("validation").as_numpy_iterator()
    )
    valid_pixels, examples, batches = 0, 0, set()
    for p in range(processes):
        stream = input_pipeline.eval_stream(
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
        list(ds.map(lambda ex: input_pipeline._check_labels(ex, 4)).as_numpy_iterator())


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
