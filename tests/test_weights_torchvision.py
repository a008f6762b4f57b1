"""torchvision import: numerical parity on generated fixtures, exact round trip, errors, CLI.

The fixtures (tests/fixtures/torchvision, made by tools/make_torchvision_fixtures.py with torch)
hold torchvision-structured tiny models' key lists and their outputs on a fixed input; the
weights are rebuilt here bit for bit by ``fixture_values``. No torch is needed, except for the
tests marked ``torch`` (full-size models; skipped when torch / torchvision are absent).
"""

import functools
import json
import os
import sys

import chex
import jax
import numpy as np
import pytest

from segjax import checkpoint, models
from segjax.models.backbones import mobilenet, resnet, vgg
from segjax.weights import import_torchvision
from segjax.weights import torchvision as tv

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "torchvision")
sys.path.insert(0, FIXTURES)
import fixture_values  # noqa: E402

RTOL = 1e-4  # max |segjax − torchvision| ≤ RTOL · max |torchvision|

# Fixture case → (torchvision archs it covers, segjax target with the case's tiny structure).
# Tiny ResNets have depth-50 bottlenecks with blocks (1, 1, 1, 3), so the -50 and -101 names
# share a fixture; the full-size test below tells them apart.
CASES = {
    "vgg16": (("vgg16",), lambda: vgg.VGG16(width=8, fc_features=32, paper_alignment=False)),
    "resnet50": (
        ("resnet50", "resnet101"),
        lambda: resnet.ResNet(depth=50, width=8, stage_blocks=(1, 1, 1, 3)),
    ),
    "mobilenet_v3_large": (
        ("mobilenet_v3_large",),
        lambda: mobilenet.MobileNetV3Large(dilated=False, width_mult=0.25),
    ),
    "fcn_resnet": (
        ("fcn_resnet50", "fcn_resnet101"),
        lambda: models.create("fcn_resnet50", num_classes=3, width=8, stage_blocks=(1, 1, 1, 3)),
    ),
    "deeplabv3_resnet": (
        ("deeplabv3_resnet50", "deeplabv3_resnet101"),
        lambda: models.create("deeplabv3_resnet50", num_classes=3, backbone="resnet_tiny"),
    ),
    "deeplabv3_mobilenet_v3_large": (
        ("deeplabv3_mobilenet_v3_large",),
        lambda: models.create(
            "deeplabv3_mobilenet_v3_large", num_classes=3, backbone="mobilenet_v3_large_tiny"
        ),
    ),
    "lraspp_mobilenet_v3_large": (
        ("lraspp_mobilenet_v3_large",),
        lambda: models.create(
            "lraspp_mobilenet_v3_large", num_classes=3, backbone="mobilenet_v3_large_tiny"
        ),
    ),
}


@functools.cache
def _manifest() -> dict:
    with open(os.path.join(FIXTURES, "manifest.json")) as f:
        return json.load(f)["cases"]


def fixture_state_dict(case: str) -> dict[str, np.ndarray]:
    """The case's torchvision state dict, checked against the generator's checksum."""
    meta = _manifest()[case]
    sd = fixture_values.state_dict(meta["state_dict"])
    assert fixture_values.checksum(sd) == meta["weights_checksum"], "fixture_values drifted"
    return sd


def relative_error(got, ref) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    return float(np.abs(got - ref).max() / np.abs(ref).max())


# Detection architectures have their own fixture and parity tests (tests/test_maskrcnn_parity.py).
DETECTION_ARCHS = {"maskrcnn_resnet50_fpn"}


def test_every_arch_has_a_fixture():
    covered = {arch for archs, _ in CASES.values() for arch in archs}
    assert covered == set(tv.ARCHS) - DETECTION_ARCHS
    assert set(_manifest()) - {"maskrcnn"} == set(CASES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_parity_with_torchvision(case):
    archs, build = CASES[case]
    sd = fixture_state_dict(case)
    module = build()
    variables = tv.convert(sd, archs[0], module=module)
    # The other depth's name maps the same keys to the same arrays.
    for other in archs[1:]:
        chex.assert_trees_all_equal(variables, tv.convert(sd, other, module=module))
    if not tv.ARCHS[archs[0]].segmentation:
        variables = {k: v["backbone"] for k, v in variables.items()}

    errors = parity_errors(case, variables)
    for name, err in errors.items():
        assert err <= RTOL, f"{case} {name}: max abs diff / max abs ref = {err:.2e}"


@functools.cache
def _jitted_apply(case: str):
    module = CASES[case][1]()
    return jax.jit(lambda v, x: module.apply(v, x, train=False))


def parity_errors(case: str, variables: dict) -> dict[str, float]:
    """max |segjax − torchvision| / max |torchvision| of every recorded output of ``case``."""
    meta = _manifest()[case]
    x = fixture_values.image(tuple(meta["input_shape"]))
    assert fixture_values.checksum({"x": x}) == meta["input_checksum"]
    out = _jitted_apply(case)(variables, x)
    expected = np.load(os.path.join(FIXTURES, f"{case}.npz"))
    assert sorted(expected.files) == sorted(meta["outputs"])
    errors = {}
    for name in expected.files:
        got = out[name]
        if name == "fc7":  # torchvision's Linear on the 7×7 pool5 = the conv's centre pixel
            got = got[:, 3:4, 3:4]
        errors[name] = relative_error(got, expected[name])
    return errors


def test_parity_check_catches_a_layout_bug():
    """Negative control: a kernel flipped in H (a classic OIHW→HWIO slip) breaks parity."""
    sd = fixture_state_dict("resnet50")
    variables = tv.convert(sd, "resnet50", module=CASES["resnet50"][1]())
    variables = {k: v["backbone"] for k, v in variables.items()}
    conv2 = variables["params"]["layer2_0"]["conv2"]
    conv2["kernel"] = conv2["kernel"][::-1]
    errors = parity_errors("resnet50", variables)
    assert errors["layer1"] <= RTOL  # before the broken layer
    assert errors["layer2"] > 100 * RTOL and errors["layer4"] > 100 * RTOL


@pytest.mark.parametrize("case", sorted(CASES))
def test_export_round_trips_exactly(case):
    archs, build = CASES[case]
    spec = tv.ARCHS[archs[0]]
    sd = fixture_state_dict(case)
    variables = tv.convert(sd, archs[0], module=build())
    back = tv.export(variables, archs[0])
    kept = {k: v for k, v in sd.items() if not tv.is_ignored(spec, k)}
    assert sorted(back) == sorted(kept)
    for key, value in kept.items():
        assert back[key].dtype == value.dtype and back[key].shape == value.shape, key
        np.testing.assert_array_equal(back[key], value, err_msg=key)
    if spec.segmentation:  # a full torchvision state dict again (strict load_state_dict)
        full = tv.export(variables, archs[0], num_batches_tracked=True)
        assert sorted(full) == sorted(sd)
    # And back again: segjax → torch → segjax is the identity too.
    again = tv.convert(back, archs[0], module=build())
    chex.assert_trees_all_equal(variables, again)


def test_layouts():
    sd = fixture_state_dict("vgg16")
    v = tv.convert(sd, "vgg16", module=CASES["vgg16"][1]())["params"]["backbone"]
    np.testing.assert_array_equal(
        v["features_0"]["kernel"], sd["features.0.weight"].transpose(2, 3, 1, 0)
    )
    # fc6: torch flattens (C, H, W); weight[o, c·49 + h·7 + w] == kernel[h, w, c, o]
    fc6, w6 = v["fc6"]["kernel"], sd["classifier.0.weight"]
    assert fc6.shape == (7, 7, 64, 32)
    assert fc6[2, 5, 7, 11] == w6[11, 7 * 49 + 2 * 7 + 5]
    assert v["fc7"]["kernel"].shape == (1, 1, 32, 32)
    np.testing.assert_array_equal(v["fc7"]["kernel"][0, 0], sd["classifier.3.weight"].T)
    # depthwise OIHW [C, 1, k, k] → HWIO [k, k, 1, C]; BN running stats → batch_stats
    sd = fixture_state_dict("lraspp_mobilenet_v3_large")
    module = CASES["lraspp_mobilenet_v3_large"][1]()
    v = tv.convert(sd, "lraspp_mobilenet_v3_large", module=module)
    dw = v["params"]["backbone"]["features_2"]["block_1"]["conv"]["kernel"]
    torch_dw = sd["backbone.2.block.1.0.weight"]
    assert torch_dw.shape[1] == 1 and dw.shape == (3, 3, 1, torch_dw.shape[0])
    np.testing.assert_array_equal(
        v["batch_stats"]["classifier"]["cbr"]["bn"]["var"], sd["classifier.cbr.1.running_var"]
    )


# ----------------------------------------------------------------------------- errors


def _fcn():
    return fixture_state_dict("fcn_resnet"), CASES["fcn_resnet"][1]()


def test_unknown_arch():
    with pytest.raises(tv.ConversionError, match="unknown torchvision arch 'resnet5'.*resnet50"):
        tv.convert({}, "resnet5")


def test_missing_and_unexpected_keys_are_listed():
    sd, module = _fcn()
    del sd["backbone.layer2.0.conv2.weight"]
    sd["backbone.layer9.0.conv1.weight"] = np.zeros((1,), np.float32)
    with pytest.raises(tv.ConversionError) as e:
        tv.convert(sd, "fcn_resnet50", module=module)
    msg = str(e.value)
    assert "missing keys (1): backbone.layer2.0.conv2.weight" in msg
    assert "unexpected keys (1): backbone.layer9.0.conv1.weight" in msg


def test_wrong_kind_of_checkpoint_gets_a_hint():
    sd, _ = _fcn()
    with pytest.raises(tv.ConversionError, match="segmentation checkpoint"):
        tv.convert(sd, "resnet50", module=CASES["resnet50"][1]())
    backbone_sd = fixture_state_dict("resnet50")
    with pytest.raises(tv.ConversionError, match="ImageNet backbone checkpoint"):
        tv.convert(backbone_sd, "fcn_resnet50", num_classes=3, module=CASES["fcn_resnet"][1]())


def test_shape_mismatch_names_key_and_shapes():
    sd, module = _fcn()
    sd["backbone.layer1.0.conv2.weight"] = np.zeros((8, 8, 5, 5), np.float32)
    with pytest.raises(
        tv.ConversionError,
        match=r"backbone\.layer1\.0\.conv2\.weight: checkpoint \(8, 8, 5, 5\), "
        r"expected \(8, 8, 3, 3\)",
    ):
        tv.convert(sd, "fcn_resnet50", module=module)


def test_num_classes_mismatch_explains_fine_tuning():
    sd, _ = _fcn()
    with pytest.raises(tv.ConversionError, match="has 3 classes.*drop_head.*init_from"):
        tv.convert(sd, "fcn_resnet50", num_classes=5)


def test_drop_head_then_init_from_keeps_new_head():
    sd, _ = _fcn()
    five = models.create("fcn_resnet50", num_classes=5, width=8, stage_blocks=(1, 1, 1, 3))
    variables = tv.convert(sd, "fcn_resnet50", num_classes=5, drop_head=True, module=five)
    assert "cls" not in variables["params"]["classifier"]
    assert "cls" not in variables["params"]["aux_classifier"]
    target = tv.abstract_variables(five, tv.ARCHS["fcn_resnet50"])
    _, report = checkpoint.merge_pretrained(target, variables)
    assert sorted(report["kept_initial"]) == [
        f"params/{h}/cls/{leaf}"
        for h in ("aux_classifier", "classifier")
        for leaf in ("bias", "kernel")
    ]
    assert not report["unused"] and not report["shape_mismatch"]


def test_checkpoint_without_aux_head():
    sd, _ = _fcn()
    assert tv.has_aux(sd, "fcn_resnet50")
    sd = {k: v for k, v in sd.items() if not k.startswith("aux_classifier.")}
    assert not tv.has_aux(sd, "fcn_resnet50")
    tiny = functools.partial(
        models.create, "fcn_resnet50", num_classes=3, width=8, stage_blocks=(1, 1, 1, 3)
    )
    variables = tv.convert(sd, "fcn_resnet50", module=tiny(aux=False))
    assert "aux_classifier" not in variables["params"]
    with pytest.raises(tv.ConversionError, match="missing keys.*aux_classifier.0.weight"):
        tv.convert(sd, "fcn_resnet50", module=tiny(aux=True))


@pytest.mark.parametrize(
    "case, target",
    [
        ("resnet50", "deeplabv3plus_tiny"),
        ("vgg16", "fcn8s_vgg16_tiny"),
        ("mobilenet_v3_large", "lraspp_mobilenet_v3_large_tiny"),
    ],
)
def test_backbone_initialises_segmentation_models(case, target):
    archs, build = CASES[case]
    variables = tv.convert(fixture_state_dict(case), archs[0], module=build())
    assert set(variables["params"]) == {"backbone"}
    model = models.create(target, num_classes=4)
    shapes = tv.abstract_variables(model, tv.ARCHS["fcn_resnet50"])  # a segmentation spec
    _, report = checkpoint.merge_pretrained(shapes, variables)
    assert not report["unused"] and not report["shape_mismatch"]
    assert all(name.split("/")[1] == "backbone" for name in report["loaded"])
    assert not any(name.split("/")[1] == "backbone" for name in report["kept_initial"])
    assert report["kept_initial"]  # the head starts from its initialisation


# ----------------------------------------------------------------------------- CLI


def test_cli_safetensors_to_checkpoint(tmp_path, capsys):
    from safetensors.numpy import save_file

    case = "lraspp_mobilenet_v3_large"
    sd = fixture_state_dict(case)
    path = str(tmp_path / "lraspp.safetensors")
    save_file(sd, path)
    out = str(tmp_path / "imported")
    import_torchvision.main(
        [
            "--arch", case, "--checkpoint", path, "--output", out,
            "--model_kwargs", json.dumps({"backbone": "mobilenet_v3_large_tiny"}),
        ]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert "3-class model" in printed and "init_from" in printed
    restored = checkpoint.read_weights(out)
    expected = tv.convert(sd, case, module=CASES[case][1]())
    chex.assert_trees_all_equal(restored, expected)


def test_cli_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        import_torchvision.main(["--arch", "resnet18", "--checkpoint", "x", "--output", "y"])
    assert "unknown torchvision arch 'resnet18'" in capsys.readouterr().err
    bad = tmp_path / "weights.h5"
    bad.write_bytes(b"")
    with pytest.raises(SystemExit):
        import_torchvision.main(["--arch", "resnet50", "--checkpoint", str(bad), "--output", "y"])
    assert "unknown checkpoint format" in capsys.readouterr().err


# ----------------------------------------------------------------------------- full size

FULL_INPUT = (1, 65, 65, 3)


def _torchvision_model(arch: str):
    import torchvision

    if arch in ("vgg16", "resnet50", "resnet101", "mobilenet_v3_large"):
        return getattr(torchvision.models, arch)(weights=None)
    builder = getattr(torchvision.models.segmentation, arch)
    kwargs = {} if arch.startswith("lraspp") else {"aux_loss": True}
    return builder(weights=None, weights_backbone=None, num_classes=21, **kwargs)


@pytest.mark.torch
@pytest.mark.slow
@pytest.mark.parametrize("arch", sorted(set(tv.ARCHS) - DETECTION_ARCHS))
def test_full_size_parity(arch):
    """Full torchvision models with random weights against segjax (needs torch/torchvision)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    model = _torchvision_model(arch).eval()
    sd = {
        k: torch.from_numpy(fixture_values.weight_value(k, tuple(v.shape), str(v.dtype)[6:]))
        for k, v in model.state_dict().items()
    }
    model.load_state_dict(sd)
    spec = tv.ARCHS[arch]
    size = (1, 224, 224, 3) if arch == "vgg16" else FULL_INPUT
    x = fixture_values.image(size)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    variables = tv.convert(sd, arch)
    with torch.no_grad():
        if spec.segmentation:
            ref = {k: v.numpy().transpose(0, 2, 3, 1) for k, v in model(xt).items()}
            module = models.create(arch, num_classes=21)
            got = module.apply(variables, x)
        elif arch == "vgg16":
            pool5 = model.features(xt)
            fc7 = model.classifier[:5](torch.flatten(pool5, 1))
            ref = {"pool5": pool5.numpy().transpose(0, 2, 3, 1), "fc7": fc7.numpy()}
            out = vgg.VGG16(paper_alignment=False).apply(
                {k: v["backbone"] for k, v in variables.items()}, x
            )
            got = {"pool5": out["pool5"], "fc7": out["fc7"][:, 3, 3]}
        else:
            feats = model.features(xt) if arch.startswith("mobilenet") else None
            if feats is None:
                y = model.maxpool(model.relu(model.bn1(model.conv1(xt))))
                for i in range(1, 5):
                    y = getattr(model, f"layer{i}")(y)
                ref = {"layer4": y.numpy().transpose(0, 2, 3, 1)}
            else:
                ref = {"out": feats.numpy().transpose(0, 2, 3, 1)}
            module = tv.default_module(arch)
            got = module.apply({k: v["backbone"] for k, v in variables.items()}, x)
    for name, value in ref.items():
        err = relative_error(got[name], value)
        print(f"{arch} {name}: max abs diff / max abs ref = {err:.2e}")
        assert err <= RTOL, f"{arch} {name}: {err:.2e}"


@pytest.mark.torch
def test_cli_reads_pth(tmp_path):
    """A torch.save'd state dict (tensors, wrapped in {"model": …}) imports like safetensors."""
    torch = pytest.importorskip("torch")
    sd = fixture_state_dict("fcn_resnet")
    path = str(tmp_path / "fcn.pth")
    torch.save({"model": {k: torch.from_numpy(v) for k, v in sd.items()}}, path)
    out = str(tmp_path / "imported")
    kwargs = {"width": 8, "stage_blocks": [1, 1, 1, 3]}
    import_torchvision.main(
        ["--arch", "fcn_resnet50", "--checkpoint", path, "--output", out,
         "--model_kwargs", json.dumps(kwargs)]
    )  # fmt: skip
    expected = tv.convert(sd, "fcn_resnet50", module=CASES["fcn_resnet"][1]())
    chex.assert_trees_all_equal(checkpoint.read_weights(out), expected)
