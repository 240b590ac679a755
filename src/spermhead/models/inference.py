"""Turn canonical uint8 images into class probabilities: the one path that evaluation,
`predict` and the app all share, so a served model scores exactly as it was assessed."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


def fast_layout(model: nn.Module) -> nn.Module:
    """The model with its weights in channels-last order (in place): oneDNN's CPU convolutions
    train spermnet 1.2-1.4x faster that way when the images come in that order too (`fast_input`;
    benchmarks/RESULTS.md, "Memory layout"). Training and serving both use it, so a served model
    answers to the bit as it was assessed; saved weights are in the usual order (`write_safetensors`)."""
    return model.to(memory_format=torch.channels_last)


def fast_input(x: torch.Tensor) -> torch.Tensor:
    """An N x C x H x W batch in the order `fast_layout` models run fastest on."""
    return x.contiguous(memory_format=torch.channels_last)


def to_input(images: np.ndarray | torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 N x C x H x W -> normalised float32 tensor."""
    x = torch.as_tensor(images).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - m) / s


def flip_views(x: torch.Tensor, flips: str = "hv") -> list[torch.Tensor]:
    """The aligned head's symmetries: horizontal ("h") and vertical ("v") flips keep it
    horizontal; `flips` names those the model was trained to treat as symmetries."""
    views = [x]
    if "h" in flips:
        views.append(x.flip(-1))
    if "v" in flips:
        views += [v.flip(-2) for v in views]
    return views


@torch.inference_mode()
def predict_proba(
    model: nn.Module,
    images: np.ndarray | torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    tta: bool = False,
    flips: str = "hv",
    class_bias: Sequence[float] | None = None,
    batch_size: int = 256,
) -> np.ndarray:
    """Probabilities, N x classes. `class_bias` is added to the log-probabilities
    (a prior correction chosen on validation data) before renormalising."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = fast_input(to_input(images[start : start + batch_size], mean, std))
        views = flip_views(x, flips) if tta else [x]
        probs = torch.stack([model(v).softmax(-1) for v in views]).mean(0)
        if class_bias is not None:
            logp = probs.clamp_min(1e-12).log() + torch.tensor(class_bias, dtype=probs.dtype)
            probs = logp.softmax(-1)
        out.append(probs)
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(out).numpy().astype(np.float32)


def apply_class_bias(probs: np.ndarray, bias: Sequence[float] | np.ndarray | None,
                     temperature: float | None = None) -> np.ndarray:
    """Add a log-prior correction to N x K probabilities, divide by `temperature` (calibration,
    training/temperature.py) and renormalise (numpy twin of `predict_proba`'s `class_bias`, for
    probabilities fused outside the network). T > 1 flattens, T < 1 sharpens; neither moves an
    argmax."""
    if (bias is None and temperature in (None, 1.0)) or len(probs) == 0:
        return probs
    logp = np.log(np.clip(probs, 1e-12, None))
    if bias is not None:
        logp = logp + np.asarray(bias, dtype=np.float64)
    if temperature not in (None, 1.0):
        logp = logp / float(temperature)
    logp -= logp.max(1, keepdims=True)
    p = np.exp(logp)
    return (p / p.sum(1, keepdims=True)).astype(np.float32)


def apply_temperature(probs: np.ndarray, temperature: float | None) -> np.ndarray:
    """`apply_class_bias` with the temperature alone."""
    return apply_class_bias(probs, None, temperature)


class Ensemble(nn.Module):
    """Averages the members' probabilities; returns their log so softmax gives the mean."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.members) == 1:
            return self.members[0](x)
        probs = torch.stack([m(x).softmax(-1) for m in self.members]).mean(0)
        return probs.clamp_min(1e-12).log()


class Standardize(nn.Module):
    """Per-channel standardisation with statistics from a fold's training side. It travels
    inside each model, so fold ensembles and ONNX exports carry their own statistics."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def standardized(net: nn.Module, channels: int, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> nn.Sequential:
    """`net` behind a Standardize layer; inputs are then plain [0, 1] images."""
    mean = list(mean) if mean is not None else [0.0] * channels
    std = list(std) if std is not None else [1.0] * channels
    return nn.Sequential(Standardize(mean, std), net)
