"""Classify image files or uploaded bytes with a saved bundle.

One bundle is loaded once; each image is read, canonicalised with the bundle's own
PreprocessConfig and scored by `models.inference.predict_proba` (the path evaluation
uses), so `predict`, the web app and the REST API give the scores the model was assessed
with. A file that cannot be used becomes an error row; it never stops a batch.

Result rows (plain dicts, JSON-ready):
    ok       {"name", "path", "ok": True, "status": 200, "class", "confidence",
              "probabilities": {class: p}, "uncertain", "aligned", "alignment", "head_found", "morphometrics",
              "acquisition": {descriptor: value}, "unlike_training": [reason, ...]}
    failure  {"name", "path", "ok": False, "status": 400|413|415|500, "error": "<name>: <problem>"}
`status` is the HTTP code the API answers with for that file. `unlike_training` names each way
the image lies outside the bundle's training images (preprocess/acquisition.py); empty when it
does not, or when the bundle predates the check.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from spermhead.errors import ConfigError
from spermhead.models.inference import apply_class_bias, apply_temperature, predict_proba
from spermhead.preprocess.acquisition import unlike_training
from spermhead.preprocess.align import head_found
from spermhead.serving.bundle import Bundle, bundle_folder, load_bundle
from spermhead.serving.prepare import (
    Prepared,
    ProcessPreparer,
    error_row,
    prepare,
    prepare_array,
    prepare_safe,
)

__all__ = ["Predictor", "Prepared", "error_row", "expand_inputs", "csv_columns", "csv_row", "untrained_bundle"]

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnx")
ONNX_NAME = "model.onnx"  # looked for next to the bundle's model.json
PROCESS_MIN = 512  # files from which predict_files aligns in worker processes (start-up ~0.5 s)


class OrtModule(nn.Module):
    """An onnxruntime session behind the nn.Module interface, so `predict_proba` (with its
    normalisation, flip TTA and prior correction) drives the ONNX model unchanged."""

    def __init__(self, onnx_path: Path | str, threads: int = 0) -> None:
        super().__init__()
        import onnxruntime as ort  # lazy: only the onnx backend needs it

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.path = Path(onnx_path)
        self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (out,) = self.session.run(None, {self.input_name: x.detach().cpu().contiguous().numpy()})
        return torch.from_numpy(out)


class Predictor:
    """Loads a bundle once and classifies files or bytes in batches.

    backend "torch" runs the bundle's ensemble; "onnx" runs `model.onnx` next to the bundle
    when it was exported from these weights, else exports one to a temporary file first.
    """

    def __init__(
        self,
        bundle_dir: Path | str,
        backend: str = "torch",
        *,
        batch_size: int = 256,
        max_pixels: int | None = None,
        onnx_path: Path | str | None = None,
        workers: int = 0,
        processes: int = 0,
        operating_point: str | None = None,
    ) -> None:
        if backend not in BACKENDS:
            raise ConfigError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        self.bundle: Bundle = load_bundle(bundle_dir)
        self.bundle_dir = bundle_folder(bundle_dir)
        self.meta = self.bundle.meta
        if operating_point is not None:
            self._use_operating_point(operating_point)
        self.classes = list(self.meta.classes)
        self.config = self.meta.preprocess_config
        self.max_pixels = max_pixels if max_pixels is not None else self.config.max_pixels
        self.batch_size = max(1, int(batch_size))
        self.backend = backend
        self.model: nn.Module = self.bundle.model.eval()
        self.onnx_path: Path | None = None
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        if backend == "onnx":
            self.onnx_path = self._find_or_export_onnx(onnx_path)
            # as many threads as torch has: --threads limits both backends (onnxruntime took every core)
            self.model = OrtModule(self.onnx_path, threads=torch.get_num_threads())
        # Decoding and alignment are OpenCV/PIL work that mostly releases the GIL, so a few
        # threads overlap it; 0 picks a small default from the CPU count.
        self.workers = workers if workers > 0 else min(4, os.cpu_count() or 1)
        self._pool: ThreadPoolExecutor | None = None
        # the server's batching thread and a large upload's own thread may both start the pool
        self._pool_lock = threading.Lock()
        # worker processes for large file batches; 0 = one per CPU, 1 = none
        self.processes = processes if processes > 0 else (os.cpu_count() or 1)
        self._preparer: ProcessPreparer | None = None

    def _use_operating_point(self, name: str) -> None:
        """Switch between the bundle's operating points (accuracy-first or balanced recall)."""
        points = self.meta.operating_points or {"accuracy": [0.0] * len(self.meta.classes)}
        if name not in points:
            raise ConfigError(f"--operating-point {name!r}: this bundle has {', '.join(points)}")
        self.meta.operating_point, self.meta.class_bias = name, list(points[name])

    # ------------------------------------------------------------------ model

    def _find_or_export_onnx(self, onnx_path: Path | str | None) -> Path:
        from spermhead.serving.onnx_export import (
            UNREADABLE,
            bundle_fingerprint,
            export_onnx,
            onnx_fingerprint,
        )

        if onnx_path is not None:
            path = Path(onnx_path)
            if not path.is_file():
                raise ConfigError(f"{path}: no such ONNX file; create it with `spermhead export`")
            return path
        beside = self.bundle_dir / ONNX_NAME
        found = onnx_fingerprint(beside) if beside.is_file() else None
        if beside.is_file() and found == bundle_fingerprint(self.bundle_dir):
            return beside
        if found == UNREADABLE:
            log.warning("%s cannot be read as an ONNX model (damaged?); exporting afresh", beside)
        elif beside.is_file():
            log.warning("%s was exported from another state of this bundle (its weights or model.json have changed "
                        "since); exporting afresh (`spermhead export --model %s` keeps it)", beside, self.bundle_dir)
        else:  # a few seconds each time: say how to keep one
            log.warning("no %s in %s: exporting a temporary one (`spermhead export --model %s` keeps it there)",
                        ONNX_NAME, self.bundle_dir, self.bundle_dir)
        self._tmpdir = tempfile.TemporaryDirectory(prefix="spermhead-onnx-")
        out = Path(self._tmpdir.name) / ONNX_NAME
        export_onnx(self.bundle, out)
        return out

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """uint8 N x C x S x S canonical images -> N x classes, through `predict_proba` (and,
        where the bundle fuses second opinions, the same fusion its evaluation used)."""
        meta = self.meta

        def cnn(class_bias: list[float] | None) -> np.ndarray:
            return predict_proba(self.model, images, meta.mean, meta.std, tta=meta.tta, flips=meta.tta_flips,
                                 class_bias=class_bias, batch_size=self.batch_size)

        if self.bundle.fused:  # the training prior goes back before fusion, the point after it
            return apply_class_bias(self.bundle.fuse(cnn(meta.cnn_prior), np.asarray(images)), meta.class_bias,
                                    meta.temperature)
        shifts = [b for b in (meta.cnn_prior, meta.class_bias) if b is not None]
        probs = cnn(np.sum(shifts, axis=0).tolist() if shifts else None)  # one log-space shift
        return apply_temperature(probs, meta.temperature)  # last: calibration keeps every answer

    # ------------------------------------------------------------------ preprocessing

    def prepare(self, source: Path | str | bytes, name: str | None = None) -> Prepared:
        """Read and canonicalise one image; raises ImageError/OSError for a bad file."""
        return prepare(source, self.config, self.max_pixels, name)

    def prepare_array(self, rgb: np.ndarray, name: str, path: str | None = None) -> Prepared:
        """Canonicalise an already decoded H x W x 3 uint8 RGB image."""
        return prepare_array(rgb, self.config, name, path)

    def _prepare_safe(self, source: Path | str | bytes, name: str | None = None) -> Prepared | dict[str, Any]:
        return prepare_safe(source, self.config, self.max_pixels, name)

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="spermhead-prep")
            return self._pool

    def _map(self, fn: Any, items: Sequence[Any]) -> list[Any]:
        if self.workers <= 1 or len(items) < 2:
            return [fn(*it) for it in items]
        return list(self._executor().map(lambda it: fn(*it), items))

    # ------------------------------------------------------------------ results

    def result_row(self, prep: Prepared, probs: np.ndarray) -> dict[str, Any]:
        top = int(np.argmax(probs))
        confidence = float(probs[top])
        return {
            "name": prep.name,
            "path": prep.path,
            "ok": True,
            "status": 200,
            "class": self.classes[top],
            "confidence": confidence,
            "probabilities": {c: float(p) for c, p in zip(self.classes, probs, strict=True)},
            "uncertain": confidence < self.meta.uncertainty_threshold,
            "aligned": prep.aligned,
            "alignment": prep.alignment,
            "head_found": head_found(prep.alignment),
            "morphometrics": prep.morphometrics,
            "acquisition": prep.acquisition,
            # what sets this image apart from the bundle's training images (empty: nothing)
            "unlike_training": unlike_training(prep.acquisition, self.meta.input_ranges),
        }

    def classify(self, items: Sequence[Prepared | dict[str, Any]]) -> list[dict[str, Any]]:
        """Score the prepared items in one batch; error rows pass through in place."""
        good = [i for i, it in enumerate(items) if isinstance(it, Prepared)]
        rows: list[dict[str, Any]] = [it if isinstance(it, dict) else {} for it in items]
        if good:
            batch = np.stack([items[i].image for i in good])  # type: ignore[union-attr]
            probs = self.probabilities(batch)
            for i, p in zip(good, probs, strict=True):
                rows[i] = self.result_row(items[i], p)  # type: ignore[arg-type]
        return rows

    def predict_files(self, paths: Iterable[Path | str], batch_size: int | None = None) -> Iterator[dict[str, Any]]:
        """One result row per path, in order, computed batch by batch (a generator, so a
        caller can show progress and write rows as they come).

        Large lists (`PROCESS_MIN` files or more) are read and aligned by worker processes
        while this process runs the model; smaller ones by the worker threads, the next batch
        overlapping the model's work on the current one."""
        size = batch_size or self.batch_size
        if self.processes > 1 and isinstance(paths, Sequence) and len(paths) >= PROCESS_MIN:
            yield from self._predict_in_processes(paths, size)
            return
        pending: list[Future[Prepared | dict[str, Any]]] | None = None
        chunk: list[Path | str] = []
        for p in paths:
            chunk.append(p)
            if len(chunk) >= size:
                started = self._prepare_later(chunk)
                if pending is not None:
                    yield from self.classify([f.result() for f in pending])
                pending, chunk = started, []
        started = self._prepare_later(chunk) if chunk else None
        if pending is not None:
            yield from self.classify([f.result() for f in pending])
        if started is not None:
            yield from self.classify([f.result() for f in started])

    def _predict_in_processes(self, paths: Sequence[Path | str], size: int) -> Iterator[dict[str, Any]]:
        if self._preparer is None:
            self._preparer = ProcessPreparer(self.processes, self.config, self.max_pixels)
        # the workers hold the cores: more than one model thread would only contend with them
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            batch: list[Prepared | dict[str, Any]] = []
            for item in self._preparer.map(paths):
                batch.append(item)
                if len(batch) == size:
                    yield from self.classify(batch)
                    batch = []
            if batch:
                yield from self.classify(batch)
        finally:
            torch.set_num_threads(threads)

    def _prepare_later(self, chunk: Sequence[Path | str]) -> list[Future[Prepared | dict[str, Any]]]:
        if self.workers <= 1:
            done: list[Future[Prepared | dict[str, Any]]] = []
            for p in chunk:
                f: Future[Prepared | dict[str, Any]] = Future()
                f.set_result(self._prepare_safe(p))
                done.append(f)
            return done
        return [self._executor().submit(self._prepare_safe, p) for p in chunk]

    def predict_bytes(self, name: str, data: bytes) -> dict[str, Any]:
        """One uploaded image -> its result row (or error row)."""
        return self.predict_many_bytes([(name, data)])[0]

    def predict_many_bytes(self, items: Sequence[tuple[str, bytes]]) -> list[dict[str, Any]]:
        prepared = self.prepare_many_bytes(items)
        return self.classify(prepared)

    def prepare_many_bytes(self, items: Sequence[tuple[str, bytes]], pooled: bool = True
                           ) -> list[Prepared | dict[str, Any]]:
        """Uploads read and aligned; `pooled`: by the shared reading threads, else one by one here."""
        if not pooled:
            return [self._prepare_safe(data, name) for name, data in items]
        return self._map(lambda name, data: self._prepare_safe(data, name), list(items))

    def close_workers(self) -> None:
        """End the worker processes of a large batch (the next one starts them again)."""
        if self._preparer is not None:
            self._preparer.close()
            self._preparer = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None
        self.close_workers()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __enter__(self) -> Predictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------- inputs and outputs

_GLOB_CHARS = set("*?[")


def _named(spec: Path | str) -> list[Path]:
    """What one input names: the path itself, or where it does not exist and holds *, ? or [,
    the paths its glob matches (sorted; none: an empty list). Folders stay folders."""
    from glob import glob

    path = Path(spec)
    if not path.exists() and _GLOB_CHARS & set(str(spec)):
        return sorted(Path(m) for m in glob(str(spec), recursive=True))
    return [path]


def expand_inputs(specs: Iterable[Path | str]) -> list[Path]:
    """Files as given, folders as their image files (recursive, sorted) and glob patterns; a
    folder a glob matches is read as a folder named is (Windows shells leave globs to us).
    A name that matches nothing is kept, so it becomes an error row rather than vanishing."""
    from spermhead.data.readers import list_images

    out: list[Path] = []
    for spec in specs:
        found = [f for m in _named(spec) for f in (list_images(m, nested=True) if m.is_dir() else [m])]
        out += found if found or Path(spec).is_dir() else [Path(spec)]
    return out


def empty_inputs(specs: Iterable[Path | str], files: Sequence[Path]) -> list[str]:
    """What the inputs name that gives no file: a glob that matches nothing (kept by
    `expand_inputs` as an error row), and a folder with no image file, which would otherwise
    pass unsaid beside the others."""
    said = []
    for spec in specs:
        named = _named(spec)
        if not named:
            said.append(f"{spec} matches no file")
        said += [f"{m} holds no image file" for m in named
                 if m.is_dir() and not any(f.is_relative_to(m) for f in files)]
    return said


def searched_folders(specs: Iterable[Path | str]) -> list[Path]:
    """The folders `expand_inputs` reads from these specs: named, or matched by a glob."""
    return [m for spec in specs for m in _named(spec) if m.is_dir()]


def unique_files(files: Iterable[Path]) -> list[Path]:
    """`files` with each file once (the first time it is named), compared by resolved path: a
    folder given with some of its own files, or `x.png` and `./x.png`, would otherwise count
    those heads twice in a sample's class shares."""
    seen: set[Path] = set()
    out: list[Path] = []
    for f in files:
        key = f.resolve() if f.exists() else f
        if key not in seen:
            seen.add(key)
            out.append(f)
    return out


def csv_columns(classes: Sequence[str]) -> list[str]:
    return (["path", "class", "confidence", "uncertain"] + [f"p_{c}" for c in classes]
            + ["aligned", "alignment", "area", "length", "width", "elongation", "perimeter",
               "rotation_deg", "unlike_training", "error"])


def csv_row(row: dict[str, Any], classes: Sequence[str]) -> dict[str, Any]:
    """A result row flattened for CSV: probabilities and morphometrics become columns."""
    flat: dict[str, Any] = {"path": row.get("path") or row.get("name"), "error": row.get("error", "")}
    if row.get("ok"):
        flat.update({"class": row["class"], "confidence": f"{row['confidence']:.6f}",
                     "uncertain": row["uncertain"], "aligned": row["aligned"], "alignment": row["alignment"],
                     "unlike_training": "; ".join(row.get("unlike_training") or [])})
        flat.update({f"p_{c}": f"{row['probabilities'][c]:.6f}" for c in classes})
        flat.update(row.get("morphometrics") or {})
    return flat


def untrained_bundle(directory: Path | str, architecture: str = "spermnet", *,
                     classes: Sequence[str] = ("normal", "tapered", "pyriform", "amorphous"),
                     image_size: int = 64, color: str = "gray", members: int = 1, tta: bool = False,
                     seed: int = 0, **model_kwargs: Any) -> Path:
    """A bundle with freshly initialised weights: for tests, benchmarks and the export check
    (speed and plumbing do not depend on training)."""
    from spermhead.config import PreprocessConfig
    from spermhead.models.registry import build_model
    from spermhead.serving.bundle import BundleMeta, save_bundle

    torch.manual_seed(seed)
    in_chans = 1 if color == "gray" else 3
    cfg = PreprocessConfig(image_size=image_size, color=color)
    nets = []
    for _ in range(members):
        net = build_model(architecture, num_classes=len(classes), in_chans=in_chans,
                          image_size=image_size, **model_kwargs)
        nets.append(_standardized(net, in_chans).eval())
    meta = BundleMeta(architecture=architecture, classes=list(classes), preprocess=vars(cfg).copy(),
                      in_chans=in_chans, image_size=image_size, model_kwargs=dict(model_kwargs),
                      kind="single" if members == 1 else "ensemble", tta=tta,
                      run={"note": "untrained weights"})
    return save_bundle(Path(directory), nets, meta)


def _standardized(net: nn.Module, in_chans: int) -> nn.Module:
    # Bundles store members behind a Standardize layer where the project has one.
    from spermhead.models import inference

    wrap = getattr(inference, "standardized", None)
    return wrap(net, in_chans) if wrap is not None else net
