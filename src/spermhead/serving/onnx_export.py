"""Export a bundle's model to ONNX and prove the export scores like the original.

The graph holds the bundle's ensemble exactly (its outputs are log-probabilities or logits,
as in torch); normalisation, flip TTA and the prior correction stay outside it in
`predict_proba`, so both backends share them. The batch dimension is dynamic.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spermhead.errors import SpermheadError
from spermhead.models.inference import predict_proba
from spermhead.serving.bundle import Bundle, load_bundle

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4  # max abs difference of probabilities, ONNX vs torch
OPSET = 17
FINGERPRINT_KEY = "spermhead.bundle_sha256"  # ONNX metadata: which weights it came from


@dataclass
class ExportReport:
    path: Path
    exporter: str  # "torchscript" (dynamo=False) or "dynamo"
    max_abs_diff: float  # probabilities on a random batch, ONNX vs torch
    batch_sizes: tuple[int, ...]  # batch sizes the parity check ran
    fingerprint: str

    def summary(self) -> str:
        return (f"{self.path}: exported with the {self.exporter} exporter; max |p_onnx - p_torch| = "
                f"{self.max_abs_diff:.2e} over batches of {', '.join(map(str, self.batch_sizes))} "
                f"(tolerance {PARITY_TOLERANCE:.0e})")


def bundle_fingerprint(bundle_dir: Path | str) -> str:
    """sha256 of the bundle's weights and description: an ONNX file is only reused for these."""
    h = hashlib.sha256()
    for name in ("model.safetensors", "model.json"):
        with open(Path(bundle_dir) / name, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


UNREADABLE = "unreadable"  # onnx_fingerprint's answer for a file onnx cannot load


def onnx_fingerprint(onnx_path: Path | str) -> str | None:
    """The bundle fingerprint the file was exported with; None if it records none, UNREADABLE if
    it is no ONNX model (truncated, say)."""
    import onnx

    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception:  # an unreadable file is simply not reusable
        return UNREADABLE
    return next((p.value for p in model.metadata_props if p.key == FINGERPRINT_KEY), None)


def _export_torchscript(model: torch.nn.Module, dummy: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        torch.onnx.export(
            model, (dummy,), buf, dynamo=False, opset_version=OPSET,
            input_names=["image"], output_names=["logits"],
            dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}},
        )
    return buf.getvalue()


def _export_dynamo(model: torch.nn.Module, dummy: torch.Tensor, tmp: Path) -> bytes:
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(
        model, (dummy,), dynamo=True, input_names=["image"], output_names=["logits"],
        dynamic_shapes=({0: batch},), external_data=False, verbose=False,
    )
    assert program is not None
    program.save(str(tmp), external_data=False)
    return tmp.read_bytes()


def export_onnx(bundle: Bundle | Path | str, out: Path | str, *, check: bool = True,
                seed: int = 0) -> ExportReport:
    """Write `out` (ONNX, dynamic batch), then run onnxruntime on random batches and fail
    loudly if any probability differs from torch by more than PARITY_TOLERANCE."""
    import onnx

    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle)
    if bundle.path is None:
        raise SpermheadError("export needs a bundle loaded from a folder")
    meta, model = bundle.meta, bundle.model.eval()
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SpermheadError(f"{out}: cannot make its folder ({exc.strerror or exc}); give another path with --onnx") from None
    dummy = torch.zeros(2, meta.in_chans, meta.image_size, meta.image_size)

    errors = []
    data, exporter = None, ""
    try:
        data, exporter = _export_torchscript(model, dummy), "torchscript"
    except Exception as exc:  # some timm layers only trace with the dynamo exporter
        errors.append(f"torchscript exporter: {type(exc).__name__}: {exc}")
        log.info("torchscript ONNX export failed (%s); trying the dynamo exporter", exc)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                data, exporter = _export_dynamo(model, dummy, Path(tmp) / "model.onnx"), "dynamo"
        except Exception as exc2:
            errors.append(f"dynamo exporter: {type(exc2).__name__}: {exc2}")
    if data is None:
        raise SpermheadError(f"{meta.architecture}: ONNX export failed; " + "; ".join(errors))

    proto = onnx.load_from_string(data)
    fingerprint = bundle_fingerprint(bundle.path)
    props = {FINGERPRINT_KEY: fingerprint, "spermhead.classes": ",".join(meta.classes),
             "spermhead.architecture": meta.architecture, "spermhead.exporter": exporter}
    del proto.metadata_props[:]
    for k, v in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    # written beside `out` and moved over it once checked: a failed export keeps the file it replaces
    part = out.with_name(out.name + ".part")
    try:
        _save(proto, part, out)
        report = ExportReport(out, exporter, float("nan"), (), fingerprint)
        if check:
            report.max_abs_diff, report.batch_sizes = parity(bundle, part, seed=seed)
            if not report.max_abs_diff <= PARITY_TOLERANCE:
                raise SpermheadError(
                    f"{out}: ONNX probabilities differ from torch by {report.max_abs_diff:.2e} "
                    f"(> {PARITY_TOLERANCE:.0e}); the export is not trustworthy"
                )
            # The parity figure travels with the file (metadata only; the graph is unchanged).
            entry = proto.metadata_props.add()
            entry.key, entry.value = "spermhead.parity_max_abs_diff", f"{report.max_abs_diff:.3e}"
            _save(proto, part, out)
        try:
            os.replace(part, out)
        except OSError as exc:
            raise SpermheadError(f"{out}: cannot write the ONNX file there ({exc.strerror or exc}); "
                                 "give another path with --onnx") from None
    finally:
        part.unlink(missing_ok=True)
    return report


def _save(proto: Any, path: Path, out: Path) -> None:
    import onnx

    try:
        onnx.save(proto, str(path))
    except OSError as exc:  # a read-only bundle on a shared drive, a full disk
        raise SpermheadError(f"{out}: cannot write the ONNX file there ({exc.strerror or exc}); "
                             "give another path with --onnx") from None


def parity(bundle: Bundle, onnx_path: Path | str, *, seed: int = 0,
           batch_sizes: tuple[int, ...] = (1, 7, 32)) -> tuple[float, tuple[int, ...]]:
    """Max abs difference of probabilities, torch vs onnxruntime, on random uint8 batches of
    several sizes (this also proves the batch dimension is dynamic)."""
    from spermhead.serving.predictor import OrtModule

    meta = bundle.meta
    rng = np.random.default_rng(seed)
    session = OrtModule(onnx_path)
    worst = 0.0
    for n in batch_sizes:
        images = rng.integers(0, 256, (n, meta.in_chans, meta.image_size, meta.image_size), dtype=np.uint8)
        kw = {"tta": meta.tta, "flips": meta.tta_flips, "class_bias": meta.class_bias}
        p_torch = predict_proba(bundle.model, images, meta.mean, meta.std, **kw)
        p_onnx = predict_proba(session, images, meta.mean, meta.std, **kw)
        worst = max(worst, float(np.abs(p_torch - p_onnx).max()))
    return worst, batch_sizes
