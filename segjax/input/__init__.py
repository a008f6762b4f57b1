"""Input: the tf.data streams a task trains and evaluates on, and joint image/label augmentation.

- :mod:`segjax.input.pipeline`: the per-process training stream and the exactly-counted
  evaluation streams (semantic and instance);
- :mod:`segjax.input.augment`: joint image/mask augmentation (scale, crop, flip, colour,
  elastic deformation, normalisation);
- :mod:`segjax.input.augment_instances`: the same for images with instance masks and boxes.

The datasets themselves (TFDS builders) live in :mod:`segjax.data`.
"""
