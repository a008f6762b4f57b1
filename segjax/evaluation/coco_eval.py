"""COCO evaluation of instance predictions: box and mask AP / AR computed by pycocotools.

    evaluator = CocoEvaluator.for_dataset(source.info)
    for each evaluated image (every image of the split once, on some process):
        evaluator.add_image(image_id, original_size, ground_truth, detections)
    evaluator = gather(evaluator)        # every process now holds every image
    metrics = evaluator.evaluate()       # {"bbox/AP": …, "segm/AP50": …, …}
    print(format_table(metrics)); write_json(path, metrics)

What is accumulated, per image (COCO-format records, so that they are small, serialise exactly
as JSON and merge across processes):

- ground truth at the original resolution: ``boxes`` (x1, y1, x2, y2) → COCO ``bbox``
  ``[x, y, w, h]``; ``labels`` → ``category_id``; ``masks`` ``[N, H, W]`` 0/1 → RLE
  ``segmentation``; ``is_crowd`` → ``iscrowd``; ``areas`` → ``area`` (else the mask's pixel
  count, else the box's area). Padded entries are dropped where ``instance_valid`` is False.
- detections in original pixels (:func:`segjax.models.maskrcnn.predict_images` or the padded
  model output with its ``valid``): boxes, scores, labels and masks, either the model's
  28×28 probabilities over each box, pasted here with
  :func:`segjax.models.maskrcnn.paste_masks`, or already pasted ``[D, H, W]`` probabilities
  (or 0/1); a pixel is in a mask when its probability is above :data:`MASK_THRESHOLD` (0.5, as
  torchvision's references).

Labels become the dataset's category ids through ``DatasetInfo.category_ids``
(``category_ids[label]``; identity when empty). The ground-truth COCO object is built in
memory with one image per added image and every category of the dataset; detections go
through ``COCO.loadRes``. As in torchvision's and detectron2's references, box results carry no
segmentation and mask results no box, so that pycocotools sizes a mask detection by its mask
(small / medium / large) rather than by its box. Integer image ids are kept (COCO's); other ids
(file names) are numbered 1…N in sorted order for pycocotools.

The 12 statistics of ``COCOeval.summarize`` are returned per IoU type under
:data:`STAT_NAMES`; pycocotools' -1 (undefined: no ground truth at all, or none in an area
range) is kept as -1 in the dict and the JSON and shown as ``n/a`` in the table.

Backends (``CocoEvaluator.backend``, from ``config.eval.coco_backend``): ``"pycocotools"``, the
reference and the default, or ``"faster_coco_eval"`` (``pip install -e ".[coco-fast]"``), the
drop-in ``faster_coco_eval.COCO`` / ``COCOeval_faster`` whose matching and accumulation run in
C++: the same records go through the same ``loadRes`` / ``evaluate`` / ``accumulate`` /
``summarize`` steps; only the ground-truth and results objects and the evaluation class
change (the masks are encoded by pycocotools either way). The matches, and so the AR
statistics, are identical; AP can differ in the last bits, because pycocotools' precision is
``tp / (tp + fp + np.spacing(1))`` and faster-coco-eval's ``tp / (tp + fp)``: up to 2.2e-16
relative per precision value, at most 1.1e-16 in a statistic on the test's random images with
crowds, every area range, duplicates, tied scores and the 100-detection cap
(``tests/test_coco_eval_backends.py`` allows 1e-15).
"""

import contextlib
import dataclasses
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from pycocotools import mask as coco_mask
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from segjax.data.image_io import DataError
from segjax.errors import ConfigError

IOU_TYPES = ("bbox", "segm")
BACKENDS = ("pycocotools", "faster_coco_eval")  # CocoEvaluator.backend, config.eval.coco_backend
# COCOeval.stats, in its order (maxDets 100 except AR1 / AR10).
STAT_NAMES = (
    *("AP", "AP50", "AP75", "APs", "APm", "APl"),
    *("AR1", "AR10", "AR100", "ARs", "ARm", "ARl"),
)
MASK_THRESHOLD = 0.5  # strictly above: torchvision's ``masks > 0.5``
MODEL_MASK_SIZE = 28  # Mask R-CNN's masks over each box (torchvision's)
# Masks pasted at full size at a time: 8 float32 masks of a 12-megapixel photo are 400 MB.
MASK_CHUNK = 8


# --------------------------------------------------------------------------- COCO records


def encode_masks(masks: np.ndarray) -> list[dict]:
    """COCO RLEs (``counts`` as bytes) of binary masks ``[N, H, W]``, a few at a time (pycocotools
    encodes a Fortran-ordered ``[H, W, N]`` uint8 copy)."""
    rles = []
    for start in range(0, len(masks), MASK_CHUNK):
        part = np.asarray(masks[start : start + MASK_CHUNK]) > 0
        rles.extend(coco_mask.encode(np.asfortranarray(part.transpose(1, 2, 0), np.uint8)))
    return rles


def _rle_json(rle: dict) -> dict:
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def coco_results(
    detections: Mapping,
    rles: Sequence[dict] | None,
    image_id: int | str,
    category_ids: Sequence[int] = (),
) -> list[dict]:
    """One image's detections as a COCO results list: ``image_id``, ``category_id`` (the label,
    or ``category_ids[label]``), ``bbox`` ``[x, y, w, h]``, ``score`` and, when ``rles`` are given
    (``pycocotools.mask.encode``'s, one per detection), ``segmentation`` with string counts."""
    boxes = np.asarray(detections["boxes"], np.float64).reshape(-1, 4)
    categories = _category_ids(detections["labels"], category_ids)
    results = []
    for k, (box, score, category) in enumerate(zip(boxes, detections["scores"], categories)):
        x1, y1, x2, y2 = (float(v) for v in box)
        result = {
            "image_id": image_id,
            "category_id": int(category),
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": float(score),
        }
        if rles is not None:
            result["segmentation"] = _rle_json(rles[k])
        results.append(result)
    return results


def _category_ids(labels, category_ids: Sequence[int]) -> np.ndarray:
    labels = np.asarray(labels, np.int64).reshape(-1)
    return np.asarray(category_ids, np.int64)[labels] if len(category_ids) else labels


def _ground_truth_records(gt: Mapping, category_ids: Sequence[int], with_masks: bool) -> list:
    """COCO annotations (without ids) of one image's checked ground truth (module docstring)."""
    boxes = np.asarray(gt["boxes"], np.float64).reshape(-1, 4)
    count = len(boxes)
    is_crowd = np.asarray(gt.get("is_crowd", np.zeros(count, bool)), bool).reshape(-1)
    rles = encode_masks(np.asarray(gt["masks"])) if with_masks else None
    if gt.get("areas") is not None:
        areas = np.asarray(gt["areas"], np.float64).reshape(-1)
    elif rles is not None:
        areas = coco_mask.area(rles).astype(np.float64) if rles else np.zeros(0)
    else:
        areas = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    categories = _category_ids(gt["labels"], category_ids)
    records = []
    for k in range(count):
        x1, y1, x2, y2 = (float(v) for v in boxes[k])
        record = {
            "category_id": int(categories[k]),
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "area": float(areas[k]),
            "iscrowd": int(is_crowd[k]),
        }
        if rles is not None:
            record["segmentation"] = _rle_json(rles[k])
        records.append(record)
    return records


def _valid_only(arrays: Mapping, valid_key: str) -> dict:
    """``arrays`` without its padded entries (where ``arrays[valid_key]`` is False), if it has
    that key; a copy of the mapping as NumPy arrays either way."""
    out = {k: np.asarray(v) for k, v in arrays.items() if v is not None}
    if valid_key in out:
        keep = out.pop(valid_key).astype(bool).reshape(-1)
        out = {k: v[keep] for k, v in out.items()}
    return out


# --------------------------------------------------------------------------- the evaluator


@dataclasses.dataclass
class CocoEvaluator:
    """Accumulates ground truth and detections per image, then evaluates with pycocotools.

    Attributes:
      num_classes: labels are 1 … num_classes − 1 (0, the background, is never an object).
      category_ids: label → the dataset's category id (``category_ids[label]``); ``()``: the
        labels are the ids.
      class_names: names of the labels (COCO ``categories`` names; optional).
      iou_types: evaluated IoU types, ``"bbox"`` and / or ``"segm"`` (masks needed).
      backend: what computes the statistics: one of :data:`BACKENDS` (module docstring).
      images: image id → ``{"height", "width", "ground_truth", "detections"}`` (COCO records).
    """

    num_classes: int
    category_ids: tuple[int, ...] = ()
    class_names: tuple[str, ...] = ()
    iou_types: tuple[str, ...] = IOU_TYPES
    backend: str = "pycocotools"
    images: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        self.category_ids = tuple(int(c) for c in self.category_ids)
        self.iou_types = tuple(self.iou_types)
        if self.num_classes < 2:
            raise ConfigError(f"CocoEvaluator: num_classes={self.num_classes}; need >= 2")
        if self.category_ids and len(self.category_ids) != self.num_classes:
            raise ConfigError(
                f"CocoEvaluator: {len(self.category_ids)} category_ids for "
                f"num_classes={self.num_classes}; expected one per label (0: background)"
            )
        if bad := [t for t in self.iou_types if t not in IOU_TYPES]:
            raise ConfigError(f"CocoEvaluator: iou type {bad[0]!r}; expected one of {IOU_TYPES}")
        # At construction, so that a missing package fails before the evaluation pass.
        check_backend(self.backend)

    @classmethod
    def for_dataset(
        cls, info, iou_types: Sequence[str] = IOU_TYPES, backend: str = "pycocotools"
    ) -> "CocoEvaluator":
        """The evaluator of an instance dataset (:class:`segjax.data.base.DatasetInfo`).

        Raises:
          ValueError: the dataset is not an instance dataset, or ``backend`` is unknown.
          ImportError: ``backend`` is ``"faster_coco_eval"`` and that package is missing.
        """
        if info.task != "instance":
            raise ConfigError(
                f"dataset {info.name!r} has task {info.task!r}; COCO evaluation needs 'instance'"
            )
        return cls(info.num_classes, info.category_ids, info.class_names, tuple(iou_types), backend)

    @property
    def with_masks(self) -> bool:
        """Whether masks are accumulated (mask AP is evaluated)."""
        return "segm" in self.iou_types

    def add_image(
        self,
        image_id: int | str | bytes,
        image_size: Sequence[int],
        ground_truth: Mapping,
        detections: Mapping | None = None,
        *,
        pasted: bool | None = None,
    ) -> None:
        """Adds one image: its ground truth and the model's detections (module docstring).

        Args:
          image_id: the image's id (COCO's integer id, or the file name).
          image_size: ``(height, width)`` of the original image.
          ground_truth: ``boxes [N, 4]``, ``labels [N]``, ``masks [N, H, W]`` (for mask AP),
            optional ``is_crowd [N]``, ``areas [N]`` and ``instance_valid [N]``.
          detections: ``boxes [D, 4]`` (original pixels), ``scores [D]``, ``labels [D]``,
            ``masks`` (for mask AP) and optional ``valid [D]``; ``None``: no detections.
          pasted: whether ``masks`` are full-size ``[D, H, W]`` (True) or the model's
            ``[D, M, M]`` over each box (False); ``None``: full-size exactly when their shape
            is ``image_size`` (an error for a 28×28 image: the model's masks are 28×28 too).

        Raises:
          DataError: the image was already added, or an array has the wrong shape or a label
            outside 1 … num_classes − 1 (the message names the image).
        """
        image_id = image_id.decode() if isinstance(image_id, bytes) else image_id
        if not isinstance(image_id, str):
            image_id = int(image_id)  # NumPy integers become JSON-serialisable ints
        if image_id in self.images:
            raise DataError(f"COCO evaluation: image {image_id!r} added twice")
        height, width = (int(s) for s in image_size)
        try:
            gt = self._ground_truth(ground_truth, (height, width))
            dt, rles = self._detections(detections, (height, width), pasted)
        except ValueError as e:
            raise DataError(f"COCO evaluation, image {image_id!r}: {e}") from None
        self.images[image_id] = {
            "height": height,
            "width": width,
            "ground_truth": gt,
            "detections": coco_results(dt, rles, image_id, self.category_ids),
        }

    def _check_labels(self, labels: np.ndarray, what: str) -> None:
        bad = labels[(labels < 1) | (labels >= self.num_classes)]
        if bad.size:
            raise ValueError(
                f"{what} label {int(bad[0])}; expected 1 … {self.num_classes - 1} "
                f"(num_classes={self.num_classes}, 0 is the background)"
            )

    def _checked(self, arrays: Mapping, valid_key: str, what: str) -> dict:
        """``arrays`` without padded entries, checked: ``boxes [N, 4]``, ``labels [N]`` in
        1 … num_classes − 1, ``masks`` present for mask AP."""
        out = _valid_only(arrays, valid_key)
        count = len(out["labels"])
        _check_shape(out["boxes"], (count, 4), f"{what} boxes")
        _check_shape(out["labels"], (count,), f"{what} labels")
        self._check_labels(out["labels"], what)
        if self.with_masks and "masks" not in out:
            raise ValueError(f"no {what} masks; mask AP ('segm') needs them")
        return out

    def _ground_truth(self, ground_truth: Mapping, image_hw) -> list[dict]:
        gt = self._checked(ground_truth, "instance_valid", "ground-truth")
        count = len(gt["labels"])
        if self.with_masks:
            _check_shape(gt["masks"], (count, *image_hw), "ground-truth masks")
        for key in ("is_crowd", "areas"):
            if key in gt:
                _check_shape(gt[key], (count,), f"ground-truth {key}")
        return _ground_truth_records(gt, self.category_ids, self.with_masks)

    def _detections(self, detections: Mapping | None, image_hw, pasted: bool | None):
        """``(valid detections as arrays, RLEs of their binary masks or None without mask AP)``."""
        if detections is None:
            detections = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": []}
            detections |= {"masks": np.zeros((0, *image_hw))} if self.with_masks else {}
        dt = self._checked(detections, "valid", "detection")
        _check_shape(dt["scores"], (len(dt["labels"]),), "detection scores")
        if self.with_masks:
            return dt, _detection_rles(dt["masks"], dt["boxes"], image_hw, pasted)
        return dt, None

    def merge(self, others: Iterable["CocoEvaluator"]) -> "CocoEvaluator":
        """A new evaluator with this one's images and those of ``others`` (the same dataset).

        Raises:
          ValueError: the evaluators are of different datasets or settings.
          DataError: an image is in two of them (each must be evaluated exactly once).
        """
        merged = dataclasses.replace(self, images=dict(self.images))
        for other in others:
            if _settings(other) != _settings(self):
                raise ValueError(
                    f"CocoEvaluator.merge: settings differ: {_settings(other)} vs {_settings(self)}"
                )
            if twice := sorted(set(other.images) & set(merged.images), key=str):
                raise DataError(
                    f"COCO evaluation: image {twice[0]!r} evaluated by two processes "
                    f"({len(twice)} such images); each image must be evaluated once"
                )
            merged.images.update(other.images)
        return merged

    def to_bytes(self) -> bytes:
        """The accumulated state as JSON bytes (floats round-trip exactly)."""
        state = {**_settings(self), "images": [[k, v] for k, v in self.images.items()]}
        return json.dumps(state, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "CocoEvaluator":
        """The evaluator :meth:`to_bytes` serialised."""
        state = json.loads(data)
        return cls(
            num_classes=state["num_classes"],
            category_ids=tuple(state["category_ids"]),
            class_names=tuple(state["class_names"]),
            iou_types=tuple(state["iou_types"]),
            backend=state["backend"],
            images=dict(state["images"]),  # [id, record] pairs keep int ids int
        )

    def evaluate(self) -> dict[str, float]:
        """The 12 COCO statistics of each IoU type, ``{"bbox/AP": …, "segm/ARl": …}`` (in
        [0, 1]; -1 where pycocotools finds them undefined), over every added image, computed by
        :attr:`backend`."""
        coco_ids = _coco_image_ids(self.images)
        gt = self._ground_truth_coco(coco_ids)
        metrics = {}
        for iou_type in self.iou_types:
            results = self._results(coco_ids, iou_type)
            stats = _run_cocoeval(gt, results, iou_type, self.backend)
            metrics |= {f"{iou_type}/{name}": float(v) for name, v in zip(STAT_NAMES, stats)}
        return metrics

    def categories(self) -> list[dict]:
        """The COCO ``categories`` of the dataset: every label 1 … num_classes − 1."""
        out = []
        for label in range(1, self.num_classes):
            name = self.class_names[label] if self.class_names else f"class {label}"
            category = self.category_ids[label] if self.category_ids else label
            out.append({"id": category, "name": name})
        return out

    def _ground_truth_coco(self, coco_ids: dict) -> COCO:
        """The ground truth as an in-memory COCO object (annotation ids 1…: pycocotools
        treats a matched id of 0 as unmatched)."""
        images, annotations = [], []
        for image_id, record in self.images.items():
            coco_id = coco_ids[image_id]
            images.append({"id": coco_id, "height": record["height"], "width": record["width"]})
            for ann in record["ground_truth"]:
                annotations.append({**ann, "id": len(annotations) + 1, "image_id": coco_id})
        dataset = {"images": images, "annotations": annotations, "categories": self.categories()}
        return coco_from_dataset(dataset, self.backend)

    def _results(self, coco_ids: dict, iou_type: str) -> list[dict]:
        dropped = "segmentation" if iou_type == "bbox" else "bbox"
        return [
            {**{k: v for k, v in det.items() if k != dropped}, "image_id": coco_ids[image_id]}
            for image_id, record in self.images.items()
            for det in record["detections"]
        ]

    def results(self) -> list[dict]:
        """Every detection as a COCO results list, with the images' own ids (a results file)."""
        return [det for record in self.images.values() for det in record["detections"]]


def _settings(evaluator: CocoEvaluator) -> dict:
    return {
        "num_classes": evaluator.num_classes,
        "category_ids": list(evaluator.category_ids),
        "class_names": list(evaluator.class_names),
        "iou_types": list(evaluator.iou_types),
        "backend": evaluator.backend,
    }


def _check_shape(array: np.ndarray, expected: tuple[int, ...], what: str) -> None:
    if np.shape(array) != tuple(expected):
        raise ValueError(f"{what} of shape {np.shape(array)}; expected {tuple(expected)}")


def _detection_rles(masks: np.ndarray, boxes: np.ndarray, image_hw, pasted: bool | None):
    """RLEs of detection masks: full-size ones thresholded, the model's ``[D, M, M]`` pasted
    :data:`MASK_CHUNK` at a time first."""
    masks = np.asarray(masks)
    full = masks.shape[1:] == tuple(image_hw)
    if pasted is None:
        if full and masks.shape[1:] == (MODEL_MASK_SIZE, MODEL_MASK_SIZE):
            raise ValueError(
                f"detection masks {masks.shape[1:]} are both the image's size and the model's; "
                "say which with pasted=True / False"
            )
        pasted = full
    if pasted:
        _check_shape(masks, (len(boxes), *image_hw), "pasted detection masks")
        binary = masks if masks.dtype == bool else masks > MASK_THRESHOLD
        return encode_masks(binary)
    if masks.ndim != 3 or masks.shape[0] != len(boxes) or masks.shape[1] != masks.shape[2]:
        raise ValueError(
            f"detection masks of shape {masks.shape}; expected the image size "
            f"{tuple(image_hw)} or the model's square [D, M, M] with D={len(boxes)}"
        )
    from segjax.models.maskrcnn import paste_masks  # JAX: only needed to paste

    rles = []
    for start in range(0, len(boxes), MASK_CHUNK):
        part = slice(start, start + MASK_CHUNK)
        probabilities = paste_masks(masks[part], boxes[part], image_hw)
        rles.extend(encode_masks(probabilities > MASK_THRESHOLD))
    return rles


def _coco_image_ids(images: Mapping) -> dict:
    """image id → pycocotools' id: integers kept, otherwise 1…N in sorted order."""
    if all(isinstance(k, int) for k in images):
        return {k: k for k in images}
    return {k: i + 1 for i, k in enumerate(sorted(images, key=str))}


def check_backend(backend: str) -> str:
    """``backend`` if it is one of :data:`BACKENDS` and importable.

    Raises:
      ValueError: an unknown backend.
      ImportError: ``"faster_coco_eval"`` without the faster-coco-eval package.
    """
    if backend not in BACKENDS:
        raise ConfigError(
            f"COCO evaluation backend (config.eval.coco_backend) {backend!r}; "
            f"expected one of {', '.join(map(repr, BACKENDS))}"
        )
    if backend == "faster_coco_eval":
        try:
            import faster_coco_eval  # noqa: F401
        except ImportError:
            raise ImportError(
                "config.eval.coco_backend='faster_coco_eval' needs the faster-coco-eval package: "
                'pip install -e ".[coco-fast]"'
            ) from None
    return backend


def _backend_classes(backend: str) -> tuple[type, type]:
    """``(COCO, COCOeval)`` of a checked backend (:func:`check_backend`)."""
    if backend == "faster_coco_eval":
        import faster_coco_eval  # optional: only imported when chosen

        return faster_coco_eval.COCO, faster_coco_eval.COCOeval_faster
    return COCO, COCOeval


def coco_from_dataset(dataset: dict, backend: str = "pycocotools"):
    """A ``COCO`` of ``backend`` (pycocotools' by default) of an in-memory COCO-format dict
    (without its prints)."""
    coco = _backend_classes(backend)[0]()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _quiet(*args, **kwargs) -> None:
    """faster-coco-eval's ``print_function``: its progress and summary lines go to logging
    (INFO) by default, which training logs would show on every evaluation."""


def _run_cocoeval(gt, results: list[dict], iou_type: str, backend: str) -> np.ndarray:
    """``COCOeval.stats`` (12 values) of ``results`` against ``gt`` (a ``COCO`` of
    ``backend``); the backend's prints are swallowed. pycocotools' ``loadRes`` fails on an
    empty list, so no results is an empty results set."""
    evaluation_class = _backend_classes(backend)[1]
    quiet = {"print_function": _quiet} if backend == "faster_coco_eval" else {}
    with contextlib.redirect_stdout(io.StringIO()):
        if results:
            dt = gt.loadRes([dict(r) for r in results])  # loadRes writes ids into its input
        else:
            dt = coco_from_dataset(
                {"images": gt.dataset["images"], "categories": gt.dataset["categories"],
                 "annotations": []},
                backend,
            )  # fmt: skip
        evaluation = evaluation_class(gt, dt, iou_type, **quiet)
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return np.asarray(evaluation.stats, np.float64)


# --------------------------------------------------------------------------- processes, output


def gather(evaluator: CocoEvaluator) -> CocoEvaluator:
    """The evaluator of every process's images, on every process.

    Each process serialises its accumulation (:meth:`CocoEvaluator.to_bytes`); the byte
    strings, zero-padded to the longest, are gathered with
    ``jax.experimental.multihost_utils.process_allgather`` with their lengths, then merged in
    process order (:meth:`CocoEvaluator.merge`: an image seen by two processes is an error).
    With one process the evaluator is returned as it is.
    """
    import jax
    from jax.experimental import multihost_utils

    if jax.process_count() == 1:
        return evaluator
    payload = np.frombuffer(evaluator.to_bytes(), np.uint8)
    lengths = multihost_utils.process_allgather(np.asarray([payload.size], np.int32))
    lengths = np.asarray(lengths).reshape(-1)
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[: payload.size] = payload
    gathered = np.asarray(multihost_utils.process_allgather(padded))
    return merge_serialized([gathered[p, :n].tobytes() for p, n in enumerate(lengths)])


def merge_serialized(parts: Sequence[bytes]) -> CocoEvaluator:
    """One evaluator from the :meth:`CocoEvaluator.to_bytes` of each process, in order."""
    evaluators = [CocoEvaluator.from_bytes(p) for p in parts]
    return evaluators[0].merge(evaluators[1:])


def _percent(value: float) -> str:
    return "   n/a" if value < 0 or math.isnan(value) else f"{100 * value:6.2f}"


def format_table(metrics: Mapping[str, float]) -> str:
    """The statistics of :meth:`CocoEvaluator.evaluate` as a text table in %, one row per IoU
    type (``n/a``: pycocotools' -1, undefined)."""
    iou_types = [t for t in IOU_TYPES if f"{t}/AP" in metrics]
    lines = ["      " + " ".join(f"{name:>6}" for name in STAT_NAMES)]
    for iou_type in iou_types:
        values = (_percent(metrics[f"{iou_type}/{name}"]) for name in STAT_NAMES)
        lines.append(f"{iou_type:<5} " + " ".join(values))
    return "\n".join(lines)


def write_json(path: str, metrics: Mapping[str, float], **extra) -> None:
    """Writes ``metrics`` (and ``extra`` entries, e.g. ``step``, ``images``) as one JSON object."""
    with open(path, "w") as f:
        json.dump({**extra, **metrics}, f, indent=1, sort_keys=True)
        f.write("\n")
