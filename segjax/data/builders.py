"""What the segjax TFDS builders share.

- :func:`segmentation_info`: the stored features (``image``, one-channel ``segmentation_mask``
  of class ids, ``file_name``), read back by :func:`segjax.data.base.segmentation_example`;
- :func:`instance_features`: the extra features of instance-mask datasets (``instances``,
  ``weights``), read back by :func:`segjax.data.base.instance_example`;
- :func:`file_example`: one stored example from an image file and its decoded mask, checked;
- :class:`ArchiveBuilder` and :class:`ManualArchive`: datasets read from the manual directory,
  as an extracted folder or as the archive the user downloaded, or downloaded by the builder;
- :func:`corrupt_archive_error`: a truncated or corrupt archive stops with one line that names
  it and says to download it again, not TFDS's ``ExtractError`` traceback;
- :func:`prepare`: prepare a builder on first use and refuse empty splits.
"""

import dataclasses
import os
import sys
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds

# TFDS raises it for an archive it cannot extract but does not export it under tfds.download.
from tensorflow_datasets.core.download.extractor import ExtractError

from segjax.data import image_io
from segjax.data.image_io import DataError


def segmentation_info(
    builder: tfds.core.DatasetBuilder,
    description: str,
    *,
    homepage: str | None = None,
    image_shape: tuple[int | None, int | None, int] = (None, None, 3),
    extra_features: Mapping[str, tfds.features.FeatureConnector] | None = None,
) -> tfds.core.DatasetInfo:
    """The ``DatasetInfo`` of a segjax builder: RGB ``image`` of ``image_shape``,
    ``segmentation_mask`` of the same size with one channel, ``file_name``, and
    ``extra_features`` (e.g. :func:`instance_features`)."""
    return builder.dataset_info_from_configs(
        description=description,
        features=tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(shape=image_shape),
                "segmentation_mask": tfds.features.Image(shape=(*image_shape[:2], 1)),
                "file_name": tfds.features.Text(),
                **(extra_features or {}),
            }
        ),
        supervised_keys=("image", "segmentation_mask"),
        homepage=homepage,
    )


def instance_features(*, weights: bool) -> dict[str, tfds.features.FeatureConnector]:
    """The features instance-mask datasets store besides :func:`segmentation_info`'s:
    ``instances`` (uint16 ``[H, W]`` ids) and, with ``weights``, ``weights`` (float32
    ``[H, W]``).

    Both are zlib-compressed tensors. Measured on a 512x512 mask of 392 touching blobs
    (:mod:`segjax.data.blobs`): instance ids 28 KB and 4-6 ms to decode, against 37 KB and 10 ms
    as a 16-bit PNG ``Image``; the weight map 112 KB as float32 against 71 KB as float16, which
    would change it by up to 5e-4 relative, so it stays float32 (exact, and faster to decode).
    """
    features = {
        "instances": tfds.features.Tensor(shape=(None, None), dtype=np.uint16, encoding="zlib")
    }
    if weights:
        features["weights"] = tfds.features.Tensor(
            shape=(None, None), dtype=np.float32, encoding="zlib"
        )
    return features


def file_example(
    key: str,
    image_path: str,
    mask,
    mask_path: str,
    *,
    num_classes: int,
    value_range: Sequence[float] = (),
    extra: Mapping[str, np.ndarray] | None = None,
) -> tuple[str, dict]:
    """``(key, example)`` for :func:`segmentation_info`'s features from the image file at
    ``image_path`` and its decoded ``mask`` (uint8 ``[H, W]`` class ids, read from
    ``mask_path``), plus the ``extra`` features (e.g. :func:`instance_features`' values).

    Raises:
      DataError: the image cannot be read, its size differs from the mask's, or a label is
        outside ``[0, num_classes)`` and not 255.
    """
    data = image_io.read_bytes(image_path)
    image = image_io.decode_image(data, path=image_path, value_range=value_range)
    image_io.check_example(
        image, mask, num_classes=num_classes, image_path=image_path, mask_path=mask_path
    )
    return key, {
        "image": image_io.image_feature_value(data, image),
        "segmentation_mask": mask[..., None],
        "file_name": key,
        **(extra or {}),
    }


def corrupt_archive_error(path: str, error: BaseException, download_hint: str) -> DataError:
    """The one-line error for an archive that cannot be extracted.

    Args:
      path: the archive.
      error: what extraction raised (TFDS's ``ExtractError``; its cause says what failed).
      download_hint: where to download it again, e.g. ``"~2 GB, from http://…"``.
    """
    cause = error.__cause__ or error
    text = " ".join(str(cause).split()) or "no message"
    on_disk = f"; the file has {os.path.getsize(path):,} bytes" if os.path.isfile(path) else ""
    return DataError(
        f"{path}: archive is truncated or corrupt ({type(cause).__name__}: {text}{on_disk}); "
        f"delete it and download it again ({download_hint})"
    )


def extract(dl_manager, path: str, download_hint: str) -> str:
    """Extracts the archive at ``path`` (once; TFDS keeps the result) and returns the folder.

    Raises:
      DataError: the archive is truncated or corrupt (see :func:`corrupt_archive_error`).
    """
    try:
        return os.fspath(dl_manager.extract(path))
    except ExtractError as e:
        raise corrupt_archive_error(path, e, download_hint) from e


@dataclasses.dataclass(frozen=True)
class ManualArchive:
    """An archive a dataset is read from.

    Attributes:
      filename: its name in the manual directory, e.g. ``"VOCtrainval_11-May-2012.tar"``.
      url: where the builder downloads it when downloading is allowed.
      size: its approximate size, for messages (e.g. ``"~2 GB"``).
      what: what it holds, for messages (e.g. ``"VOC2012"``).
      subdirs: where its content lives once extracted, relative to the extraction root (also
        looked for, already extracted, in the manual directory).
      is_root: whether a folder is that content.
    """

    filename: str
    url: str
    size: str
    what: str
    subdirs: tuple[str, ...]
    is_root: Callable[[str], bool]

    def content_in(self, folder: str) -> str | None:
        """The first of ``subdirs`` under ``folder`` that holds the content, or None."""
        for sub in self.subdirs:
            if self.is_root(os.path.join(folder, sub)):
                return os.path.join(folder, sub)
        return None


class ArchiveBuilder(tfds.core.GeneratorBasedBuilder):
    """A builder whose files come from :class:`ManualArchive` s (abstract: TFDS does not
    register it as a dataset).

    Subclasses set ``HOMEPAGE`` and ``MANUAL_DOWNLOAD_INSTRUCTIONS`` and find their files with
    :meth:`locate`; their module docstring is the dataset's description.
    """

    name = "segjax_archive_builder"
    HOMEPAGE: str | None = None

    def __init__(self, *, download: bool = False, skip_bad_examples: bool = False, **kwargs):
        self._download = download
        self._skip_bad_examples = skip_bad_examples
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        description = sys.modules[type(self).__module__].__doc__ or ""
        return segmentation_info(self, description, homepage=self.HOMEPAGE)

    def locate(self, dl_manager, archive: ManualArchive) -> str:
        """The folder of ``archive``'s content: extracted in the manual directory, extracted
        from the archive there, or downloaded (when allowed).

        Raises:
          DataError: not found (with the manual-download instructions), the archive does not
            hold the content, or it is truncated or corrupt.
        """
        try:
            manual = os.fspath(dl_manager.manual_dir)
        except AssertionError:  # TFDS's way of saying no manual directory exists
            manual = None
        hint = f"{archive.size}, from {archive.url}"
        if manual:
            found = archive.content_in(manual)  # already extracted: no need to extract again
            path = os.path.join(manual, archive.filename)
            if found is None and os.path.isfile(path):
                found = archive.content_in(extract(dl_manager, path, hint))
                if found is None:
                    raise DataError(
                        f"{path}: archive does not hold {archive.what} ({archive.subdirs[0]}/)"
                    )
            if found is not None:
                return found
        tried = f"looked in {manual!r}" if manual else "no manual directory exists"
        if not self._download:
            raise DataError(
                f"{archive.what} not found ({tried}).\n" + self.MANUAL_DOWNLOAD_INSTRUCTIONS
            )
        return self._download_content(dl_manager, archive, tried)

    def _download_content(self, dl_manager, archive: ManualArchive, tried: str) -> str:
        """Downloads and extracts ``archive``; the folder of its content."""
        try:
            path = os.fspath(dl_manager.download(archive.url))
        except Exception as e:  # any network failure ends in the same advice
            raise DataError(
                f"{archive.what} not found ({tried}) and downloading {archive.url} failed "
                f"({e}).\n" + self.MANUAL_DOWNLOAD_INSTRUCTIONS
            ) from e
        found = archive.content_in(extract(dl_manager, path, f"{archive.size}, from {archive.url}"))
        if found is None:
            raise DataError(f"{archive.url}: downloaded archive does not hold {archive.what}")
        return found


def prepare(builder: tfds.core.DatasetBuilder, *, manual_dir: str = "", where: str = "") -> None:
    """Prepares ``builder`` on first use, reading manual files from ``manual_dir`` (``""``:
    TFDS's default, ``<data_dir>/downloads/manual``).

    Raises:
      DataError: a split is empty after preparation (``where`` names the dataset in the
        message; default: the builder's name), or a builder's own error.
    """
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir or None)
    )
    splits = {k: v.num_examples for k, v in builder.info.splits.items()}
    image_io.check_splits(where or builder.name, splits, os.fspath(builder.data_dir))
