"""The web app and REST API around one bundle (FastAPI).

Pages
    /          classify: drop or pick images; each card shows the image, the aligned crop the
               model saw, class probabilities, a Grad-CAM overlay, morphometrics, an
               "uncertain" badge, and an "unlike training images" one with its reasons
    /review    step through a labelled folder or a run's predictions.csv: true vs predicted
    /docs      OpenAPI docs

REST contract
    POST /api/predict        multipart, one or more files in the repeated field `files`;
                             query `gradcam=true` adds an overlay, `crop=false` drops the crop.
        one file:   200 {"results": [row]}; a bad file answers its own status
                    (400 empty/truncated, 413 over the size or pixel limit, 415 not an image)
                    with {"detail": "<file name>: <problem>"}
        several:    200 {"results": [row, ...]} in upload order; a bad file's row is
                    {"name", "ok": false, "status": 4xx, "error": "<file name>: <problem>"}
        rows:       PREDICT_ROWS below (the schema's description and example), as /docs shows
    POST /api/composition    JSON {"predicted": [class, ...]}: those heads as one sample; their
                             class shares, counted and adjusted (evaluation/composition.py),
                             widened and starred as the bundle's share check says; 422 names
                             a class the model does not have
    GET  /api/model          classes, architecture, input, operating point, run metrics
    GET  /api/review         the review set (404 when the server has none)
    GET  /api/review/image/{index}   sample `index` of the review set as PNG (never by path)
    GET  /health             {"status": "ok", ...}

Bad input never yields a 500: every file is handled on its own. Anything unexpected is
turned into a JSON 500 by a handler and the server keeps serving.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import io
import json
import logging
import math
import queue
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import anyio
import anyio.to_thread
from fastapi import Body, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exception_handlers import http_exception_handler, request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from swagger_ui.utils import SWAGGER_UI_PY_ROOT

from spermhead import __version__
from spermhead.data.readers import normalise_class_name
from spermhead.errors import ConfigError, SpermheadError
from spermhead.evaluation.composition import MIN_HEADS, composition, largest_sample
from spermhead.serving.bundle import seen_by_bundle
from spermhead.serving.gradcam import crop_rgb, gradcam_map, overlay, png_bytes
from spermhead.serving.predictor import Predictor, Prepared
from spermhead.serving.prepare import printable

log = logging.getLogger(__name__)

STATIC = Path(__file__).with_name("static")
CHUNK = 1 << 20  # uploads are read 1 MiB at a time and dropped as soon as one is too big
MB = 1 << 20


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def display_name(filename: str | None) -> str:
    """The client's file name without any folder part (it is only ever shown, never opened)."""
    name = PurePosixPath((filename or "").replace("\\", "/")).name.strip()
    return name[:200] or "upload"


def _mb(n: float) -> str:
    return f"{n:g} MB"


def match_class(name: str, classes: list[str] | tuple[str, ...]) -> str:
    """The model's spelling of a class a client names: "Normal" or "01_Normal" is `normal`, as a
    class folder's name would be read; a name that matches none is returned as it is."""
    if name in classes:
        return name
    by_key = {normalise_class_name(c).lower(): c for c in classes}
    return by_key.get(normalise_class_name(name).lower(), name)


# ---------------------------------------------------------------------- request size cap


PAGE_BATCH = 8  # files the classify page sends per request (static/classify.js, BATCH)


class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Refuse request bodies over `limit` bytes with a 413 before they are parsed: by the
    declared Content-Length, and by counting for bodies sent without one."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._refuse(send)
            return
        seen = 0
        started = over = replaced = False

        async def counting_receive() -> Message:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    over = True
                    raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started, replaced
            if over and not started and message["type"] == "http.response.start":
                # the multipart parser caught the cut-off and answers 400 ("error parsing the
                # body"); the client is told the real reason instead
                started = replaced = True
                await self._refuse(send)
                return
            if replaced:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        response = JSONResponse(
            {"detail": f"request body is larger than the {_mb(self.limit / MB)} request limit"}, 413)
        await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


# ---------------------------------------------------------------------- review set


@dataclass
class ReviewItem:
    index: int
    id: str
    path: Path | None
    true: str
    pred: str | None
    probabilities: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    seen: bool | None = None  # the model trained on this image (or a near-duplicate); None = unknown
    known: bool = True  # its true class is one the model has; else it is shown but not scored, as evaluate does

    @property
    def judged(self) -> bool:
        return self.pred is not None and self.known

    def to_dict(self) -> dict[str, Any]:
        conf = self.probabilities.get(self.pred, None) if self.pred else None
        return {
            # a file name that is not UTF-8 cannot go into JSON as it is
            "index": self.index, "id": printable(self.id), "name": printable(self.path.name if self.path else self.id),
            "true": self.true, "pred": self.pred,
            "correct": self.pred == self.true if self.judged else None,
            "confidence": conf, "probabilities": self.probabilities,
            "has_image": self.path is not None, "error": self.error, "seen": self.seen,
        }


@dataclass
class ReviewSet:
    kind: str  # "folder" (predicted now by the loaded model) or "predictions" (a run's CSV)
    source: str
    classes: list[str]
    items: list[ReviewItem]
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        judged = [it for it in self.items if it.judged]
        correct = sum(it.pred == it.true for it in judged)
        unseen = [it for it in judged if it.seen is False]
        return {
            "kind": self.kind, "source": self.source, "classes": self.classes, "note": self.note,
            "count": len(self.items), "accuracy": correct / len(judged) if judged else None,
            "seen": sum(it.seen is True for it in self.items),
            "unseen": len(unseen),  # scored images not seen in training: what accuracy_unseen is over
            "accuracy_unseen": sum(it.pred == it.true for it in unseen) / len(unseen) if unseen else None,
            "version": self.version,
            "items": [it.to_dict() for it in self.items],
        }

    @functools.cached_property
    def version(self) -> str:
        """A fingerprint of the items' images, which the page puts in their addresses: images are
        cached by address, and index 0 of another set (the server restarted on other images) is
        another image."""
        digest = hashlib.sha256()
        for it in self.items:
            try:
                st = it.path.stat() if it.path is not None else None
            except OSError:
                st = None
            digest.update(f"{it.id}\0{it.path}\0{st and st.st_mtime_ns}\0{st and st.st_size}\n".encode(errors="replace"))
        return digest.hexdigest()[:16]


def _mark_seen(review: ReviewSet, seen: dict[str, bool] | None) -> ReviewSet:
    """Flag the images (by id) the model trained on: right answers on them are recall, not a test."""
    if seen is None:
        return review
    for it in review.items:
        it.seen = seen.get(it.id)
    if n := sum(seen.values()):
        warning = (f"{n} of {len(seen)} images are ones the model that gave these answers trained on (or "
                   "near-duplicates of them), marked 'seen in training': its answers on them say nothing "
                   "about new images")
        review.note = f"{warning}. {review.note}" if review.note else warning
    return review


def _sample_paths(dataset: str | Path, data_dir: str | Path | None = None) -> dict[str, Path]:
    from spermhead.data.readers import load_dataset

    table = load_dataset(str(dataset), data_dir)
    return {s.id: Path(s.path) for s in table.samples}


def _recorded_dataset(folder: Path) -> str | None:
    """The named dataset (hushem, scian-pa, ...) an `evaluate` folder or a run read; None for a
    folder of images, or where neither records one."""
    from spermhead.data.readers import NAMED_DATASETS
    from spermhead.evaluation.provenance import recorded_dataset

    named = recorded_dataset(folder)
    return named[0] if named is not None and named[0].lower() in NAMED_DATASETS else None


def load_review_set(source: Path | str, predictor: Predictor, review_data: Path | str | None = None) -> ReviewSet:
    """A run's predictions.csv (or a run folder holding one), else a labelled class folder
    (or a dataset name) that the loaded model predicts now."""
    src = Path(source)
    csv_path = src / "predictions.csv" if src.is_dir() else src
    if csv_path.is_file() and csv_path.suffix.lower() == ".csv":
        review = _review_from_predictions(csv_path, review_data)
        if (made_by := _recorded_bundle(csv_path.parent)) is not None and made_by != predictor.bundle_dir.resolve():
            other = (f"these answers are the ones recorded in {csv_path}, by the model at {made_by}, not by the "
                     "model this server loaded")
            review.note = f"{other}. {review.note}" if review.note else other
        return review
    if src.is_file():
        raise SpermheadError(f"{src}: expected a predictions.csv or a folder of class subfolders")
    return _review_from_folder(str(source), predictor, review_data)


def _review_from_predictions(csv_path: Path, review_data: Path | str | None) -> ReviewSet:
    from spermhead.evaluation.predictions import read_predictions

    preds = read_predictions(csv_path)
    paths: dict[str, Path] = {}
    note = ""
    if review_data is not None:
        # the data folder of a named dataset the run read (as `train --data-dir` takes it), else
        # the folder of images itself
        named = _recorded_dataset(csv_path.parent)
        paths = _sample_paths(named, review_data) if named else _sample_paths(review_data)
        where = str(review_data)
    elif (csv_path.parent / "assessment.json").is_file():  # an `evaluate` folder records its dataset
        record_path = csv_path.parent / "assessment.json"
        where = str(record_path)
        try:
            record = json.loads(record_path.read_text())
            paths = _sample_paths(record["dataset"], record.get("data_dir"))
        except (ValueError, KeyError, TypeError) as exc:
            note = f"images unavailable: {record_path} does not name a dataset ({exc}); pass --review-data"
        except SpermheadError as exc:
            note = f"images unavailable: {exc} (pass the dataset folder with --review-data)"
    else:
        # A run folder records its dataset in config.yaml; resolve the images from there.
        cfg_path = csv_path.parent / "config.yaml"
        where = str(cfg_path)
        if cfg_path.is_file():
            from spermhead.config import load_config

            cfg = load_config(cfg_path)
            try:
                paths = _sample_paths(cfg.dataset, cfg.data_dir)
            except SpermheadError as exc:
                note = f"images unavailable: {exc} (pass the dataset folder with --review-data)"
        else:
            note = f"images unavailable: no {cfg_path.name} beside {csv_path.name} (pass --review-data)"
    missing = sum(i not in paths for i in preds.ids)
    if paths and missing:
        note = f"{missing} of {len(preds)} ids have no image in {where}"
    items = [
        ReviewItem(i, sid, paths.get(sid), preds.true[i], preds.pred[i],
                   {c: float(p) for c, p in zip(preds.classes, preds.probabilities[i], strict=True)})
        for i, sid in enumerate(preds.ids)
    ]
    review = ReviewSet("predictions", str(csv_path), list(preds.classes), items, note)
    # `evaluate` records which images its bundle trained on; a run's own predictions are all
    # from fold models that did not see them
    return _mark_seen(review, _recorded_seen(csv_path.parent / "assessment.json", preds.ids))


def _recorded_bundle(folder: Path) -> Path | None:
    """The bundle whose answers a run folder (its own `model/`) or an `evaluate` folder (the
    bundle its assessment.json names) holds; None where neither says."""
    if (folder / "config.yaml").is_file():
        return (folder / "model").resolve()
    try:
        bundle = json.loads((folder / "assessment.json").read_text()).get("bundle")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(bundle).resolve() if isinstance(bundle, str) else None


def _recorded_seen(record_path: Path, ids: list[str]) -> dict[str, bool] | None:
    try:
        listed = json.loads(record_path.read_text()).get("seen_in_training")
    except (OSError, ValueError, AttributeError):
        return None
    if listed is None:
        return None
    trained = set(listed)
    return {i: i in trained for i in ids}


def _review_from_folder(source: str, predictor: Predictor, review_data: Path | str | None) -> ReviewSet:
    from spermhead.data.readers import load_dataset

    table = load_dataset(source, review_data)
    unknown = sorted(set(table.classes) - set(predictor.classes))
    note = (f"classes the model does not know, shown but not scored: {', '.join(unknown)}" if unknown else "")
    rows = list(predictor.predict_files([s.path for s in table.samples]))
    items = []
    for i, (s, r) in enumerate(zip(table.samples, rows, strict=True)):
        known = s.label in predictor.classes
        if r["ok"]:
            items.append(ReviewItem(i, s.id, Path(s.path), s.label, r["class"], r["probabilities"], known=known))
        else:
            items.append(ReviewItem(i, s.id, Path(s.path), s.label, None, {}, r["error"], known=known))
    review = ReviewSet("folder", source, list(predictor.classes), items, note)
    scored = [it for it in items if it.pred is not None and it.path is not None]
    seen = seen_by_bundle(predictor.bundle_dir, [it.path for it in scored])
    return _mark_seen(review, None if seen is None else {it.id: s for it, s in zip(scored, seen, strict=True)})


# ---------------------------------------------------------------------- app


@dataclass
class _Job:
    items: list[tuple[str, bytes] | dict[str, Any]]
    gradcam: bool
    crop: bool
    future: asyncio.Future[list[dict[str, Any]]]
    loop: asyncio.AbstractEventLoop


# A request whose files add up to this many bytes, or whose images to this many pixels by their
# headers (a PNG of tens of megapixels can be a few kB), is read and aligned in its own thread
# before it joins the batching worker: one of tens of megapixels takes seconds, which held every
# request behind it. Such requests are read one at a time, off the worker's reading threads, so
# they neither queue small ones behind them nor hold several large images in memory at once.
# Smaller ones (a crop is tens of kB) are read by the worker, which serves many at once faster
# (50 clients of one crop each: about 280 requests/s against 220 with each read apart; RESULTS.md).
PREPARE_APART_BYTES = 2 * 1024 * 1024
PREPARE_APART_PIXELS = 4_000_000


def header_pixels(data: bytes) -> int:
    """Width x height by the file's header, nothing decoded; 0 where Pillow cannot tell (reading
    it says why), and more than any limit for a decompression bomb."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size[0] * im.size[1]
    except Image.DecompressionBombError:
        return 1 << 62
    except Exception:  # noqa: BLE001 - any unreadable file is read (and refused) by the worker
        return 0


class Batcher:
    """One worker thread serves every request: it takes whatever requests are waiting (up to
    `max_images` images) and scores them in one model call. Many requests at once then cost
    one batched forward pass instead of many threads fighting over the GIL and the cores,
    which kept throughput flat and gave multi-second tail latencies."""

    def __init__(self, service: Service, max_images: int = 64) -> None:
        self.service = service
        self.max_images = max_images
        self.jobs: queue.Queue[_Job | None] = queue.Queue()
        self.closed = False
        self.thread = threading.Thread(target=self._run, name="spermhead-batcher", daemon=True)
        self.thread.start()

    async def submit(self, items: list[tuple[str, bytes] | dict[str, Any]], gradcam: bool,
                     crop: bool) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        job = _Job(items, gradcam, crop, loop.create_future(), loop)
        self.jobs.put(job)
        return await job.future

    def close(self) -> None:
        self.closed = True  # the thread may still finish a batch, but it stops after it
        self.jobs.put(None)

    def _run(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            batch, n = [job], len(job.items)
            while n < self.max_images:
                try:
                    more = self.jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self.jobs.put(None)  # finish this batch, then stop
                    break
                batch.append(more)
                n += len(more.items)
            self._serve(batch)

    def _serve(self, batch: list[_Job]) -> None:
        try:
            all_rows: list[Any] = self.service.process_many([(j.items, j.gradcam, j.crop) for j in batch])
            errors: list[BaseException | None] = [None] * len(batch)
        except Exception as exc:  # a bug: every waiting request gets the JSON 500
            all_rows, errors = [None] * len(batch), [exc] * len(batch)
        for j, rows, exc in zip(batch, all_rows, errors, strict=True):
            try:
                j.loop.call_soon_threadsafe(_settle, j.future, rows, exc)
            except RuntimeError:  # that request's event loop is gone; the worker must live on
                log.warning("dropping a result: its event loop has closed")


def _settle(future: asyncio.Future[Any], result: Any, exc: BaseException | None) -> None:
    if future.done():  # the client went away
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


class Service:
    """What the endpoints share: the predictor, the limits, the review set."""

    def __init__(self, predictor: Predictor, max_upload: int, max_files: int) -> None:
        self.predictor = predictor
        self.max_upload = max_upload
        self.max_files = max_files
        self.max_request = 0  # bytes in one request, all files together (create_app sets it)
        self.review: ReviewSet | None = None
        self._apart = threading.Lock()  # large requests are read one at a time

    def process_many(self, jobs: list[tuple[list[tuple[str, bytes] | dict[str, Any]], bool, bool]]
                     ) -> list[list[dict[str, Any]]]:
        """Several requests' files prepared and scored in one batch; rows handed back per
        request, each decorated as its own request asked."""
        p = self.predictor
        # uploads not read yet (a large request's were, see `prepare`), all at once across requests
        prepared = self.prepare([it for request_items, _, _ in jobs for it in request_items])
        rows = p.classify(prepared)
        out, start = [], 0
        for request_items, gradcam, crop in jobs:
            end = start + len(request_items)
            for prep, row in zip(prepared[start:end], rows[start:end], strict=True):
                if isinstance(prep, Prepared) and row.get("ok"):
                    self._decorate(prep, row, gradcam, crop)
            out.append(rows[start:end])
            start = end
        return out

    def prepare(self, items: list[Any], apart: bool = False) -> list[Prepared | dict[str, Any]]:
        """Uploads, (name, bytes), read and aligned; error rows and items already read pass through.
        The batching worker calls it, and a large request before it joins (`apart`, see
        `PREPARE_APART_BYTES`): one such request at a time, its files one by one."""
        uploads = [i for i, it in enumerate(items) if isinstance(it, tuple)]
        out = list(items)
        with self._apart if apart else contextlib.nullcontext():
            read = self.predictor.prepare_many_bytes([items[i] for i in uploads], pooled=not apart)
        for i, prep in zip(uploads, read, strict=True):
            out[i] = prep
        return out

    def process(self, items: list[tuple[str, bytes] | dict[str, Any]], gradcam: bool, crop: bool) -> list[dict[str, Any]]:
        """Prepare, classify and decorate one request's files."""
        return self.process_many([(items, gradcam, crop)])[0]

    def _decorate(self, prep: Prepared, row: dict[str, Any], gradcam: bool, crop: bool) -> None:
        p = self.predictor
        try:
            if crop:
                row["crop"] = data_uri(png_bytes(crop_rgb(prep.image)))
            if gradcam:
                target = p.classes.index(row["class"])
                cam = gradcam_map(p.bundle.model, prep.image, p.meta.mean, p.meta.std, target)
                row["gradcam"] = data_uri(png_bytes(overlay(prep.image, cam)))
                # what the map can and cannot say, beside it: a map with no positive evidence is no
                # map, and the network is only part of a fused answer
                notes = [note for note in (
                    "no positive evidence for this class in the network's last layer" if cam.max() <= 0 else "",
                    "the network's part of the answer only" if p.bundle.fused else "") if note]
                if notes:
                    row["gradcam_note"] = "; ".join(notes)
        except Exception as exc:  # a picture that cannot be drawn must not lose the result
            log.exception("drawing crop/Grad-CAM failed for %s", prep.name)
            row["gradcam_error"] = f"{type(exc).__name__}: {exc}"

    def composition(self, predicted: list[str]) -> dict[str, Any]:
        meta = self.predictor.meta
        if not predicted:
            raise HTTPException(422, "no heads given: 'predicted' lists each head's predicted class")
        predicted = [match_class(name, meta.classes) for name in predicted]
        if unknown := sorted({name for name in predicted if name not in meta.classes}):
            raise HTTPException(422, f"not classes of this model: {', '.join(map(repr, unknown[:5]))}; "
                                     f"it has {', '.join(meta.classes)}")
        check = meta.share_check
        rows = composition(predicted, meta.classes, meta.confusion, extra_sd=check["extra_sd"] if check else None)
        few = (f"{len(predicted)} heads: predict and the classify page give a sample's shares from {MIN_HEADS} "
               "heads on; below that the intervals are too wide to say much") if len(predicted) < MIN_HEADS else None
        return {"heads": len(predicted), "classes": list(meta.classes), "rows": rows, "note": few,
                "adjusted": meta.confusion is not None,
                "closer": check["closer"] if check and meta.confusion else None,
                "check": None if not check else {"samples": check["samples"], "heads": largest_sample(check),
                                                 "level": check["level"], "error": check["error"], "held": check["held"]}}

    def model_info(self) -> dict[str, Any]:
        meta, cfg = self.predictor.meta, self.predictor.config
        return {
            "architecture": meta.architecture,
            "classes": list(meta.classes),
            "input": {"size": meta.image_size, "color": cfg.color, "channels": meta.in_chans,
                      "align": cfg.align, "margin": cfg.margin, "scale": cfg.scale,
                      "background": cfg.background},
            "members": meta.members,
            "kind": meta.kind,
            "tta": meta.tta,
            "tta_flips": meta.tta_flips,
            "shape_fusion": meta.shape_fusion,
            "pixel_fusion": meta.pixel_fusion,
            "operating_point": meta.operating_point,
            "class_bias": meta.class_bias,
            "cnn_prior": meta.cnn_prior,  # the training prior given back after balanced training
            "temperature": meta.temperature,  # calibration, applied last
            "uncertainty_threshold": meta.uncertainty_threshold,
            # the training images' range of each acquisition descriptor; outside -> unlike_training
            "input_ranges": meta.input_ranges,
            # the fewest heads whose class shares predict prints (a folder = a sample)
            "sample_min_heads": MIN_HEADS,
            "run": meta.run,
            "bundle_version": meta.version,
            "server_version": __version__,
            "backend": self.predictor.backend,
            "limits": {"max_upload_mb": self.max_upload / MB, "max_pixels": self.predictor.max_pixels,
                       "max_files": self.max_files, "max_request_mb": self.max_request / MB},
        }


# What /docs says of /api/predict's answer: FastAPI would only say "an object"
PREDICT_ROWS = """`{"results": [row, ...]}`, one row per file in upload order. A row of a good image:
`name`; `ok` true; `status` 200; `class` (the answer) and its `confidence`; `probabilities` per class;
`uncertain` (the answer's probability under the bundle's threshold); `aligned`, `alignment` (how the
head was found and turned, or why not) and `head_found`; `morphometrics` (pixels and degrees);
`acquisition` (background, contrast, sharpness, head size); `unlike_training` (the ways the image lies
outside the training images, empty when none); `crop` (PNG data URI of what the model saw; left out
with `crop=false`); with `gradcam=true`, `gradcam` (PNG data URI), `gradcam_note` where the map says
little, and `gradcam_error` if it could not be drawn. A bad file's row: `name`, `ok` false, `status`
(400, 413 or 415) and `error`."""
PREDICT_EXAMPLE = {"results": [
    {"name": "image_001.BMP", "ok": True, "status": 200, "class": "normal", "confidence": 0.91,
     "probabilities": {"normal": 0.91, "tapered": 0.04, "pyriform": 0.03, "amorphous": 0.02},
     "uncertain": False, "aligned": True, "alignment": "aligned", "head_found": True,
     "morphometrics": {"area": 965.0, "length": 44.983, "width": 28.221, "elongation": 1.594,
                       "perimeter": 119.983, "rotation_deg": 71.964},
     "acquisition": {"background": 188.0, "contrast": 109.0, "edge_sharpness": 3.6169,
                     "head_length_px": 44.9832, "head_fraction": 0.3434},
     "unlike_training": [], "crop": "data:image/png;base64,..."},
    {"name": "notes.txt", "ok": False, "status": 415,
     "error": "notes.txt: not a supported image (BMP, PNG, JPEG, TIFF)"}]}

NOT_A_FILE = ("sent without a file name, so it is read as text, not as a file; send each image as a file "
              "(curl -F files=@image.png)")


def create_app(
    bundle_dir: Path | str,
    review_source: Path | str | None = None,
    max_upload_mb: float = 20,
    max_pixels: int | None = None,
    *,
    review_data: Path | str | None = None,
    backend: str = "torch",
    max_files: int = 64,
    max_request_mb: float | None = None,
    max_batch_images: int = 64,
    predictor: Predictor | None = None,
    operating_point: str | None = None,
) -> FastAPI:
    """The app for one bundle. `review_source`: a labelled class folder, a dataset name, a
    run folder or its predictions.csv (`review_data`: where that run's images are)."""
    if not 0 < max_upload_mb < math.inf:  # before the model loads: 0 or less would refuse every file
        raise ConfigError(f"--max-upload-mb {max_upload_mb:g}: must be a number above 0 (megabytes per file)")
    if max_request_mb is not None and not 0 < max_request_mb < math.inf:
        raise ConfigError(f"--max-request-mb {max_request_mb:g}: must be a number above 0 (megabytes per request)")
    # A whole request may hold several files; cap it so a client cannot fill the disk.
    # By default it holds a full batch of the classify page's largest files, with room for the form.
    request_cap = max_request_mb if max_request_mb is not None else max(200.0, PAGE_BATCH * max_upload_mb + 10)
    if request_cap < max_upload_mb:  # before the model loads and the review set is scored, too
        raise ConfigError(f"--max-request-mb {request_cap:g} is below --max-upload-mb {max_upload_mb:g}: no file "
                          "that large could be sent")
    owned = predictor is None  # the app closes what it opened, not a caller's predictor
    predictor = predictor or Predictor(bundle_dir, backend=backend, max_pixels=max_pixels,
                                       operating_point=operating_point)
    if max_pixels is not None:
        predictor.max_pixels = max_pixels
    service = Service(predictor, int(max_upload_mb * MB), max_files)
    if review_source is not None:
        service.review = load_review_set(review_source, predictor, review_data)
        predictor.close_workers()  # a large review set's worker processes would idle for the server's life

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if app.state.batcher.closed:  # an app served again (tests, an embedding program)
            app.state.batcher = Batcher(service, max_images=max_batch_images)
        app.state.apart = None  # bound to the loop that made it: a new one serving makes its own
        yield
        app.state.batcher.close()  # the worker thread ends with the server
        if owned:
            app.state.batcher.thread.join(timeout=60)  # its last batch still uses the predictor
            predictor.close()

    app = FastAPI(
        lifespan=lifespan,
        docs_url=None,  # served below from local files: labs often run offline, and a CDN page is blank there
        title="spermhead",
        version=__version__,
        description="Classify human sperm-head crops into WHO classes "
        f"({', '.join(predictor.classes)}). See `POST /api/predict`.",
    )
    app.state.service = service
    app.state.batcher = Batcher(service, max_images=max_batch_images)
    app.state.apart = None  # the limiter of large requests, made in the event loop on first use
    service.max_request = int(request_cap * MB)
    app.add_middleware(BodyLimit, limit=int(request_cap * MB))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # Starlette's form parser refuses a request of over 1000 files (400) before the endpoint
        # checks its own limit: answered as that limit is, 413
        if exc.status_code == 400 and str(exc.detail).startswith("Too many files"):
            return JSONResponse({"detail": f"over 1000 files in one request; the limit is {service.max_files}"},
                                status_code=413)
        # a part with no file name is a text field to Starlette, which caps those at 1 MB
        if exc.status_code == 400 and str(exc.detail).startswith(("Part exceeded maximum size",
                                                                  "Field exceeded maximum size")):
            return JSONResponse({"detail": f"a form field over 1 MB that is not a file: {NOT_A_FILE}"}, status_code=400)
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI's answer would echo the part, an image read as text, back in full
        if parts := [e["loc"][-1] for e in exc.errors() if "Expected UploadFile" in str(e.get("msg", ""))]:
            which = ", ".join(str(int(i) + 1) if isinstance(i, int) else str(i) for i in parts)
            return JSONResponse({"detail": f"files part {which}: {NOT_A_FILE}"}, status_code=422)
        return await request_validation_exception_handler(request, exc)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount("/swagger-ui", StaticFiles(directory=SWAGGER_UI_PY_ROOT / "static"), name="swagger")

    @app.get("/docs", include_in_schema=False)
    def docs_page() -> HTMLResponse:
        # relative, as the pages' links are: under whatever path a proxy serves the app at, the docs
        # load from there (`serve --root-path` adds that path to the API's servers, for Try it out)
        return get_swagger_ui_html(openapi_url=(app.openapi_url or "/openapi.json").lstrip("/"),
                                   title="spermhead API", swagger_js_url="swagger-ui/swagger-ui-bundle.js",
                                   swagger_css_url="swagger-ui/swagger-ui.css",
                                   swagger_favicon_url="swagger-ui/favicon-32x32.png")

    @app.get("/", include_in_schema=False)
    def classify_page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/review", include_in_schema=False)
    def review_page() -> FileResponse:
        return FileResponse(STATIC / "review.html")

    @app.get("/health", tags=["meta"])
    def health() -> dict[str, Any]:
        return {"status": "ok", "architecture": predictor.meta.architecture, "classes": predictor.classes}

    @app.get("/api/model", tags=["meta"])
    def model() -> dict[str, Any]:
        """The loaded bundle: classes, architecture, input size and colour, operating point,
        uncertainty threshold and the metrics of the run that produced it."""
        return service.model_info()

    @app.post("/api/predict", tags=["predict"], responses={
        200: {"description": PREDICT_ROWS, "content": {"application/json": {"example": PREDICT_EXAMPLE}}},
        400: {"description": "one file that is empty, truncated or unreadable (named in `detail`)"},
        413: {"description": "a file over the upload or pixel limit, too many files, or a request over "
                             "its limit (see `limits` in GET /api/model)"},
        415: {"description": "one file that is not an image"},
    })
    async def predict(
        files: list[UploadFile] = File(..., description="One or more images (BMP, PNG, JPEG, TIFF)"),
        gradcam: bool = Query(False, description="Add a Grad-CAM overlay (PNG data URI) per image"),
        crop: bool = Query(True, description="Add the aligned crop the model saw (PNG data URI)"),
    ) -> dict[str, Any]:
        """Classify images. One bad file alone answers 400/413/415 with a `detail` naming it;
        in a batch, each bad file gets an error row (`ok: false`, `status`, `error`)."""
        if len(files) > service.max_files:
            raise HTTPException(413, f"{len(files)} files in one request; the limit is {service.max_files}")
        items: list[tuple[str, bytes] | dict[str, Any]] = []
        for upload in files:
            name = display_name(upload.filename)
            data = await _read_limited(upload, service.max_upload)
            if data is None:
                items.append({"name": name, "path": None, "ok": False, "status": 413,
                              "error": f"{name}: file is larger than the {_mb(service.max_upload / MB)} upload limit"})
            else:
                items.append((name, data))
            await upload.close()
        uploads = [it[1] for it in items if isinstance(it, tuple)]
        if (sum(map(len, uploads)) >= PREPARE_APART_BYTES
                or sum(map(header_pixels, uploads)) >= PREPARE_APART_PIXELS):
            # large photographs are read and aligned here, not by the worker every request waits on;
            # one such request at a time, the others waiting in the event loop (made here, where
            # it runs): waiting in the threadpool would hold the slots every other endpoint needs
            if app.state.apart is None:
                app.state.apart = anyio.CapacityLimiter(1)
            items = await anyio.to_thread.run_sync(service.prepare, items, True, limiter=app.state.apart)
        rows = await app.state.batcher.submit(items, gradcam, crop)
        for r in rows:
            r.pop("path", None)  # uploads have no server path
        if len(rows) == 1 and not rows[0]["ok"]:
            raise HTTPException(rows[0]["status"], rows[0]["error"])
        return {"results": rows}

    @app.post("/api/composition", tags=["predict"])
    def sample_composition(
        predicted: list[str] = Body(..., embed=True, description="Each head's predicted class, as /api/predict gave it; \"Normal\" or \"01_Normal\" is read as normal"),
    ) -> dict[str, Any]:
        """These heads as one sample: each class's share counted (Wilson 95% interval) and, where
        the bundle records its held-out confusion, adjusted for the model's errors; each interval
        widened by the bundle's share check, and `closer` naming per class the estimate that
        check found closer to the truth."""
        return service.composition(predicted)

    @app.get("/api/review", tags=["review"], responses={404: {"description": "the server has no review set"}})
    def review() -> dict[str, Any]:
        """The review set: one item per sample with its true and predicted label."""
        if service.review is None:
            raise HTTPException(404, "no review set: start the server with --review FOLDER_OR_PREDICTIONS_CSV")
        return service.review.to_dict()

    @app.get("/api/review/image/{index}", tags=["review"], response_class=Response,
             responses={200: {"content": {"image/png": {}}}, 404: {"description": "no such review item"}})
    def review_image(index: str) -> Response:
        """Sample `index` of the review set as PNG. Images are looked up by index only, so
        nothing outside the review set can be read."""
        item = _review_item(service, index)
        from spermhead.preprocess.io import read_image

        try:
            rgb = read_image(item.path, name=item.path.name, max_pixels=predictor.max_pixels)  # type: ignore[union-attr]
        except SpermheadError as exc:
            raise HTTPException(getattr(exc, "status", 400), str(exc)) from None
        return Response(png_bytes(rgb), media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    return app


def _review_item(service: Service, index: str) -> ReviewItem:
    if service.review is None:
        raise HTTPException(404, "no review set")
    # the length test first: int() refuses more than 4300 digits (a ValueError, which was a 500)
    if not (index.isascii() and index.isdigit()) or len(index) > 18 or int(index) >= len(service.review.items):
        raise HTTPException(404, f"no review item {index[:40]!r}")
    item = service.review.items[int(index)]
    if item.path is None:
        raise HTTPException(404, f"{item.id}: image not available")
    return item


async def _read_limited(upload: UploadFile, limit: int) -> bytes | None:
    """The upload's bytes, or None as soon as it passes `limit` (never holds more)."""
    parts, total = [], 0
    while chunk := await upload.read(CHUNK):
        total += len(chunk)
        if total > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)
