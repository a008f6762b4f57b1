"""The loss family of segjax.losses (Dice, Jaccard, Tversky, focal, Lovász-softmax, OHEM and
build_loss), each checked against a float64 NumPy reference written here from the papers' and
reference implementations' definitions (ignored pixels removed by boolean indexing)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from segjax import config as config_lib
from segjax import losses

IGNORE = 255
NUM_CLASSES = 4
CLASS_WEIGHTS = np.array([0.5, 2.0, 1.0, 3.0], np.float32)


# ---------------------------------------------------------------------------------------------
# NumPy references (float64)


def _softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def _valid_pixels(logits, labels):
    """The valid pixels' float64 probabilities ``[N, C]`` and labels ``[N]``."""
    logits, labels = np.asarray(logits, np.float64), np.asarray(labels)
    valid = labels != IGNORE
    return _softmax(logits[valid]), labels[valid]


def _ref_overlap(logits, labels, score):
    """smp's multiclass convention: 1 − score per class, 0 for a class with no valid pixel,
    mean over all classes; 0 without valid pixels."""
    p, y = _valid_pixels(logits, labels)
    if y.size == 0:
        return 0.0
    t = np.eye(p.shape[-1])[y]
    per_class = [
        1.0 - score(p[:, c], t[:, c]) if t[:, c].sum() > 0 else 0.0 for c in range(p.shape[-1])
    ]
    return float(np.mean(per_class))


def ref_dice(logits, labels, smooth):
    score = lambda p, t: (2 * np.sum(p * t) + smooth) / (np.sum(p) + np.sum(t) + smooth)
    return _ref_overlap(logits, labels, score)


def ref_jaccard(logits, labels, smooth):
    def score(p, t):
        inter = np.sum(p * t)
        return (inter + smooth) / (np.sum(p) + np.sum(t) - inter + smooth)

    return _ref_overlap(logits, labels, score)


def ref_tversky(logits, labels, alpha, beta, smooth):
    def score(p, t):
        tp, fp, fn = np.sum(p * t), np.sum(p * (1 - t)), np.sum((1 - p) * t)
        return (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)

    return _ref_overlap(logits, labels, score)


def ref_focal(logits, labels, gamma, class_weights=None):
    p, y = _valid_pixels(logits, labels)
    pt = p[np.arange(y.size), y]
    w = np.ones(y.size) if class_weights is None else np.asarray(class_weights, np.float64)[y]
    if w.sum() == 0:
        return 0.0
    return float(np.sum(w * (1 - pt) ** gamma * -np.log(pt)) / w.sum())


def ref_lovasz(logits, labels):
    """Berman et al.'s lovasz_softmax_flat, classes="present", over the whole batch."""
    p, y = _valid_pixels(logits, labels)
    per_class = []
    for c in range(p.shape[-1]):
        fg = (y == c).astype(np.float64)
        if fg.sum() == 0:
            continue
        errors = np.abs(fg - p[:, c])
        order = np.argsort(-errors, kind="stable")
        fg_sorted = fg[order]
        inter = fg.sum() - np.cumsum(fg_sorted)
        union = fg.sum() + np.cumsum(1 - fg_sorted)
        jaccard = 1 - inter / union
        jaccard[1:] = jaccard[1:] - jaccard[:-1]
        per_class.append(errors[order] @ jaccard)
    return float(np.mean(per_class)) if per_class else 0.0


def ref_ohem(logits, labels, thresh, min_kept, class_weights=None):
    """mmseg's OHEMPixelSampler (thresh given), then the CE over the kept pixels normalised
    by their summed class weights."""
    p, y = _valid_pixels(logits, labels)
    pt = p[np.arange(y.size), y]
    batch_kept = min_kept * math.prod(np.shape(labels)[:-2])
    sorted_pt = np.sort(pt)
    floor = sorted_pt[min(batch_kept, y.size - 1)] if y.size else 0.0
    kept = pt < max(floor, thresh)
    w = np.ones(y.size) if class_weights is None else np.asarray(class_weights, np.float64)[y]
    w = w[kept]
    return float(np.sum(w * -np.log(pt[kept])) / w.sum()) if w.sum() > 0 else 0.0


def ref_ce(logits, labels, class_weights=None, label_smoothing=0.0, pixel_weights=None):
    logits, labels = np.asarray(logits, np.float64), np.asarray(labels)
    valid = labels != IGNORE
    logp = np.log(_softmax(logits[valid]))
    y = labels[valid]
    nll = -(1 - label_smoothing) * logp[np.arange(y.size), y] - label_smoothing * logp.mean(-1)
    w = np.ones(y.size) if class_weights is None else np.asarray(class_weights, np.float64)[y]
    if pixel_weights is not None:
        w = w * np.asarray(pixel_weights, np.float64)[valid]
    return float(np.sum(w * nll) / w.sum()) if w.sum() > 0 else 0.0


# ---------------------------------------------------------------------------------------------
# Inputs and the terms under test

P = functools.partial
# name → (segjax term with parameters bound, its reference). Parameters are off their defaults
# so a convention slip (e.g. Dice's smoothing) shows.
TERMS = {
    "dice": (P(losses.dice_loss, smooth=0.7), P(ref_dice, smooth=0.7)),
    "jaccard": (P(losses.jaccard_loss, smooth=0.3), P(ref_jaccard, smooth=0.3)),
    "tversky": (
        P(losses.tversky_loss, alpha=0.3, beta=0.8, smooth=0.5),
        P(ref_tversky, alpha=0.3, beta=0.8, smooth=0.5),
    ),
    "focal_weighted": (
        P(losses.focal_loss, gamma=2.0, class_weights=CLASS_WEIGHTS),
        P(ref_focal, gamma=2.0, class_weights=CLASS_WEIGHTS),
    ),
    "focal_gamma_half": (P(losses.focal_loss, gamma=0.5), P(ref_focal, gamma=0.5)),
    "lovasz": (losses.lovasz_softmax_loss, ref_lovasz),
    # thresh decides: more than min_kept pixels are below it.
    "ohem_thresh": (
        P(losses.ohem_cross_entropy, thresh=0.5, min_kept=3, class_weights=CLASS_WEIGHTS),
        P(ref_ohem, thresh=0.5, min_kept=3, class_weights=CLASS_WEIGHTS),
    ),
    # min_kept decides: the floor is above thresh.
    "ohem_min_kept": (
        P(losses.ohem_cross_entropy, thresh=0.02, min_kept=9, class_weights=CLASS_WEIGHTS),
        P(ref_ohem, thresh=0.02, min_kept=9, class_weights=CLASS_WEIGHTS),
    ),
    # min_kept per image exceeds the valid pixels: the floor is the largest probability.
    "ohem_budget_exceeds": (
        P(losses.ohem_cross_entropy, thresh=0.3, min_kept=1000),
        P(ref_ohem, thresh=0.3, min_kept=1000),
    ),
}
VALUE = {name: jax.jit(term) for name, (term, _) in TERMS.items()}
# On the small input only (one compilation per term serves both tests that use it).
VALUE_AND_GRAD = {name: jax.jit(jax.value_and_grad(term)) for name, (term, _) in TERMS.items()}


def _batch(shape, seed):
    """Random logits and labels in which class 3 never occurs and some pixels are ignored,
    with non-finite logits on two ignored pixels (they must not leak)."""
    rng = np.random.default_rng(seed)
    logits = (2 * rng.normal(size=(*shape, NUM_CLASSES))).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES - 1, shape)
    labels[(0,) * (len(shape) - 1) + (0,)] = IGNORE
    labels[rng.random(shape) < 0.15] = IGNORE
    ignored = np.argwhere(labels == IGNORE)
    logits[tuple(ignored[0])] = np.nan
    logits[tuple(ignored[-1])][0] = np.inf
    return logits, labels


LOGITS, LABELS = _batch((2, 5, 6), seed=0)
# The small input of the gradient checks (1 × 3 × 4 pixels, C = 4, class 3 absent).
SMALL_LOGITS, SMALL_LABELS = _batch((1, 3, 4), seed=1)


def _clean(logits, labels):
    """The logits with ignored pixels zeroed (for references that evaluate every pixel)."""
    return np.where((labels == IGNORE)[..., None], 0.0, logits)


# ---------------------------------------------------------------------------------------------
# Every term


@pytest.mark.parametrize("name", TERMS)
def test_matches_reference(name):
    assert (LABELS != IGNORE).sum() > 40 and not (LABELS == NUM_CLASSES - 1).any()
    value = VALUE[name](LOGITS, LABELS)
    assert value.shape == () and value.dtype == jnp.float32
    np.testing.assert_allclose(value, TERMS[name][1](LOGITS, LABELS), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("name", TERMS)
def test_gradient_matches_central_differences(name):
    """Autodiff (float32, as the terms compute) against central differences of the float64
    reference; the ignored pixels (NaN logits included) get exactly 0."""
    reference = TERMS[name][1]
    x = _clean(SMALL_LOGITS, SMALL_LABELS).astype(np.float64)
    eps = 1e-6
    numeric = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[i] = eps
        up, down = reference(x + step, SMALL_LABELS), reference(x - step, SMALL_LABELS)
        numeric[i] = (up - down) / (2 * eps)
    _, grad = VALUE_AND_GRAD[name](SMALL_LOGITS, SMALL_LABELS)
    grad = np.asarray(grad)
    assert np.abs(numeric).max() > 1e-3  # the check is not vacuous
    np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=2e-6)
    assert np.all(grad[SMALL_LABELS == IGNORE] == 0.0)


@pytest.mark.parametrize("name", TERMS)
def test_all_ignored_is_zero_with_zero_gradient(name):
    labels = np.full(SMALL_LABELS.shape, IGNORE)
    value, grad = VALUE_AND_GRAD[name](SMALL_LOGITS, labels)
    assert float(value) == 0.0
    assert np.all(np.asarray(grad) == 0.0)


def test_region_terms_without_smoothing_are_zero_on_an_all_ignored_batch():
    """Every ratio is 0/0 here; neither the value nor the gradient may show it."""
    labels = np.full(SMALL_LABELS.shape, IGNORE)
    dice = jax.jit(jax.value_and_grad(functools.partial(losses.dice_loss, smooth=0.0)))
    value, grad = dice(SMALL_LOGITS, labels)
    assert float(value) == 0.0 and np.all(np.asarray(grad) == 0.0)


# One variant per term (a compilation each).
BF16_TERMS = ["dice", "jaccard", "tversky", "focal_weighted", "lovasz", "ohem_thresh"]


@pytest.mark.parametrize("name", BF16_TERMS)
def test_bfloat16_logits_are_computed_in_float32(name):
    bf16 = jnp.asarray(LOGITS, jnp.bfloat16)
    value = VALUE[name](bf16, LABELS)
    assert value.dtype == jnp.float32
    # The bf16 logits themselves, evaluated in float32: equal to float32 precision …
    np.testing.assert_allclose(value, VALUE[name](np.asarray(bf16, np.float32), LABELS), rtol=1e-6)
    # … and within bf16 rounding of the float32 logits' loss.
    np.testing.assert_allclose(value, VALUE[name](LOGITS, LABELS), rtol=2e-2)


# ---------------------------------------------------------------------------------------------
# Term-specific properties


def test_focal_with_gamma_zero_is_the_class_weighted_cross_entropy():
    both = jax.jit(
        lambda x, y: (
            losses.focal_loss(x, y, gamma=0.0, class_weights=CLASS_WEIGHTS),
            losses.cross_entropy(x, y, class_weights=CLASS_WEIGHTS)[0],
        )
    )
    focal, ce = both(LOGITS, LABELS)
    np.testing.assert_allclose(focal, ce, rtol=1e-6)
    np.testing.assert_allclose(focal, ref_ce(LOGITS, LABELS, CLASS_WEIGHTS), rtol=1e-5)


def test_focal_gradient_is_finite_when_the_true_class_probability_rounds_to_one():
    logits = jnp.array([[[[60.0, 0.0, 0.0], [0.0, 1.0, 0.0]]]])
    labels = jnp.array([[[0, 1]]])
    assert float(jax.nn.softmax(logits)[0, 0, 0, 0]) == 1.0
    gammas = (0.0, 0.5)  # d/dq q^γ is infinite or 0·∞ at q = 0 for these
    focal = lambda x, gamma: losses.focal_loss(x, labels, gamma=gamma)
    grads = jax.jit(lambda x: [jax.grad(focal)(x, g) for g in gammas])(logits)
    for gamma, grad in zip(gammas, grads):
        assert np.all(np.isfinite(grad)), gamma


def test_region_terms_use_the_whole_batch_not_each_image():
    """Soft counts are summed over the batch: splitting the batch changes the value."""
    whole = float(VALUE["dice"](LOGITS, LABELS))
    per_image = np.mean([ref_dice(LOGITS[i], LABELS[i], 0.7) for i in range(2)])
    assert abs(whole - per_image) > 1e-4


def test_cross_entropy_ignores_nonfinite_logits_of_ignored_pixels_in_the_gradient():
    ce_grad = jax.jit(jax.grad(lambda x, y: losses.cross_entropy(x, y)[0]))
    grad = ce_grad(SMALL_LOGITS, SMALL_LABELS)
    assert np.all(np.isfinite(grad)) and np.all(grad[SMALL_LABELS == IGNORE] == 0.0)


def test_class_weights_of_the_wrong_length_are_a_one_line_error():
    with pytest.raises(ValueError, match=r"class_weights has shape \(3,\).*\(4,\)"):
        jax.eval_shape(
            lambda x, y: losses.focal_loss(x, y, class_weights=np.ones(3)), LOGITS, LABELS
        )


# ---------------------------------------------------------------------------------------------
# build_loss


def _train_config(**loss_weights):
    train = config_lib.base_config().train
    for name, weight in loss_weights.items():
        train.loss[name] = weight
    return train


def test_build_loss_is_the_weighted_sum_of_the_terms():
    train = _train_config(
        ce=1.0, dice=0.5, jaccard=0.25, tversky=0.75, focal=2.0, lovasz=1.5, ohem=0.3
    )
    train.class_weights = tuple(CLASS_WEIGHTS.tolist())
    train.label_smoothing = 0.1
    lp = train.loss_params
    lp.tversky_alpha, lp.tversky_beta, lp.focal_gamma = 0.3, 0.7, 1.5
    lp.ohem_thresh, lp.ohem_min_kept = 0.4, 5
    pixel_weights = np.random.default_rng(2).uniform(0.5, 3.0, LABELS.shape).astype(np.float32)
    expected = {
        "ce": ref_ce(LOGITS, LABELS, CLASS_WEIGHTS, 0.1, pixel_weights),
        "dice": ref_dice(LOGITS, LABELS, 1.0),
        "jaccard": ref_jaccard(LOGITS, LABELS, 1.0),
        "tversky": ref_tversky(LOGITS, LABELS, 0.3, 0.7, 1.0),
        "focal": ref_focal(LOGITS, LABELS, 1.5, CLASS_WEIGHTS),
        "lovasz": ref_lovasz(LOGITS, LABELS),
        "ohem": ref_ohem(LOGITS, LABELS, 0.4, 5, CLASS_WEIGHTS),
    }
    total, terms = jax.jit(losses.build_loss(train))(LOGITS, LABELS, pixel_weights)
    assert set(terms) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(terms[name], value, rtol=2e-5, err_msg=name)
    weighted = sum(train.loss[name] * value for name, value in expected.items())
    np.testing.assert_allclose(total, weighted, rtol=2e-5)


def test_build_loss_default_is_plain_cross_entropy_and_leaves_zero_weights_out():
    total, terms = jax.jit(losses.build_loss(_train_config()))(LOGITS, LABELS, None)
    assert list(terms) == ["ce"]
    np.testing.assert_allclose(total, ref_ce(LOGITS, LABELS), rtol=1e-5)
    only_lovasz = losses.build_loss(_train_config(ce=0.0, lovasz=1.0))
    assert list(jax.eval_shape(only_lovasz, LOGITS, LABELS)[1]) == ["lovasz"]


def _set(path, value):
    """A config edit: ``train.<path> = value`` (adding the key if the dict lacks it)."""

    def edit(train):
        *parents, key = path.split(".")
        node = train
        for parent in parents:
            node = node[parent]
        node[key] = value

    return edit


BAD_CONFIGS = {
    "unknown term": (
        _set("loss.dicee", 1.0),
        r"^config\.train\.loss\.dicee: unknown loss term 'dicee'; known: ce, dice, jaccard, "
        r"tversky, focal, lovasz, ohem$",
    ),
    "negative weight": (_set("loss.dice", -1.0), r"^config\.train\.loss\.dice=-1\.0: .*>= 0$"),
    "nan weight": (_set("loss.ce", float("nan")), r"^config\.train\.loss\.ce=nan: .*finite"),
    "all zero": (_set("loss.ce", 0.0), r"^config\.train\.loss: every term has weight 0"),
    "tversky alpha": (
        _set("loss_params.tversky_alpha", -0.1),
        r"^config\.train\.loss_params\.tversky_alpha=-0\.1: must be a finite number >= 0$",
    ),
    "tversky beta": (
        _set("loss_params.tversky_beta", float("inf")),
        r"^config\.train\.loss_params\.tversky_beta=inf: ",
    ),
    "dice smooth": (
        _set("loss_params.dice_smooth", 0.0),
        r"^config\.train\.loss_params\.dice_smooth=0\.0: must be a finite number > 0$",
    ),
    "ohem thresh 0": (
        _set("loss_params.ohem_thresh", 0.0),
        r"^config\.train\.loss_params\.ohem_thresh=0\.0: must be a number in \(0, 1\]$",
    ),
    "ohem thresh > 1": (
        _set("loss_params.ohem_thresh", 1.5),
        r"^config\.train\.loss_params\.ohem_thresh=1\.5: ",
    ),
    "ohem min_kept": (
        _set("loss_params.ohem_min_kept", 0),
        r"^config\.train\.loss_params\.ohem_min_kept=0: must be an integer >= 1$",
    ),
    "focal gamma": (
        _set("loss_params.focal_gamma", -1.0),
        r"^config\.train\.loss_params\.focal_gamma=-1\.0: must be a finite number >= 0$",
    ),
    "unknown param": (
        _set("loss_params.dice_smoth", 1.0),
        r"^config\.train\.loss_params\.dice_smoth: unknown loss parameter; known: dice_smooth",
    ),
    "class weights": (
        _set("class_weights", (1.0, -2.0)),
        r"^config\.train\.class_weights=\(1\.0, -2\.0\): must be \(\) or one finite weight",
    ),
    "label smoothing": (
        _set("label_smoothing", 1.0),
        r"^config\.train\.label_smoothing=1\.0: must be a number in \[0, 1\)$",
    ),
}


@pytest.mark.parametrize("case", BAD_CONFIGS)
def test_build_loss_rejects_a_bad_config_with_a_one_line_error(case):
    edit, pattern = BAD_CONFIGS[case]
    train = _train_config(dice=0.0)
    edit(train)
    with pytest.raises(ValueError, match=pattern) as error:
        losses.build_loss(train)  # at build time: nothing is traced
    assert "\n" not in str(error.value)
