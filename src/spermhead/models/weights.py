"""Pretrained weights for timm models: from a local file (`--weights FILE`, works offline)
or from the timm/Hugging Face hub (`--pretrained`, needs network).

A local file may hold a plain state dict or one wrapped under `state_dict`/`model`, saved
from the bare timm model, a DataParallel model (`module.`) or a spermhead seed model
(`backbone.`): the prefix that matches best is stripped. Classifier tensors whose shape
differs (1000 ImageNet classes vs ours) are skipped; a first conv saved for 3 channels is
adapted to gray input the way timm does it. A file that matches nothing is an error."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from spermhead.errors import ConfigError

log = logging.getLogger(__name__)

# ... and spermhead's own files: a fold's model ("1." after the Standardize layer) or a bundle's
# first member ("member0.1."), and either's backbone alone (the seed's ResNet50 and B7 nets)
MIN_FITTED_SHARE = 0.5  # of the model's weights (elements) the file must fill
# of the file's tensors that may fit nothing before it is called another model's (a pretraining's
# projection head is a few)
UNUSED_SHARE = 0.1
_PREFIXES = ("", "module.", "model.", "backbone.", "module.backbone.", "model.backbone.", "_orig_mod.",
             "1.", "member0.1.", "1.backbone.", "member0.1.backbone.")
_WRAPPERS = ("state_dict", "model", "state_dict_ema", "model_ema")
HUB_HOST = "huggingface.co"


def write_safetensors(tensors: dict[str, torch.Tensor], path: Path | str,
                      metadata: dict[str, str] | None = None) -> Path:
    """safetensors' `save_file`, but readable by others as the umask allows: the library writes
    0600, which keeps a bundle or cache from another user (say, the one running the server).
    Tensors of a model trained channels-last (`fast_layout`) are written in the usual order.

    `metadata` holds one entry at most: safetensors writes several in an order that changes from
    process to process, so the same weights would get another sha256 (which runs record and
    `--resume` compares)."""
    from safetensors.torch import save_file

    if metadata is not None and len(metadata) > 1:
        raise ValueError("write_safetensors: one metadata entry at most, or the file's bytes vary between processes")

    save_file({name: t.contiguous() for name, t in tensors.items()}, str(path), metadata=metadata)
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)
    return Path(path)


@dataclass
class LoadReport:
    """What a weights load matched; `summary()` is one line for logs and run reports."""

    source: str
    loaded: int = 0
    total: int = 0  # tensors in the target model's state dict
    missing: list[str] = field(default_factory=list)  # target keys the file lacks
    unexpected: list[str] = field(default_factory=list)  # file keys the target lacks
    mismatched: list[str] = field(default_factory=list)  # same key, other shape (e.g. classifier)
    adapted: list[str] = field(default_factory=list)  # first conv summed/repeated to in_chans
    prefix: str = ""

    def summary(self) -> str:
        parts = [f"{self.source}: loaded {self.loaded}/{self.total} tensors"]
        if self.prefix:
            parts.append(f"stripped prefix '{self.prefix}'")
        for label, keys in (("adapted to in_chans", self.adapted), ("missing", self.missing),
                            ("unexpected", self.unexpected), ("shape mismatch", self.mismatched)):
            if keys:
                shown = ", ".join(keys[:5]) + (f", ... (+{len(keys) - 5})" if len(keys) > 5 else "")
                parts.append(f"{label}: {shown}")
        return "; ".join(parts)


def file_sha256(path: str | Path) -> str:
    """The file's sha256, read in blocks (weights files can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a `.safetensors`, `.pth`, `.pt` or `.bin` file (no pickled code is run)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data: object = load_file(str(path))
        elif path.suffix in (".pth", ".pt", ".bin", ".ckpt"):
            data = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise ConfigError(f"{path}: unknown weights format; use .safetensors, .pth or .pt")
    except ConfigError:
        raise
    except Exception as exc:  # corrupt file, pickle with code objects, ...
        raise ConfigError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from exc
    # Training checkpoints wrap the tensors: take the first wrapper that holds a dict.
    while isinstance(data, dict) and not any(isinstance(v, torch.Tensor) for v in data.values()):
        inner = next((data[k] for k in _WRAPPERS if isinstance(data.get(k), dict)), None)
        if inner is None:
            break
        data = inner
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: holds no state dict (found {type(data).__name__})")
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ConfigError(f"{path}: holds no tensors")
    return tensors


def _first_conv(model: nn.Module) -> str | None:
    """State-dict key of the input conv's weight, from timm's pretrained config."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = cfg.get("first_conv")
    if isinstance(name, (list, tuple)):
        name = name[0]
    return f"{name}.weight" if name else None


def _in_chans(model: nn.Module) -> int:
    key = _first_conv(model)
    state = model.state_dict()
    if key and key in state:
        return int(state[key].shape[1])
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    return 3


def load_state_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> LoadReport:
    """Copy every tensor of `state` whose name and shape fit `model`; report the rest."""
    target = model.state_dict()
    # Strip the prefix under which most of the file's keys match the model.
    best, best_hits = "", -1
    for prefix in _PREFIXES:
        hits = sum(1 for k in state if k.startswith(prefix) and k[len(prefix):] in target)
        if hits > best_hits:
            best, best_hits = prefix, hits
    mapped = {k[len(best):]: v for k, v in state.items() if k.startswith(best)}
    report = LoadReport(source=source, total=len(target), prefix=best,
                        unexpected=sorted(k for k in state if not k.startswith(best)))
    first_conv = _first_conv(model)
    fit: dict[str, torch.Tensor] = {}
    for key, value in mapped.items():
        if key not in target:
            report.unexpected.append(key)
            continue
        want = target[key]
        if value.shape != want.shape and key == first_conv and value.dim() == 4 \
                and value.shape[0] == want.shape[0] and value.shape[2:] == want.shape[2:]:
            from timm.models import adapt_input_conv

            value = adapt_input_conv(want.shape[1], value.float(), base_chans=value.shape[1])
            report.adapted.append(key)
        if value.shape != want.shape:
            report.mismatched.append(f"{key} {tuple(value.shape)}->{tuple(want.shape)}")
            continue
        fit[key] = value.to(want.dtype)
    report.missing = sorted(k for k in target if k not in fit)
    report.loaded = len(fit)
    if not fit:
        raise ConfigError(
            f"{source}: none of its {len(state)} tensors match this model "
            f"(e.g. file has '{next(iter(state))}', model expects '{next(iter(target), '')}'); "
            "are these weights for another architecture?")
    # A classifier for other classes, or a backbone file without one, leaves a small part out;
    # another width or depth leaves nearly every weight at random, which is no warm start at all.
    params = dict(model.named_parameters())
    fitted = sum(v.numel() for k, v in fit.items() if k in params)
    total = sum(p.numel() for p in params.values())
    if fitted < MIN_FITTED_SHARE * total:
        example = f" (e.g. {report.mismatched[0]})" if report.mismatched else ""
        raise ConfigError(
            f"{source}: only {fitted:,} of this model's {total:,} weights fit it; {len(report.mismatched)} tensors "
            f"have another shape{example} and {len(report.missing) - len(report.mismatched)} are not in the file. "
            "Are these weights for another width, depth or architecture?")
    model.load_state_dict(fit, strict=False)
    return report


def _ensemble_size(report: LoadReport) -> int:
    """How many members a bundle file holds, where the load took its first; else 0."""
    if not report.prefix.startswith("member0."):
        return 0
    return 1 + len({k.split(".", 1)[0] for k in report.unexpected
                    if k.startswith("member") and not k.startswith("member0.")})


@contextlib.contextmanager
def _hub_offline_if_unreachable() -> Iterator[None]:
    """Without network, make huggingface_hub fail at once (or use its cache) instead of
    retrying for most of a minute."""
    try:
        socket.create_connection((HUB_HOST, 443), timeout=3).close()
        reachable = True
    except OSError:
        reachable = False
    if reachable or os.environ.get("HF_HUB_OFFLINE"):
        yield
        return
    import huggingface_hub.constants as hub_constants

    saved = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = saved


def _offline_help(name: str) -> str:
    return (f"cannot download pretrained weights for '{name}' (no network, or not on the hub). "
            "Download them on a machine with internet, e.g. "
            f"`m = timm.create_model('{name}', pretrained=True); "
            "safetensors.torch.save_file(m.state_dict(), 'weights.safetensors')`, "
            "copy the file here and pass --weights weights.safetensors (select: --weights MODEL=weights.safetensors)")


_WARNED_MISSING: set[tuple[str, str]] = set()


def load_pretrained(
    model_or_backbone: nn.Module, name: str, pretrained: bool = False, weights: str | Path | None = None,
) -> LoadReport | None:
    """Load pretrained weights into a timm model in place; None when neither is asked for.

    `name` is the timm model name (with an optional `.tag`), used for the hub and messages.
    `weights` (a local file) wins over `pretrained` (the hub)."""
    if weights is not None:
        report = load_state_into(model_or_backbone, read_state_dict(weights), str(weights))
        log.info("%s", report.summary())
        # once per file and model, not once per fold (select may give one file to several models)
        if (str(weights), name) not in _WARNED_MISSING:
            _WARNED_MISSING.add((str(weights), name))
            if report.missing:
                other = len(report.mismatched)
                log.warning("%s into %s: %d model tensors keep their random init (%d not in the file, %d of "
                            "another shape: %s)", weights, name, len(report.missing), len(report.missing) - other, other,
                            ", ".join(report.missing[:4]) + (", ..." if len(report.missing) > 4 else ""))
            unused = [] if _ensemble_size(report) else report.unexpected  # a bundle holds other parts too
            if len(unused) > UNUSED_SHARE * (len(unused) + report.loaded):
                log.warning("%s into %s: %d of its tensors fit no part of this model (e.g. %s); is it for a larger "
                            "model or another architecture?", weights, name, len(unused), ", ".join(unused[:3]))
            if (members := _ensemble_size(report)) > 1:
                log.warning("%s holds a bundle's %d models (one per fold); the first, member0, is the start",
                            weights, members)
        return report
    if not pretrained:
        return None
    from timm.models import load_pretrained as timm_load_pretrained

    cfg = getattr(model_or_backbone, "pretrained_cfg", None)
    if not cfg:
        raise ConfigError(f"'{name}': this model has no timm pretrained config; pass --weights FILE")
    total = len(model_or_backbone.state_dict())
    try:
        with _hub_offline_if_unreachable():
            timm_load_pretrained(
                model_or_backbone, pretrained_cfg=cfg,
                num_classes=getattr(model_or_backbone, "num_classes", 0),
                in_chans=_in_chans(model_or_backbone),
            )
    except Exception as exc:  # hub errors come as OSError, HTTP errors, RuntimeError, ...
        raise ConfigError(f"{_offline_help(name)} [{type(exc).__name__}: {str(exc)[:200]}]") from exc
    report = LoadReport(source=f"hub:{cfg.get('hf_hub_id') or cfg.get('url') or name}", total=total)
    # timm drops the classifier when our class count differs from the checkpoint's.
    heads = cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    if getattr(model_or_backbone, "num_classes", 0) not in (0, cfg.get("num_classes")):
        report.missing = sorted(k for k in model_or_backbone.state_dict()
                                if any(k.startswith(h + ".") for h in heads))
    report.loaded = total - len(report.missing)
    log.info("%s", report.summary())
    return report
