"""Model selection: several models under one protocol, in one table (the seed's Table I, done
with cross-validation, out-of-fold scoring, and time and size beside accuracy)."""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from spermhead.config import ModelConfig, RunConfig, fusion_text
from spermhead.data.readers import load_dataset, os_litter
from spermhead.errors import ConfigError, SpermheadError
from spermhead.models.registry import backbone_frozen, has_hub_weights, hub_models_text
from spermhead.training.options import absolute_path, check_run_config
from spermhead.training.run import check_model, check_resumable, protocol_kind, train_run

log = logging.getLogger(__name__)

# The seed's variants 2.a-2.d: RGB vs gray, with and without L2 on the conv layers.
VARIANTS = [("rgb", 0.0), ("gray", 0.0), ("rgb", 0.01), ("gray", 0.01)]


def variant_name(color: str, l2: float) -> str:
    return f"{color}" + (f"+L2={l2:g}" if l2 else "")


def select_settings(settings: dict[str, Any], init: str = "scratch") -> tuple[dict[str, Any], list[str], list[str]]:
    """A --config file's settings as select uses them, with what it left out and what it fuses.

    Every model starts as select's own options say (`init`): from random weights (like for like),
    from a synthetic source of its own (--init synthetic, opt-in: hours for the seed's large nets
    on a CPU), or --pretrained / --weights MODEL=FILE. A file's weights file or hub flag fits the
    model it was written for, not every model in the list, and so does an init other than select's:
    they are left out, with the file's epochs (a recipe's 40 from the synthetic source would leave
    a network from random weights half-trained; the epochs of select's start apply). Each network
    is scored alone (the recipe's second opinions, 0.6 of HuSHeM's vote, would be the same for
    every architecture and hide their differences), unless the file fuses them."""
    model = dict(settings.get("model") or {})
    train = dict(settings.get("train") or {})
    dropped = [f"model.{k} {v}" for k in ("weights", "pretrained") if (v := model.pop(k, None)) not in (None, False)]
    if (v := model.pop("init", None)) not in (None, "auto", init):
        dropped.insert(0, f"model.init {v}")
    if dropped and "epochs" in train:
        dropped.append(f"train.epochs {train.pop('epochs')}")
    fusion = {"shape_fusion": 0.0, "pixel_fusion": 0.0, **train}
    fused = [f"train.{k} {fusion[k]}" for k in ("shape_fusion", "pixel_fusion") if fusion[k]]
    return {**settings, "model": {**model, "init": init}, "train": fusion}, dropped, fused


def parse_weights(items: list[str]) -> dict[str, str]:
    """`--weights MODEL=FILE` options as {model: file}; a model given two files is refused."""
    weights: dict[str, str] = {}
    for item in items:
        model, eq, file = item.partition("=")  # model names hold no "=", file names may
        if not (eq and model and file):
            raise ConfigError(f"--weights {item}: give MODEL=FILE, e.g. timm:resnet18=resnet18.safetensors")
        if model in weights:
            raise ConfigError(f"--weights names {model} twice ({weights[model]} and {file}); give each model one file")
        weights[model] = file
    return weights


def parse_model_options(items: list[str]) -> dict[str, dict[str, Any]]:
    """`--model-option MODEL:KEY=VALUE` options as {model: {key: value}}, each value read as YAML
    (false, 0.1, [1, 2]). A model name may hold a colon (timm:resnet18); a key does not."""
    import yaml

    from spermhead.models.registry import BUILD_SETTINGS

    options: dict[str, dict[str, Any]] = {}
    for item in items:
        target, eq, text = item.partition("=")
        model, colon, key = target.rpartition(":")
        key = key.strip()
        if not (eq and colon and model and key and text.strip()):
            raise ConfigError(f"--model-option {item}: give MODEL:KEY=VALUE, e.g. seed-resnet50:freeze_backbone=false "
                              "or timm:resnet18:drop_path_rate=0.1")
        if key in BUILD_SETTINGS:  # build_model takes it for every model: it would come twice
            raise ConfigError(f"--model-option {item}: {key} is not a model option; it is set by {BUILD_SETTINGS[key]}")
        if key in options.get(model, {}):
            raise ConfigError(f"--model-option names {model}:{key} twice; give each option once")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--model-option {item}: {text!r} is not a value ({exc.__class__.__name__})") from None
        options.setdefault(model, {})[key] = value
    return options


def check_starts(base: RunConfig, models: list[str], weights: dict[str, str]) -> None:
    """Refuse, before any training, a weights file for a model not in the list or not there, and
    pretrained weights for a model that has none."""
    if stray := [m for m in weights if m not in models]:
        raise ConfigError(f"--weights {stray[0]}={weights[stray[0]]}: {stray[0]} is not in --models "
                          f"({', '.join(models)})")
    if missing := [m for m, file in weights.items() if not Path(file).is_file()]:
        raise ConfigError(f"--weights {missing[0]}={weights[missing[0]]}: no such file")
    # a model with its own file starts from that; the others from the hub, which some lack
    if base.model.pretrained and (none := [m for m in models if m not in weights and not has_hub_weights(m)]):
        raise ConfigError(f"--pretrained: {', '.join(none)} {'has' if len(none) == 1 else 'have'} no pretrained "
                          f"weights (these do: {hub_models_text()}); leave {'it' if len(none) == 1 else 'them'} "
                          "out, or give a weights file with --weights MODEL=FILE")


def select_models(base: RunConfig, models: list[str], out: Path, *, variants: bool = False,
                  weights: dict[str, str] | None = None, model_options: dict[str, dict[str, Any]] | None = None,
                  overwrite: bool = False, resume: bool = False,
                  progress: bool = True) -> tuple[list[dict[str, Any]], str]:
    """Train every model (and variant) with `base`'s settings into `out`/<model>, then write the
    selection table. `weights` gives a model (named as in `models`) its own starting weights file;
    the others start as `base` says (random weights, or hub weights where it is pretrained).
    `model_options` gives a model its own options (kwargs) over `base`'s, which go to every model."""
    from spermhead.evaluation.selection import write_selection
    from spermhead.models.registry import build_model, count_parameters

    if not models:  # an empty table would claim a choice, and block the folder for the next try
        raise ConfigError("--models names no model; give one or more, e.g. --models spermnet,seed-cnn")
    weights, model_options = weights or {}, model_options or {}
    for stray in [m for m in model_options if m not in models]:
        whole = [f"{stray}:{key}" for key in model_options[stray] if f"{stray}:{key}" in models]
        hint = f" (for {whole[0]}, give {whole[0]}:KEY=VALUE)" if whole else ""  # the key was left out
        raise ConfigError(f"--model-option {stray}:...: {stray} is not in --models ({', '.join(models)}){hint}")
    combos = VARIANTS if variants else [(base.preprocess.color, base.model.l2_conv)]
    runs = []
    for name in models:
        model = replace(base.model, name=name, kwargs={**base.model.kwargs, **model_options.get(name, {})})
        if name in weights:  # its own file is its start, whatever the others start from
            model = replace(model, weights=absolute_path(weights[name]), pretrained=False, init="scratch")
        for color, l2 in combos:
            tag = name.replace(":", "-") + ("" if not variants else "_" + variant_name(color, l2).replace("=", ""))
            cfg = replace(base, out=str(out / tag), preprocess=replace(base.preprocess, color=color),
                          model=replace(model, l2_conv=l2))
            runs.append((name, color, l2, cfg))
    tags = [cfg.out for *_, cfg in runs]
    if len(set(tags)) < len(tags):
        twice = sorted({name for name, *_, cfg in runs if tags.count(cfg.out) > 1})  # as given, "timm:x"
        raise ConfigError(f"--models names {', '.join(twice)} more than once")
    check_starts(base, models, weights)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: is a file, not a folder; give --out a folder for the selection")
    if (out / "config.yaml").is_file():
        raise ConfigError(f"{out}: is a training run's folder, not a selection's; give --out another folder")
    # a selection's folder holds its table and one run folder per model: anything else is someone else's
    if out.is_dir() and not (out / "selection.csv").is_file() and (foreign := [
            p.name for p in sorted(out.iterdir()) if not (os_litter(p.name) or (p.is_dir() and (
                (p / "config.yaml").is_file() or str(p) in tags)))]):
        raise ConfigError(f"{out}: holds {foreign[0]}, which is not a selection's; give --out a new or empty folder")
    if (out / "selection.csv").is_file() and not (overwrite or resume):
        # its table would be replaced by one of these models alone
        raise ConfigError(f"{out}: holds a selection table already; pass --resume to finish or extend it "
                          "(give every model again), --overwrite to start again, or another --out")
    if resume and out.is_dir() and (left := sorted(d.name for d in out.iterdir() if (d / "config.yaml").is_file()
                                                   and str(d) not in tags)):
        log.warning("%s: the runs %s are not in --models and are left out of the table", out, ", ".join(left))
    # every model is built once first: a misspelt name in the list stops the selection before
    # hours go into the models before it
    table = load_dataset(base.dataset, base.data_dir)
    num_classes = len(table.classes)
    for name, *_, cfg in runs:
        check_run_config(cfg)
        try:
            check_model(cfg, num_classes)
        except SpermheadError as exc:  # said of the model in the list it concerns, and of where its options came from
            own = model_options.get(name, {})
            # only the option the error is about ("has no option KEY"): an unknown model, a weights
            # file or a value of the right key is no other option's fault
            said = re.search(r"has no option (.+?);", str(exc))
            unknown = said.group(1).split(", ") if said else []
            origin = [f"--model-option {name}:{key}" for key in own if key in unknown]
            if shared := [key for key in base.model.kwargs if key not in own and key in unknown]:
                origin.append(f"model.kwargs {', '.join(shared)} of the --config settings, which go to every model")
            where = f" (options from {'; '.join(origin)})" if origin else ""
            raise ConfigError(f"--models {name}: {exc}{where}") from exc
    if resume:  # a run whose settings (its start too) changed is refused before any other trains
        for *_, cfg in runs:
            if (Path(cfg.out) / "config.yaml").is_file():
                kind = protocol_kind(cfg.protocol, table.has_fixed_split)
                check_resumable(Path(cfg.out), replace(cfg, protocol=replace(cfg.protocol, kind=kind)),
                                advice="Give select the options the table was made with (the same --config, "
                                       "--init, --weights, --pretrained and --model-option too), or --overwrite "
                                       "to start again")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, color, l2, cfg in runs:
        result = train_run(cfg, overwrite=overwrite, resume=resume, progress=progress)
        in_chans = 1 if color == "gray" else 3
        params = count_parameters(build_model(name, num_classes=len(result.predictions.classes),
                                              in_chans=in_chans, image_size=cfg.preprocess.image_size,
                                              **cfg.model.kwargs))
        rows.append({
            "model": name, "variant": variant_name(color, l2), "start": start_text(cfg.model), "run_dir": str(cfg.out),
            "metrics": result.metrics,  # fold means +/- sd come from it
            "seconds_per_epoch": result.timing["seconds_per_epoch"],
            "parameters": params, "predictions": result.predictions,
        })
    starts = {name: start_text(cfg.model) for name, *_, cfg in runs}
    about = selection_about(base, synthetic=table.synthetic, fixed_split=table.has_fixed_split, starts=starts,
                            variants=variants)
    write_selection(rows, out, about=about)
    return rows, about


# Where each protocol's validation images come from (never from the test images).
VALIDATION = {"cv": "a part carved from each fold's training side", "folders": "the val/ folder",
              "random": "the split's validation part"}


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def start_text(model: ModelConfig) -> str:
    """What a model's training starts from, in words (a file wins over the hub, as in loading)."""
    # a frozen backbone trains its dense head alone: not the same protocol as a whole network
    file_start = bool(model.weights or model.pretrained) or model.resolved_init() == "synthetic"
    frozen = backbone_frozen(model.name, model.kwargs, pretrained_start=file_start)
    if model.weights:
        start = f"the weights file {Path(model.weights).name}"  # its run's config.yaml holds the whole path
    elif model.pretrained:
        start = "its pretrained (hub) weights"
    else:
        start = "a source model trained on synthetic heads" if model.resolved_init() == "synthetic" else "random weights"
    return start + (", backbone frozen" if frozen else "")


def selection_about(base: RunConfig, *, synthetic: bool, fixed_split: bool,
                    starts: dict[str, str] | None = None, variants: bool = False) -> str:
    """What every row of the table was trained and scored on, in one sentence (its header).
    `starts` gives each model's start (`start_text`); without it, every model starts as `base`."""
    p = base.protocol
    kind = protocol_kind(p, fixed_split)
    protocol = ({"cv": f"{p.folds}-fold cross-validation" + (", grouped" if p.grouped else ""),
                 "folders": "its train/val/test folders",
                 "random": "a random {:g}/{:g}/{:g} split".format(*(100 * f for f in p.split))}.get(kind, kind))
    images = " (synthetic heads from `spermhead data synth`)" if synthetic else ""
    starts = starts or {base.model.name: start_text(base.model)}
    by_start = {text: [name for name, t in starts.items() if t == text] for text in starts.values()}
    # one start for all is said once; otherwise each model's, so no row is read as another's
    start = (f"every model from {next(iter(by_start))} and" if len(by_start) == 1
             else ", ".join(f"{_and(names)} from {text}" for text, names in by_start.items()) + "; every model")
    fused = fusion_text(base.train.shape_fusion, base.train.pixel_fusion)
    scored = f"scored as fused answers ({fused})" if fused else "scored alone (no fused second opinions)"
    # --variants trains each model in every colour and L2 setting: the rows name theirs
    colour = "each variant's colour and L2 (its row)" if variants else base.preprocess.color
    # val_fraction carves CV's validation parts; a folder or random split brings its own
    validation = (VALIDATION[kind] if kind != "cv" or base.train.val_fraction > 0 else
                  "none (val_fraction 0): ★ is chosen on the test figures")
    return (f"{base.dataset}{images}, {protocol}, seed {base.seed}; {base.train.epochs} epoch{'s' * (base.train.epochs != 1)}, "
            f"{base.preprocess.image_size} px {colour}, recipe {base.train.recipe}; {start} "
            f"{scored}; validation: {validation}.")
