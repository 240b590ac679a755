"""Model selection: several models under one protocol, in one table (the seed's Table I, done
with cross-validation, out-of-fold scoring, and time and size beside accuracy)."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from spermhead.config import RunConfig
from spermhead.data.readers import load_dataset
from spermhead.errors import ConfigError
from spermhead.training.options import check_run_config
from spermhead.training.run import check_model, train_run

log = logging.getLogger(__name__)

# The seed's variants 2.a-2.d: RGB vs gray, with and without L2 on the conv layers.
VARIANTS = [("rgb", 0.0), ("gray", 0.0), ("rgb", 0.01), ("gray", 0.01)]


def variant_name(color: str, l2: float) -> str:
    return f"{color}" + (f"+L2={l2:g}" if l2 else "")


def select_models(base: RunConfig, models: list[str], out: Path, *, variants: bool = False,
                  overwrite: bool = False, resume: bool = False, progress: bool = True) -> list[dict[str, Any]]:
    from spermhead.evaluation.selection import write_selection
    from spermhead.models.registry import build_model, count_parameters

    combos = VARIANTS if variants else [(base.preprocess.color, base.model.l2_conv)]
    runs = []
    for name in models:
        for color, l2 in combos:
            tag = name.replace(":", "-") + ("" if not variants else "_" + variant_name(color, l2).replace("=", ""))
            cfg = replace(base, out=str(out / tag), preprocess=replace(base.preprocess, color=color),
                          model=replace(base.model, name=name, l2_conv=l2))
            runs.append((name, color, l2, cfg))
    tags = [cfg.out for *_, cfg in runs]
    if len(set(tags)) < len(tags):
        twice = sorted({name for name, *_, cfg in runs if tags.count(cfg.out) > 1})  # as given, "timm:x"
        raise ConfigError(f"--models names {', '.join(twice)} more than once")
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
    for *_, cfg in runs:
        check_run_config(cfg)
        check_model(cfg, num_classes)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name, color, l2, cfg in runs:
        result = train_run(cfg, overwrite=overwrite, resume=resume, progress=progress)
        in_chans = 1 if color == "gray" else 3
        params = count_parameters(build_model(name, num_classes=len(result.predictions.classes),
                                              in_chans=in_chans, image_size=cfg.preprocess.image_size))
        rows.append({
            "model": name, "variant": variant_name(color, l2), "run_dir": str(cfg.out),
            "metrics": result.metrics,  # fold means +/- sd come from it
            "seconds_per_epoch": result.timing["seconds_per_epoch"],
            "parameters": params, "predictions": result.predictions,
        })
    write_selection(rows, out, about=selection_about(base, synthetic=table.synthetic,
                                                     fixed_split=table.has_fixed_split))
    return rows


# Where each protocol's validation images come from (never from the test images).
VALIDATION = {"cv": "a part carved from each fold's training side", "folders": "the val/ folder",
              "random": "the split's validation part"}


def selection_about(base: RunConfig, *, synthetic: bool, fixed_split: bool) -> str:
    """What every row of the table was trained and scored on, in one sentence (its header)."""
    p = base.protocol
    kind = p.kind if p.kind != "auto" else "folders" if fixed_split else "cv"  # as train_run resolves it
    protocol = ({"cv": f"{p.folds}-fold cross-validation" + (", grouped" if p.grouped else ""),
                 "folders": "its train/val/test folders",
                 "random": "a random {:g}/{:g}/{:g} split".format(*(100 * f for f in p.split))}.get(kind, kind))
    images = " (synthetic heads from `spermhead data synth`)" if synthetic else ""
    return (f"{base.dataset}{images}, {protocol}, seed {base.seed}; {base.train.epochs} epochs, "
            f"{base.preprocess.image_size} px {base.preprocess.color}, recipe {base.train.recipe}; every model from "
            f"random weights and scored alone (no fused second opinions); validation: {VALIDATION[kind]}.")
