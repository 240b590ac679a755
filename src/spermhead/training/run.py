"""One training run: dataset -> folds -> a model per fold -> out-of-fold predictions ->
metrics, plots, report and a model bundle, all in one run directory.

Every fold's test part is scored once, by the checkpoint chosen on that fold's validation
part. Completed folds are kept on disk, so `--resume` continues where a run stopped."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import os
import pickle
import shutil
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import CSVLogger
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from spermhead.config import (
    ProtocolConfig,
    RunConfig,
    config_differences,
    environment,
    load_config,
    save_config,
)
from spermhead.data.extra import pool_extra_training
from spermhead.data.readers import load_dataset
from spermhead.data.samples import CSV_FILE, SampleTable
from spermhead.errors import ConfigError, SpermheadError
from spermhead.evaluation.composition import check_intervals
from spermhead.evaluation.metrics import headline
from spermhead.evaluation.predictions import Predictions, concat
from spermhead.models.inference import Ensemble, predict_proba, standardized
from spermhead.models.pixels import PixelModel
from spermhead.models.registry import build_model, model_spec
from spermhead.models.shape import ShapeModel, fuse_all
from spermhead.models.weights import file_sha256, write_safetensors
from spermhead.preprocess.acquisition import describe, fit_ranges
from spermhead.training.augment import tta_flips
from spermhead.training.balance import balanced_sampler, class_weights, offline_balance
from spermhead.training.checkpoints import MovableCheckpoint, ResumableEarlyStopping
from spermhead.training.devices import resolve_accelerator, trainer_device
from spermhead.training.module import HeadClassifier
from spermhead.training.operating import (
    apply_bias,
    choose_balanced_bias,
    learnt_prior_correction,
    prior_bias,
    prior_shift,
)
from spermhead.training.progress import QuietProgressBar, announce
from spermhead.training.protocols import (
    Fold,
    duplicate_groups,
    make_folds,
    split_twins_note,
    with_extra_training,
)
from spermhead.training.quiet import fit_quietly, quiet_trainer
from spermhead.training.targets import soft_targets
from spermhead.training.temperature import fit_temperature, pooled_temperature

log = logging.getLogger(__name__)
SYNTHETIC_NOTE = ("these images are synthetic (spermhead data synth; SYNTHETIC.txt in the dataset folder): "
                  "the figures say how the pipeline runs, not how it does on real heads")


@dataclass
class FoldResult:
    index: int
    members: list[nn.Module]  # one per seed of the fold's seed ensemble
    test_probs: np.ndarray  # posteriors under the training prior (fused where the run fuses), rows = fold.test
    bias: np.ndarray  # balanced operating point, chosen on this fold's validation part
    history: list[dict[str, Any]]
    seconds: float  # training time of one member
    epochs: int  # epochs trained
    val_labels: list[int] = field(default_factory=list)  # the tuning signal: never the test fold
    val_pred: list[int] = field(default_factory=list)  # at the accuracy point
    val_pred_balanced: list[int] = field(default_factory=list)  # at the balanced point
    accuracy_bias: np.ndarray | None = None  # the accuracy point's prior shift (extra training images)
    cnn_prior: np.ndarray | None = None  # the training prior given back to the CNN (balanced training)
    shape: ShapeModel | None = None  # fused with the CNN where `shape_fusion` > 0
    pixels: PixelModel | None = None  # fused with the CNN where `pixel_fusion` > 0
    temperature: float = 1.0  # fitted on the validation part; divides the final log-probabilities
    kept_epochs: int = 0  # epochs up to the checkpoint kept (0: as `epochs`, the last)
    fold_seconds: float = 0.0  # the whole fold's training: every member, the refit too
    read_back: bool = False  # finished earlier and read back by --resume


@dataclass
class RunResult:
    out: Path
    metrics: dict[str, Any]
    predictions: Predictions
    folds: list[FoldResult] = field(default_factory=list)
    timing: dict[str, Any] = field(default_factory=dict)


def _inputs(cfg: RunConfig) -> list[Path]:
    """The files and folders a run reads that a user names: its data, extra images, weights."""
    named = [cfg.dataset, cfg.data_dir, *cfg.extra_train, cfg.model.weights]
    return [Path(p).absolute() for p in named if p and Path(p).exists()]


def check_run_dir(out: Path, *, overwrite: bool, resume: bool, inputs: Sequence[Path] = ()) -> None:
    """Refuse an output that cannot become the run folder, before any image is read. --overwrite
    deletes the folder, so it replaces only a run folder (one with its config.yaml) that holds
    none of the run's `inputs`: `--out . --overwrite` once took the images with it."""
    if overwrite and resume:  # it went on with the run, the --overwrite unsaid
        raise ConfigError("--overwrite starts the run again and --resume goes on with it: give one")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: is a file, not a folder; give --out a folder for the run")
    if not (out.is_dir() and any(out.iterdir())):
        return
    if not (overwrite or resume):
        raise ConfigError(f"{out}: run directory exists; pass --overwrite to replace it or --resume to continue it")
    if overwrite and not resume:
        if Path.cwd().resolve().is_relative_to(out.resolve()):  # the run's folder is moved aside, cwd with it
            raise ConfigError(f"{out}: holds the current folder, which --overwrite would move away; run the "
                              "command from outside the run folder")
        if not (out / "config.yaml").is_file():
            raise ConfigError(f"{out}: not a run folder (it has no config.yaml), and --overwrite would delete "
                              "everything in it; give --out a new or empty folder")
        # resolved: "../run" from inside the run, or a link to it, is the same folder
        inside = [p for p in inputs if p.resolve().is_relative_to(out.resolve())]
        if inside:
            raise ConfigError(f"{out}: holds {inside[0]}, which this run reads, and --overwrite would delete it; "
                              "give --out another folder")


def prepare_run_dir(out: Path, *, overwrite: bool, resume: bool, inputs: Sequence[Path] = (),
                    aside: list[tuple[Path, Path]] | None = None) -> None:
    """Make `out` the run folder. A run it replaces (--overwrite) is moved beside it (beside the
    folder a link names, the link kept) and (folder, where it went) appended to `aside`, so the
    caller can put it back should the new run fail (`replacing_run`); without `aside` it is deleted."""
    check_run_dir(out, overwrite=overwrite, resume=resume, inputs=inputs)
    if out.exists() and any(out.iterdir()) and not resume:  # --overwrite, as the check allows only then
        if aside is None:
            shutil.rmtree(out)
        else:
            real = out.resolve()
            moved = real.with_name(f"{real.name}.replaced")
            n = 1
            while moved.exists():  # one left by a run killed outright is not ours to delete
                n += 1
                moved = real.with_name(f"{real.name}.replaced-{n}")
            real.rename(moved)
            aside.append((real, moved))
            real.mkdir()  # where a link names it, the link then names the new run's folder
    out.mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def replacing_run(out: Path) -> Iterator[list[tuple[Path, Path]]]:
    """The run an --overwrite run replaces waits beside it until the new one finishes, and is
    then deleted. Should the new run fail, the old one is put back as it was (nothing already
    written is lost to a run that came to nothing). Should it be interrupted (Ctrl-C), both stay:
    the new one to be resumed, the old one where it waits, and both are named. Yields the list
    `prepare_run_dir` records the moved run in."""
    aside: list[tuple[Path, Path]] = []
    try:
        yield aside
    except KeyboardInterrupt:
        if aside:
            log.warning("%s: the run it replaces is kept at %s until you delete it (the interrupted one goes on "
                        "with --resume)", out, aside[0][1])
        raise
    except BaseException:
        if aside:
            real, moved = aside[0]
            try:
                shutil.rmtree(real)
                moved.rename(real)
                log.warning("%s: the run that was there is back as it was, since the new one did not finish", out)
            except OSError as exc:  # said, not raised: the error that stopped the run is the one to see
                log.warning("%s: the run that was there could not be put back (%s); it is at %s", out, exc, moved)
        raise
    if aside:
        try:
            shutil.rmtree(aside[0][1])
        except OSError as exc:  # the new run is whole: said, not failed
            log.warning("%s: the run it replaced could not be deleted from %s (%s)", out, aside[0][1], exc)


RESUME_ADVICE = "Give --resume alone to go on with the saved settings, or --overwrite to start again with the new ones"


def check_resumable(out: Path, cfg: RunConfig, advice: str = RESUME_ADVICE) -> None:
    """A resumed run reads back the folds it finished, so it must go on as it started: other
    settings would mix folds trained two ways in one result. `advice` says what to do instead."""
    from spermhead.training.options import absolute_path

    saved = load_config(out / "config.yaml")
    saved.dataset = absolute_path(saved.dataset)  # a run saved before folders were kept absolute
    differences = config_differences(saved, cfg)
    if cfg.model.weights and Path(cfg.model.weights).is_file() and (
            changed := start_change(out, Path(cfg.model.weights), f"the weights file {cfg.model.weights}")):
        differences.append(changed)  # same path, other weights
    if differences:
        raise ConfigError(
            f"{out}: --resume continues the run with the settings it started with, and these differ "
            f"(saved -> asked): {'; '.join(differences)}. {advice}")


START_RECORD = "start.json"  # what the folds start from, written before any fold trains


def start_change(out: Path, start: Path, what: str) -> str | None:
    """'WHAT has other contents (sha256 a -> b)' where the file the run's folds started from, as
    recorded (`_recorded_start`), is not `start` byte for byte; None where it is or none was recorded."""
    started = _recorded_start(out).get("sha256")
    if started and (now := file_sha256(start)) != started:
        return f"{what} has other contents (sha256 {started[:12]}... -> {now[:12]}...)"
    return None


def check_same_source(out: Path, source: Path) -> None:
    """A resumed run whose folds started from a synthetic source model goes on from the same one:
    the cached file may have been trained again since (a cleared cache, another machine), and
    folds from two sources would mix two starts in one result."""
    if changed := start_change(out, source, f"the synthetic source model {source}"):
        raise ConfigError(f"{out}: its folds started from another synthetic source model: {changed}, trained "
                          "again since the run began, so --resume would mix two starts in one result. Put the "
                          "old file back, or start again with --overwrite")


SOURCE_COPY = "source.safetensors"  # the synthetic source the folds started from, kept with the run


def kept_source(out: Path) -> Path | None:
    """The run's own copy of its synthetic source, where it is byte for byte the file its folds
    started from (as recorded); else None."""
    kept, started = out / SOURCE_COPY, _recorded_start(out).get("sha256")
    return kept if started and kept.is_file() and file_sha256(kept) == started else None


def keep_source(source: Path, out: Path) -> None:
    """Keep the synthetic source beside the folds that start from it, so that --resume needs no
    cache: a cleared cache or another machine would train it again (minutes to hours), and then
    refuse it if it came out different. A hard link where it can be (the cache is replaced file by
    file, never written into), else a copy."""
    kept = out / SOURCE_COPY
    if kept.is_file() and os.path.samefile(kept, source):
        return
    partial = kept.with_suffix(".partial")
    try:
        partial.unlink(missing_ok=True)
        try:
            os.link(source, partial)
        except OSError:  # another file system, or one without links
            shutil.copyfile(source, partial)
        os.replace(partial, kept)
    except OSError as exc:  # a convenience for --resume: the run goes on without it
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        log.warning("%s: could not keep a copy of the synthetic source model (%s); --resume will need the "
                    "cached one, %s", out, exc, source)


def _write_fold_record(path: Path, record: dict[str, Any]) -> None:
    """A fold's resume record, whole or absent: a run killed while writing it leaves the last one."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(record))
    os.replace(partial, path)


def _read_fold_record(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        return record
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: --resume cannot read this fold's record ({exc}); delete {path.parent} to "
                          "train that fold again, or start again with --overwrite") from None


def _recorded_start(out: Path) -> dict[str, Any]:
    """What the run's folds started from: run.json's record once the run finished, else the one
    written before its first fold trained ({} for a run interrupted before spermhead wrote it:
    that one is checked by the weights file's path alone)."""
    for name, read in (("run.json", lambda d: d.get("init")), (START_RECORD, lambda d: d)):
        try:
            return dict(read(json.loads((out / name).read_text())) or {})
        except (OSError, ValueError, AttributeError):
            continue
    return {}


def canonical_images(table: SampleTable, cfg: RunConfig) -> tuple[np.ndarray, list[Any]]:
    from spermhead.preprocess.align import canonicalize_paths

    return canonicalize_paths([s.path for s in table.samples], cfg.preprocess)


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of uint8 images, in [0, 1] units (training side only)."""
    x = images.astype(np.float32) / 255.0
    mean = x.mean(axis=(0, 2, 3))
    std = x.std(axis=(0, 2, 3)) + 1e-6
    return [float(v) for v in mean], [float(v) for v in std]


def build_network(cfg: RunConfig, num_classes: int) -> nn.Module:
    """The run's network, with its weights file or hub weights loaded if it names them."""
    return build_model(cfg.model.name, num_classes=num_classes, in_chans=_in_chans(cfg),
                       image_size=cfg.preprocess.image_size, pretrained=cfg.model.pretrained,
                       weights=cfg.model.weights, l2_conv=cfg.model.l2_conv, drop_rate=cfg.model.drop_rate,
                       **cfg.model.kwargs)


def _in_chans(cfg: RunConfig) -> int:
    return 1 if cfg.preprocess.color == "gray" else 3


def check_model(cfg: RunConfig, num_classes: int) -> None:
    """Build the network once before anything is written or trained, so that an unknown model, a
    bad model option or weights that cannot be read stop the run with nothing left behind."""
    try:
        net = build_network(cfg, num_classes)
    except (TypeError, ValueError) as exc:  # a model option of the wrong kind, deep in a builder
        raise ConfigError(f"{cfg.model.name} with options {cfg.model.kwargs}: {exc}") from None
    if cfg.train.backbone_lr != 1.0:  # a network with no classifier layer to tell apart, said now
        from spermhead.training.module import parameter_groups

        parameter_groups(net, cfg.train.lr, cfg.train.backbone_lr)


def build_member(cfg: RunConfig, num_classes: int, train_images: np.ndarray) -> nn.Module:
    mean, std = channel_stats(train_images)
    return standardized(build_network(cfg, num_classes), _in_chans(cfg), mean, std)


def _loader(images: np.ndarray, labels: np.ndarray, batch: int, *, sampler: Any = None,
            shuffle: bool = False, seed: int = 0) -> DataLoader:
    dtype = torch.float32 if np.asarray(labels).ndim == 2 else torch.long  # soft targets are N x K
    ds = TensorDataset(torch.as_tensor(images), torch.as_tensor(labels, dtype=dtype))
    gen = torch.Generator().manual_seed(seed)
    # A last batch of one image breaks BatchNorm in training; drop it when training.
    drop_last = shuffle and len(ds) > batch
    return DataLoader(ds, batch_size=batch, sampler=sampler, shuffle=shuffle and sampler is None,
                      generator=gen, num_workers=0, drop_last=drop_last)


def _loggers(cfg: RunConfig, fold_dir: Path) -> list[Any]:
    # version=None takes the next free version_N: a resumed fit logs beside the epochs it already
    # logged instead of overwriting them (read_history merges the versions)
    loggers: list[Any] = [CSVLogger(save_dir=str(fold_dir), name="logs", version=None)]
    for name in cfg.loggers:
        if name == "tensorboard":
            from lightning.pytorch.loggers import TensorBoardLogger

            try:
                loggers.append(TensorBoardLogger(save_dir=str(fold_dir), name="tensorboard", version=0))
            except ModuleNotFoundError as exc:
                raise ConfigError("--logger tensorboard needs `pip install tensorboard`") from exc
        elif name == "mlflow":
            from lightning.pytorch.loggers import MLFlowLogger

            try:
                loggers.append(MLFlowLogger(experiment_name=cfg.dataset, run_name=Path(cfg.out).name,
                                            tracking_uri=f"file:{Path(cfg.out).resolve() / 'mlruns'}"))
            except ModuleNotFoundError as exc:
                raise ConfigError("--logger mlflow needs `pip install mlflow`") from exc
        elif name != "csv":
            raise ConfigError(f"unknown logger {name!r}: csv, tensorboard or mlflow")
    return loggers


def read_history(fold_dir: Path) -> list[dict[str, Any]]:
    """Per-epoch train/val metrics merged from the CSV logger's rows, over every version (one per
    start of the fit; an epoch logged again after a resume takes its later values)."""
    paths = sorted((fold_dir / "logs").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name[8:]))
    by_epoch: dict[int, dict[str, Any]] = {}
    for path in paths:
        with open(path) as fh:
            for row in csv.DictReader(fh):
                if not row.get("epoch"):
                    continue
                entry = by_epoch.setdefault(int(float(row["epoch"])), {"epoch": int(float(row["epoch"]))})
                for k, v in row.items():
                    if k not in ("epoch", "step") and v not in ("", None):
                        entry[k] = float(v)
    return [by_epoch[k] for k in sorted(by_epoch)]


def fit_member(cfg: RunConfig, member: nn.Module, x_train: np.ndarray, y_train: np.ndarray,
               x_val: np.ndarray, y_val: np.ndarray, num_classes: int, fold_dir: Path, *,
               seed: int, progress: bool, resume: bool,
               soft: np.ndarray | None = None, label: str = "") -> tuple[nn.Module, int, int]:
    """Train one member with Lightning; returns it at the checkpoint chosen on validation, the
    epochs it trained, and the epochs up to that checkpoint (what a refit should train for).
    `soft` (N x K) replaces the hard training labels as targets (expert vote shares); `label`
    names the fit above its progress bar."""
    tc = cfg.train
    sampler, loss_weights = None, None
    if tc.balance == "offline":
        xt, yt = offline_balance(torch.as_tensor(x_train), y_train, tc.balance_per_class, seed)
        x_train, y_train = xt.numpy(), yt
    elif tc.balance == "sampler":
        sampler = balanced_sampler(y_train, num_classes, seed)
    elif tc.balance == "loss":
        loss_weights = class_weights(y_train, num_classes)
    elif tc.balance != "none":
        raise ConfigError(f"unknown balance {tc.balance!r}: none, sampler, loss or offline")

    targets = soft if soft is not None else y_train
    train_loader = _loader(x_train, targets, tc.batch_size, sampler=sampler, shuffle=True, seed=seed)
    has_val = len(y_val) > 0
    val_loader = _loader(x_val, y_val, 256) if has_val else None
    monitor = tc.monitor if has_val else "last"
    callbacks: list[Any] = []
    if progress and label:
        announce(label, len(y_train), len(y_val), tc.epochs)
    # Every epoch is kept as latest.ckpt, with last.ckpt a link to it for --resume: writing each
    # epoch twice took a fifth of a HuSHeM fit (benchmarks/RESULTS.md, "Checkpoints"); Lightning
    # copies where links fail. (save_top_k=0 would also stop last.ckpt.) Fixed names: a resumed fit
    # would otherwise write last-v1.ckpt beside the last.ckpt it resumed from.
    latest = MovableCheckpoint(dirpath=fold_dir / "checkpoints", filename="latest", save_last="link", save_top_k=1,
                               enable_version_counter=False)
    ckpt = latest
    if monitor != "last":
        # The best epoch apart: Lightning's own save_last only writes on the epochs that improve,
        # so a resume went back to the last improvement. Listed first, it saves first, so each
        # latest.ckpt holds the best score of its own epoch.
        key, mode = {"val_acc": ("val_score", "max"), "val_loss": ("val_loss", "min")}[monitor]
        ckpt = MovableCheckpoint(dirpath=fold_dir / "checkpoints", filename="best", monitor=key, mode=mode,
                                 save_top_k=1, enable_version_counter=False)
        callbacks.append(ckpt)
    callbacks.append(latest)
    if tc.early_stopping_patience > 0 and has_val:
        callbacks.append(ResumableEarlyStopping(monitor="val_loss", mode="min", patience=tc.early_stopping_patience))
    if tc.swa > 0:
        from lightning.pytorch.callbacks import StochasticWeightAveraging

        # the last `swa` of training at a tenth of the peak rate; BatchNorm statistics are
        # recomputed for the averaged weights at the end
        from spermhead.training.module import parameter_groups

        # a rate per parameter group, so a slower backbone (--backbone-lr) stays slower
        swa_lrs = [g["lr"] * 0.1 for g in parameter_groups(member, tc.lr, tc.backbone_lr)]
        callbacks.append(StochasticWeightAveraging(swa_lrs=swa_lrs, swa_epoch_start=1 - tc.swa,
                                                   annealing_epochs=max(1, tc.epochs // 20)))
    if tc.ema > 0:
        from lightning.pytorch.callbacks import EMAWeightAveraging

        # the fold keeps the averaged weights: Lightning copies them into the model at the end
        callbacks.append(EMAWeightAveraging(decay=tc.ema))
    if progress:
        callbacks.append(QuietProgressBar(leave=False))

    module = HeadClassifier(member, tc, steps_per_epoch=len(train_loader), loss_weights=loss_weights,
                            l2_conv=cfg.model.l2_conv, validated=has_val)
    module.generators = [g for g in (train_loader.generator, getattr(sampler, "generator", None)) if g is not None]
    trainer = quiet_trainer(
        max_epochs=tc.epochs, **trainer_device(tc.accelerator), logger=_loggers(cfg, fold_dir),
        callbacks=callbacks, enable_progress_bar=progress, enable_model_summary=False,
        num_sanity_val_steps=0, log_every_n_steps=1, default_root_dir=str(fold_dir),
    )
    last = fold_dir / "checkpoints" / "last.ckpt"
    fit_quietly(trainer, module, train_loader, val_loader, ckpt_path=resumable_checkpoint(last) if resume else None)
    # SWA adds an epoch that only refreshes BatchNorm statistics: a refit copying the count would
    # train one more epoch each time (and move its averaging window)
    trained = min(trainer.current_epoch, tc.epochs)
    kept = trained
    if monitor != "last" and ckpt.best_model_path:
        best = torch.load(ckpt.best_model_path, map_location="cpu", weights_only=True)
        module.load_state_dict(best["state_dict"])
        kept = min(int(best["epoch"]) + 1, tc.epochs)  # saved at the end of that (0-based) epoch
    return module.model.cpu().eval(), trained, kept  # scoring and saving happen on the CPU


def resumable_checkpoint(last: Path) -> str | None:
    """The fit's last.ckpt to go on from, or None to start the fit over. A checkpoint that cannot
    be read (a copy cut short where links fail, a full disk) is named in a warning and its folder
    cleared, so the new fit's last.ckpt takes its name (Lightning would write last-v1.ckpt beside
    it, and a second resume would meet the damaged one again). Starting over draws the same
    batches, so the model is the same, only later."""
    if not last.is_file():
        return None
    try:
        torch.load(last, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:
        log.warning("%s: cannot be read (%s); this fit starts over", last, str(exc).splitlines()[0] if str(exc) else
                    type(exc).__name__)
        shutil.rmtree(last.parent, ignore_errors=True)
        return None
    return str(last)


def split_digest(table: SampleTable, fold: Fold, images: np.ndarray | None = None) -> str:
    """A fingerprint of which images (ids and labels, and with `images` the canonical pixels: an
    image replaced under its own name) lie in each part of a fold."""
    parts = [[(table.samples[i].id, table.samples[i].label) for i in rows] for rows in (fold.train, fold.val, fold.test)]
    digest = hashlib.sha256(json.dumps(parts).encode("utf-8", "surrogateescape"))
    for rows in (fold.train, fold.val, fold.test) if images is not None else ():
        digest.update(np.ascontiguousarray(images[rows]).tobytes())
    return digest.hexdigest()


def check_same_split(fold_dir: Path, fold: Fold, test_size: int, val_size: int, y: np.ndarray,
                     val_labels: list[int] | None = None, digest: str | None = None,
                     recorded: str | None = None) -> None:
    """A finished fold read back by --resume must have been split as this version splits it, on
    these images: the same images in each part where the fold recorded them (`recorded`, against
    this split's `digest`), else its parts' sizes and validation labels. A fold split otherwise
    (an older version, renamed or other images) would mix two protocols in one result, and its
    saved test answers would go to other images' ids."""
    sizes = (test_size, val_size) != (len(fold.test), len(fold.val)) or (
        val_labels is not None and list(val_labels) != y[fold.val].tolist())
    if sizes or (recorded is not None and recorded != digest):
        how = (f"{val_size} validation and {test_size} test images; now {len(fold.val)} and {len(fold.test)}" if sizes
               else "as many images in each part, but other ones: renamed, replaced or relabelled since")
        raise ConfigError(f"{fold_dir}: this fold was split otherwise when it was trained ({how}), by an older "
                          "spermhead or on other data; --resume would mix the two in one result: start again with "
                          "--overwrite")


@dataclass
class FittedSide:
    """The models one set of training rows gives: the CNN members and any second opinions."""
    members: list[nn.Module]
    shape: ShapeModel | None
    pixels: PixelModel | None
    cnn_prior: np.ndarray | None  # the training prior given back to the CNN (balanced training)
    epochs: int
    kept_epochs: int  # up to the checkpoint kept
    target_seconds: float = 0.0  # making the targets (a distillation's teachers), apart from the fits

    def probs(self, cfg: RunConfig, images: np.ndarray, idx: np.ndarray,
              shape_features: np.ndarray | None) -> np.ndarray:
        """Posteriors for rows `idx` under these rows' class prior, fused as the run fuses."""
        model = Ensemble(self.members).eval()
        cnn = predict_proba(model, images[idx], [0.0], [1.0], class_bias=self.cnn_prior, tta=cfg.train.tta,
                            flips=tta_flips(cfg.train.augment))
        if not len(idx):  # no validation part (val_fraction 0): nothing for the second opinions to answer
            return cnn
        others = []
        if self.shape is not None and shape_features is not None:
            others.append((self.shape.predict_proba(shape_features[idx]), cfg.train.shape_fusion))
        if self.pixels is not None:
            others.append((self.pixels.predict_proba(images[idx]), cfg.train.pixel_fusion))
        return fuse_all(cnn, others)


def training_targets(cfg: RunConfig, table: SampleTable, images: np.ndarray, rows: np.ndarray, fold_dir: Path, *,
                     seed: int, progress: bool, resume: bool, groups: np.ndarray | None = None,
                     label: str = "") -> np.ndarray | None:
    """N x K targets for `rows` where the labels are not trained on as they are: the experts'
    vote shares (`soft_labels`) and/or teachers' out-of-fold answers (`distill`; teachers train
    as `cfg` says, so a refit passes the run's own config, and keep images of one `groups` value,
    per row of `table`, on one side); else None."""
    tc = cfg.train
    soft = soft_targets(table, rows, tc.soft_labels) if tc.soft_labels > 0 else None
    if tc.distill <= 0:
        return soft
    from spermhead.training.distill import distilled_targets

    y = np.asarray(table.label_indices)[rows]
    base = soft if soft is not None else np.eye(len(table.classes), dtype=np.float32)[y]
    return distilled_targets(cfg, images[rows], y, base, len(table.classes), fold_dir, seed=seed,
                             progress=progress, resume=resume, groups=None if groups is None else groups[rows],
                             key=rows, label=label)


def fit_side(cfg: RunConfig, table: SampleTable, images: np.ndarray, rows: np.ndarray, val_rows: np.ndarray,
             fold_dir: Path, fold_index: int, *, progress: bool, resume: bool,
             shape_features: np.ndarray | None, save_to: Path | None, label: str = "",
             groups: np.ndarray | None = None, targets_cfg: RunConfig | None = None) -> FittedSide:
    """Train the fold's members on `rows` (watching `val_rows`; logs in `fold_dir`), and fit the
    second opinions the run fuses; their weights go to `save_to` (the fold's folder, where the
    bundle and --resume read them), unless it is None. `targets_cfg` (default `cfg`) is what any
    teachers train as: a refit's shorter schedule is the students' alone."""
    y = np.asarray(table.label_indices)
    k = len(table.classes)
    start = time.perf_counter()
    soft = training_targets(targets_cfg or cfg, table, images, rows, fold_dir, seed=cfg.seed * 1000 + fold_index,
                            progress=progress, resume=resume, groups=groups, label=label)
    target_seconds = time.perf_counter() - start
    members, epochs, kept = [], 0, 0
    for j in range(max(1, cfg.train.members_per_fold)):  # a seed ensemble: members differ only in their seed
        seed = cfg.seed * 1000 + fold_index + 100 * j
        member_dir = fold_dir if j == 0 else fold_dir / f"member{j}"
        L.seed_everything(seed, workers=True, verbose=False)
        member = build_member(cfg, k, images[rows])
        member, epochs, kept_j = fit_member(cfg, member, images[rows], y[rows], images[val_rows], y[val_rows],
                                          k, member_dir, seed=seed, progress=progress, resume=resume, soft=soft,
                                          label=label + (f", member {j + 1}" if cfg.train.members_per_fold > 1 else ""))
        kept = max(kept, kept_j)  # a refit follows the member whose checkpoint came latest
        if save_to is not None:
            write_safetensors(member.state_dict(),
                              save_to / f"model{j}.safetensors")
        shutil.rmtree(member_dir / "checkpoints", ignore_errors=True)  # its weights are saved, or done with
        members.append(member)
    shape, pixels = None, None
    if shape_features is not None and cfg.train.shape_fusion > 0:
        shape = ShapeModel.fit(shape_features[rows], y[rows], k)
        if save_to is not None:
            write_safetensors(shape.tensors("shape"), save_to / "shape.safetensors")
    if cfg.train.pixel_fusion > 0:
        pixels = PixelModel.fit(images[rows], y[rows], k)
        if save_to is not None:
            write_safetensors(pixels.tensors("pixels"), save_to / "pixels.safetensors")
    # after class-balanced training, the training prior goes back first (training/operating.py)
    prior = learnt_prior_correction(y[rows], k, cfg.train.balance, cfg.train.balance_per_class)
    return FittedSide(members, shape, pixels, prior, epochs, kept, target_seconds)


def _finite(probs: np.ndarray, fold: int) -> np.ndarray:
    """`probs`, or an error before the fold is marked done: a diverged fit answers NaN, which
    would be scored as class 0 on validation and stop the run at its end with a traceback."""
    if not np.isfinite(probs).all():
        raise SpermheadError(f"fold {fold}: training diverged (the network's answers are not finite numbers); "
                             "lower --lr or keep a warm-up, then start again with --overwrite")
    return probs


def run_fold(cfg: RunConfig, table: SampleTable, images: np.ndarray, fold: Fold, out: Path, *,
             progress: bool, resume: bool, shape_features: np.ndarray | None = None, label: str = "",
             groups: np.ndarray | None = None) -> FoldResult:
    """Train the fold's members, then score its validation and test parts once. With
    `shape_features` (N x F head profiles) a shape model fitted on the training side is fused
    with the CNN's probabilities before either operating point, and so is a pixel model where
    `pixel_fusion` > 0. With `refit_val` the validation part is scored by models trained
    without it, and the fold then trains again on training + validation: that model, which
    nothing was chosen on, scores the test part and is the one kept."""
    fold_dir = out / "folds" / f"fold{fold.index}"
    done = fold_dir / "done.json"
    y = np.asarray(table.label_indices)
    k = len(table.classes)
    n = max(1, cfg.train.members_per_fold)
    refit = cfg.train.refit_val and len(fold.val) > 0
    trained = np.concatenate([fold.train, fold.val]) if refit else fold.train
    own_trained = np.concatenate([fold.own_train, fold.val]) if refit else fold.own_train
    digest = split_digest(table, fold, images)  # recorded with the fold, checked when --resume reads it back
    if resume and done.is_file():
        info = _read_fold_record(done)
        check_same_split(fold_dir, fold, info["test"], len(info["val_labels"]), y, info["val_labels"],
                         digest, info.get("split"))
        members = []
        for j in range(n):
            member = build_member(cfg, k, images[trained])
            member.load_state_dict(load_file(str(fold_dir / f"model{j}.safetensors")))
            members.append(member.eval())
        shape_file, pixel_file = fold_dir / "shape.safetensors", fold_dir / "pixels.safetensors"
        shape = ShapeModel.from_tensors(load_file(str(shape_file)), "shape") if shape_file.is_file() else None
        pixels = PixelModel.from_tensors(load_file(str(pixel_file)), "pixels") if pixel_file.is_file() else None
        return FoldResult(fold.index, members, np.load(fold_dir / "test_probs.npy"),
                          np.asarray(info["bias"], dtype=np.float32), read_history(fold_dir),
                          info["seconds"] / n, info["epochs"], val_labels=info["val_labels"],
                          val_pred=info["val_pred"], val_pred_balanced=info.get("val_pred_balanced", []),
                          accuracy_bias=None if info.get("accuracy_bias") is None
                          else np.asarray(info["accuracy_bias"], dtype=np.float32), shape=shape, pixels=pixels,
                          cnn_prior=learnt_prior_correction(y[trained], k, cfg.train.balance,
                                                            cfg.train.balance_per_class),
                          temperature=info.get("temperature", 1.0),  # folds finished before it: none
                          kept_epochs=info.get("kept_epochs", 0),
                          fold_seconds=info.get("fold_seconds", info["seconds"]), read_back=True)
    fold_dir.mkdir(parents=True, exist_ok=True)
    # the split a fold's fits began on: a fit interrupted mid-way goes on from its checkpoint only
    # on the same one (a finished fold's done.json and a refit's first.json carry it too)
    began = fold_dir / "split.json"
    if resume and began.is_file() and _read_fold_record(began).get("split") != digest:
        raise ConfigError(f"{fold_dir}: this fold began training on another split (renamed, replaced or "
                          "relabelled images, or an older spermhead's carving); --resume would go on from a "
                          "checkpoint of the other one: start again with --overwrite")
    _write_fold_record(began, {"split": digest})
    fit = {"progress": progress, "resume": resume, "shape_features": shape_features, "groups": groups}
    # A refit's first fit is done with once validation is scored; its record lets --resume go
    # straight to the refit (the same seed gives the same first fit, but training it again is slow).
    first = fold_dir / "first.json"
    if refit and resume and first.is_file():
        scored = _read_fold_record(first)
        check_same_split(fold_dir, fold, len(fold.test), len(scored["val_pred"]), y,
                         digest=digest, recorded=scored.get("split"))
    else:
        start = time.perf_counter()
        side = fit_side(cfg, table, images, fold.train, fold.val, fold_dir, fold.index,
                        save_to=None if refit else fold_dir, label=label, **fit)
        # the first fit's members: run.json's per-epoch timing (teachers and a refit add to the fold's)
        seconds = time.perf_counter() - start - side.target_seconds
        val_probs = _finite(side.probs(cfg, images, fold.val, shape_features), fold.index)
        bias, alpha = choose_balanced_bias(val_probs, y[fold.val], y[fold.train], k, cfg.train.prior_strength)
        val_accuracy_bias = prior_shift(y[fold.own_train], y[fold.train], k) if fold.n_extra else None
        # at the accuracy point: the probabilities a lab reads; the balanced point keeps the same T
        temperature = (fit_temperature(apply_bias(val_probs, val_accuracy_bias), y[fold.val])
                       if cfg.train.calibrate else 1.0)
        scored = {"bias": bias.tolist(), "alpha": alpha, "temperature": temperature,
                  "seconds": seconds, "target_seconds": side.target_seconds, "epochs": side.epochs,
                  "split": digest,
                  "val_pred": apply_bias(val_probs, val_accuracy_bias).argmax(1).tolist() if len(fold.val) else [],
                  "val_pred_balanced": apply_bias(val_probs, bias).argmax(1).tolist() if len(fold.val) else []}
        if refit:
            _write_fold_record(first, scored)
    bias, alpha = np.asarray(scored["bias"], dtype=np.float32), scored["alpha"]
    temperature = scored.get("temperature", 1.0)  # a first.json from before it: none
    seconds, val_pred, val_pred_balanced = scored["seconds"], scored["val_pred"], scored["val_pred_balanced"]
    other_seconds = scored.get("target_seconds", 0.0)  # teachers and a refit: the fold's, not per epoch
    if refit:  # as many epochs as the first fit ran (it kept its last: refit_val needs monitor "last")
        refit_start = time.perf_counter()
        refit_cfg = replace(cfg, train=replace(cfg.train, epochs=max(scored["epochs"], 1), early_stopping_patience=0,
                                               monitor="last"))
        side = fit_side(refit_cfg, table, images, trained, fold.val[:0], fold_dir / "refit", fold.index,
                        label=f"{label}, again on training + validation" if label else "",
                        save_to=fold_dir, targets_cfg=cfg, **fit)
        other_seconds += time.perf_counter() - refit_start
        bias = prior_bias(y[trained], k, alpha)  # the strength chosen above, on the refit's own prior
    test_probs = _finite(side.probs(cfg, images, fold.test, shape_features), fold.index)
    accuracy_bias = prior_shift(y[own_trained], y[trained], k) if fold.n_extra else None
    np.save(fold_dir / "test_probs.npy", test_probs)
    val_labels = y[fold.val].tolist()
    _write_fold_record(done, {"bias": bias.tolist(),
                              "accuracy_bias": None if accuracy_bias is None else accuracy_bias.tolist(),
                              "alpha": alpha, "temperature": temperature, "seconds": seconds,
                              "fold_seconds": seconds + other_seconds, "epochs": side.epochs,
                              "kept_epochs": side.kept_epochs,
                              "members": n, "train": len(trained), "val": len(fold.val),
                              "test": len(fold.test), "refit_val": refit, "val_labels": val_labels,
                              "split": digest,
                              "val_pred": val_pred, "val_pred_balanced": val_pred_balanced})
    return FoldResult(fold.index, side.members, test_probs, bias, read_history(fold_dir), seconds / n, side.epochs,
                      val_labels=val_labels, val_pred=val_pred, val_pred_balanced=val_pred_balanced,
                      accuracy_bias=accuracy_bias, shape=side.shape, pixels=side.pixels, cnn_prior=side.cnn_prior,
                      temperature=temperature, kept_epochs=side.kept_epochs, fold_seconds=seconds + other_seconds)


def out_of_fold(table: SampleTable, folds: list[Fold], results: list[FoldResult], *,
                balanced: bool) -> Predictions:
    """Each test fold's predictions, keyed by sample id; every sample appears exactly once under CV."""
    parts = []
    for fold, res in zip(folds, results, strict=True):
        probs = apply_bias(res.test_probs, res.bias if balanced else res.accuracy_bias, res.temperature)
        ids = [table.samples[i].id for i in fold.test]
        parts.append(Predictions.from_model_output(ids, probs, table, folds=fold.index))
    return concat(parts)


def protocol_kind(p: ProtocolConfig, fixed_split: bool) -> str:
    """The protocol a run uses: "auto" takes a dataset's own train/val/test folders, else K-fold CV."""
    return p.kind if p.kind != "auto" else "folders" if fixed_split else "cv"


def train_run(cfg: RunConfig, *, overwrite: bool = False, resume: bool = False,
              progress: bool = True) -> RunResult:
    """Train and score a run into cfg.out; with --overwrite, the run there stays until this one
    has finished (`replacing_run`)."""
    with replacing_run(Path(cfg.out)) as aside:
        return _train_run(cfg, overwrite=overwrite, resume=resume, progress=progress, aside=aside)


def _train_run(cfg: RunConfig, *, overwrite: bool, resume: bool, progress: bool,
               aside: list[tuple[Path, Path]]) -> RunResult:
    from spermhead.evaluation.metrics import cv_metrics, write_metrics_json
    from spermhead.training.options import check_run_config

    check_run_config(cfg)  # a config built in code, or read back by --resume, is checked too
    out = Path(cfg.out)
    check_run_dir(out, overwrite=overwrite, resume=resume, inputs=_inputs(cfg))
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    table = load_dataset(cfg.dataset, cfg.data_dir)
    check_model(cfg, len(table.classes))
    if cfg.protocol.kind == "auto":
        # a copy: the caller's config (select shares its protocol between runs) is left as given
        cfg = replace(cfg, protocol=replace(cfg.protocol, kind=protocol_kind(cfg.protocol, table.has_fixed_split)))
    if cfg.protocol.kind == "cv" and cfg.train.val_fraction == 0 and (
            chosen := [o for o, on in (("--monitor " + cfg.train.monitor, cfg.train.monitor != "last"),
                                       ("--patience", cfg.train.early_stopping_patience > 0),
                                       ("--prior-strength val", cfg.train.prior_strength == "val")) if on]):
        # the fits would keep their last epoch, never stop early and leave the balanced point uncorrected,
        # config.yaml saying otherwise
        raise ConfigError(f"{' and '.join(chosen)} choose on each fold's validation part, and val_fraction 0 "
                          "carves none; drop them (--monitor last, no --patience, a fixed --prior-strength), or "
                          "give a val_fraction above 0")
    if cfg.protocol.final_model == "refit" and cfg.protocol.kind != "cv":  # it was ignored, config.yaml saying refit
        raise ConfigError(f"--final refit trains the final model again on every fold's images, so it is for CV; "
                          f"this run's protocol is a {cfg.protocol.kind} split (its model is the one trained on it)")
    if resume and (out / "config.yaml").is_file():
        check_resumable(out, cfg)
    folds = make_folds(table, cfg.protocol, cfg.seed, cfg.train.val_fraction,
                       train_fraction=cfg.train.train_fraction)  # fails before any training
    if cfg.train.soft_labels > 0 and not any(s.experts for s in table.samples):
        log.warning("--soft-labels %g: no image of %s carries expert votes (SCIAN's do), so every target stays "
                    "its majority label", cfg.train.soft_labels, table.name)
    resolve_accelerator(cfg.train.accelerator)  # so does asking for a GPU that is not there
    # From here on `table` also holds the extra training images, after the dataset's own rows;
    # the folds were made on the dataset alone, so extras only ever join training sides.
    n_own = len(table)
    groups = duplicate_groups(table, cfg.protocol.near_duplicates)
    twins = [[table.samples[i].id for i in g] for g in groups]
    table, extra = pool_extra_training(table, cfg.extra_train, cfg.data_dir, cfg.protocol.near_duplicates)
    # one value per head, so a distillation's teachers keep twins on one side (extras twin with the
    # dataset's own were dropped above; twins among the extras are looked for only when it matters)
    twin_groups = np.arange(len(table))
    pooled = len(table) > n_own and cfg.train.distill > 0
    for g in duplicate_groups(table, cfg.protocol.near_duplicates) if pooled else groups:
        twin_groups[g] = g[0]
    folds = with_extra_training(folds, n_own, len(table))
    # Read every image before the run folder is touched: a bad file then stops the run with its
    # name while an earlier run in that folder (--overwrite) is still there.
    start = time.perf_counter()
    images, canon = canonical_images(table, cfg)
    init: dict[str, Any] = {"init": cfg.model.resolved_init()}
    if init["init"] == "scratch" and cfg.model.weights:  # the record names the file the folds started from
        init = {"init": "weights", "weights": str(Path(cfg.model.weights).resolve()),
                "sha256": file_sha256(cfg.model.weights)}  # which file, should the path be reused
    elif init["init"] == "scratch" and cfg.model.pretrained:
        init = {"init": "pretrained", "model": cfg.model.name}
    # so is the --weights file's bundle's record of its training images
    weights_saw = images_the_weights_saw(cfg, table, n_own) if init["init"] == "weights" else 0
    if weights_saw or weights_saw is None:
        init["saw"] = weights_saw  # None: cannot be checked
    if init["init"] == "weights" and (unlike := pretrained_input_mismatch(cfg)):
        log.warning("%s", unlike)
    as_asked = cfg  # config.yaml records "init: synthetic", not the cached file the folds start from
    if init["init"] == "synthetic":
        from spermhead.training.synthetic_init import cached_record, source_path, synthetic_init_weights

        if (kept := kept_source(out) if resume else None) is not None:  # no cache needed, nor trained
            started = _recorded_start(out)
            init.update(weights=started.get("weights", str(kept)), cached=True, seconds=0.0, sha256=started["sha256"])
            weights = kept
        else:
            cached = cached_record(source_path(cfg)) is not None
            init_start = time.perf_counter()
            weights = synthetic_init_weights(cfg, list(table.classes), progress=progress)
            init.update(weights=str(weights), cached=cached,
                        seconds=0.0 if cached else time.perf_counter() - init_start, sha256=file_sha256(weights))
            if resume:  # the cache may have been trained again (cleared, another machine) since the run began
                check_same_source(out, weights)
        cfg = replace(cfg, model=replace(cfg.model, weights=str(weights)))
    # The run folder is touched only now, so a refusal above (or a source model that fails to
    # train) leaves an earlier run there as it was.
    prepare_run_dir(out, overwrite=overwrite, resume=resume, inputs=_inputs(cfg), aside=aside)
    save_config(as_asked, out / "config.yaml")
    if not (resume and (out / START_RECORD).is_file()):  # a resume keeps the record of how its run began
        (out / START_RECORD).write_text(json.dumps({k: v for k, v in init.items() if k not in ("cached", "seconds")},
                                                   indent=2) + "\n")
    if init["init"] == "synthetic":
        keep_source(Path(str(cfg.model.weights)), out)
    write_sample_table(table, canon, out / "samples.csv", n_own)
    shape_features = None
    if cfg.train.shape_fusion > 0:
        from spermhead.preprocess.profile import profiles

        shape_features = profiles(images)
    results = [run_fold(cfg, table, images, f, out, progress=progress, resume=resume,
                        label=f"fold {f.index + 1} of {len(folds)}" if len(folds) > 1 else "training",
                        shape_features=shape_features, groups=twin_groups) for f in folds]

    scored = {}
    for point in ("accuracy", "balanced"):
        pred = out_of_fold(table, folds, results, balanced=point == "balanced")
        scored[point] = (pred, cv_metrics(pred))
    predictions, metrics = scored[cfg.operating_point]
    metrics = dict(metrics)
    metrics["operating_point"] = cfg.operating_point
    metrics["operating_points"] = {p: headline(m) for p, (_, m) in scored.items()}
    metrics["validation"] = validation_summary(results)
    metrics["alignment"] = {"aligned": int(sum(c.aligned for c in canon)), "total": len(canon)}
    if table.synthetic:  # said where the figures are read, so no one takes them for a real dataset's
        metrics["notes"] = [*metrics.get("notes", []), SYNTHETIC_NOTE]
    # what makes these figures flatter the model, kept where they are read; `caveats` lets a
    # selection table carry them beside its rows
    caveats = [note for note in (weights_saw_note(cfg, weights_saw, n_own) if weights_saw else None,
                                 split_twins_note(table, folds[0], groups) if cfg.protocol.kind == "folders" else None)
               if note]
    if caveats:
        metrics["notes"] = [*metrics.get("notes", []), *caveats]
        metrics["caveats"] = caveats
    share_checks = {point: check for point, (pred, _) in scored.items()
                    if (check := check_intervals(pred.true_indices, pred.pred_indices, pred.folds, pred.classes))}
    metrics["share_check"] = share_checks.get(cfg.operating_point)
    predictions.write_csv(out / "predictions.csv")
    write_metrics_json(metrics, out / "metrics.json")  # deterministic: timings live in run.json
    bundle_members = [m for r in results for m in r.members]
    k = len(table.classes)
    bias = {"balanced": np.mean([r.bias for r in results], axis=0),
            "accuracy": np.mean([r.accuracy_bias if r.accuracy_bias is not None else np.zeros(k)
                                 for r in results], axis=0)}
    if any(r.cnn_prior is not None for r in results):
        bias["cnn_prior"] = np.mean([r.cnn_prior for r in results], axis=0)
    shapes = [r.shape for r in results if r.shape is not None]
    pixels = [r.pixels for r in results if r.pixels is not None]
    if kind_is_refit(cfg):
        bundle_members = [refit_all(cfg, table, images, results, out, progress=progress, groups=twin_groups)]
        refit_prior = learnt_prior_correction(np.asarray(table.label_indices), k, cfg.train.balance,
                                              cfg.train.balance_per_class)
        if refit_prior is not None:  # the refit model trained on every image
            bias["cnn_prior"] = refit_prior
        if shape_features is not None:
            shapes = [ShapeModel.fit(shape_features, np.asarray(table.label_indices), len(table.classes))]
        if pixels:
            pixels = [PixelModel.fit(images, np.asarray(table.label_indices), len(table.classes))]
    write_bundle(cfg, table, bundle_members, bias, metrics, out / "model", shapes, pixels,
                 trained_signatures(table, folds, refit=kind_is_refit(cfg)),
                 temperature=pooled_temperature([r.temperature for r in results]),
                 input_ranges=fit_ranges([describe(c) for c in canon]),
                 confusions={point: m["confusion_matrix"] for point, (_, m) in scored.items()},
                 share_checks=share_checks)
    timing = {
        "wall_seconds": time.perf_counter() - start,  # this command's; --resume reads finished folds back
        "folds_read_back": sum(r.read_back for r in results),
        # the folds' own training (every member, refits too), where it ran: earlier, for folds read back
        "fold_training_seconds": float(sum(r.fold_seconds for r in results)),
        "init_seconds": float(init.get("seconds", 0.0)),  # a source model trained by this run
        # each fold's first fit (its training part; validation passes in the time), not its refit
        "seconds_per_epoch": float(np.mean([r.seconds / max(r.epochs, 1) for r in results])),
        "epochs": [r.epochs for r in results],
        "train_images_per_second": float(np.mean([len(f.train) * r.epochs / max(r.seconds, 1e-9)
                                                  for f, r in zip(folds, results, strict=True)])),
    }
    # what --accelerator auto chose: CPU and GPU runs are not bit-identical
    (out / "run.json").write_text(json.dumps({"timing": timing, "device": resolve_accelerator(cfg.train.accelerator),
                                              "init": init, "extra_train": extra,
                                              "near_duplicates": twins,
                                              "environment": environment()}, indent=2))
    history = [{"fold": r.index, **row} for r in results for row in r.history]
    # the report shows the configuration as asked (config.yaml's) and what the folds started from apart
    start_record = {k: v for k, v in init.items() if k not in ("cached", "seconds")}
    write_outputs(as_asked, out, predictions, metrics, history, timing, start_record)
    return RunResult(out, metrics, predictions, results, timing)


def pretrained_input_mismatch(cfg: RunConfig) -> str | None:
    """Where a --weights file from `pretrain` (its .json record beside it) learnt on other input
    than this run's (size, colour, scale), what differs; else None."""
    record_path = Path(str(cfg.model.weights)).with_suffix(".json")
    try:
        pre = json.loads(record_path.read_text())["config"]["preprocess"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no pretrain record (a bundle's weights, a hub file): nothing to compare
    differ = [f"{key} {pre[key]} there, {getattr(cfg.preprocess, key)} here" for key in ("image_size", "color", "scale")
              if key in pre and pre[key] != getattr(cfg.preprocess, key)]
    if not differ:
        return None
    return (f"--weights {cfg.model.weights} was pretrained on other input than this run's ({'; '.join(differ)}): "
            "its features may not carry over; pretrain with the run's settings (e.g. --image-size) to match")


def images_the_weights_saw(cfg: RunConfig, table: SampleTable, n_own: int) -> int | None:
    """How many of the dataset's images the --weights file saw (or near-duplicates of them): a
    pretrained backbone's from the signatures `pretrain` keeps beside it, a bundle's from those it
    keeps beside its model.safetensors; None for a bundle's file without that record (said: it
    cannot be checked); 0 for other weights (ImageNet's, say), which saw no lab's heads.
    Warned before training: such a start has seen test-fold images."""
    from spermhead.serving.bundle import TRAINING_IMAGES, pretrained_images_file, seen_by_bundle

    weights = Path(str(cfg.model.weights))
    beside = pretrained_images_file(weights)
    seen = seen_by_bundle(beside if beside.is_file() else weights.parent, [s.path for s in table.samples[:n_own]])
    if seen is None:
        if _bundle_weights(weights):  # copied out of its bundle, say: no check is not a clean check
            log.warning("the --weights file (%s) is a bundle's, without the record of the images it was trained on "
                        "that its bundle keeps beside it (%s), so whether it saw these images cannot be checked: "
                        "if it did, its test folds are not unseen", cfg.model.weights, TRAINING_IMAGES)
            return None
        return 0  # another network's weights (ImageNet's, say): not trained on a lab's heads
    n = int(sum(seen))
    if n:
        log.warning("%s", weights_saw_note(cfg, n, n_own))
    return n


def _bundle_weights(path: Path) -> bool:
    """Whether a weights file is a spermhead bundle's (its tensors stored per member)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as fh:
            return any(key.startswith("member0.") for key in fh.keys())  # noqa: SIM118 - no iteration over it
    except Exception:  # noqa: BLE001 - a .pth file, or one safetensors cannot read: not a bundle's
        return False


def weights_saw_note(cfg: RunConfig, n: int, n_own: int) -> str:
    from spermhead.serving.bundle import pretrained_images_file

    weights = Path(str(cfg.model.weights))
    source = ("was pretrained (without labels) on" if pretrained_images_file(weights).is_file()
              else "comes from a bundle that trained on")
    return (f"the --weights file ({cfg.model.weights}) {source} {n} of these {n_own} images (or near-duplicates "
            "of them), so its test folds are not unseen: these figures flatter the model")


def kind_is_refit(cfg: RunConfig) -> bool:
    return cfg.protocol.kind == "cv" and cfg.protocol.final_model == "refit"


def trained_signatures(table: SampleTable, folds: list[Fold], *, refit: bool) -> np.ndarray:
    """Signatures of every image that helped build some bundle member: the union of the training
    sides and of the validation parts that chose checkpoints (under CV, every image of the
    dataset), and the extra training images; all of them for a refit."""
    from spermhead.data.duplicates import signatures

    used = set().union(*(f.train.tolist() + f.val.tolist() for f in folds))
    rows = range(len(table)) if refit else sorted(used)
    return signatures([table.samples[i].path for i in rows])


def refit_all(cfg: RunConfig, table: SampleTable, images: np.ndarray, results: list[FoldResult],
              out: Path, *, progress: bool, groups: np.ndarray | None = None) -> nn.Module:
    """One model on all the data, for as many epochs as the folds' chosen checkpoints needed."""
    y = np.asarray(table.label_indices)
    epochs = int(np.median([max(r.kept_epochs or r.epochs, 1) for r in results]))
    refit_cfg = replace(cfg, train=replace(cfg.train, epochs=epochs, early_stopping_patience=0, monitor="last"))
    # the same targets as the folds trained on: expert votes and teachers' answers, where used
    soft = training_targets(cfg, table, images, np.arange(len(table)), out / "refit", seed=cfg.seed * 1000 + 999,
                            progress=progress, resume=False, groups=groups, label="the final model")
    L.seed_everything(cfg.seed * 1000 + 999, workers=True, verbose=False)
    member = build_member(refit_cfg, len(table.classes), images)
    empty = np.zeros((0, *images.shape[1:]), dtype=images.dtype)
    member, _, _ = fit_member(refit_cfg, member, images, y, empty, np.zeros(0, dtype=int), len(table.classes),
                              out / "refit", seed=cfg.seed * 1000 + 999, progress=progress, resume=False, soft=soft,
                              label="the final model, on all the images")
    return member


def validation_summary(results: list[FoldResult]) -> dict[str, Any]:
    """Pooled scores on the validation parts carved from each training side, at the accuracy
    point, and at the balanced point under "balanced_point". Recipes are compared on these, so
    test folds never steer a choice. (The balanced point's bias is chosen on these same parts
    where `prior_strength` is "val", so that figure is optimistic then.) `n` counts predictions:
    the folds' validation parts overlap, so an image can be counted in several."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    y = [v for r in results for v in r.val_labels]
    p = [v for r in results for v in r.val_pred]
    if not y:
        return {"n": 0}
    with warnings.catch_warnings():  # a validation part short of a class (grouped CV): averaged over those present
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true", category=UserWarning)
        out: dict[str, Any] = {"n": len(y), "accuracy": float(accuracy_score(y, p)),
                               "balanced_accuracy": float(balanced_accuracy_score(y, p))}
        pb = [v for r in results for v in r.val_pred_balanced]
        if len(pb) == len(y):  # folds resumed from before this was recorded lack it
            out["balanced_point"] = {"accuracy": float(accuracy_score(y, pb)),
                                     "balanced_accuracy": float(balanced_accuracy_score(y, pb))}
    return out


def write_sample_table(table: SampleTable, canon: list[Any], path: Path, n_own: int | None = None) -> None:
    """Every sample with its alignment status and morphometrics, for auditing preprocessing.
    `role` is "extra-train" for rows from n_own on (extra training images), else "dataset"."""
    n_own = len(table) if n_own is None else n_own
    fields = ["id", "role", "label", "source", "group", "path", "aligned", "status",
              "area", "length", "width", "elongation", "perimeter", "rotation_deg"]
    with open(path, "w", **CSV_FILE) as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for i, (s, c) in enumerate(zip(table.samples, canon, strict=True)):
            morph = c.morphometrics.to_dict() if c.morphometrics is not None else {}
            w.writerow({"id": s.id, "role": "dataset" if i < n_own else "extra-train", "label": s.label, "source": s.source, "group": s.group, "path": str(s.path),
                        "aligned": c.aligned, "status": c.status,
                        **{k: morph.get(k, "") for k in fields[8:]}})


def write_bundle(cfg: RunConfig, table: SampleTable, members: list[nn.Module], biases: dict[str, np.ndarray],
                 metrics: dict[str, Any], directory: Path, shapes: list[ShapeModel] | None = None,
                 pixels: list[PixelModel] | None = None, trained: np.ndarray | None = None,
                 temperature: float = 1.0, input_ranges: dict[str, list[float]] | None = None,
                 confusions: dict[str, list[list[int]]] | None = None,
                 share_checks: dict[str, dict[str, Any]] | None = None) -> Path:
    """`biases`: each operating point's log-prior correction ("balanced", and "accuracy" where
    extra training images shifted the prior), and "cnn_prior" where class-balanced training
    took the training prior out of the CNN's posteriors. `trained`: signatures of the images
    the members trained on, kept beside the weights for `evaluate`."""
    from spermhead.serving.bundle import BundleMeta, save_bundle, save_training_signatures

    in_chans = _in_chans(cfg)
    kind = "single" if len(members) == 1 else "ensemble"
    if kind_is_refit(cfg):
        kind = "refit"
    points = {p: [float(b) for b in biases.get(p, np.zeros(len(table.classes)))] for p in ("accuracy", "balanced")}
    meta = BundleMeta(
        architecture=cfg.model.name, classes=list(table.classes),
        preprocess=dict(vars(cfg.preprocess)), in_chans=in_chans, image_size=cfg.preprocess.image_size,
        model_kwargs=model_spec(members[0][1]),  # members are Sequential(Standardize, net)
        kind=kind, tta=cfg.train.tta, tta_flips=tta_flips(cfg.train.augment), operating_point=cfg.operating_point,
        shape_fusion=float(cfg.train.shape_fusion) if shapes else 0.0,
        pixel_fusion=float(cfg.train.pixel_fusion) if pixels else 0.0,
        class_bias=points[cfg.operating_point], operating_points=points,
        cnn_prior=None if "cnn_prior" not in biases else [float(b) for b in biases["cnn_prior"]],
        temperature=float(temperature), input_ranges=input_ranges or {}, confusions=confusions or {},
        share_checks=share_checks or {},
        run={"dataset": cfg.dataset, "protocol": cfg.protocol.kind, "folds": cfg.protocol.folds,
             "seed": cfg.seed, "metrics": headline(metrics), "run_dir": str(Path(cfg.out).resolve()),
             **({"synthetic": True} if table.synthetic else {})},
    )
    save_bundle(directory, members, meta, shapes, pixels)
    if trained is not None:
        save_training_signatures(directory, trained)
    return directory


def write_outputs(cfg: RunConfig, out: Path, predictions: Predictions, metrics: dict[str, Any],
                  history: list[dict[str, Any]], timing: dict[str, Any], start: dict[str, Any]) -> Path:
    from spermhead.evaluation.plots import write_plots
    from spermhead.evaluation.report import write_report

    plots = write_plots(predictions, history, out / "plots")
    return write_report(out, {**cfg.to_dict(), "environment": environment()}, metrics, plots,
                        {"Starting weights": start, "Timing": timing})
