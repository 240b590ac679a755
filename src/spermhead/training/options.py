"""Build a RunConfig from command-line options: recipe first, then explicit options."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from spermhead.config import RunConfig
from spermhead.errors import ConfigError
from spermhead.training.devices import ACCELERATORS
from spermhead.training.protocols import parse_split
from spermhead.training.recipes import DATASET_RECIPES, FOLDER_SYNTHETIC, SCRATCH_EPOCHS, apply_recipe

# option name -> (config section, field)
_FIELDS = {
    "image_size": ("preprocess", "image_size"), "color": ("preprocess", "color"),
    "align": ("preprocess", "align"), "scale": ("preprocess", "scale"), "margin": ("preprocess", "margin"), "background": ("preprocess", "background"),
    "model": ("model", "name"), "pretrained": ("model", "pretrained"), "weights": ("model", "weights"),
    "l2_conv": ("model", "l2_conv"), "drop_rate": ("model", "drop_rate"), "init": ("model", "init"),
    "init_per_class": ("model", "init_per_class"), "init_epochs": ("model", "init_epochs"),
    "init_style": ("model", "init_style"),
    "epochs": ("train", "epochs"), "batch_size": ("train", "batch_size"), "lr": ("train", "lr"),
    "optimizer": ("train", "optimizer"), "schedule": ("train", "schedule"),
    "weight_decay": ("train", "weight_decay"), "balance": ("train", "balance"),
    "augment": ("train", "augment"), "label_smoothing": ("train", "label_smoothing"),
    "mixup": ("train", "mixup"), "cutmix": ("train", "cutmix"), "swa": ("train", "swa"), "ema": ("train", "ema"), "sam": ("train", "sam"), "soft_labels": ("train", "soft_labels"), "tta": ("train", "tta"), "val_fraction": ("train", "val_fraction"),
    "train_fraction": ("train", "train_fraction"), "refit_val": ("train", "refit_val"),
    "prior_strength": ("train", "prior_strength"),
    "monitor": ("train", "monitor"), "patience": ("train", "early_stopping_patience"),
    "threads": ("train", "num_threads"), "members": ("train", "members_per_fold"),
    "accelerator": ("train", "accelerator"), "shape_fusion": ("train", "shape_fusion"),
    "pixel_fusion": ("train", "pixel_fusion"), "calibrate": ("train", "calibrate"),
    "grouped": ("protocol", "grouped"), "final_model": ("protocol", "final_model"),
    "near_duplicates": ("protocol", "near_duplicates"),
}


def _set_field(cfg: RunConfig, name: str, value: Any) -> None:
    section, attr = _FIELDS[name]
    setattr(getattr(cfg, section), attr, value)


def build_run_config(dataset: str, out: str, *, recipe: str = "default", data_dir: str | None = None,
                     seed: int = 0, cv: int | None = None, split: str | None = None,
                     operating_point: str | None = None, loggers: tuple[str, ...] = ("csv",),
                     **options: Any) -> RunConfig:
    recipe = recipe.lower()
    cfg = apply_recipe(RunConfig(dataset=dataset, data_dir=data_dir, out=out, seed=seed), recipe)
    epochs_given = options.get("epochs") is not None
    # "default" trains a named dataset with its own recipe; `--recipe hushem` (say) gives any set
    # the recipe of the dataset it resembles
    measured = dataset.lower() if recipe == "default" else recipe if recipe in DATASET_RECIPES else None
    if measured is not None:
        options = {**DATASET_RECIPES.get(measured, {}), **{k: v for k, v in options.items() if v is not None}}
    cfg.loggers = tuple(loggers)
    if cv is not None and split is not None:
        raise ConfigError("use either --cv K or --split, not both")
    if cv is not None:
        if cv < 2:
            raise ConfigError(f"--cv {cv}: K-fold CV needs K >= 2")
        cfg.protocol.kind, cfg.protocol.folds = "cv", cv
    elif split is not None:
        kind, fractions = parse_split(split)
        cfg.protocol.kind = kind
        if fractions is not None:
            cfg.protocol.split = fractions
    if operating_point is not None:
        if operating_point not in ("accuracy", "balanced"):
            raise ConfigError(f"--operating-point {operating_point!r}: accuracy or balanced")
        cfg.operating_point = operating_point
    for name, value in options.items():
        if value is None:
            continue
        if name == "extra_train":
            cfg.extra_train = (value,) if isinstance(value, str) else tuple(value)
            continue
        if name == "width":  # spermnet's first-stage channels (a structural model option)
            cfg.model.kwargs = {**cfg.model.kwargs, "width": int(value)}
            continue
        if name not in _FIELDS:
            raise ConfigError(f"unknown training option {name!r}")
        _set_field(cfg, name, value)
    if not 0 <= float(cfg.protocol.near_duplicates) <= 1:
        raise ConfigError(f"--near-duplicates {cfg.protocol.near_duplicates}: a correlation in 0..1 "
                          "(0 = do not look for them)")
    if cfg.preprocess.color not in ("gray", "rgb"):
        raise ConfigError(f"--color {cfg.preprocess.color!r}: gray or rgb")
    if cfg.preprocess.scale not in ("head", "image"):
        raise ConfigError(f"--scale {cfg.preprocess.scale!r}: head or image")
    if cfg.preprocess.background not in ("keep", "mask"):
        raise ConfigError(f"--background {cfg.preprocess.background!r}: keep or mask")
    strength = cfg.train.prior_strength
    if strength != "val":
        try:
            cfg.train.prior_strength = float(strength)
        except (TypeError, ValueError):
            raise ConfigError(f"--prior-strength {strength!r}: a number (1 = divide out the training prior) "
                              "or 'val' (choose it per fold on validation data)") from None
        if cfg.train.prior_strength < 0:
            raise ConfigError(f"--prior-strength {strength}: 0 (no correction) or more")
    if cfg.train.mixup > 0 and cfg.train.cutmix > 0:
        raise ConfigError("use --mixup or --cutmix, not both")
    if not 0.0 <= float(cfg.train.swa) < 1.0:
        raise ConfigError(f"--swa {cfg.train.swa}: the fraction of final epochs to average, from 0 up to 1")
    if float(cfg.train.sam) < 0:
        raise ConfigError(f"--sam {cfg.train.sam}: a radius of 0 (off) or more")
    for name, weight in (("shape", cfg.train.shape_fusion), ("pixel", cfg.train.pixel_fusion)):
        if not 0.0 <= float(weight) <= 1.0:
            raise ConfigError(f"--{name}-fusion {weight}: a weight from 0 (left out) to 1")
    if float(cfg.train.shape_fusion) + float(cfg.train.pixel_fusion) > 1.0:
        raise ConfigError(f"--shape-fusion {cfg.train.shape_fusion} and --pixel-fusion {cfg.train.pixel_fusion}: "
                          "the two weights add up to more than 1, which leaves the CNN a negative weight")
    if not 0.0 < float(cfg.train.train_fraction) <= 1.0:
        raise ConfigError(f"--train-fraction {cfg.train.train_fraction}: the share of each training side "
                          "to train on, above 0 and up to 1")
    if cfg.train.refit_val and cfg.train.monitor != "last":
        raise ConfigError(f"--refit-val with --monitor {cfg.train.monitor}: a fold that also trains on its "
                          "validation part has nothing left to choose a checkpoint on; use --monitor last")
    if cfg.train.accelerator not in ACCELERATORS:
        raise ConfigError(f"--accelerator {cfg.train.accelerator!r}: {', '.join(ACCELERATORS)}")
    if cfg.model.init_style not in ("auto", "hushem", "scian"):
        raise ConfigError(f"init_style {cfg.model.init_style!r}: auto, hushem or scian")
    if cfg.model.init not in ("auto", "scratch", "synthetic"):
        raise ConfigError(f"--init {cfg.model.init!r}: auto, scratch or synthetic")
    cfg.model.init = cfg.model.resolved_init()  # config.yaml records what the run did
    if measured is not None and not epochs_given and cfg.model.init != "synthetic":
        cfg.train.epochs = SCRATCH_EPOCHS.get(measured, cfg.train.epochs)
    if recipe == "default" and measured not in DATASET_RECIPES and cfg.model.init == "synthetic":  # a folder
        for name, value in FOLDER_SYNTHETIC.items():
            if options.get(name) is None:
                _set_field(cfg, name, value)
    if cfg.model.init == "synthetic" and (cfg.model.weights or cfg.model.pretrained):
        raise ConfigError("--init synthetic picks the starting weights itself; drop --weights/--pretrained")
    if cfg.protocol.final_model not in ("ensemble", "refit"):
        raise ConfigError(f"--final {cfg.protocol.final_model!r}: ensemble or refit")
    return cfg


def known_options() -> set[str]:
    return set(_FIELDS) | {f.name for f in fields(RunConfig)} | {"width"}
