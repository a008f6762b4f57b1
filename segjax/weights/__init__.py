"""Importers of published checkpoints.

:mod:`segjax.weights.torchvision` converts torchvision state dicts (ImageNet backbones and full
segmentation models) to segjax variables and back; ``python -m segjax.weights.import_torchvision``
writes them as a checkpoint for ``init_from``, ``segjax.evaluate`` and ``segjax.predict``.
See docs/WEIGHTS.md.
"""
