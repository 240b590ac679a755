"""Model registry, pretrained-weight loading and the state-dict roundtrip bundles rely on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from spermhead.errors import ConfigError
from spermhead.models.registry import (
    build_model,
    conv_l2_penalty,
    count_parameters,
    list_models,
    model_names,
    model_spec,
)

# Seed backbone models take `backbone=`: resnet18 keeps the freezing tests fast.
SMALL_BACKBONE = {"backbone": "resnet18"}
SMALL = ["spermnet", "seed-cnn", "seed-alexnet", "timm:resnet18"]


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


def _forward(model: nn.Module, in_chans: int, size: int, batch: int = 2) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(torch.randn(batch, in_chans, size, size))


@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("name", SMALL + ["seed-resnet50"])
def test_forward_shapes(name: str, in_chans: int) -> None:
    model = None
    for size in (32, 64):
        # seed-cnn's dense layer depends on the size; the others take any size once built.
        if model is None or name == "seed-cnn":
            model = build_model(name, num_classes=4, in_chans=in_chans, image_size=size)
        assert _forward(model, in_chans, size).shape == (2, 4)


def test_efficientnet_b7_forwards_once() -> None:
    model = build_model("seed-efficientnet-b7", num_classes=3, in_chans=1, image_size=32)
    assert _forward(model, 1, 32).shape == (2, 3)
    assert not model.backbone_frozen  # random weights: trains end to end


def test_registered_names_and_list() -> None:
    infos = {i.name: i for i in list_models()}
    assert set(infos) == set(model_names()) >= {"spermnet", "seed-cnn", "seed-alexnet", "seed-resnet50",
                                                 "seed-efficientnet-b7"}
    assert all(i.params > 0 and i.description for i in infos.values())
    assert infos["spermnet"].params == count_parameters(build_model("spermnet", 4, 1, 64))
    assert 200_000 < infos["spermnet"].params < 1_500_000


def test_spermnet_trains_a_step() -> None:
    model = build_model("spermnet", 4, 1, 64)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    loss = nn.functional.cross_entropy(model.train()(torch.randn(8, 1, 64, 64)), torch.randint(0, 4, (8,)))
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)


def test_spermnet_cosine_classifier_compares_directions_at_its_scale() -> None:
    from spermhead.training.synthetic_init import classifier_keys

    model = build_model("spermnet", 4, 1, 32, cosine_scale=16.0).eval()
    x = torch.randn(3, 1, 32, 32)
    features = model.pool(model.forward_features(x)).flatten(1)
    cosines = nn.functional.normalize(features, dim=1) @ nn.functional.normalize(model.fc.weight, dim=1).T
    assert torch.allclose(model(x), 16.0 * cosines, atol=1e-5) and model(x).abs().max() <= 16.0 + 1e-4
    assert classifier_keys(model) == ["fc.weight"]  # no bias: a class is its direction alone
    plain = build_model("spermnet", 4, 1, 32).eval()
    assert classifier_keys(plain) == ["fc.weight", "fc.bias"]
    # what a trained bundle records, so it rebuilds the head it was trained with
    from spermhead.models.registry import model_spec

    rebuilt = build_model("spermnet", 4, 1, 32, **model_spec(model))
    assert rebuilt.cosine_scale == 16.0 and "cosine_scale" not in model_spec(plain)
    rebuilt.load_state_dict(model.state_dict())  # strict: no bias to miss


def test_a_bundle_rebuilds_its_cosine_classifier(tmp_path: Path) -> None:
    from spermhead.serving.bundle import load_bundle
    from spermhead.serving.predictor import untrained_bundle

    bundle = load_bundle(untrained_bundle(tmp_path / "b", image_size=32, width=8, cosine_scale=16.0))
    net = bundle.model.eval()
    logits = net(torch.rand(2, 1, 32, 32))
    assert logits.shape == (2, 4) and logits.abs().max() <= 16.0 + 1e-4
    assert not any(name.endswith("fc.bias") for name, _ in net.named_parameters())
    from spermhead.models.spermnet import SpermNet

    assert [m.cosine_scale for m in net.modules() if isinstance(m, SpermNet)] == [16.0]
    with pytest.raises(ConfigError, match="cosine_scale is 0 .* got -1"):
        build_model("spermnet", 4, 1, 32, cosine_scale=-1.0)


def test_unknown_names_and_options() -> None:
    with pytest.raises(ConfigError) as err:
        build_model("resnet9000", 4)
    for name in model_names():
        assert name in str(err.value)
    assert "timm:" in str(err.value)
    with pytest.raises(ConfigError, match="width"):
        build_model("spermnet", 4, colour="blue")
    with pytest.raises(ConfigError, match="as many widths as depths"):
        build_model("spermnet", 4, widths=[8, 16], depths=[1, 1, 1])
    with pytest.raises(ConfigError, match="no hub weights"):
        build_model("spermnet", 4, pretrained=True)
    with pytest.raises(ConfigError, match="timm:not_a_model_xyz"):
        build_model("timm:not_a_model_xyz", 4)


def test_l2_penalty_only_when_asked_and_only_conv() -> None:
    plain = build_model("seed-alexnet", 4, 1, 32)
    assert conv_l2_penalty(plain).item() == 0.0
    model = build_model("seed-alexnet", 4, 1, 32, l2_conv=0.01)
    assert model.l2_conv == 0.01
    penalty = conv_l2_penalty(model)
    convs = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert penalty.item() == pytest.approx(0.01 * sum(w.pow(2).sum().item() for w in convs), rel=1e-5)
    wrapped = nn.Sequential(nn.Identity(), model)  # as training wraps it behind Standardize
    assert conv_l2_penalty(wrapped).item() == pytest.approx(penalty.item())
    penalty.backward()
    conv_ids = {id(w) for w in convs}
    for p in model.parameters():
        assert (p.grad is not None) == (id(p) in conv_ids)


def _weights_files(tmp_path: Path) -> tuple[dict[str, torch.Tensor], Path, Path]:
    """An ImageNet-shaped resnet18 state dict, as .safetensors and as a wrapped .pth."""
    import timm
    from safetensors.torch import save_file

    state = timm.create_model("resnet18", num_classes=1000, in_chans=3).state_dict()
    st, pth = tmp_path / "r18.safetensors", tmp_path / "r18.pth"
    save_file({k: v.contiguous() for k, v in state.items()}, str(st))
    torch.save({"state_dict": state, "epoch": 3}, pth)
    return state, st, pth


def test_local_weights_load_and_freeze(tmp_path: Path) -> None:
    state, st, pth = _weights_files(tmp_path)
    for path in (st, pth):
        model = build_model("seed-resnet50", 4, 3, 32, weights=path, **SMALL_BACKBONE)
        backbone = model.backbone.state_dict()
        for k, v in backbone.items():
            assert torch.equal(v, state[k]), k
        assert model.backbone_frozen and model_spec(model)["freeze_backbone"] is True
        assert not any(p.requires_grad for p in model.backbone.parameters())
        assert all(p.requires_grad for p in model.head.parameters())
        assert count_parameters(model, trainable_only=True) == count_parameters(model.head)
        model.train()  # a frozen backbone keeps its BatchNorm statistics
        assert not model.backbone.training and model.head.training
        report = model.weights_report
        assert report.loaded == len(backbone) and not report.missing
        assert "fc.weight" in report.unexpected  # the ImageNet classifier is reported, not loaded
        assert str(path) in report.summary()
    # Gray input: the RGB first conv is summed over channels, as timm does.
    gray = build_model("seed-resnet50", 4, 1, 32, weights=st, **SMALL_BACKBONE)
    assert torch.allclose(gray.backbone.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))
    # timm:<name> loads the backbone, skips the 1000-class head, and trains end to end.
    tm = build_model("timm:resnet18", 4, 3, 32, weights=pth)
    assert torch.equal(tm.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    assert any("fc.weight" in k for k in tm.weights_report.mismatched)
    assert not tm.backbone_frozen and all(p.requires_grad for p in tm.parameters())
    probe = build_model("timm:resnet18", 4, 3, 32, weights=pth, freeze_backbone=True)
    assert [n for n, p in probe.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    before = {k: v.clone() for k, v in probe.state_dict().items() if "running" in k}
    probe.train()(torch.randn(4, 3, 32, 32))
    assert all(torch.equal(v, probe.state_dict()[k]) for k, v in before.items())


def test_a_file_of_a_larger_model_is_named_for_the_tensors_it_cannot_place(tmp_path: Path, caplog) -> None:
    """resnet34's file into resnet18 fills every resnet18 tensor, so it loads; but a third of the
    file fits nothing, which says it was made for another model."""
    from safetensors.torch import save_file

    state, st, _ = _weights_files(tmp_path)
    with caplog.at_level("WARNING", logger="spermhead"):
        build_model("timm:resnet18", 4, 3, 32, weights=st)
    assert "fit no part of this model" not in caplog.text  # only its 1000-class head is left over
    # a few tensors of something else (a pretraining's projection head) are no sign of another model
    headed = {**state, "projection.0.weight": torch.zeros(8, 512), "projection.0.bias": torch.zeros(8)}
    save_file({k: v.contiguous() for k, v in headed.items()}, str(tmp_path / "headed.safetensors"))
    with caplog.at_level("WARNING", logger="spermhead"):
        build_model("timm:resnet18", 4, 3, 32, weights=tmp_path / "headed.safetensors")
    assert "fit no part of this model" not in caplog.text
    larger = {**state, **{f"layer3.{i}.extra.weight": torch.zeros(4) for i in range(2, 62)}}
    save_file({k: v.contiguous() for k, v in larger.items()}, str(tmp_path / "r34ish.safetensors"))
    with caplog.at_level("WARNING", logger="spermhead"):
        build_model("timm:resnet18", 4, 3, 32, weights=tmp_path / "r34ish.safetensors")
    assert "r34ish.safetensors into resnet18: 60 of its tensors fit no part of this model (e.g. layer3.10.extra" in caplog.text


def test_spermnet_starts_from_another_runs_weights(tmp_path: Path) -> None:
    """A bundle trained on one dataset (4 classes) seeds a model for another (5 classes):
    everything but the classifier is copied, through the bundle's `member0.1.` prefix."""
    import torch
    from safetensors.torch import save_file

    from spermhead.models.inference import standardized

    source = standardized(build_model("spermnet", 4, 1, 64), 1)
    bundle_state = {f"member0.{k}": v for k, v in source.state_dict().items()}
    save_file(bundle_state, str(tmp_path / "model.safetensors"))
    target = build_model("spermnet", 5, 1, 64, weights=tmp_path / "model.safetensors")
    report = target.weights_report
    assert report.prefix == "member0.1." and sorted(report.missing) == ["fc.bias", "fc.weight"]
    torch.testing.assert_close(target.stem[0].weight, source[1].stem[0].weight)


@pytest.mark.parametrize("name", ["seed-cnn", "seed-alexnet"])
def test_the_seeds_own_networks_start_from_a_weights_file(tmp_path: Path, name: str) -> None:
    """The seed's custom CNN and AlexNet-like net load a file too (a bundle's, or the synthetic
    source, so `--init synthetic` can start them): all but a classifier for other classes. They
    have no hub weights."""
    import torch
    from safetensors.torch import save_file

    from spermhead.models.inference import standardized

    source = standardized(build_model(name, 4, 1, 32), 1)
    save_file({f"member0.{k}": v for k, v in source.state_dict().items()}, str(tmp_path / "model.safetensors"))
    target = build_model(name, 5, 1, 32, weights=tmp_path / "model.safetensors")
    last = [k for k, m in target.named_modules() if isinstance(m, torch.nn.Linear)][-1]
    assert sorted(target.weights_report.missing) == [f"{last}.bias", f"{last}.weight"]
    first = next(k for k, v in target.state_dict().items() if v.dim() == 4)  # the first convolution
    torch.testing.assert_close(target.state_dict()[first], source[1].state_dict()[first])
    if name == "seed-cnn":  # its first dense layer reads the flattened image, so 48 px's cannot start 32 px
        with pytest.raises(ConfigError, match=r"only .* weights fit it.*classifier\.1\.weight"):
            build_model(name, 5, 1, 48, weights=tmp_path / "model.safetensors")
    with pytest.raises(ConfigError, match=f"{name} has no hub weights; pass --weights FILE"):
        build_model(name, 4, 1, 32, pretrained=True)


def test_weights_of_another_width_are_refused_and_an_ensemble_named(tmp_path: Path, caplog) -> None:
    """A file that fills almost nothing of the model is no warm start: refused, not a warning.
    A bundle's file holds one model per fold: the load says it takes the first."""
    from safetensors.torch import save_file

    from spermhead.models.inference import standardized

    members = [standardized(build_model("spermnet", 4, 1, 64), 1) for _ in range(3)]
    bundle_state = {f"member{i}.{k}": v for i, m in enumerate(members) for k, v in m.state_dict().items()}
    save_file(bundle_state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ConfigError, match=r"only [\d,]+ of this model's [\d,]+ weights fit it; \d+ tensors have "
                                          r"another shape \(e.g. .*another width, depth or architecture"):
        build_model("spermnet", 4, 1, 64, weights=tmp_path / "model.safetensors", width=16)
    with caplog.at_level("WARNING", logger="spermhead"):
        target = build_model("spermnet", 5, 1, 64, weights=tmp_path / "model.safetensors")
    said = " | ".join(r.getMessage() for r in caplog.records)
    assert "holds a bundle's 3 models (one per fold); the first, member0, is the start" in said
    assert "2 model tensors keep their random init (0 not in the file, 2 of another shape" in said
    torch.testing.assert_close(target.stem[0].weight, members[0][1].stem[0].weight)
    caplog.clear()  # a bundle of one model (a refit, a split) is no ensemble to speak of
    save_file({f"member0.{k}": v for k, v in members[0].state_dict().items()}, str(tmp_path / "one.safetensors"))
    with caplog.at_level("WARNING", logger="spermhead"):
        build_model("spermnet", 5, 1, 64, weights=tmp_path / "one.safetensors")
    assert "holds a bundle's" not in caplog.text and "keep their random init" in caplog.text


def test_missing_tensors_are_reported_once_per_file(tmp_path: Path, caplog) -> None:
    """Every CV fold loads the same start: its missing classifier is said once, not per fold."""
    from safetensors.torch import save_file

    state = {k: v for k, v in build_model("spermnet", 4, 1, 64).state_dict().items() if not k.startswith("fc.")}
    save_file(state, str(tmp_path / "backbone.safetensors"))
    with caplog.at_level("WARNING", logger="spermhead"):
        for _ in range(3):
            build_model("spermnet", 5, 1, 64, weights=tmp_path / "backbone.safetensors")
    said = [r for r in caplog.records if "keep their random init" in r.getMessage()]
    assert len(said) == 1 and "2 model tensors" in said[0].getMessage()


def test_missing_tensors_are_reported_for_each_model_given_the_file(tmp_path: Path, caplog) -> None:
    """`select` may give one file to two models: each says what of it does not fit."""
    from safetensors.torch import save_file

    save_file(build_model("timm:resnet18", 1000, 3, 32).state_dict(), str(tmp_path / "r18.safetensors"))
    with caplog.at_level("WARNING", logger="spermhead"):
        for name in ("timm:resnet18", "timm:resnet34", "timm:resnet34"):
            build_model(name, 4, 1, 32, weights=tmp_path / "r18.safetensors")
    said = [r.getMessage() for r in caplog.records if "keep their random init" in r.getMessage()]
    file = tmp_path / "r18.safetensors"
    assert len(said) == 2 and said[0].startswith(f"{file} into resnet18: 2 model tensors"), said
    assert said[1].startswith(f"{file} into resnet34: "), said  # each names its model


def test_frozen_only_with_weights(tmp_path: Path) -> None:
    _, st, _ = _weights_files(tmp_path)
    random = build_model("seed-resnet50", 4, 1, 32, **SMALL_BACKBONE)
    assert not random.backbone_frozen and all(p.requires_grad for p in random.parameters())
    unfrozen = build_model("seed-resnet50", 4, 1, 32, weights=st, freeze_backbone=False, **SMALL_BACKBONE)
    assert not unfrozen.backbone_frozen and all(p.requires_grad for p in unfrozen.parameters())


def test_bad_weights_files(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    with pytest.raises(ConfigError, match="not found"):
        build_model("seed-resnet50", 4, weights=tmp_path / "nope.safetensors", **SMALL_BACKBONE)
    other = tmp_path / "other.safetensors"
    save_file({"encoder.layer.weight": torch.zeros(3, 3)}, str(other))
    with pytest.raises(ConfigError, match="other.safetensors.*match"):
        build_model("seed-resnet50", 4, weights=other, **SMALL_BACKBONE)


def test_pretrained_offline_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    from spermhead.models import weights

    # Unreachable hub and an empty cache, whatever the machine running the test has.
    monkeypatch.setattr(weights, "HUB_HOST", "hub.invalid")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(ConfigError, match="--weights") as err:
        build_model("seed-resnet50", 4, pretrained=True, **SMALL_BACKBONE)
    assert "save_file" in str(err.value) and "resnet18" in str(err.value)


def _perturb_batchnorm(model: nn.Module, shape: tuple[int, int, int]) -> None:
    """Train-mode forwards move the BatchNorm statistics away from their init values."""
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(4, *shape))


ROUNDTRIP = [
    ("spermnet", {}), ("spermnet", {"width": 8, "depths": [1, 1]}), ("seed-cnn", {"l2_conv": 0.01}),
    ("seed-alexnet", {}), ("timm:resnet18", {}), ("timm:resnet18", {"freeze_backbone": True}),
    ("seed-resnet50", SMALL_BACKBONE), ("seed-efficientnet-b7", {"backbone": "efficientnet_b0"}),
]


def test_every_registered_model_has_a_roundtrip_case() -> None:
    from spermhead.models.registry import model_names

    assert set(model_names()) <= {name for name, _ in ROUNDTRIP}, "add the new model to ROUNDTRIP"


@pytest.mark.parametrize("name,kwargs", ROUNDTRIP)
def test_state_dict_roundtrip(name: str, kwargs: dict, tmp_path: Path) -> None:
    in_chans, size = 1, 32
    model = build_model(name, 3, in_chans, size, **kwargs)
    _perturb_batchnorm(model, (in_chans, size, size))
    spec = json.loads(json.dumps(model_spec(model)))  # bundles store it as JSON
    rebuilt = build_model(name, num_classes=3, in_chans=in_chans, image_size=size, **spec)
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(5, in_chans, size, size)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), rebuilt.eval()(x))
    assert model_spec(rebuilt) == spec and rebuilt.l2_conv == model.l2_conv


def test_bundle_roundtrip_of_frozen_model(tmp_path: Path) -> None:
    """A pretrained, frozen seed model rebuilt by load_bundle without the weights file."""
    from spermhead.models.inference import fast_layout, standardized
    from spermhead.serving.bundle import BundleMeta, load_bundle, save_bundle

    _, st, _ = _weights_files(tmp_path)
    net = build_model("seed-resnet50", 4, 1, 32, weights=st, l2_conv=0.01, **SMALL_BACKBONE)
    model = standardized(net, 1, [0.4], [0.2])  # as training wraps it
    _perturb_batchnorm(model, (1, 32, 32))
    assert not net.backbone.training  # model.train() on the wrapper keeps the frozen backbone in eval
    meta = BundleMeta(architecture="seed-resnet50", classes=["normal", "tapered", "pyriform", "amorphous"],
                      preprocess={"image_size": 32}, in_chans=1, image_size=32, model_kwargs=model_spec(net))
    st.unlink()  # serving has no weights file
    bundle = load_bundle(save_bundle(tmp_path / "bundle", [model], meta))
    member = bundle.model.members[0][1]
    assert member.backbone_frozen and not any(p.requires_grad for p in member.backbone.parameters())
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():  # loaded in the layout training runs in, so to the bit as trained
        assert torch.equal(fast_layout(model).eval()(x), bundle.model(x))


def test_cli_models_json() -> None:
    from typer.testing import CliRunner

    from spermhead.cli import app

    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert {r["name"] for r in rows} == set(model_names())
    assert all(r["params"] > 0 for r in rows)


def test_tta_averages_only_the_trained_symmetries():
    from spermhead.models.inference import flip_views, predict_proba
    from spermhead.training.augment import tta_flips

    assert tta_flips("aligned") == "hv" and tta_flips("directed") == "v" and tta_flips("none") == "hv"
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert len(flip_views(x, "hv")) == 4 and len(flip_views(x, "v")) == 2
    assert torch.equal(flip_views(x, "v")[1], x.flip(-2))

    class LeftHeavy(torch.nn.Module):  # says class 0 when the left half is brighter
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            d = x[..., :2].mean((1, 2, 3)) - x[..., 2:].mean((1, 2, 3))
            return torch.stack([d, -d], -1) * 10

    img = np.zeros((1, 1, 4, 4), np.uint8)
    img[..., :2] = 255
    directed = predict_proba(LeftHeavy(), img, [0.0], [1.0], tta=True, flips="v")
    both = predict_proba(LeftHeavy(), img, [0.0], [1.0], tta=True, flips="hv")
    assert directed[0, 0] > 0.99  # a vertical flip keeps which end is which
    np.testing.assert_allclose(both[0], [0.5, 0.5], atol=1e-6)  # a horizontal flip cancels it


def test_weight_files_are_readable_as_the_umask_allows(tmp_path):
    import os
    import stat

    from spermhead.models.weights import write_safetensors

    old = os.umask(0o022)
    try:
        path = write_safetensors({"w": torch.zeros(2)}, tmp_path / "w.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # safetensors alone writes 0600


def test_a_builder_that_records_no_options_still_rebuilds_from_its_spec(monkeypatch):
    """A contributor's model need not set `model_kwargs`: the options it was built with are kept,
    so its bundle rebuilds the same shapes."""
    from torch import nn

    from spermhead.models import registry

    def tiny(num_classes: int, in_chans: int, image_size: int, *, drop_rate: float, width: int = 8) -> nn.Module:
        return nn.Sequential(nn.Conv2d(in_chans, width, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Dropout(drop_rate), nn.Linear(width, num_classes))

    monkeypatch.setitem(registry._REGISTRY, "tiny", registry._Entry(tiny, "a contributor's model"))
    model = registry.build_model("tiny", 4, 1, 32, width=4)
    spec = registry.model_spec(model)
    assert spec["width"] == 4
    again = registry.build_model("tiny", 4, 1, 32, **spec)
    again.load_state_dict(model.state_dict())  # the same shapes: width 4, not the default 8


@pytest.mark.parametrize("name", ["spermnet", "seed-cnn"])
def test_training_and_serving_run_channels_last_with_the_same_answers(tmp_path: Path, name: str) -> None:
    """The fast CPU layout: a wrapped model's convolutions hold channels-last weights, answers match
    the usual layout up to float rounding, and saved weights load back into either layout."""
    from spermhead.config import TrainConfig
    from spermhead.models.inference import predict_proba, standardized
    from spermhead.models.weights import write_safetensors
    from spermhead.training.module import HeadClassifier

    torch.manual_seed(0)
    usual = standardized(build_model(name, 4, 1, 32), 1, [0.4], [0.2]).eval()
    fast = standardized(build_model(name, 4, 1, 32), 1, [0.4], [0.2])
    fast.load_state_dict(usual.state_dict())
    HeadClassifier(fast, TrainConfig(), steps_per_epoch=1)  # training wraps it so
    convs = [m.weight for m in fast.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    assert any(not w.is_contiguous() for w in convs)  # (1-channel and 1x1 kernels read the same both ways)
    images = np.random.default_rng(0).integers(0, 256, (6, 1, 32, 32), dtype=np.uint8)
    a, b = (predict_proba(m, images, [0.0], [1.0], tta=True) for m in (usual, fast))
    np.testing.assert_allclose(a, b, atol=1e-5)
    path = write_safetensors(fast.state_dict(), tmp_path / "w.safetensors")  # written in the usual order
    from safetensors.torch import load_file

    usual.load_state_dict(load_file(path))
    np.testing.assert_allclose(predict_proba(usual, images, [0.0], [1.0]), predict_proba(fast, images, [0.0], [1.0]),
                               atol=1e-5)


def test_a_seed_backbone_net_takes_its_head_from_a_file_of_its_own_kind(tmp_path: Path) -> None:
    """A synthetic source, a fold's model or a bundle of the seed's ResNet50/B7 net brings its dense
    head as well as its backbone (the head had been left at random under a frozen backbone)."""
    from spermhead.models.weights import write_safetensors

    torch.manual_seed(0)
    source = build_model("seed-resnet50", 4, 1, 32, **SMALL_BACKBONE)
    own, bundle = tmp_path / "own.safetensors", tmp_path / "bundle.safetensors"
    write_safetensors(source.state_dict(), own)
    write_safetensors({f"member0.1.{k}": v for k, v in source.state_dict().items()}, bundle)
    for path in (own, bundle):
        torch.manual_seed(1)
        model = build_model("seed-resnet50", 4, 1, 32, weights=path, **SMALL_BACKBONE)
        for k, v in source.state_dict().items():
            assert torch.equal(model.state_dict()[k], v), (path.name, k)
        assert model.head_loaded == len(model.head.state_dict())
        assert not any(".head." in k or k.startswith("head.") for k in model.weights_report.unexpected)
    # other classes: the hidden layers come along, the output layer starts new
    three = build_model("seed-resnet50", 3, 1, 32, weights=own, **SMALL_BACKBONE)
    assert torch.equal(three.head[0].weight, source.head[0].weight)
    assert three.head[-1].weight.shape[0] == 3 and three.head_loaded == len(three.head.state_dict()) - 2


def test_a_timm_model_built_for_one_input_size_is_built_for_the_runs() -> None:
    """ViT-like timm models take one input size (224 by default): built for the run's, or the first
    batch fails; CNNs take no such option and are built as before."""
    vit = build_model("timm:vit_tiny_patch16_224", 4, 1, 64).eval()
    assert vit(torch.zeros(2, 1, 64, 64)).shape == (2, 4)
    cnn = build_model("timm:resnet18", 4, 1, 48).eval()
    assert cnn(torch.zeros(1, 1, 48, 48)).shape == (1, 4)


def test_spermnet_options_of_the_wrong_kind_are_named_not_a_traceback() -> None:
    with pytest.raises(ConfigError, match="whole numbers"):
        build_model("spermnet", num_classes=4, in_chans=1, image_size=32, width="abc")
    with pytest.raises(ConfigError, match=r"at least 1; got width -3"):
        build_model("spermnet", num_classes=4, in_chans=1, image_size=32, width=-3)
    for name, value in (("width", 2.7), ("stem_stride", 2.9), ("depths", "22"), ("width", True)):
        with pytest.raises(ConfigError, match=f"spermnet: {name} "):  # not cut down to a whole number
            build_model("spermnet", num_classes=4, in_chans=1, image_size=32, **{name: value})
    assert build_model("spermnet", num_classes=4, in_chans=1, image_size=32, width=8.0).model_kwargs["widths"][0] == 8
    with pytest.raises(ConfigError, match=r"at least 1; got width 8, widths \[8, 16\], depths \[1, 0\]"):
        build_model("spermnet", num_classes=4, in_chans=1, image_size=32, width=8, depths=[1, 0])


def test_a_builder_that_fails_on_an_option_stops_the_run_with_its_name(tmp_path, monkeypatch) -> None:
    from spermhead.training import run
    from spermhead.training.options import build_run_config

    def failing(cfg, num_classes):
        raise ValueError("invalid literal for int() with base 10: 'abc'")

    monkeypatch.setattr(run, "build_network", failing)
    cfg = build_run_config("hushem", str(tmp_path / "run"), model="spermnet")
    with pytest.raises(ConfigError, match=r"spermnet with options \{\}: invalid literal"):
        run.check_model(cfg, 4)
