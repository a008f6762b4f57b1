"""Decoding and validation of image / mask files, shared by the dataset builders.

Every builder prepares its data through these helpers, so a bad file fails while the dataset
is being prepared, with an error that names the file, the value and what was expected.

Images become ``uint8 [H, W, 3]`` RGB:

- 8-bit RGB is kept as is; ``L`` (grayscale) and palette images are expanded to RGB;
- ``RGBA`` / ``LA`` drop the alpha channel (no compositing); ``CMYK`` and ``YCbCr`` are converted
  by Pillow;
- images with more than 8 bits per sample (16-bit or 32-bit integer grayscale, float TIFF) are
  scaled linearly to ``[0, 255]``: by default with the image's own range (its minimum maps to 0
  and its maximum to 255; a constant image becomes 0), or with a fixed ``value_range=(low, high)``
  (values outside it are clipped), which keeps intensities comparable across images;
- 16-bit colour PNGs keep the high byte of each sample (Pillow's and TensorFlow's decoding).

Masks become ``uint8 [H, W]`` class ids: single-channel 8- or 16-bit PNG/TIFF (values must be
at most 255), palette PNG (the palette *index* is the class id, as in PASCAL VOC), or an RGB
file whose three channels are equal.

Instance masks (:func:`decode_instance_mask`) become ``uint16 [H, W]`` instance ids (0 =
background): single-channel 8-, 16- or 32-bit integer PNG/TIFF, or a float TIFF of whole
numbers; ids must fit 0..65535. Palette, colour and 1-bit files are refused: a colour or palette
index is not an id, and a 1-bit file is a class mask.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image

from segjax.errors import DataError
from segjax.evaluation.metrics import IGNORE_INDEX
from segjax.runtime.lazy_imports import tf

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
MASK_EXTENSIONS = (".png", ".tif", ".tiff", ".bmp", ".pgm")

_HIGH_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")

INSTANCE_ID_MAX = 65535  # instance ids are stored as uint16
_TIFF_SAMPLE_FORMAT = 339  # TIFF tag: 1 = unsigned integer (the default), 2 = signed, 3 = float


def _open(data: bytes, path: str, what: str) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data))
        img.load()  # forces a full decode, so truncated files fail here
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot read {what} ({type(e).__name__}: {e})") from e
    return img


def _scale_to_uint8(
    values: np.ndarray, path: str, value_range: Sequence[float] | None
) -> np.ndarray:
    values = values.astype(np.float64)
    if value_range:
        low, high = float(value_range[0]), float(value_range[1])
        if not high > low:
            raise DataError(f"{path}: value_range {tuple(value_range)} must have low < high")
    else:
        low, high = float(values.min()), float(values.max())
        if high == low:
            return np.zeros(values.shape, np.uint8)
    scaled = (values - low) * (255.0 / (high - low))
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def decode_image(
    data: bytes, *, path: str, value_range: Sequence[float] | None = None
) -> np.ndarray:
    """Decodes image file bytes to ``uint8 [H, W, 3]`` RGB (see the module docstring).

    Args:
      data: the encoded file.
      path: file name used in error messages.
      value_range: ``(low, high)`` mapped to ``[0, 255]`` for images with more than 8 bits per
        sample; ``None`` or empty uses each image's own minimum and maximum.

    Raises:
      DataError: the file cannot be decoded or has an unsupported pixel format.
    """
    img = _open(data, path, "image")
    mode = img.mode
    if mode in _HIGH_DEPTH_MODES:
        gray = _scale_to_uint8(np.asarray(img), path, value_range)
        return np.repeat(gray[..., None], 3, axis=-1)
    if mode in ("RGBA", "RGBa", "RGBX"):
        img = img.convert("RGBA")
        return np.ascontiguousarray(np.asarray(img)[..., :3])
    if mode in ("LA", "La"):
        gray = np.asarray(img.convert("LA"))[..., 0]
        return np.repeat(gray[..., None], 3, axis=-1)
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        return np.ascontiguousarray(np.asarray(img)[..., :3])
    if mode in ("RGB", "L", "1", "P", "CMYK", "YCbCr", "LAB", "HSV"):
        return np.asarray(img.convert("RGB"))
    raise DataError(
        f"{path}: unsupported image mode {mode!r}; expected RGB, RGBA, CMYK, palette, or "
        "8/16-bit grayscale"
    )


def decode_mask(data: bytes, *, path: str) -> np.ndarray:
    """Decodes a mask file to ``uint8 [H, W]`` class ids.

    Raises:
      DataError: unreadable file, a colour (non-gray RGB) mask, or a value above 255.
    """
    img = _open(data, path, "mask")
    mode = img.mode
    if mode == "P":
        return np.asarray(img).astype(np.uint8)  # palette indices are the class ids
    if mode in ("RGB", "RGBA"):
        rgb = np.asarray(img)[..., :3]
        gray = rgb[..., 0]
        if not (np.array_equal(gray, rgb[..., 1]) and np.array_equal(gray, rgb[..., 2])):
            raise DataError(
                f"{path}: colour mask (mode {mode}); expected a single-channel or palette image "
                "of class ids"
            )
        return np.ascontiguousarray(rgb[..., 0])
    if mode in ("L", "LA"):
        return np.asarray(img)[..., 0] if mode == "LA" else np.asarray(img)
    if mode == "1":
        return np.asarray(img).astype(np.uint8)
    if mode in _HIGH_DEPTH_MODES:
        values = np.asarray(img)
        if mode == "F" and not np.array_equal(values, np.round(values)):
            raise DataError(f"{path}: mask holds non-integer values; expected class ids")
        low, high = values.min(), values.max()
        if low < 0 or high > 255:
            bad = high if high > 255 else low
            raise DataError(
                f"{path}: mask value {int(bad)} does not fit a class id; expected 0..255 "
                f"(classes, or {IGNORE_INDEX} for ignore)"
            )
        return values.astype(np.uint8)
    raise DataError(f"{path}: unsupported mask mode {mode!r}; expected single-channel or palette")


def _unsigned_32bit_tiff(img: Image.Image) -> bool:
    """Whether ``img`` is a TIFF of unsigned 32-bit samples, which Pillow reads as int32 (so
    ids of 2**31 and more would look negative)."""
    tags = getattr(img, "tag_v2", None)
    if img.format != "TIFF" or tags is None:
        return False
    bits = tuple(np.atleast_1d(tags.get(258, (1,))))
    sample_format = tuple(np.atleast_1d(tags.get(_TIFF_SAMPLE_FORMAT, (1,))))
    return bits[0] == 32 and sample_format[0] == 1


def decode_instance_mask(data: bytes, *, path: str) -> np.ndarray:
    """Decodes an instance-mask file to ``uint16 [H, W]`` instance ids (0 = background).

    Accepts single-channel 8-, 16- or 32-bit integer PNG/TIFF and float TIFFs of whole numbers
    (see the module docstring).

    Raises:
      DataError: unreadable file; a palette, colour, grey+alpha or 1-bit file (ambiguous as
        instance ids); non-integer values; an id below 0 or above :data:`INSTANCE_ID_MAX`.
    """
    img = _open(data, path, "instance mask")
    mode = img.mode
    if mode == "L":
        return np.asarray(img).astype(np.uint16)
    if mode not in _HIGH_DEPTH_MODES:
        raise DataError(
            f"{path}: instance mask of mode {mode!r}; expected a single-channel 8/16/32-bit PNG "
            "or TIFF of instance ids (palette indices, colours and 1-bit masks are not ids)"
        )
    values = np.asarray(img)
    if mode == "I" and _unsigned_32bit_tiff(img):
        values = values.view(np.uint32)
    if mode == "F" and not (np.isfinite(values).all() and np.array_equal(values, np.round(values))):
        raise DataError(f"{path}: instance mask holds non-integer values; expected instance ids")
    if values.size and values.min() < 0:
        raise DataError(
            f"{path}: instance id {int(values.min())} is negative; expected 0 (background) or "
            "a positive id"
        )
    if values.size and values.max() > INSTANCE_ID_MAX:
        raise DataError(
            f"{path}: instance id {int(values.max())} exceeds {INSTANCE_ID_MAX} (instance ids "
            "are stored as uint16)"
        )
    return values.astype(np.uint16)


def check_example(
    image: np.ndarray,
    mask: np.ndarray,
    *,
    num_classes: int,
    image_path: str,
    mask_path: str,
) -> None:
    """Checks that ``mask`` matches ``image`` in size and holds only valid labels.

    Raises:
      DataError: sizes differ, or a label is outside ``[0, num_classes)`` and not 255.
    """
    if image.shape[:2] != mask.shape[:2]:
        raise DataError(
            f"{mask_path}: mask size {mask.shape[1]}x{mask.shape[0]} (WxH) differs from image "
            f"{image_path} size {image.shape[1]}x{image.shape[0]}"
        )
    labels = np.unique(mask)
    bad = labels[(labels >= num_classes) & (labels != IGNORE_INDEX)]
    if bad.size:
        raise DataError(
            f"{mask_path}: label {int(bad[0])} outside [0, {num_classes}) and not {IGNORE_INDEX} "
            f"(ignore); labels in file: {[int(v) for v in labels]}"
        )


def read_bytes(path: str) -> bytes:
    """The bytes of ``path`` (any path ``tf.io.gfile`` can open)."""
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read()


def image_feature_value(data: bytes, image: np.ndarray) -> bytes | np.ndarray:
    """What to store for an image in a TFDS ``Image`` feature.

    The original bytes when they are an 8-bit RGB JPEG or PNG (no re-encoding, no quality loss),
    otherwise the decoded RGB array (stored losslessly as PNG).
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format in ("JPEG", "PNG") and img.mode == "RGB":
                return data
    except (OSError, ValueError, SyntaxError):
        pass
    return image


@dataclasses.dataclass
class SkipCounter:
    """Counts (and logs) examples left out with ``skip_bad_examples``."""

    enabled: bool
    skipped: list[str] = dataclasses.field(default_factory=list)

    def handle(self, error: DataError) -> None:
        """Re-raises ``error`` unless skipping is enabled; then counts and logs it."""
        if not self.enabled:
            raise error
        self.skipped.append(str(error))
        logging.warning("skip_bad_examples: skipping example: %s", error)

    def report(self, where: str) -> None:
        """Logs how many examples were skipped in ``where``."""
        if self.skipped:
            logging.warning(
                "skip_bad_examples: skipped %d bad example(s) in %s", len(self.skipped), where
            )


def generate_checked(
    items: Iterable[Any],
    make: Callable[[Any], tuple[str, dict]],
    counter: SkipCounter,
    where: str,
) -> Iterator[tuple[str, dict]]:
    """Yields ``make(item)`` for each item; bad items raise or are skipped per ``counter``.

    Raises:
      DataError: an item is bad and skipping is off, or every item was skipped.
    """
    produced = 0
    for item in items:
        try:
            example = make(item)
        except DataError as e:
            counter.handle(e)
            continue
        produced += 1
        yield example
    counter.report(where)
    if not produced:
        raise DataError(
            f"{where}: split is empty after preparation; all {len(counter.skipped)} example(s) "
            "were bad and skipped"
        )


def check_splits(name: str, splits: dict[str, int], where: str) -> None:
    """Raises ``DataError`` if a split of a prepared dataset holds no example."""
    for split, count in splits.items():
        if count == 0:
            raise DataError(
                f"dataset {name!r}: split {split!r} is empty after preparation ({where}); "
                "every example was missing or skipped"
            )


def remap_table(mapping: dict[int, int], default: int = IGNORE_INDEX) -> np.ndarray:
    """A ``uint8 [256]`` lookup table: raw label value → class id (``default`` if unmapped)."""
    table = np.full(256, default, np.uint8)
    for raw, cls in mapping.items():
        table[raw] = cls
    return table


def find_files(directory: str, extensions: Sequence[str]) -> list[str]:
    """Files under ``directory`` (recursively) with one of ``extensions``, as sorted relative
    paths."""
    found = []
    for dirpath, _, filenames in os.walk(directory):
        for fn in filenames:
            if fn.lower().endswith(tuple(extensions)) and not fn.startswith("."):
                found.append(os.path.relpath(os.path.join(dirpath, fn), directory))
    return sorted(found)
