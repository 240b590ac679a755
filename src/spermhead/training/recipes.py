"""Named training recipes: a recipe sets defaults that explicit options then override."""

from __future__ import annotations

from dataclasses import replace

from spermhead.config import RunConfig
from spermhead.errors import ConfigError


def _default(cfg: RunConfig) -> RunConfig:
    return cfg


def _seed(cfg: RunConfig) -> RunConfig:
    """The seed report's training: Adam, early stopping on val loss (patience 20), checkpoint at
    best val accuracy, ReduceLROnPlateau x0.5 after 5, offline balancing to 6400 per class,
    Keras-like online augmentation, 32 px RGB."""
    train = replace(cfg.train, recipe="seed", optimizer="adam", lr=1e-3, weight_decay=0.0,
                    schedule="plateau", early_stopping_patience=20, monitor="val_acc",
                    balance="offline", balance_per_class=6400, augment="seed",
                    label_smoothing=0.0, mixup=0.0, tta=False, epochs=100)
    pre = replace(cfg.preprocess, image_size=32, color="rgb")
    return replace(cfg, train=train, preprocess=pre, model=replace(cfg.model, init="scratch"))


RECIPES = {"default": _default, "seed": _seed}

# The default recipe's settings per named dataset: the best found for each (benchmarks/RESULTS.md),
# as `spermhead train` options. Explicit options win. Other datasets get the config defaults:
# HuSHeM's recipe without the parts validated on HuSHeM only: the 48 px input, the fusion with
# the profile and pixel models, and the short schedule (they train 64 px, 150 epochs, the CNN
# alone). spermnet starts from the synthetic source (`init` "auto").
# SCIAN: the natural class prior in training (the balanced point comes from the prior
# correction), expert votes as soft targets, and a fixed-scale crop so "small" heads stay small.
# 40 epochs from the synthetic start: SCIAN-TA (session 7) and SCIAN-PA (session 10) were as good
# as at 100 and 60 on fresh seeds, in two thirds of the time or less.
# SCIAN-PA trains each fold again on training + validation once validation is scored: 15% fewer
# training images cost its balanced point a point of average recall (session 14; accuracy lost
# 0.4, session 13 0.35). SCIAN-TA does not: its learning curve was flat (session 12).
_SCIAN = {"epochs": 40, "augment": "light", "monitor": "last", "balance": "none", "soft_labels": 0.5,
          "scale": "image"}
DATASET_RECIPES: dict[str, dict[str, object]] = {
    # HuSHeM: 48 px, and the CNN fused with the profile and pixel models, 0.3 each (session 9);
    # each fold trains again on training + validation once validation is scored (session 12);
    # 40 epochs, not 20: +0.7 points of validation accuracy on two sets of 8 CV seeds (session 21)
    "hushem": {"epochs": 40, "augment": "aligned", "monitor": "last", "image_size": 48,
               "shape_fusion": 0.3, "pixel_fusion": 0.3, "refit_val": True},
    "scian-pa": {**_SCIAN, "refit_val": True},
    "scian-ta": _SCIAN,
    # the combined set also trains on its 30% validation part once it is scored (session 12)
    "combined": {"epochs": 100, "augment": "light", "monitor": "last", "balance": "none", "refit_val": True},
}

# A recipe's epochs are for the synthetic start. HuSHeM's and SCIAN's 40 would leave a model
# that starts from random weights (another architecture, `--init scratch`, `select`) half-trained,
# so such a run trains for the epochs of the recipe before the short schedule, unless --epochs is
# given.
SCRATCH_EPOCHS: dict[str, int] = {"hushem": 150, "scian-pa": 60, "scian-ta": 100}

# Any other set (a lab's own class folders) from the synthetic start trains on its natural class
# prior (the balanced point comes from the prior correction) for 40 epochs: on SCIAN-TA's heads
# as a folder as accurate as the class-balanced sampler at 150 epochs, with more average recall,
# and level on HuSHeM's images, in a quarter of the time (benchmarks/RESULTS.md, session 11; 40
# epochs with the sampler had lost 8 points of accuracy on SCIAN-TA's heads, session 10). From
# random weights a folder keeps the config's sampler and 150 epochs.
FOLDER_SYNTHETIC: dict[str, object] = {"balance": "none", "epochs": 40}


def apply_recipe(cfg: RunConfig, name: str) -> RunConfig:
    """`name`: default, seed, or a named dataset whose recipe another set (a folder of heads
    like that dataset's) should train with; the dataset recipes' options are applied by
    `training/options.py`, where explicit options can still win."""
    if name not in RECIPES and name not in DATASET_RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose from {', '.join([*RECIPES, *DATASET_RECIPES])}")
    out = RECIPES.get(name, _default)(cfg)
    out.train.recipe = name
    return out
