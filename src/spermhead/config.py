"""Run configuration: one dataclass tree, saved as config.yaml with every run."""

from __future__ import annotations

import difflib
import platform
import sys
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from spermhead.errors import ConfigError

DEFAULT_MODEL = "spermnet"
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("onecycle", "cosine", "plateau", "none")
MAX_PIXELS = 40_000_000  # larger images are refused (decompression bombs)

# The values each choice of PreprocessConfig takes: checked for a run's settings and a bundle's alike
PREPROCESS_CHOICES = {"color": ("gray", "rgb"), "scale": ("head", "image"), "background": ("keep", "mask")}


@dataclass
class PreprocessConfig:
    image_size: int = 64
    color: str = "gray"  # "gray" or "rgb"
    align: bool = True  # segment the head and rotate its major axis to horizontal
    margin: float = 0.3  # crop margin around the head, as a fraction of its length
    # "head": the crop follows the head's length (size-invariant); "image": the crop keeps the
    # original image's extent, so absolute size (SCIAN's "small" class) stays visible.
    scale: str = "head"
    # "mask": pixels outside the (slightly grown) head mask become background, so the model sees
    # the head's outline and stain only, not the midpiece, neighbours or debris
    background: str = "keep"
    max_pixels: int = MAX_PIXELS


@dataclass
class ModelConfig:
    name: str = DEFAULT_MODEL
    pretrained: bool = False  # hub weights (needs network)
    weights: str | None = None  # local .safetensors or .pth
    l2_conv: float = 0.0  # extra L2 penalty on conv weights (the seed's variants 2.c/2.d)
    drop_rate: float = 0.1
    kwargs: dict[str, Any] = field(default_factory=dict)  # structural options, e.g. {"width": 32}
    # "synthetic": start from a model first trained on rendered heads (training/synthetic_init.py);
    # "auto": synthetic for the default model, where it was measured, scratch for the others
    init: str = "auto"
    init_per_class: int = 1000
    init_epochs: int = 40
    init_seed: int = 0
    init_style: str = "auto"  # the rendered heads' look: auto (SCIAN's for SCIAN sets), hushem or scian

    def resolved_init(self) -> str:
        if self.init != "auto":
            return self.init
        own_start = self.weights is not None or self.pretrained
        return "synthetic" if self.name == DEFAULT_MODEL and not own_start else "scratch"


@dataclass
class TrainConfig:
    recipe: str = "default"
    # the defaults are the best HuSHeM recipe found (benchmarks/RESULTS.md), except that its recipe
    # trains 40 epochs from the synthetic start; 150 is its schedule from random weights
    epochs: int = 150
    batch_size: int = 32
    optimizer: str = "adamw"  # adamw | adam | sgd
    lr: float = 3e-3
    weight_decay: float = 5e-4
    schedule: str = "onecycle"  # onecycle | cosine | plateau | none
    warmup_epochs: int = 3
    early_stopping_patience: int = 0  # 0 disables; the seed recipe uses 20 on val loss
    monitor: str = "last"  # last | val_acc | val_loss: which checkpoint a fold keeps
    balance: str = "sampler"  # none | sampler | loss | offline
    balance_per_class: int = 6400  # target per class for offline balancing
    augment: str = "aligned"  # none | light | aligned | directed | seed | strong
    label_smoothing: float = 0.1
    # the learning rate of every layer but the final classifier layer, as a share of lr (discriminative
    # fine-tuning: a synthetic start's features move less than the new classifier); 1 = one rate
    backbone_lr: float = 1.0
    focal: float = 0.0  # focal loss gamma: (1 - p)^gamma down-weights the images already right; 0 = cross-entropy
    soft_labels: float = 0.0  # weight of the experts' vote shares in the target (SCIAN); 0 = majority only
    # weight of out-of-fold teachers' answers in the target (training/distill.py: three teachers
    # per fit, each on two thirds of its training side); 0 = off
    distill: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0  # CutMix Beta(a, a): a box from another image, targets mixed by its area
    swa: float = 0.0  # fraction of the last epochs whose weights are averaged (SWA); 0 disables
    ema: float = 0.0  # EMA decay of the weights; 0 disables
    sam: float = 0.0  # sharpness-aware minimisation radius rho (two passes per step); 0 disables
    tta: bool = True  # average over flips at evaluation
    # weights of second opinions fused with the CNN's probabilities, each fitted on the training
    # side: a logistic regression on the head's profile (models/shape.py) and an SVM on the aligned
    # pixels (models/pixels.py); 0 = left out. HuSHeM's recipe uses 0.3 each (training/recipes.py).
    shape_fusion: float = 0.0
    pixel_fusion: float = 0.0
    # balanced operating point: this x the log training prior is divided out; "val" chooses it
    # per fold on the validation part (training/operating.py)
    prior_strength: float | str = 1.0
    members_per_fold: int = 1  # a seed ensemble per fold (each member trained from its own seed)
    val_fraction: float = 0.15  # carved from each training side for model selection
    # a learning-curve point: the share of each training side trained on (stratified); the rest
    # is left out, so `spermhead train --train-fraction 0.5` asks what half the labels would give
    train_fraction: float = 1.0
    # after the validation part is scored, each fold trains again on training + validation and
    # that model scores the test part (nothing inside a run is chosen on validation with
    # monitor "last" and a fixed prior strength); the validation figures stay the first model's
    refit_val: bool = False
    # divide the final log-probabilities by a temperature fitted on each fold's validation part,
    # so a 0.8 answer is right about 8 times in 10; answers do not change (training/temperature.py)
    calibrate: bool = True
    num_threads: int = 0  # torch threads; 0 lets torch decide
    accelerator: str = "auto"  # auto (a CUDA GPU when there is one, else the CPU) | cpu | gpu


@dataclass
class ProtocolConfig:
    kind: str = "auto"  # auto (folders if the dataset has train/val/test, else cv) | cv | folders | random
    folds: int = 5
    split: tuple[float, float, float] = (0.6, 0.3, 0.1)  # train/val/test for kind=random
    grouped: bool = False  # CV folds by acquisition group
    # images this alike (thumbnail correlation) are one head and stay on one side of every split;
    # 0 turns it off (data/duplicates.py)
    near_duplicates: float = 0.98
    final_model: str = "ensemble"  # after CV: "ensemble" of folds, or "refit" on all data


@dataclass
class RunConfig:
    dataset: str = "hushem"
    data_dir: str | None = None
    out: str = "runs/latest"
    seed: int = 0
    # datasets or folders whose images join every training side only (data/extra.py)
    extra_train: tuple[str, ...] = ()
    operating_point: str = "accuracy"  # accuracy | balanced (prior correction chosen on val)
    loggers: tuple[str, ...] = ("csv",)  # csv, tensorboard, mlflow
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        return _from_dict(cls, data)


def fusion_text(shape_fusion: float, pixel_fusion: float) -> str:
    """Whose answers a run's scores are, in words: "" for the network alone, else e.g. "the network
    0.4 + head-profile model 0.3 + pixel model 0.3" (`models/shape.fuse_all`)."""
    others = [(w, name) for w, name in ((shape_fusion, "head-profile model"), (pixel_fusion, "pixel model")) if w > 0]
    if not others:
        return ""
    network = 1 - sum(w for w, _ in others)
    return " + ".join([f"the network {network:.2g}", *(f"{name} {w:.2g}" for w, name in others)])


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    kwargs = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        default = f.default_factory() if callable(f.default_factory) else None  # type: ignore[misc]
        if is_dataclass(default):
            value = _from_dict(type(default), value or {})
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


# Where a run reads and writes and how fast it goes, not what it computes: a run resumed on
# another machine (or with more threads) may change these.
RUN_LOCAL = ("data_dir", "out", "loggers", "train.num_threads", "train.accelerator")


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key != "kwargs":
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(saved: RunConfig, asked: RunConfig) -> list[str]:
    """'field: saved -> asked' for each setting outside RUN_LOCAL where the two differ."""
    # through YAML, as config.yaml went: tuples read back as lists, numbers as written
    a, b = (_flat(yaml.safe_load(yaml.safe_dump(c.to_dict()))) for c in (saved, asked))
    return [f"{key}: {a.get(key)!r} -> {b.get(key)!r}" for key in sorted(a.keys() | b.keys())
            if key not in RUN_LOCAL and a.get(key) != b.get(key)]


def environment() -> dict[str, Any]:
    """Versions that make a run reproducible elsewhere."""
    packages = {}
    for name in ("spermhead", "torch", "torchvision", "timm", "lightning", "numpy",
                 "scikit-learn", "opencv-python-headless", "pillow"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    return {"python": sys.version.split()[0], "platform": platform.platform(), "packages": packages}


def save_config(config: RunConfig, path: Path) -> None:
    data = {**config.to_dict(), "environment": environment()}
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def load_config(path: Path) -> RunConfig:
    """A run's own config.yaml (unchecked keys: a run saved by an older spermhead stays readable)."""
    data = _yaml_mapping(Path(path))
    data.pop("environment", None)
    return RunConfig.from_dict(_as_it_ran(data))


def _yaml_mapping(file: Path) -> dict[str, Any]:
    """The YAML file's mapping; a damaged file is an error naming it, not a parser traceback."""
    try:
        data = yaml.safe_load(file.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: not readable as YAML ({str(exc).splitlines()[0]})") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: a mapping of settings (like a run's config.yaml), not {type(data).__name__}")
    return data


def _as_it_ran(data: dict[str, Any]) -> dict[str, Any]:
    """A saved config with the settings it predates set as its run had them."""
    if isinstance(data.get("protocol"), dict):
        # written before near-duplicates were kept together: its folds (and --resume) stay as they ran
        data["protocol"].setdefault("near_duplicates", 0.0)
    if isinstance(data.get("train"), dict):
        # written before calibration: its folds (and --resume) keep the probabilities as they were
        data["train"].setdefault("calibrate", False)
    return data


def _kind_problem(value: Any, default: Any) -> str | None:
    """Why `value` cannot stand where the config's default is `default` (None if it can)."""
    if default is None:  # data_dir, weights: a path, or nothing
        return None
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "true or false"
    if isinstance(default, int):
        return None if isinstance(value, int) and not isinstance(value, bool) else "a whole number"
    if isinstance(default, float):
        return None if isinstance(value, int | float) and not isinstance(value, bool) else "a number"
    if isinstance(default, str):
        return None if isinstance(value, str) else "text"
    if isinstance(default, tuple):
        return None if isinstance(value, list | tuple) else "a list"
    if isinstance(default, dict):
        return None if isinstance(value, dict) else "a mapping"
    return None


def _check_settings(data: Any, template: dict[str, Any], where: str, problems: list[str]) -> None:
    if not isinstance(data, dict):
        problems.append(f"{where.rstrip('.') or 'the file'}: a mapping of settings, not {data!r}")
        return
    for key, value in data.items():
        name = f"{where}{key}"
        if key not in template:
            near = difflib.get_close_matches(str(key), [str(k) for k in template], n=1)
            problems.append(f"{name}: not a setting" + (f" (did you mean {where}{near[0]}?)" if near else ""))
        elif isinstance(template[key], dict) and key != "kwargs":
            _check_settings(value, template[key], f"{name}.", problems)
        elif name == "train.prior_strength" and isinstance(value, str):
            continue  # "val"; build_run_config checks the word
        elif (kind := _kind_problem(value, template[key])) is not None:
            problems.append(f"{name}: {value!r} is not {kind}")


def read_config_file(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(settings, environment) from a run directory's config.yaml, or any YAML file of settings.

    A hand-written file may hold only the settings it changes. Every key and value is checked
    against RunConfig, so a misspelt setting is an error naming it rather than silently unused.
    Relative paths in a hand-written file are read from the file's folder (`_rebase_paths`); a
    run's own config.yaml (it records its environment) keeps them as the run read them.
    """
    path = Path(path)
    file = path / "config.yaml" if path.is_dir() else path
    if not path.exists():
        raise ConfigError(f"{path}: no such file or folder (give a run directory or a YAML file of settings)")
    if not file.is_file():
        raise ConfigError(f"{path}: no config.yaml there (give a run directory or a YAML file of settings)")
    data = _yaml_mapping(file)
    env = data.pop("environment", None)
    problems: list[str] = []
    _check_settings(data, RunConfig().to_dict(), "", problems)
    if problems:
        raise ConfigError(f"{file}: " + "; ".join(problems))
    if env is None:  # hand-written; a run's own file holds paths as the run read them
        _rebase_paths(data, file.parent)
    # written by a run (it records its environment): the settings it predates stay as it ran them
    return (_as_it_ran(data) if env is not None else data), (env if isinstance(env, dict) else {})


def _rebase_paths(data: dict[str, Any], folder: Path) -> None:
    """A file's relative paths (data_dir, dataset and extra_train folders, model.weights) read
    from the file's own folder, so that a config kept beside its data works from any working
    directory; `~` is expanded, as a shell would."""
    from spermhead.data.readers import NAMED_DATASETS

    def rebased(value: Any) -> Any:
        if not isinstance(value, str) or not value or value.lower() in NAMED_DATASETS:
            return value
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else folder.absolute() / path)

    for key in ("data_dir", "dataset"):
        if key in data:
            data[key] = rebased(data[key])
    if isinstance(data.get("extra_train"), list | tuple):
        data["extra_train"] = [rebased(v) for v in data["extra_train"]]
    if isinstance(data.get("model"), dict) and "weights" in data["model"]:
        data["model"]["weights"] = rebased(data["model"]["weights"])


def environment_differences(saved: dict[str, Any]) -> list[str]:
    """'name saved -> here' for the recorded versions that differ from this machine's."""
    here = environment()
    pairs = {"python": (saved.get("python"), here["python"]),
             **{name: ((saved.get("packages") or {}).get(name), version)
                for name, version in here["packages"].items()}}
    return [f"{name} {a} -> {b}" for name, (a, b) in pairs.items() if a is not None and a != b]
