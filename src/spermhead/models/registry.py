"""Model registry: names -> modules that map `N x C x S x S` float images to `N x classes` logits.

Registered: `spermnet` (the default), the seed's `seed-cnn`, `seed-alexnet`, `seed-resnet50`,
`seed-efficientnet-b7`, and `timm:<name>` for any timm model.

Bundles rebuild a trained model with
`build_model(architecture, num_classes=, in_chans=, image_size=, **model_kwargs)` and then
load its state dict, without network or the original weights file. So training must store
`model_spec(model)` as the bundle's `model_kwargs`: it holds every structural option with
its resolved value (e.g. spermnet's widths and stem stride, and `freeze_backbone` of the
seed's backbone models, which pretrained weights had switched on), and never `pretrained`
or `weights`. `build_model` keeps the options a model was built with; a builder sets
`model.model_kwargs` only for options it resolves to something else (spermnet: `width` to
`widths`).

To add a model: write a builder `(num_classes, in_chans, image_size, *, drop_rate, **options)`
returning an `nn.Module` of logits, and add it to `_REGISTRY` below. `build_model` loads a weights
file into it (`--weights`, the synthetic source), unless the builder takes `pretrained` and
`weights` itself (hub weights, a frozen backbone). `spermhead models` lists it, and train,
export, predict and serve take it."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spermhead.errors import ConfigError

TIMM_PREFIX = "timm:"
Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    description: str
    params: int  # at 4 classes, 1 channel, 64 px


@dataclass(frozen=True)
class _Entry:
    builder: Builder
    description: str
    _: KW_ONLY
    hub: bool = False  # has hub weights (--pretrained): its backbone is a timm model
    freezes: bool = False  # from pretrained weights its backbone is frozen (the seed's), unless told not to


def _build_spermnet(num_classes: int, in_chans: int, image_size: int, *, drop_rate: float,
                    width: int | None = None, widths: list[int] | None = None,
                    depths: list[int] | None = None, stem_stride: int | None = None,
                    cosine_scale: float = 0.0) -> nn.Module:
    from spermhead.models.spermnet import DEFAULT_DEPTHS, DEFAULT_WIDTH, SpermNet, default_stem_stride

    def whole(value: Any, name: str) -> int:  # from a --model-option or a config file: not cut to fit
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"spermnet: {name} takes whole numbers; got {value!r}")
        return int(value)

    def wholes(values: Any, name: str) -> list[int]:
        if not isinstance(values, list | tuple):
            raise ConfigError(f"spermnet: {name} is a list of whole numbers; got {values!r}")
        return [whole(v, name) for v in values]

    depths = wholes(DEFAULT_DEPTHS if depths is None else depths, "depths")
    width = DEFAULT_WIDTH if width is None else whole(width, "width")
    widths = [width * 2**i for i in range(len(depths))] if widths is None else wholes(widths, "widths")
    stem_stride = default_stem_stride(image_size) if stem_stride is None else whole(stem_stride, "stem_stride")
    if width < 1 or min(widths, default=1) < 1 or min(depths, default=1) < 1:
        raise ConfigError(f"spermnet: widths and depths are at least 1; got width {width}, widths {widths}, "
                          f"depths {depths}")
    if not depths or len(widths) != len(depths) or stem_stride not in (1, 2, 4):
        raise ConfigError(f"spermnet: need as many widths as depths and stem_stride 1, 2 or 4; "
                          f"got widths {widths}, depths {depths}, stem_stride {stem_stride}")
    if isinstance(cosine_scale, bool) or not isinstance(cosine_scale, int | float) or cosine_scale < 0:
        raise ConfigError(f"spermnet: cosine_scale is 0 (a linear classifier) or a positive number; got {cosine_scale!r}")
    model = SpermNet(num_classes, in_chans, image_size, width=widths[0], widths=widths, depths=depths,
                     stem_stride=stem_stride, drop_rate=drop_rate, cosine_scale=float(cosine_scale))
    model.model_kwargs = {"widths": widths, "depths": depths, "stem_stride": stem_stride}
    return model


def _file_start(model: nn.Module, name: str, pretrained: bool, weights: str | Path | None) -> nn.Module:
    """`model` with a weights file loaded where given (a bundle's, the synthetic source's), for a
    model without hub weights. A classifier for other classes keeps its random init."""
    if pretrained:
        raise ConfigError(f"{name} has no hub weights; pass --weights FILE (e.g. the "
                          "model.safetensors of a bundle trained on another dataset)")
    if weights is not None:
        from spermhead.models.weights import load_pretrained

        model.weights_report = load_pretrained(model, name, False, weights)
    return model


def _build_seed_cnn(num_classes: int, in_chans: int, image_size: int, *, drop_rate: float) -> nn.Module:
    from spermhead.models.seed import SeedCNN

    return SeedCNN(num_classes, in_chans, image_size, drop_rate=drop_rate)


def _build_seed_alexnet(num_classes: int, in_chans: int, image_size: int, *, drop_rate: float,
                        dense: list[int] | None = None) -> nn.Module:
    from spermhead.models.seed import SeedAlexNet

    dense = [1024, 1024, 512] if dense is None else list(dense)
    model = SeedAlexNet(num_classes, in_chans, image_size, drop_rate=drop_rate, dense=dense)
    model.model_kwargs = {"dense": dense}
    return model


def _seed_backbone(default_backbone: str) -> Builder:
    def build(num_classes: int, in_chans: int, image_size: int, *, drop_rate: float,
              pretrained: bool = False, weights: str | Path | None = None,
              freeze_backbone: bool | None = None, backbone: str = default_backbone,
              head: list[int] | None = None) -> nn.Module:
        from spermhead.models.seed import SeedBackboneNet

        head = [512, 256] if head is None else list(head)
        model = SeedBackboneNet(backbone, num_classes, in_chans, pretrained=pretrained, weights=weights,
                                freeze_backbone=freeze_backbone, drop_rate=drop_rate, head=head)
        model.model_kwargs = {"backbone": backbone, "head": head, "freeze_backbone": model.backbone_frozen}
        return model

    return build


def _build_timm(timm_name: str, num_classes: int, in_chans: int, image_size: int, *, drop_rate: float,
                pretrained: bool = False, weights: str | Path | None = None,
                freeze_backbone: bool = False, **timm_kwargs: Any) -> nn.Module:
    import timm

    from spermhead.models.weights import load_pretrained

    def create(**extra: Any) -> nn.Module:
        return timm.create_model(timm_name, pretrained=False, num_classes=num_classes, in_chans=in_chans,
                                 drop_rate=drop_rate, **timm_kwargs, **extra)

    try:
        try:  # a model built for one input size (ViT, Swin, ...) is built for the run's
            model = create(**({} if "img_size" in timm_kwargs else {"img_size": image_size}))
        except TypeError as exc:
            if "img_size" not in str(exc):
                raise
            model = create()  # a CNN: any input size, and no such option
    except RuntimeError as exc:  # timm's "Unknown model"
        close = timm.list_models(f"*{timm_name.split('.')[0]}*")[:8]
        hint = f"; similar: {', '.join(close)}" if close else "; see timm.list_models()"
        raise ConfigError(f"'{TIMM_PREFIX}{timm_name}': {exc}{hint}") from exc
    except TypeError as exc:  # an option this timm model does not take
        raise ConfigError(f"'{TIMM_PREFIX}{timm_name}': {exc}") from exc
    model.weights_report = load_pretrained(model, timm_name, pretrained, weights)
    # Optional linear probe: everything but timm's classifier is frozen, and BatchNorm layers
    # become FrozenBatchNorm2d so train mode cannot move their statistics either.
    model.backbone_frozen = bool(freeze_backbone)
    if freeze_backbone:
        from timm.layers import freeze_batch_norm_2d

        model = freeze_batch_norm_2d(model)
        head = {id(p) for p in model.get_classifier().parameters()}
        for p in model.parameters():
            p.requires_grad_(id(p) in head)
    model.model_kwargs = {**timm_kwargs, "freeze_backbone": bool(freeze_backbone)}
    return model


_REGISTRY: dict[str, _Entry] = {
    "spermnet": _Entry(_build_spermnet, "Project default: small ResNet (24-192 channels, first stage at "
                       "16x16 px), fast on CPU from scratch"),
    "seed-cnn": _Entry(_build_seed_cnn, "Seed Model 1: conv 32@4x4, conv 64@2x2, pool, dense "
                       "576-1024-256, BatchNorm"),
    "seed-alexnet": _Entry(_build_seed_alexnet, "Seed Model 2: AlexNet-like, 5 conv + 4 dense, 5x5 "
                           "first filter for small input"),
    "seed-resnet50": _Entry(_seed_backbone("resnet50"), "Seed Model 3: timm ResNet-50 + 3 dense layers; "
                            "backbone frozen when pretrained", hub=True, freezes=True),
    "seed-efficientnet-b7": _Entry(_seed_backbone("tf_efficientnet_b7"), "Seed Model 4: timm "
                                   "EfficientNet-B7 (TF port) + 3 dense; frozen when pretrained", hub=True,
                                   freezes=True),
}


def model_names() -> list[str]:
    return list(_REGISTRY)


def has_hub_weights(name: str) -> bool:
    """Whether `--pretrained` can start the model from hub weights (spermnet and the seed's CNN and
    AlexNet-like net take a weights file only)."""
    entry = _REGISTRY.get(name)
    return name.startswith(TIMM_PREFIX) or (entry is not None and entry.hub)


def backbone_frozen(name: str, kwargs: dict[str, Any], *, pretrained_start: bool) -> bool:
    """Whether the model trains its dense head alone: a `freeze_backbone` option says so, else the
    seed's backbones freeze when they start from pretrained weights (a hub's or a file's)."""
    entry = _REGISTRY.get(name)
    if kwargs.get("freeze_backbone") is None:  # absent, or null in a file: the model decides, as it builds
        return entry is not None and entry.freezes and pretrained_start
    return bool(kwargs["freeze_backbone"])


def hub_models_text() -> str:
    """The models with hub weights, for an error that refuses --pretrained."""
    return ", ".join([n for n in _REGISTRY if has_hub_weights(n)] + [f"{TIMM_PREFIX}<name>"])


# What `build_model` takes itself, for every model, and where a run sets it: never a model option
# (kwargs), where it would be passed twice.
BUILD_SETTINGS = {"num_classes": "the dataset's classes", "in_chans": "--color", "image_size": "--image-size",
                  "pretrained": "--pretrained", "weights": "--weights", "l2_conv": "model.l2_conv in a config file",
                  "drop_rate": "model.drop_rate in a config file"}


def build_model(
    name: str,
    num_classes: int,
    in_chans: int = 1,
    image_size: int = 64,
    *,
    pretrained: bool = False,
    weights: str | Path | None = None,
    l2_conv: float = 0.0,
    drop_rate: float = 0.1,
    **kwargs: Any,
) -> nn.Module:
    """A model returning logits. Every model gets the attributes `architecture`, `l2_conv`,
    `backbone_frozen` and `model_kwargs` (see `model_spec`). Extra `kwargs` are the model's own
    options (spermnet: width, widths, depths, stem_stride, cosine_scale; seed-alexnet: dense; seed backbone
    models: backbone, head, freeze_backbone; timm:<name>: freeze_backbone and timm's options)."""
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    if in_chans < 1:
        raise ConfigError(f"in_chans must be >= 1 (1 gray, 3 rgb), got {in_chans}")
    if image_size < 16:
        raise ConfigError(f"image_size must be >= 16 px, got {image_size}")
    if l2_conv < 0 or not 0 <= drop_rate < 1:
        raise ConfigError(f"need l2_conv >= 0 and 0 <= drop_rate < 1, got {l2_conv}, {drop_rate}")
    common = {"drop_rate": float(drop_rate)}
    if name.startswith(TIMM_PREFIX):
        timm_name = name[len(TIMM_PREFIX):]
        if not timm_name:
            raise ConfigError("'timm:' needs a model name, e.g. timm:resnet18")
        model = _build_timm(timm_name, num_classes, in_chans, image_size, pretrained=pretrained,
                            weights=weights, **common, **kwargs)
    else:
        entry = _REGISTRY.get(name)
        if entry is None:
            raise ConfigError(f"unknown model '{name}'; choose one of {', '.join(_REGISTRY)}, "
                              f"or {TIMM_PREFIX}<name> for any timm model (e.g. timm:resnet18)")
        options = set(inspect.signature(entry.builder).parameters) - {
            "num_classes", "in_chans", "image_size", "drop_rate", "pretrained", "weights"}
        unknown = sorted(set(kwargs) - options)
        if unknown:
            raise ConfigError(f"model '{name}' has no option {', '.join(unknown)}; "
                              f"its options: {', '.join(sorted(options)) or 'none'}")
        if {"pretrained", "weights"} <= set(inspect.signature(entry.builder).parameters):  # hub, frozen backbone
            model = entry.builder(num_classes, in_chans, image_size, pretrained=pretrained, weights=weights,
                                  **common, **kwargs)
        else:
            model = _file_start(entry.builder(num_classes, in_chans, image_size, **common, **kwargs), name,
                                pretrained, weights)
    model.architecture = name
    model.l2_conv = float(l2_conv)
    if not hasattr(model, "backbone_frozen"):
        model.backbone_frozen = False
    # What a bundle must pass back to build_model to rebuild this exact module: the options given
    # (so a builder that records none still rebuilds), then what the builder resolved them to.
    given = {k: v for k, v in kwargs.items() if k not in ("pretrained", "weights")}
    model.model_kwargs = {**given, **getattr(model, "model_kwargs", {}), **common, "l2_conv": float(l2_conv)}
    return model


def model_spec(model: nn.Module) -> dict[str, Any]:
    """The `model_kwargs` for a bundle: JSON-ready; with (architecture, num_classes, in_chans,
    image_size) they rebuild the module so that its saved state dict loads exactly."""
    spec = getattr(model, "model_kwargs", None)
    if spec is None:
        raise ConfigError("this model was not made by build_model: no model_kwargs to save")
    return dict(spec)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def conv_l2_penalty(model: nn.Module, coefficient: float | None = None) -> torch.Tensor:
    """`coefficient` (default: the model's `l2_conv`) x the sum of squared conv weights: the seed's
    Keras `kernel_regularizer=l2(c)` on conv layers (variants 2.c/2.d). Add it to the loss.
    Frozen weights are left out: they cannot move, so they would only add a constant."""
    if coefficient is None:  # the registry model may sit inside a wrapper (Standardize, Ensemble)
        coefficient = next((m.l2_conv for m in model.modules() if hasattr(m, "l2_conv")), 0.0)
    coef = float(coefficient)
    weights = [m.weight for m in model.modules()
               if isinstance(m, nn.modules.conv._ConvNd) and m.weight.requires_grad]
    if coef == 0.0 or not weights:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        return torch.zeros((), device=device)
    return coef * torch.stack([w.pow(2).sum() for w in weights]).sum()


@cache
def _params_at_default(name: str) -> int:
    # The meta device allocates nothing: counting EfficientNet-B7 costs no memory or init time.
    try:
        with torch.device("meta"):
            return count_parameters(build_model(name, 4, 1, 64))
    except Exception:  # a model whose init needs real tensors
        return count_parameters(build_model(name, 4, 1, 64))


def list_models() -> list[ModelInfo]:
    """The registered models (not `timm:<name>`, which takes any timm model)."""
    return [ModelInfo(name, e.description, _params_at_default(name)) for name, e in _REGISTRY.items()]
