"""Online augmentation on whole batches of tensors (one affine warp per batch), so it stays fast
on a CPU. Applied to training batches only; validation and test never see it."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentSpec:
    rotate_deg: float = 0.0
    shift: float = 0.0  # fraction of the image size
    zoom: float = 0.0  # +/- fraction
    hflip: bool = False
    vflip: bool = False
    brightness: float = 0.0  # +/- additive, in normalised units
    contrast: float = 0.0  # +/- multiplicative fraction
    noise: float = 0.0
    rot180: bool = False  # aligned heads may face either way when the tail cannot be told


PRESETS = {
    "none": AugmentSpec(),
    "light": AugmentSpec(rotate_deg=5, shift=0.03, zoom=0.05, hflip=True, vflip=True),
    # Heads are already horizontal, so only small rotations; flips are symmetries of the class.
    "aligned": AugmentSpec(rotate_deg=10, shift=0.06, zoom=0.12, hflip=True, vflip=True,
                           brightness=0.15, contrast=0.15, noise=0.02),
    # As "aligned", but the tail stays on the right: where alignment tells head from tail, which
    # end is wider (pyriform) is a cue a horizontal flip would hide.
    "directed": AugmentSpec(rotate_deg=10, shift=0.06, zoom=0.12, vflip=True,
                            brightness=0.15, contrast=0.15, noise=0.02),
    # The seed's Keras ImageDataGenerator: rotation, shift, flips, brightness, zoom 20%.
    "seed": AugmentSpec(rotate_deg=30, shift=0.1, zoom=0.2, hflip=True, vflip=True, brightness=0.2),
    "strong": AugmentSpec(rotate_deg=20, shift=0.1, zoom=0.2, hflip=True, vflip=True,
                          brightness=0.25, contrast=0.25, noise=0.04),
}


def get_spec(name: str) -> AugmentSpec:
    if name not in PRESETS:
        from spermhead.errors import ConfigError

        raise ConfigError(f"unknown augmentation {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]


def tta_flips(name: str) -> str:
    """Flips for test-time augmentation: those the preset trains with ("h", "v"), since only
    those are symmetries the model has learnt. A preset without flips claims no symmetry either
    way, so it keeps both."""
    spec = get_spec(name)
    return ("h" if spec.hflip else "") + ("v" if spec.vflip else "") or "hv"


def warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Apply N x 2 x 3 affine maps (output -> input, normalised coordinates) to N x C x H x W."""
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    # Border padding repeats the background instead of inventing black corners.
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def augment_batch(x: torch.Tensor, spec: AugmentSpec, generator: torch.Generator | None = None) -> torch.Tensor:
    """x: N x C x H x W float (normalised). Each sample gets its own random transform."""
    if spec == PRESETS["none"]:
        return x
    n = x.shape[0]

    def uniform(scale: float) -> torch.Tensor:
        return (torch.rand(n, generator=generator) * 2 - 1) * scale

    angle = uniform(math.radians(spec.rotate_deg))
    if spec.rot180:
        angle = angle + math.pi * (torch.rand(n, generator=generator) < 0.5)
    scale = 1 + uniform(spec.zoom)
    sx = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if spec.hflip else torch.ones(n)
    sy = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0) if spec.vflip else torch.ones(n)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([
        torch.stack([cos * sx, -sin * sy, uniform(2 * spec.shift)], -1),
        torch.stack([sin * sx, cos * sy, uniform(2 * spec.shift)], -1),
    ], 1).to(x)
    out = warp(x, theta)
    if spec.contrast:
        out = out * (1 + uniform(spec.contrast)).view(n, 1, 1, 1).to(x)
    if spec.brightness:
        out = out + uniform(spec.brightness).view(n, 1, 1, 1).to(x)
    if spec.noise:
        out = out + spec.noise * torch.randn(out.shape, generator=generator).to(x)
    return out
