"""Supervised pretraining on rendered heads (`--init synthetic`).

Before the real folds, a model of the same architecture and input learns the WHO shape classes
from synthetic heads (`spermhead.data.synthetic`); every fold then starts from its weights
instead of a random initialisation. No real image takes part, so no fold can leak into it, and
it needs no download. The source model depends only on its settings, so it is trained once and
cached (`$SPERMHEAD_CACHE`, default `~/.cache/spermhead`); a second run reuses the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from spermhead import __version__
from spermhead.config import ModelConfig, RunConfig, TrainConfig, environment
from spermhead.errors import ConfigError
from spermhead.models.weights import file_sha256, write_safetensors
from spermhead.training.devices import resolve_accelerator

log = logging.getLogger(__name__)

# Bump when the renderer or the source recipe changes what a cached file holds.
SOURCE_FORMAT = 1
SOURCE_STREAM = 0x5EED  # first word of the source heads' RNG keys (see rendered_heads)


def source_style(cfg: RunConfig) -> str:
    """SCIAN's grey look and 5 classes (with *small*) for the named SCIAN sets, HuSHeM's otherwise
    (a folder of heads too, whatever its name), unless `init_style` names one."""
    from spermhead.data.readers import NAMED_DATASETS

    if cfg.model.init_style != "auto":
        return cfg.model.init_style
    named = cfg.dataset.lower()
    return "scian" if named in NAMED_DATASETS and named.startswith("scian") else "hushem"


def cache_root() -> Path:
    return Path(os.environ.get("SPERMHEAD_CACHE") or Path.home() / ".cache" / "spermhead")


# The run's training settings that `train_source` keeps (the others it fixes, or the source does
# not use); each enters the hash only away from its default, so sources cached before they did
# stay valid: every recipe trains at their defaults.
SOURCE_TRAIN_FIELDS = ("batch_size", "optimizer", "lr", "weight_decay", "schedule", "warmup_epochs",
                       "label_smoothing", "mixup", "cutmix", "swa", "sam")


def source_kwargs(cfg: RunConfig) -> dict[str, Any]:
    """The model options the source is built with: the run's, less freeze_backbone, since a source
    trains from random weights and a frozen random backbone would learn nothing (the run's own
    freezing applies when it loads the source)."""
    kwargs = {k: v for k, v in cfg.model.kwargs.items() if k != "freeze_backbone"}
    # a cosine classifier of 16 or 16.0 is one source; 0 is the plain one, as when it is not given
    if "cosine_scale" in kwargs and isinstance(kwargs["cosine_scale"], int | float):
        if kwargs["cosine_scale"]:
            kwargs["cosine_scale"] = float(kwargs["cosine_scale"])
        else:
            del kwargs["cosine_scale"]
    return kwargs


def source_settings(cfg: RunConfig) -> dict[str, Any]:
    """Everything the source model depends on; its hash names the cached file."""
    pre = {k: v for k, v in asdict(cfg.preprocess).items() if k != "max_pixels"}
    if pre["background"] == "keep":  # added later: at its default, earlier cached sources stay valid
        del pre["background"]
    settings = {"format": SOURCE_FORMAT, "model": cfg.model.name, "kwargs": source_kwargs(cfg),
                "drop_rate": cfg.model.drop_rate, "preprocess": pre, "style": source_style(cfg),
                "per_class": cfg.model.init_per_class, "epochs": cfg.model.init_epochs,
                "augment": cfg.train.augment, "seed": cfg.model.init_seed}
    defaults = TrainConfig()
    train = {k: getattr(cfg.train, k) for k in SOURCE_TRAIN_FIELDS if getattr(cfg.train, k) != getattr(defaults, k)}
    if cfg.model.l2_conv != ModelConfig().l2_conv:
        train["l2_conv"] = cfg.model.l2_conv
    if train:
        settings["train"] = train
    # The same settings train other weights at another thread count (CPU reductions add up in
    # another order) or on a GPU: keyed on them, a run repeated at its thread count starts from
    # the source it started from, not from whichever run trained the cache first.
    if resolve_accelerator(cfg.train.accelerator) == "gpu":
        settings["device"] = "gpu"
    else:
        settings["threads"] = cfg.train.num_threads or torch.get_num_threads()
    return settings


def reachable_settings(settings: dict[str, Any]) -> bool:
    """Whether `source_settings` can still give these (a cached record's): this format, with the
    thread count or device it was trained at (keyed since session 30; earlier sources lack them)."""
    return settings.get("format") == SOURCE_FORMAT and ("threads" in settings or "device" in settings)


def source_path(cfg: RunConfig) -> Path:
    settings = source_settings(cfg)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    name = "".join(c if c.isalnum() or c in "-_" else "-" for c in cfg.model.name)
    return cache_root() / "synthetic-init" / f"{name}-{digest}.safetensors"


def rendered_heads(cfg: RunConfig) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Canonical uint8 images (N x C x S x S) of `init_per_class` synthetic heads per class."""
    from spermhead.data.synthetic import STYLE_CLASSES, render_head
    from spermhead.preprocess.align import canonicalize

    style = source_style(cfg)
    classes = list(STYLE_CLASSES[style])
    images, labels = [], []
    for k, label in enumerate(classes):
        for i in range(cfg.model.init_per_class):
            # keyed apart from `spermhead data synth` (whose keys start with its --seed), so a
            # synthetic test set is not in the source unless written with --seed 24301 (0x5EED)
            rng = np.random.default_rng([SOURCE_STREAM, cfg.model.init_seed, k, i])
            rgb, _ = render_head(label, style, rng)
            images.append(canonicalize(rgb, cfg.preprocess).image)
            labels.append(k)
    return np.stack(images), np.asarray(labels), classes


def classifier_keys(net: nn.Module) -> list[str]:
    """The final linear layer's tensors: the class-specific part of a classification net."""
    last = [name for name, m in net.named_modules() if isinstance(m, nn.Linear)][-1]
    return [f"{last}.{k}" for k, _ in net.get_submodule(last).named_parameters()]


def synthetic_init_weights(cfg: RunConfig, classes: list[str], *, progress: bool = False) -> Path:
    """The cached source weights for this run's model and input, trained first if missing.

    The source's classifier comes along only when the run has the same classes in the same
    order; otherwise a copy without it is returned, so no class starts from another's weights."""
    path = source_path(cfg)
    record = cached_record(path)
    if record is None:
        with training_lock(path):  # runs started together with the same settings train it once
            record = cached_record(path) or train_source(cfg, path, progress=progress)
    if list(classes) == record["classes"]:
        return path
    # named after the source's contents: a source trained again under its name (a damaged record,
    # another torch) gets a fresh copy, never the old one's backbone
    backbone = path.with_name(f"{path.stem}-backbone-{file_sha256(path)[:12]}.safetensors")
    if not backbone.is_file():
        state = load_file(str(path))
        _save_atomic({k: v for k, v in state.items() if k not in record["classifier"]}, backbone, cfg.model.name)
        for stale in path.parent.glob(f"{path.stem}-backbone*.safetensors"):
            if stale != backbone:
                stale.unlink(missing_ok=True)  # a run started from it keeps its own copy (source.safetensors)
    return backbone


@contextlib.contextmanager
def training_lock(path: Path, *, wait: bool = True) -> Iterator[bool]:
    """An exclusive lock beside the cached file while one process trains it (POSIX only; where
    the lock cannot be taken, each process trains its own copy and the last rename wins). Yields
    whether it is held: without `wait`, False while another process holds it (`spermhead cache`
    leaves a source being trained alone)."""
    try:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path.with_suffix(".lock"), "a")  # noqa: SIM115 - released in finally
    except (ImportError, OSError):
        yield True  # train_source names an unwritable folder itself
        return
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        handle.close()  # closing releases the lock


def cached_record(path: Path) -> dict[str, Any] | None:
    """The record of a complete cached source (weights and record both readable), else None."""
    try:
        return json.loads(path.with_suffix(".json").read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None  # a damaged record: train the source again


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path, model: str) -> None:
    staged = path.with_name(f".{path.name}.{os.getpid()}.partial")  # same folder: the rename is atomic
    write_safetensors(tensors, staged, metadata={"spermhead": f"synthetic-init {model}"})
    os.replace(staged, path)  # whole or absent: a killed run leaves no half-written cache


def train_source(cfg: RunConfig, path: Path, *, progress: bool) -> dict[str, Any]:
    """Render the heads, train the source, write its weights and record; returns the record."""
    from spermhead.training.run import build_member, fit_member

    if cfg.model.init_per_class < 2 or cfg.model.init_epochs < 1:
        raise ConfigError("--init synthetic needs at least 2 heads per class and 1 epoch")
    try:  # before minutes of training, not after
        path.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(path.parent, os.W_OK):
            raise PermissionError(path.parent)
    except OSError as exc:
        raise ConfigError(f"{path.parent}: cannot write the synthetic source model there ({exc}); "
                          "set SPERMHEAD_CACHE to a writable folder") from None
    # a warning, the level that reaches a user who set up no logging: without it a first run sits
    # silent for many minutes, or shows a progress bar with the source's epochs, not the run's
    epochs = cfg.model.init_epochs
    log.warning("training the synthetic source model for %s at these input settings first (%d rendered heads "
                "per class, %d epoch%s: at the defaults 2.4-20 minutes on 2 cores; once, then cached in %s)",
                cfg.model.name, cfg.model.init_per_class, epochs, "s" * (epochs != 1), path.parent)
    start = time.perf_counter()
    images, labels, classes = rendered_heads(cfg)
    # The fold recipe, minus what only real data has: expert votes, validation, a prior to fix.
    # Focal loss and a backbone learning-rate share stay with the fine-tune: they were measured
    # from the recipe's source (RESULTS.md, sessions 27-28), so such a run shares its cache.
    train = replace(cfg.train, epochs=cfg.model.init_epochs, monitor="last", early_stopping_patience=0,
                    balance="none", soft_labels=0.0, members_per_fold=1, ema=0.0, focal=0.0,
                    backbone_lr=1.0)
    source_cfg = replace(cfg, train=train, model=replace(cfg.model, weights=None, pretrained=False,
                                                         kwargs=source_kwargs(cfg)),
                         loggers=("csv",))
    seed = cfg.model.init_seed
    L.seed_everything(seed, workers=True, verbose=False)
    member = build_member(source_cfg, len(classes), images)
    empty = np.zeros((0, *images.shape[1:]), dtype=images.dtype)
    with tempfile.TemporaryDirectory(prefix="spermhead-init-") as tmp:
        member, _, _ = fit_member(source_cfg, member, images, labels, empty, np.zeros(0, dtype=int), len(classes),
                                  Path(tmp), seed=seed, progress=progress, resume=False,
                                  label="the synthetic source model")
    net = member[1]  # without the Standardize layer: each fold brings its own statistics
    record = {"settings": source_settings(cfg), "classes": classes, "classifier": classifier_keys(net),
              "images": int(len(images)), "wall_seconds": time.perf_counter() - start, "spermhead": __version__,
              "environment": environment()}
    path.with_suffix(".json").write_text(json.dumps(record, indent=2, default=str))
    _save_atomic({k: v.detach().contiguous() for k, v in net.state_dict().items()}, path, cfg.model.name)
    return record
