"""SpermNet: the project's default model, a small ResNet for aligned heads at 32-64 px.

Chosen for training from scratch on a few hundred images and for speed on a laptop CPU:
a stem that brings 64 px down to 16 x 16 with two stride-2 convs, then four stages of
basic residual blocks (BatchNorm, ReLU; 1-1-2-1 blocks, 24-48-96-192 channels) that halve
the resolution as they double the width, global average pooling, dropout and one linear
layer: 0.86M parameters. Against a first stage at 32 x 32 it was both faster and more
accurate in our HuSHeM cross-validation; the options tried are in benchmarks/RESULTS.md
("## Models")."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

DEFAULT_WIDTH = 24  # first-stage channels; later stages double it
DEFAULT_DEPTHS = (1, 1, 2, 1)  # blocks per stage


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (a 1x1 projection when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def make_stem(in_chans: int, width: int, stride: int) -> nn.Sequential:
    """Stride 1 or 2: one 3x3 conv. Stride 4: two 3x3 stride-2 convs, since a single 3x3
    conv with stride 4 would skip pixels."""
    def conv(c_in: int, c_out: int, s: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, stride=s, padding=1, bias=False), nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True)]

    if stride == 4:
        half = max(width // 2, 1)
        return nn.Sequential(*conv(in_chans, half, 2), *conv(half, width, 2))
    return nn.Sequential(*conv(in_chans, width, stride))


def default_stem_stride(image_size: int) -> int:
    """The first stage runs at about 16 x 16 px: 64 px -> stride 4, 32-63 px -> 2, less -> 1."""
    return 4 if image_size >= 64 else 2 if image_size >= 32 else 1


class SpermNet(nn.Module):
    """`width`: channels of the first stage (stages use width x 1, 2, 4, 8).
    `depths`: residual blocks per stage. `stem_stride`: None picks it from `image_size`.
    `cosine_scale`: 0 for a plain linear classifier; above 0, a cosine classifier (the features'
    and each class weight's directions compared, times this scale), which keeps a few real
    images from moving the classes' scales apart while the head is fitted (few-shot practice)."""

    def __init__(self, num_classes: int, in_chans: int = 1, image_size: int = 64, *,
                 width: int = DEFAULT_WIDTH, widths: Sequence[int] | None = None,
                 depths: Sequence[int] = DEFAULT_DEPTHS, stem_stride: int | None = None,
                 drop_rate: float = 0.1, cosine_scale: float = 0.0) -> None:
        super().__init__()
        widths = [width * 2**i for i in range(len(depths))] if widths is None else list(widths)
        if len(widths) != len(depths) or not widths:
            raise ValueError(f"widths {widths} and depths {list(depths)} must be non-empty, same length")
        self.stem_stride = default_stem_stride(image_size) if stem_stride is None else int(stem_stride)
        self.stem = make_stem(in_chans, widths[0], self.stem_stride)
        stages: list[nn.Module] = []
        c_in = widths[0]
        for i, (depth, c_out) in enumerate(zip(depths, widths, strict=True)):
            blocks = [BasicBlock(c_in if j == 0 else c_out, c_out, stride=2 if (i > 0 and j == 0) else 1)
                      for j in range(depth)]
            stages.append(nn.Sequential(*blocks))
            c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(drop_rate)
        if cosine_scale < 0:
            raise ValueError(f"cosine_scale {cosine_scale}: 0 (a linear classifier) or above")
        self.cosine_scale = float(cosine_scale)
        self.fc = nn.Linear(c_in, num_classes, bias=not self.cosine_scale)
        self.num_features = c_in
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Zero the last BN of each block: every block starts as the identity (trains faster).
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.dropout(self.pool(self.forward_features(x)).flatten(1))
        if self.cosine_scale:
            return self.cosine_scale * F.linear(F.normalize(features, dim=1), F.normalize(self.fc.weight, dim=1))
        return self.fc(features)
