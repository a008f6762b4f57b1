"""Datasets: one explicit name → loader table.

``get_source(data_config)`` returns a :class:`segjax.data.base.Source` for ``data_config.name``.
Each loader takes the ``config.data`` ConfigDict and prepares the dataset if needed.
"""

from collections.abc import Callable

import ml_collections

from segjax.data import ade20k, cityscapes, coco, folder, instance_shapes, pets, shapes, voc
from segjax.data.base import DatasetInfo, Source
from segjax.errors import ConfigError

__all__ = ["DatasetInfo", "Source", "get_source", "names"]

_LOADERS: dict[str, Callable[[ml_collections.ConfigDict], Source]] = {
    "shapes": lambda cfg: shapes.load(cfg.data_dir or None, cfg.config_name),
    "voc": voc.load,
    "voc_aug": voc.load_aug,
    "folder": folder.load,
    "pets": pets.load,
    "cityscapes": cityscapes.load,
    "ade20k": ade20k.load,
    "coco": coco.load,
    "instance_shapes": instance_shapes.load,
}


def names() -> list[str]:
    """Every dataset name a config can use."""
    return sorted(_LOADERS)


def get_source(data_config: ml_collections.ConfigDict) -> Source:
    """The source named by ``data_config.name``, prepared and ready to read.

    Raises:
      ValueError: unknown dataset name (the message lists the known ones), or folder-only
        options (instance masks, ``folder_task``) on another dataset.
    """
    name = data_config.name
    if name not in _LOADERS:
        raise ConfigError(f"unknown dataset {name!r}; known datasets: {', '.join(names())}")
    if name != "folder":
        # Only folder datasets read instance masks; elsewhere these keys would do nothing.
        if data_config.get("mask_type", "class") != "class":
            raise ConfigError(
                f"config.data.mask_type={data_config.mask_type!r} needs config.data.name="
                f"'folder' (dataset {name!r} has class masks only)"
            )
        if data_config.get("folder_task", "semantic") != "semantic":
            raise ConfigError(
                f"config.data.folder_task={data_config.folder_task!r} needs config.data.name="
                f"'folder'; expected 'semantic' for dataset {name!r} (its task is its own)"
            )
        if data_config.get("weight_map") and data_config.weight_map.enabled:
            raise ConfigError(
                f"config.data.weight_map.enabled needs instance masks (config.data.name="
                f"'folder' with mask_type='instance'); dataset {name!r} has class masks only"
            )
    return _LOADERS[name](data_config)
