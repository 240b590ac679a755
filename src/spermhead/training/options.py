"""Build a RunConfig from command-line options: recipe first, then explicit options."""

from __future__ import annotations

import importlib.util
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any

from spermhead.config import OPTIMIZERS, PREPROCESS_CHOICES, SCHEDULES, RunConfig
from spermhead.data.readers import NAMED_DATASETS, default_data_dir
from spermhead.errors import ConfigError
from spermhead.models.registry import BUILD_SETTINGS
from spermhead.training.augment import PRESETS
from spermhead.training.balance import BALANCE_MODES
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
    "init_style": ("model", "init_style"), "init_seed": ("model", "init_seed"),
    "epochs": ("train", "epochs"), "batch_size": ("train", "batch_size"), "lr": ("train", "lr"),
    "optimizer": ("train", "optimizer"), "schedule": ("train", "schedule"),
    "weight_decay": ("train", "weight_decay"), "balance": ("train", "balance"),
    "augment": ("train", "augment"), "label_smoothing": ("train", "label_smoothing"), "focal": ("train", "focal"),
    "backbone_lr": ("train", "backbone_lr"),
    "mixup": ("train", "mixup"), "cutmix": ("train", "cutmix"), "swa": ("train", "swa"), "ema": ("train", "ema"), "sam": ("train", "sam"), "soft_labels": ("train", "soft_labels"), "distill": ("train", "distill"), "tta": ("train", "tta"), "val_fraction": ("train", "val_fraction"),
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


def _apply_options(cfg: RunConfig, options: dict[str, Any]) -> None:
    for name, value in options.items():
        if value is None:
            continue
        if name == "extra_train":
            cfg.extra_train = (value,) if isinstance(value, str) else tuple(value)
        elif name == "width":  # spermnet's first-stage channels (a structural model option)
            cfg.model.kwargs = {**cfg.model.kwargs, "width": int(value)}
        elif name in _FIELDS:
            _set_field(cfg, name, value)
        else:
            raise ConfigError(f"unknown training option {name!r}")


def _apply_settings(target: Any, settings: dict[str, Any]) -> None:
    """Set a (checked, read_config_file) nested mapping of settings onto a config tree."""
    for key, value in settings.items():
        current = getattr(target, key)
        if is_dataclass(current):
            _apply_settings(current, value)
        else:
            setattr(target, key, tuple(value) if isinstance(value, list) else value)


def _in_settings(settings: dict[str, Any], option: str) -> bool:
    section, attr = _FIELDS[option]
    return attr in (settings.get(section) or {})


def build_run_config(dataset: str, out: str, *, recipe: str | None = None, data_dir: str | None = None,
                     seed: int | None = None, cv: int | None = None, split: str | None = None,
                     operating_point: str | None = None, loggers: tuple[str, ...] | None = None,
                     settings: dict[str, Any] | None = None, settings_file: str | None = None,
                     **options: Any) -> RunConfig:
    """The recipe, then `settings` (a config file's, `config.read_config_file`; `settings_file`
    names it in errors), then the options.

    Options left None are not given. A saved run's config.yaml holds every setting, so it gives
    that run again whatever the recipe says; a hand-written file may hold only what it changes.
    """
    settings = settings or {}
    saved_recipe = (settings.get("train") or {}).get("recipe")
    if recipe is not None and saved_recipe is not None and recipe.lower() != saved_recipe:
        raise ConfigError(f"--recipe {recipe} with {settings_file or 'a config'}, of recipe {saved_recipe}: give one "
                          "or the other")
    recipe = (recipe or saved_recipe or "default").lower()
    cfg = apply_recipe(RunConfig(dataset=absolute_path(dataset), out=out), recipe)
    # "default" trains a named dataset with its own recipe; `--recipe hushem` (say) gives any set
    # the recipe of the dataset it resembles
    measured = dataset.lower() if recipe == "default" else recipe if recipe in DATASET_RECIPES else None
    _apply_options(cfg, DATASET_RECIPES.get(measured or "", {}))
    _apply_settings(cfg, {k: v for k, v in settings.items() if k not in ("dataset", "out")})
    cfg.seed = cfg.seed if seed is None else seed
    cfg.data_dir = str(Path(data_dir).absolute()) if data_dir else cfg.data_dir
    cfg.loggers = cfg.loggers if loggers is None else tuple(loggers)
    epochs_given = options.get("epochs") is not None or _in_settings(settings, "epochs")
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
    _apply_options(cfg, options)
    # folders are kept as absolute paths, so that `--config RUN` and `serve --review RUN` find
    # them from any working directory
    cfg.extra_train = tuple(absolute_path(e) for e in cfg.extra_train)
    if cfg.data_dir is None and any(n.lower() in NAMED_DATASETS for n in (cfg.dataset, *cfg.extra_train)):
        cfg.data_dir = str(default_data_dir().absolute())  # $SPERMHEAD_DATA or ./data, as it is here and now
    cfg.model.weights = absolute_path(cfg.model.weights) if cfg.model.weights else cfg.model.weights
    strength = cfg.train.prior_strength
    if strength != "val":
        try:
            cfg.train.prior_strength = float(strength)
        except (TypeError, ValueError):
            raise ConfigError(f"--prior-strength {strength!r}: a number (1 = divide out the training prior) "
                              "or 'val' (choose it per fold on validation data)") from None
    if cfg.model.init not in ("auto", "scratch", "synthetic"):
        raise ConfigError(f"--init {cfg.model.init!r}: auto, scratch or synthetic")
    if options.get("init") == "scratch" and (cfg.model.weights or cfg.model.pretrained):
        raise ConfigError("--init scratch starts from random weights; drop --weights/--pretrained, or --init "
                          "(a run given --weights starts from that file)")
    cfg.model.init = cfg.model.resolved_init()  # config.yaml records what the run did
    if measured is not None and not epochs_given and cfg.model.init != "synthetic":
        cfg.train.epochs = SCRATCH_EPOCHS.get(measured, cfg.train.epochs)
    if recipe == "default" and measured not in DATASET_RECIPES and cfg.model.init == "synthetic":  # a folder
        for name, value in FOLDER_SYNTHETIC.items():
            if options.get(name) is None and not _in_settings(settings, name):
                _set_field(cfg, name, value)
    try:
        check_run_config(cfg)
    except ConfigError as exc:
        raise _named_as_in_file(exc, settings, options, settings_file or "the config file") from None
    return cfg


def _named_as_in_file(exc: ConfigError, settings: dict[str, Any], options: dict[str, Any],
                      file: str) -> ConfigError:
    """A bad value that came from a config file is named by its key there, not by an option the
    user never typed (the checks name options: `--optimizer 'adamm': ...`)."""
    flag, _, rest = str(exc).partition(" ")
    if flag == "model.kwargs" and (settings.get("model") or {}).get("kwargs"):  # only a file sets them
        return ConfigError(f"{file}: {exc}")
    name = flag.removeprefix("--").replace("-", "_")
    if name not in _FIELDS or options.get(name) is not None or not _in_settings(settings, name):
        return exc
    section, attr = _FIELDS[name]
    return ConfigError(f"{file}: {section}.{attr}: {rest}")


def absolute_path(name: str) -> str:
    """A path that exists, made absolute (links kept as named); a dataset name or a missing path
    as given (a missing one is then refused by name)."""
    if name.lower() in NAMED_DATASETS or not Path(name).exists():
        return name
    return str(Path(name).absolute())


LOGGERS = ("csv", "tensorboard", "mlflow")


def _choice(value: Any, choices: Any, option: str) -> None:
    if value not in choices:
        raise ConfigError(f"{option} {value!r}: {', '.join(choices)}")


def check_run_config(cfg: RunConfig) -> None:
    """Refuse settings that cannot work, before any image is read or any folder is touched.

    Each message names the option (its config.yaml key is the same with underscores);
    `build_run_config` names a value that came from a config file by its key there instead.
    """
    pre, tc, proto = cfg.preprocess, cfg.train, cfg.protocol
    _choice(cfg.operating_point, ("accuracy", "balanced"), "--operating-point")
    for logger in cfg.loggers:  # before the run folder, not at its first fit
        _choice(logger, LOGGERS, "--logger")
        packages = {"tensorboard": ("tensorboard", "tensorboardX"), "mlflow": ("mlflow",)}.get(logger, ())
        if packages and all(importlib.util.find_spec(name) is None for name in packages):
            raise ConfigError(f"--logger {logger} needs `pip install {packages[0]}`")
    for key, allowed in PREPROCESS_CHOICES.items():
        _choice(getattr(pre, key), allowed, f"--{key}")
    _choice(tc.optimizer, OPTIMIZERS, "--optimizer")
    _choice(tc.schedule, SCHEDULES, "--schedule")
    _choice(tc.balance, BALANCE_MODES, "--balance")
    _choice(tc.augment, tuple(PRESETS), "--augment")
    _choice(tc.monitor, ("last", "val_acc", "val_loss"), "--monitor")
    _choice(tc.accelerator, ACCELERATORS, "--accelerator")
    _choice(cfg.model.init, ("auto", "scratch", "synthetic"), "--init")
    if taken := [k for k in cfg.model.kwargs if k in BUILD_SETTINGS]:
        raise ConfigError(f"model.kwargs {taken[0]}: not a model option; it is set by {BUILD_SETTINGS[taken[0]]}")
    _choice(cfg.model.init_style, ("auto", "hushem", "scian"), "init_style")
    _choice(proto.kind, ("auto", "cv", "folders", "random"), "protocol kind")
    _choice(proto.final_model, ("ensemble", "refit"), "--final")
    # (option, value, low, high, low included, high included, what it is)
    limits: list[tuple[str, Any, float, float | None, bool, bool, str]] = [
        ("--epochs", tc.epochs, 1, None, True, True, ""),
        ("--threads", tc.num_threads, 0, None, True, True, "threads; 0 lets torch decide"),
        ("--batch-size", tc.batch_size, 2, None, True, True, "images; batch normalisation needs two"),
        ("--members", tc.members_per_fold, 1, None, True, True, "models per fold"),
        ("--image-size", pre.image_size, 16, None, True, True, "pixels"),
        ("--cv", proto.folds, 2, None, True, True, "folds"),
        ("--lr", tc.lr, 0, None, False, True, ""),
        ("weight_decay", tc.weight_decay, 0, None, True, True, ""),
        ("--label-smoothing", tc.label_smoothing, 0, 1, True, False, ""),
        ("--focal", tc.focal, 0, None, True, True, "a gamma; 0 = cross-entropy"),
        ("--backbone-lr", tc.backbone_lr, 0, 1, False, True, "a share of --lr; 1 = one rate"),
        ("--soft-labels", tc.soft_labels, 0, 1, True, True, "the weight of the expert votes"),
        ("--distill", tc.distill, 0, 1, True, True, "the weight of the teachers' answers; 0 = off"),
        ("--mixup", tc.mixup, 0, None, True, True, "0 = off"),
        ("--cutmix", tc.cutmix, 0, None, True, True, "0 = off"),
        ("--ema", tc.ema, 0, 1, True, False, "a decay per step; 0 = off"),
        ("--swa", tc.swa, 0, 1, True, False, "the fraction of final epochs to average; 0 = off"),
        ("--sam", tc.sam, 0, None, True, True, "a radius; 0 = off"),
        ("--shape-fusion", tc.shape_fusion, 0, 1, True, True, "a weight; 0 = left out"),
        ("--pixel-fusion", tc.pixel_fusion, 0, 1, True, True, "a weight; 0 = left out"),
        ("--train-fraction", tc.train_fraction, 0, 1, False, True, "the share of each training side to train on"),
        ("val_fraction", tc.val_fraction, 0, 1, True, False, "the share of each training side to validate on"),
        ("balance_per_class", tc.balance_per_class, 1, None, True, True, "images per class after offline balancing"),
        ("--near-duplicates", proto.near_duplicates, 0, 1, True, True, "a correlation; 0 = do not look for them"),
    ]
    if tc.prior_strength != "val":
        limits.append(("--prior-strength", tc.prior_strength, 0, None, True, True,
                       "1 = divide out the training prior, 0 = no correction; or 'val'"))
    for option, value, low, high, low_in, high_in, what in limits:
        below = value < low if low_in else value <= low
        above = high is not None and (value > high if high_in else value >= high)
        if below or above:
            start = f"at least {low}" if low_in else f"above {low}"
            span = (start if high is None else f"from {low} to {high}" if low_in and high_in
                    else f"{start} and {'at most' if high_in else 'below'} {high}")
            raise ConfigError(f"{option} {value}: must be {span}" + (f" ({what})" if what else ""))
    if tc.mixup > 0 and tc.cutmix > 0:
        raise ConfigError("use --mixup or --cutmix, not both")
    if tc.balance == "offline" and (soft := [o for o, v in (("--soft-labels", tc.soft_labels),
                                                            ("--distill", tc.distill)) if v > 0]):
        # offline balancing copies images, and the targets are kept per image: refused before
        # anything trains (a fold would otherwise stop after its teachers)
        raise ConfigError(f"{soft[0]} trains on soft targets, which offline balancing cannot copy; "
                          "use --balance sampler")
    if tc.shape_fusion + tc.pixel_fusion > 1.0:
        raise ConfigError(f"--shape-fusion {tc.shape_fusion} and --pixel-fusion {tc.pixel_fusion}: "
                          "the two weights add up to more than 1, which leaves the CNN a negative weight")
    if tc.refit_val and tc.monitor != "last":
        recipe = tc.recipe if tc.recipe in DATASET_RECIPES else cfg.dataset.lower()
        whose = f" (on in {recipe}'s recipe)" if DATASET_RECIPES.get(recipe, {}).get("refit_val") else ""
        raise ConfigError(f"--refit-val{whose} with --monitor {tc.monitor}: a fold that also trains on its "
                          "validation part has nothing left to choose a checkpoint on; use --monitor last, or "
                          "--no-refit-val")
    if tc.swa > 0 and (tc.monitor != "last" or tc.early_stopping_patience > 0):
        # the average reaches the model only when the last epoch ends: a checkpoint chosen on
        # validation holds one epoch's own weights, and a fit stopped early never gets it
        why = (f"--monitor {tc.monitor} keeps one epoch's checkpoint, not the average" if tc.monitor != "last"
               else f"--patience {tc.early_stopping_patience} can end the fit before the average is taken")
        raise ConfigError(f"--swa {tc.swa}: {why}; use --monitor last and --patience 0 with --swa, or drop --swa")
    if cfg.model.resolved_init() == "synthetic" and (cfg.model.weights or cfg.model.pretrained):
        raise ConfigError("--init synthetic picks the starting weights itself; drop --weights/--pretrained")
