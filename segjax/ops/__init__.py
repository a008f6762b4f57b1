"""Model ops any backend runs, called directly by the models.

- :mod:`segjax.ops.boxes`: box coding, IoU, clipping (Mask R-CNN);
- :mod:`segjax.ops.nms`: batched greedy non-maximum suppression in static shapes;
- :mod:`segjax.ops.roi_align`: RoIAlign and pasting masks into boxes;
- :mod:`segjax.ops.resample`: the resampling the models use (FCN's transposed-conv upsampling as
  a sub-pixel conv, U-Net's 2×2 up-conv and max pool), written in the forms every backend runs
  fast.

Backend rewrites of ops the models write plainly (convolutions as GEMMs on XLA:CPU …) are not
here: they live in :mod:`segjax.xla_cpu` and are applied by :func:`segjax.runtime.jit`.
"""
