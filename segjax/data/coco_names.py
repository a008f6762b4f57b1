"""COCO category names and ids, in the layout of torchvision's COCO detection models.

torchvision's Mask R-CNN / Faster R-CNN heads have 91 outputs: index 0 is the background and
index k is COCO category id k. COCO 2014/2017 define 80 categories whose ids run from 1 to 90
with ten gaps (ids of the original 91-category list that were never annotated); those slots
are named ``"N/A"``, as in torchvision's ``_COCO_CATEGORIES``. So a predicted label of such a
model *is* the ``category_id`` of a COCO results file, with no remapping.

Models trained with contiguous labels (81 outputs: background + the 80 categories in id order,
the detectron convention) map label k to :data:`CATEGORY_IDS` ``[k − 1]``;
:data:`CONTIGUOUS_TO_CATEGORY_ID` and :data:`CATEGORY_ID_TO_CONTIGUOUS` are that mapping.
"""

from segjax.errors import ConfigError

BACKGROUND = "__background__"
PLACEHOLDER = "N/A"

# Index = torchvision label = COCO category id (instances_{train,val}2017.json "categories").
CATEGORIES: tuple[str, ...] = (
    BACKGROUND,
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    PLACEHOLDER,  # 12
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    PLACEHOLDER,  # 26
    "backpack",
    "umbrella",
    PLACEHOLDER,  # 29
    PLACEHOLDER,  # 30
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    PLACEHOLDER,  # 45
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    PLACEHOLDER,  # 66
    "dining table",
    PLACEHOLDER,  # 68
    PLACEHOLDER,  # 69
    "toilet",
    PLACEHOLDER,  # 71
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    PLACEHOLDER,  # 83
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
)

NUM_CLASSES = len(CATEGORIES)  # 91: torchvision's num_classes for COCO

# The 80 official category ids, ascending.
CATEGORY_IDS: tuple[int, ...] = tuple(
    i for i, name in enumerate(CATEGORIES) if name not in (BACKGROUND, PLACEHOLDER)
)

# Contiguous label (1 … 80, 0 = background) ↔ COCO category id.
CONTIGUOUS_TO_CATEGORY_ID: dict[int, int] = {k + 1: c for k, c in enumerate(CATEGORY_IDS)}
CATEGORY_ID_TO_CONTIGUOUS: dict[int, int] = {c: k for k, c in CONTIGUOUS_TO_CATEGORY_ID.items()}


def category_id(label: int) -> int:
    """The COCO ``category_id`` of a label of a 91-output (torchvision-layout) model: the label
    itself, once checked to be one of the 80 categories.

    Raises:
      ValueError: the label is the background, a placeholder slot or out of range.
    """
    label = int(label)
    if label not in CATEGORY_ID_TO_CONTIGUOUS:
        what = f"the {CATEGORIES[label]!r} slot" if 0 <= label < NUM_CLASSES else "out of range"
        raise ConfigError(
            f"COCO label {label} is {what}; expected one of the 80 category ids 1…90 "
            f"(not 0 or {', '.join(str(i) for i in placeholder_ids())})"
        )
    return label


def placeholder_ids() -> tuple[int, ...]:
    """The ten ids 1 … 90 that COCO leaves unused (``"N/A"`` slots)."""
    return tuple(i for i, name in enumerate(CATEGORIES) if name == PLACEHOLDER)


def names() -> tuple[str, ...]:
    """The 80 category names in id order (the contiguous labels 1 … 80)."""
    return tuple(CATEGORIES[i] for i in CATEGORY_IDS)
