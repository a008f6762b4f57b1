"""Evaluation: what turns model outputs into numbers and pictures.

- :mod:`segjax.evaluation.metrics`: confusion matrix, mIoU and friends, object F1 / AJI;
- :mod:`segjax.evaluation.coco_eval`: COCO box and mask AP (pycocotools or faster-coco-eval);
- :mod:`segjax.evaluation.inference`: whole-image, sliding-window, overlap-tile, multi-scale and
  flipped prediction;
- :mod:`segjax.evaluation.crf`: dense CRF post-processing;
- :mod:`segjax.evaluation.visualize`: instance overlays.
"""
