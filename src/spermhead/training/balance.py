"""Class balancing, on the training side only: a weighted sampler, a weighted loss, or the
seed's offline balancing (augmented copies of minority classes up to N per class)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler

from spermhead.training.augment import AugmentSpec, augment_batch

BALANCE_MODES = ("none", "sampler", "loss", "offline")


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse frequency, scaled so a balanced set gets weight 1 everywhere."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / (num_classes * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def balanced_sampler(labels: np.ndarray, num_classes: int, seed: int) -> WeightedRandomSampler:
    per_sample = class_weights(labels, num_classes)[torch.as_tensor(labels)]
    gen = torch.Generator().manual_seed(seed)
    return WeightedRandomSampler(per_sample.double(), num_samples=len(labels), replacement=True, generator=gen)


# The seed's offline set: rotations and flips of the originals.
OFFLINE_SPEC = AugmentSpec(rotate_deg=15, hflip=True, vflip=True, zoom=0.05)


def offline_balance(images: torch.Tensor, labels: np.ndarray, per_class: int, seed: int,
                    spec: AugmentSpec = OFFLINE_SPEC) -> tuple[torch.Tensor, np.ndarray]:
    """Every class grown (or kept) to `per_class` images: originals first, then augmented copies."""
    gen = torch.Generator().manual_seed(seed)
    out_x, out_y = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        out_x.append(images[idx])
        extra = per_class - len(idx)
        if extra > 0:
            pick = torch.as_tensor(idx)[torch.randint(len(idx), (extra,), generator=gen)]
            copies = augment_batch(images[pick].float() / 255, spec, gen)
            out_x.append((copies.clamp(0, 1) * 255).round().to(torch.uint8))
        out_y.append(np.full(max(per_class, len(idx)), c))
    return torch.cat(out_x), np.concatenate(out_y)
