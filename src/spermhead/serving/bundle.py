"""The model bundle: `model.safetensors` plus `model.json`. Loading it needs no training
code and no pickle, so the app and `predict` can trust a bundle from elsewhere."""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from spermhead import __version__
from spermhead.config import PREPROCESS_CHOICES, PreprocessConfig
from spermhead.errors import SpermheadError
from spermhead.models.inference import Ensemble, fast_layout, standardized
from spermhead.models.pixels import PixelModel
from spermhead.models.shape import ShapeModel, fuse_all
from spermhead.models.weights import write_safetensors

BUNDLE_FORMAT = 1
# Thumbnail signatures (data/duplicates.py) of the images that built the bundle's models (training
# sides and validation parts), so that `evaluate` can tell which images it is asked to score were
# seen in training. Kept out of model.safetensors: predict and the app never read it.
TRAINING_IMAGES = "training_images.safetensors"


@dataclass
class BundleMeta:
    architecture: str  # registry name, e.g. "spermnet" or "timm:resnet18"
    classes: list[str]
    preprocess: dict[str, Any]  # PreprocessConfig as a dict
    in_chans: int
    image_size: int
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    members: int = 1
    kind: str = "single"  # single | ensemble (CV fold models) | refit (trained on all data)
    tta: bool = False
    tta_flips: str = "hv"  # the flips TTA averages over (the training augmentation's symmetries)
    class_bias: list[float] | None = None  # log-prior correction of the chosen operating point
    operating_point: str = "accuracy"
    uncertainty_threshold: float = 0.6  # top probability below this flags "uncertain"
    operating_points: dict[str, list[float]] = field(default_factory=dict)  # name -> class_bias
    # added to the CNN's log-probabilities before fusion and class_bias: the training prior that
    # class-balanced training took out (training/operating.py); None after natural-prior training
    cnn_prior: list[float] | None = None
    # the final log-probabilities (after fusion and the operating point) are divided by this:
    # calibration fitted on the validation parts (training/temperature.py); 1 = none
    temperature: float = 1.0
    run: dict[str, Any] = field(default_factory=dict)  # dataset, protocol, headline metrics
    # each acquisition descriptor's [min, max] over the training images (preprocess/acquisition.py);
    # a prediction outside says so. Empty in bundles written before: nothing is checked
    input_ranges: dict[str, list[float]] = field(default_factory=dict)
    # per operating point, the run's held-out confusion counts (rows true, columns predicted), so
    # a sample's class shares can be adjusted for the model's errors (evaluation/composition.py)
    confusions: dict[str, list[list[int]]] = field(default_factory=dict)
    # per operating point, how far the run's own held-out predictions put a sample's class shares
    # from the truth, counted and adjusted, and by how much each interval must widen to hold it
    # (composition.check_intervals); empty where the run had no folds to check with
    share_checks: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def confusion(self) -> list[list[int]] | None:
        """The held-out confusion counts at the operating point in use (None: not recorded)."""
        return self.confusions.get(self.operating_point)

    @property
    def share_check(self) -> dict[str, Any] | None:
        """The share check at the operating point in use (None: not recorded)."""
        return self.share_checks.get(self.operating_point)
    shape_fusion: float = 0.0  # weight of the fused shape models (models/shape.py); 0 = CNN alone
    pixel_fusion: float = 0.0  # weight of the fused pixel models (models/pixels.py)
    # Inputs are [0, 1] images; each member standardises with its own training-side statistics.
    mean: list[float] = field(default_factory=lambda: [0.0])
    std: list[float] = field(default_factory=lambda: [1.0])
    format: int = BUNDLE_FORMAT
    version: str = __version__

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return PreprocessConfig(**self.preprocess)


@dataclass
class Bundle:
    meta: BundleMeta
    model: nn.Module  # an Ensemble; outputs log-probabilities or logits
    path: Path | None = None
    shapes: list[ShapeModel] = field(default_factory=list)  # averaged, then fused with the CNN
    pixels: list[PixelModel] = field(default_factory=list)  # the same

    @property
    def fused(self) -> bool:
        return self.meta.shape_fusion > 0 or self.meta.pixel_fusion > 0

    def fuse(self, cnn: np.ndarray, images: np.ndarray) -> np.ndarray:
        """The CNN's probabilities fused with the second opinions on the same canonical images,
        as the run's evaluation fused them (each kind averaged over the fold models)."""
        from spermhead.preprocess.profile import profiles

        others = []
        if self.meta.shape_fusion > 0:
            features = profiles(np.asarray(images))
            others.append((np.mean([m.predict_proba(features) for m in self.shapes], axis=0), self.meta.shape_fusion))
        if self.meta.pixel_fusion > 0:
            others.append((np.mean([m.predict_proba(images) for m in self.pixels], axis=0), self.meta.pixel_fusion))
        return fuse_all(cnn, others)


def save_bundle(directory: Path, members: list[nn.Module], meta: BundleMeta,
                shapes: list[ShapeModel] | None = None, pixels: list[PixelModel] | None = None) -> Path:
    """`members` are `standardized(net)` modules: a Standardize layer, then the registry's net.
    `shapes` and `pixels`: the second opinions fused with them where their weight in `meta` is > 0."""
    if meta.shape_fusion > 0 and not shapes:
        raise SpermheadError("a bundle with shape fusion needs its shape models")
    if meta.pixel_fusion > 0 and not pixels:
        raise SpermheadError("a bundle with pixel fusion needs its pixel models")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    meta.members = len(members)
    meta.mean, meta.std = [0.0] * meta.in_chans, [1.0] * meta.in_chans
    tensors = {}
    for i, m in enumerate(members):
        for k, v in m.state_dict().items():
            tensors[f"member{i}.{k}"] = v.detach().cpu().contiguous()
    if meta.shape_fusion > 0:
        for i, shape in enumerate(shapes or []):
            tensors.update(shape.tensors(f"shape{i}"))
    if meta.pixel_fusion > 0:
        for i, pixel in enumerate(pixels or []):
            tensors.update(pixel.tensors(f"pixels{i}"))
    write_safetensors(tensors, directory / "model.safetensors")
    described = asdict(meta)
    for key in ("shape_fusion", "pixel_fusion", "cnn_prior", "input_ranges", "confusions", "share_checks"):  # left out when off, so such bundles
        if not described[key]:                                 # stay readable by older versions
            del described[key]
    (directory / "model.json").write_text(json.dumps(described, indent=2))
    return directory


def bundle_folder(path: Path | str) -> Path:
    """The bundle a path names: the folder itself, or the `model/` of the run folder it is (what a
    user naturally passes after `train --out RUN`)."""
    path = Path(path)
    if not (path / "model.json").is_file() and (path / "model" / "model.json").is_file():
        return path / "model"
    return path


def check_bundle_path(path: Path | str) -> None:
    """A --model that names no folder is said to, before any image is read."""
    path = Path(path)
    if path.is_file():
        folder = "its folder, " + str(path.parent) if path.name in ("model.json", "model.safetensors") else "the bundle folder"
        raise SpermheadError(f"{path}: a file; give {folder} (model.json and model.safetensors), or the run folder")
    if not path.exists():
        raise SpermheadError(f"{path}: no such folder; give a bundle folder (a run's model/) or the run folder")


def checked_bundle_folder(path: Path | str) -> Path:
    """The bundle folder a --model names (`bundle_folder`), its two files there; else an error
    naming what is missing, before anything is read or written."""
    check_bundle_path(path)
    directory = bundle_folder(path)
    for p in (directory / "model.json", directory / "model.safetensors"):
        if not p.is_file():
            raise SpermheadError(f"{p}: missing; a bundle folder holds model.json and model.safetensors")
    return directory


def load_bundle(directory: Path | str) -> Bundle:
    from spermhead.models.registry import build_model  # lazy: keeps bundle import light

    directory = checked_bundle_folder(directory)
    meta_path, weights_path = directory / "model.json", directory / "model.safetensors"
    try:
        meta = BundleMeta(**json.loads(meta_path.read_text()))
    except (TypeError, ValueError) as exc:
        raise SpermheadError(f"{meta_path}: not a spermhead bundle description ({exc})") from exc
    if not isinstance(meta.format, int):
        raise SpermheadError(f"{meta_path}: format {meta.format!r}: needs a whole number")
    if meta.format > BUNDLE_FORMAT:
        raise SpermheadError(f"{meta_path}: bundle format {meta.format} is newer than this spermhead")
    if problem := _meta_problem(meta) or _share_records_problem(meta):
        raise SpermheadError(f"{meta_path}: {problem}")
    try:
        state = load_file(str(weights_path))
    except Exception as exc:  # safetensors raises its own error type for a truncated or foreign file
        raise SpermheadError(f"{weights_path}: not a readable safetensors file ({exc}); the bundle is damaged: "
                             "copy it again, or train it again") from exc
    members = []
    for i in range(meta.members):
        net = build_model(
            meta.architecture, num_classes=len(meta.classes), in_chans=meta.in_chans,
            image_size=meta.image_size, **meta.model_kwargs,
        )
        model = standardized(net, meta.in_chans)
        prefix = f"member{i}."
        try:
            model.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        except RuntimeError as exc:  # tensors missing or of other shapes than model.json describes
            lines = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()]  # the first names torch's class
            raise SpermheadError(f"{weights_path}: does not hold the {meta.architecture} model {meta_path.name} "
                                 f"describes (member {i}: {lines[0] if lines else exc})") from exc
        members.append(fast_layout(model).eval())
    ensemble = Ensemble(members).eval()
    shapes = _second_opinions(state, weights_path, ShapeModel, "shape", meta.shape_fusion)
    pixels = _second_opinions(state, weights_path, PixelModel, "pixels", meta.pixel_fusion)
    return Bundle(meta, ensemble, directory, shapes, pixels)


def _meta_problem(meta: BundleMeta) -> str | None:
    """What is wrong with what every answer goes through (a damaged or hand-edited model.json:
    NaN there made every probability NaN, a wrong length a traceback at the first image), or None."""
    def number(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

    def count(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 1

    k = len(meta.classes) if isinstance(meta.classes, list) else 0
    if k < 2 or not all(isinstance(c, str) and c for c in meta.classes):
        return f"classes {meta.classes!r}: needs two class names or more"
    for key in ("members", "in_chans", "image_size"):
        if not count(value := getattr(meta, key)):
            return f"{key} {value!r}: needs a whole number from 1"
    for key in ("preprocess", "model_kwargs", "operating_points", "input_ranges", "confusions", "share_checks",
                "run"):
        if not isinstance(getattr(meta, key), dict):
            return f"{key}: needs a record (a JSON object), not {getattr(meta, key)!r}"
    try:
        pre = PreprocessConfig(**meta.preprocess)
    except TypeError as exc:
        return f"preprocess: not the preprocessing settings ({exc})"
    for key, allowed in PREPROCESS_CHOICES.items():
        if getattr(pre, key) not in allowed:
            return f"preprocess.{key} {getattr(pre, key)!r}: needs one of {', '.join(allowed)}"
    if not (isinstance(pre.align, bool) and number(pre.margin) and pre.margin >= 0 and count(pre.max_pixels)):
        return "preprocess: align needs true or false, margin a number from 0, max_pixels a whole number from 1"
    if not isinstance(meta.tta, bool) or not (isinstance(meta.tta_flips, str) and set(meta.tta_flips) <= {"h", "v"}):
        return "tta needs true or false and tta_flips the flips to average over (h, v or hv)"
    if pre.image_size != meta.image_size or meta.in_chans != (1 if pre.color == "gray" else 3):
        return (f"image_size {meta.image_size} and in_chans {meta.in_chans} do not match preprocess "
                f"(image_size {pre.image_size}, color {pre.color})")
    if not (number(meta.temperature) and meta.temperature > 0):
        return f"temperature {meta.temperature!r}: needs a finite number above 0"
    for key in ("shape_fusion", "pixel_fusion", "uncertainty_threshold"):
        if not (number(value := getattr(meta, key)) and 0 <= value <= 1):
            return f"{key} {value!r}: needs a number from 0 to 1"
    biases = {"class_bias": meta.class_bias, "cnn_prior": meta.cnn_prior,
              **{f"operating_points.{name}": bias for name, bias in meta.operating_points.items()}}
    for key, bias in biases.items():
        if bias is not None and not (isinstance(bias, list) and len(bias) == k and all(map(number, bias))):
            return f"{key}: needs one finite number per class ({k})"
    for key, pair in meta.input_ranges.items():
        if not (isinstance(pair, list) and len(pair) == 2 and all(map(number, pair))):
            return f"input_ranges.{key}: needs [lowest, highest]"
    return None


def _share_records_problem(meta: BundleMeta) -> str | None:
    """What is wrong with the confusions and share checks a sample's shares are computed from
    (a damaged or hand-edited model.json), or None."""
    k = len(meta.classes)

    def per_class(value: Any) -> bool:
        return isinstance(value, list) and len(value) == k and all(isinstance(v, int | float) for v in value)

    for point, cm in meta.confusions.items():
        if not (isinstance(cm, list) and len(cm) == k and all(per_class(row) for row in cm)):
            return f"confusions.{point}: not a {k} x {k} table of counts"
    for point, check in meta.share_checks.items():
        if not isinstance(check, dict):
            return f"share_checks.{point}: not a record"
        for key in ("error", "held", "extra_sd"):
            if not (isinstance(check.get(key), dict) and all(per_class(check[key].get(how)) for how in ("counted", "adjusted"))):
                return f"share_checks.{point}.{key}: needs counted and adjusted, one number per class ({k})"
        closer = check.get("closer")
        if not (isinstance(closer, list) and len(closer) == k and set(closer) <= {"counted", "adjusted"}):
            return f"share_checks.{point}.closer: needs counted or adjusted for each of the {k} classes"
        if not all(isinstance(check.get(key), int | float | list) for key in ("samples", "heads", "level")):
            return f"share_checks.{point}: needs samples, heads and level"
    return None


def _second_opinions(state: dict[str, torch.Tensor], path: Path, kind: Any, prefix: str, weight: float) -> list[Any]:
    """The fold models of one kind of second opinion, stored as PREFIX0.*, PREFIX1.*, ..."""
    if weight <= 0:
        return []
    count = len({k.split(".")[0] for k in state if re.fullmatch(rf"{prefix}\d+\..+", k)})
    if not count:
        raise SpermheadError(f"{path}: the bundle fuses a {kind.__name__} but the file holds none")
    try:
        return [kind.from_tensors(state, f"{prefix}{i}") for i in range(count)]
    except (KeyError, ValueError, RuntimeError) as exc:  # a tensor missing, or of another shape
        raise SpermheadError(f"{path}: the bundle's {kind.__name__}s are damaged ({type(exc).__name__}: {exc}); "
                             "copy it again, or train it again") from exc


def save_training_signatures(directory: Path | str, signatures: np.ndarray) -> Path:
    """Into a bundle folder, or a `*.safetensors` file named in full (`pretrained_images_file`).
    Float16 is plenty: signatures are unit vectors compared against a 0.98 threshold."""
    tensor = torch.from_numpy(np.ascontiguousarray(signatures, dtype=np.float16))
    path = Path(directory) if str(directory).endswith(".safetensors") else Path(directory) / TRAINING_IMAGES
    return write_safetensors({"signatures": tensor}, path)


def pretrained_images_file(weights: Path | str) -> Path:
    """Where `spermhead pretrain` keeps the signatures of the real images a backbone saw, beside
    it: `ssl.safetensors` -> `ssl.images.safetensors`."""
    return Path(weights).with_suffix(".images.safetensors")


def load_training_signatures(directory: Path | str) -> np.ndarray | None:
    """The training images' signatures, or None for a bundle that does not record them (made
    before they were kept, or by `untrained_bundle`). `directory` may also name a signatures file
    itself (a pretrained backbone's, `pretrained_images_file`)."""
    path = Path(directory) if Path(directory).is_file() else Path(directory) / TRAINING_IMAGES
    if not path.is_file():
        return None
    try:
        return load_file(str(path))["signatures"].float().numpy()
    except (KeyError, OSError, SafetensorError) as exc:
        raise SpermheadError(f"{path}: unreadable training-image signatures ({exc})") from exc


def seen_by_bundle(directory: Path | str, paths: list[Path] | list[str]) -> list[bool] | None:
    """Per image file: one the bundle's models trained on, or a near-duplicate of one (thumbnail
    signatures, data/duplicates.py); None where the bundle does not record its training images.
    `directory` may be a signatures file (load_training_signatures)."""
    from spermhead.data.duplicates import DEFAULT_THRESHOLD, nearest, signatures

    trained = load_training_signatures(directory)
    if trained is None:
        return None
    return [bool(c >= DEFAULT_THRESHOLD) for c in nearest(signatures(paths), trained)]
