"""Grad-CAM (captum's LayerGradCam on the last convolution) drawn over the canonical crop,
so a user sees which part of the aligned head drove the predicted class."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import cv2
import numpy as np
import torch
from torch import nn

from spermhead.models.inference import to_input

# captum attaches hooks to the shared model; two requests at once must not mix them.
_LOCK = threading.Lock()


def last_conv(model: nn.Module, example: torch.Tensor | None = None) -> nn.Conv2d:
    """The last nn.Conv2d to run in a forward pass on `example` (registration order when no
    example is given): the deepest feature map, which Grad-CAM is defined on."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer for Grad-CAM")
    if example is None:
        return convs[-1]
    ran: list[nn.Conv2d] = []
    hooks = [c.register_forward_hook(lambda mod, _i, _o: ran.append(mod)) for c in convs]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
    return ran[-1] if ran else convs[-1]


def members_of(model: nn.Module) -> list[nn.Module]:
    """An Ensemble's members, or the model itself."""
    members = getattr(model, "members", None)
    return list(members) if isinstance(members, nn.ModuleList) else [model]


def gradcam_map(model: nn.Module, image: np.ndarray, mean: Sequence[float], std: Sequence[float],
                target: int) -> np.ndarray:
    """S x S float map in [0, 1] for class `target`; ensembles average their members' maps."""
    from captum.attr import LayerAttribution, LayerGradCam

    x = to_input(image[None], mean, std)
    size = tuple(image.shape[-2:])
    maps = []
    with _LOCK, torch.enable_grad():
        for member in members_of(model):
            member.eval()
            cam = LayerGradCam(member, last_conv(member, x))
            attr = cam.attribute(x.clone().requires_grad_(True), target=int(target), relu_attributions=True)
            up = LayerAttribution.interpolate(attr.detach(), size, interpolate_mode="bilinear")
            m = up[0].mean(0).numpy()
            peak = float(m.max())
            maps.append(m / peak if peak > 0 else np.zeros_like(m))
    return np.clip(np.mean(maps, axis=0), 0.0, 1.0).astype(np.float32)


def crop_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 C x S x S canonical image -> S x S x 3 RGB for display."""
    hwc = np.transpose(image, (1, 2, 0))
    return np.repeat(hwc, 3, axis=2) if hwc.shape[2] == 1 else np.ascontiguousarray(hwc[..., :3])


def overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Heatmap (JET) blended over the crop; S x S x 3 uint8 RGB."""
    base = crop_rgb(image)
    heat = cv2.applyColorMap(np.uint8(np.round(cam * 255)), cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    # Weight the heat by the map itself so cold regions keep the crop readable.
    w = (alpha * cam)[..., None]
    return np.uint8(np.clip(base * (1 - w) + heat * w, 0, 255))


def png_bytes(rgb_or_gray: np.ndarray, scale: int = 1) -> bytes:
    img = rgb_or_gray
    if scale > 1:
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()

