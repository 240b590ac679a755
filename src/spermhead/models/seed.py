"""The seed report's four architectures (section III.2), rebuilt in PyTorch.

The seed trained at 32 px in Keras; these work at any size >= 16 px. They return logits
(the seed's softmax is applied by the loss and by `predict_proba`). Where the report is
silent (AlexNet widths, head sizes), the choices below are ours and documented."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from spermhead.models.weights import load_pretrained, read_state_dict

HEAD_PREFIXES = ("head.", "1.head.", "member0.1.head.")  # the net's own, a fold's, a bundle's first member


def load_head(head: nn.Sequential, weights: str | Path) -> int:
    """Copy the dense head's tensors from a file of a SeedBackboneNet, those of the same shape
    (an output layer for other classes stays new); returns how many were copied."""
    state = read_state_dict(weights)
    target = head.state_dict()
    for prefix in HEAD_PREFIXES:
        part = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        fit = {k: v.to(target[k].dtype) for k, v in part.items() if k in target and v.shape == target[k].shape}
        if fit:
            head.load_state_dict(fit, strict=False)
            return len(fit)
    return 0


def _dense(n_in: int, n_out: int) -> list[nn.Module]:
    return [nn.Linear(n_in, n_out, bias=False), nn.BatchNorm1d(n_out), nn.ReLU(inplace=True)]


def _conv(c_in: int, c_out: int, k: int) -> list[nn.Module]:
    # Keras "same" padding, also for Model 1's even 4x4 and 2x2 kernels: the odd pixel of
    # padding goes right/bottom, as TensorFlow puts it.
    tail = [nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    if k % 2:
        return [nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False), *tail]
    before = (k - 1) // 2
    after = k - 1 - before
    return [nn.ZeroPad2d((before, after, before, after)), nn.Conv2d(c_in, c_out, k, bias=False), *tail]


class SeedCNN(nn.Module):
    """Model 1: conv 32@4x4 same, conv 64@2x2 same, max-pool 2, dense 576-1024-256, output.
    BatchNorm after every layer. The flatten makes it large: 64 * (S/2)^2 * 576 weights
    in the first dense layer (9.4M at 32 px, 37.7M at 64 px)."""

    def __init__(self, num_classes: int, in_chans: int = 1, image_size: int = 64,
                 drop_rate: float = 0.1) -> None:
        super().__init__()
        self.features = nn.Sequential(*_conv(in_chans, 32, 4), *_conv(32, 64, 2), nn.MaxPool2d(2))
        flat = 64 * (image_size // 2) ** 2
        self.classifier = nn.Sequential(
            nn.Flatten(), *_dense(flat, 576), *_dense(576, 1024), *_dense(1024, 256),
            nn.Dropout(drop_rate), nn.Linear(256, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class SeedAlexNet(nn.Module):
    """Model 2: AlexNet's 5 conv + 4 dense layers, scaled for 32 px input.

    AlexNet's 11x11 stride-4 first filter becomes 5x5 stride 1 (the seed "reduced the
    first filter"); its three 3x3/2 max-pools become 2x2/2 pools after conv 1, 2 and 5.
    Conv widths are AlexNet's (96-256-384-384-256); BatchNorm replaces LRN. An adaptive
    average pool to 4x4 before the dense layers (identity at 32 px) lets any input size
    share one head; the dense layers are 1024-1024-512-classes with dropout, as AlexNet's
    4096-wide ones would dwarf the data."""

    def __init__(self, num_classes: int, in_chans: int = 1, image_size: int = 64,
                 drop_rate: float = 0.1, dense: Sequence[int] = (1024, 1024, 512)) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *_conv(in_chans, 96, 5), nn.MaxPool2d(2),
            *_conv(96, 256, 5), nn.MaxPool2d(2),
            *_conv(256, 384, 3), *_conv(384, 384, 3), *_conv(384, 256, 3), nn.MaxPool2d(2),
        )
        self.pool = nn.AdaptiveAvgPool2d(4)
        layers: list[nn.Module] = [nn.Flatten()]
        n_in = 256 * 4 * 4
        for n in dense:
            layers += [*_dense(n_in, n), nn.Dropout(drop_rate)]
            n_in = n
        layers.append(nn.Linear(n_in, num_classes))
        self.classifier = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


class SeedBackboneNet(nn.Module):
    """Models 3 and 4: a timm backbone (global-pooled features) under three trainable dense
    layers (hidden sizes `head`, then the output).

    As in the seed, the backbone is frozen when pretrained weights are loaded; without
    weights it trains end to end, since a frozen random backbone would be a fixed random
    projection. `freeze_backbone` (None: decide from the weights) is stored in the bundle's
    model_kwargs so a rebuilt model has the same trainable set. A frozen backbone stays in
    eval mode during training, so its BatchNorm statistics keep their pretrained values
    (Keras does the same for frozen layers)."""

    def __init__(self, backbone: str, num_classes: int, in_chans: int = 1, *,
                 pretrained: bool = False, weights: str | Path | None = None,
                 freeze_backbone: bool | None = None, drop_rate: float = 0.1,
                 head: Sequence[int] = (512, 256)) -> None:
        super().__init__()
        import timm

        self.backbone = timm.create_model(backbone, pretrained=False, num_classes=0, in_chans=in_chans)
        self.weights_report = load_pretrained(self.backbone, backbone, pretrained, weights)
        if freeze_backbone is None:
            freeze_backbone = self.weights_report is not None
        self.backbone_frozen = bool(freeze_backbone)
        for p in self.backbone.parameters():
            p.requires_grad_(not self.backbone_frozen)
        layers: list[nn.Module] = []
        n_in = int(self.backbone.num_features)
        for n in head:
            layers += [nn.Linear(n_in, n), nn.ReLU(inplace=True), nn.Dropout(drop_rate)]
            n_in = n
        layers.append(nn.Linear(n_in, num_classes))
        self.head = nn.Sequential(*layers)
        # a file of this very net (a synthetic source, a fold, a bundle) brings its head too
        self.head_loaded = load_head(self.head, weights) if weights is not None else 0
        if self.head_loaded and self.weights_report is not None:  # what the head took is not "unexpected"
            self.weights_report.unexpected = [k for k in self.weights_report.unexpected
                                              if not k.startswith(HEAD_PREFIXES)]
        self.train()

    def train(self, mode: bool = True) -> SeedBackboneNet:
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))
