"""Images -> canonical crops ready for the model, in this process or in worker processes.

Torch-free on purpose: worker processes import this module (and OpenCV, Pillow) only, so
they start in a fraction of a second. Alignment is Python between short OpenCV calls and
holds the GIL, so threads do not scale it; processes do (benchmarks/RESULTS.md).
A bad file becomes an error row here, in the worker, because `ImageError` does not
survive pickling with its status.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import BrokenExecutor, Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spermhead.config import PreprocessConfig
from spermhead.data.samples import printable
from spermhead.errors import ImageError, SpermheadError

log = logging.getLogger(__name__)

CHUNK = 64  # files per task sent to a worker: enough to hide the round trip


@dataclass
class Prepared:
    """One image ready for the model: its canonical crop and what alignment found."""

    name: str
    path: str | None
    image: np.ndarray  # uint8 C x S x S
    aligned: bool
    alignment: str
    morphometrics: dict[str, float] | None
    acquisition: dict[str, float]  # how the image was taken (preprocess/acquisition.py)


def error_row(name: str, path: str | None, exc: BaseException) -> dict[str, Any]:
    """A failure as a result row; ImageError carries its own HTTP status."""
    if isinstance(exc, ImageError):
        status, message = exc.status, str(exc)
    elif isinstance(exc, FileNotFoundError):
        status, message = 404, f"{name}: no such file"
    elif isinstance(exc, IsADirectoryError):
        status, message = 400, f"{name}: is a folder, not an image"
    elif isinstance(exc, PermissionError):
        status, message = 403, f"{name}: permission denied"
    elif isinstance(exc, SpermheadError):
        status, message = 400, str(exc) if name in str(exc) else f"{name}: {exc}"
    else:
        # A bug rather than a bad file: say so plainly and keep the traceback in the log.
        log.exception("unexpected error while processing %s", name)
        status, message = 500, f"{name}: internal error while processing the image ({type(exc).__name__}: {exc})"
    return {"name": name, "path": path, "ok": False, "status": status, "error": message}


def prepare_array(rgb: np.ndarray, cfg: PreprocessConfig, name: str, path: str | None = None) -> Prepared:
    """Canonicalise an already decoded H x W x 3 uint8 RGB image."""
    from spermhead.preprocess.acquisition import describe
    from spermhead.preprocess.align import canonicalize

    canon = canonicalize(rgb, cfg)
    morph = canon.morphometrics.to_dict() if canon.morphometrics is not None else None
    if morph is not None:
        morph = {k: float(v) for k, v in morph.items()}  # numpy scalars -> JSON floats
    return Prepared(name, path, np.ascontiguousarray(canon.image, dtype=np.uint8),
                    bool(canon.aligned), str(canon.status), morph, describe(canon))


def prepare(source: Path | str | bytes, cfg: PreprocessConfig, max_pixels: int,
            name: str | None = None) -> Prepared:
    """Read and canonicalise one image; raises ImageError/OSError for a bad file."""
    from spermhead.preprocess.io import read_image

    path = None if isinstance(source, bytes) else printable(str(source))
    name = name or (Path(path).name if path else "upload")
    return prepare_array(read_image(source, name=name, max_pixels=max_pixels), cfg, name, path)


def prepare_safe(source: Path | str | bytes, cfg: PreprocessConfig, max_pixels: int,
                 name: str | None = None) -> Prepared | dict[str, Any]:
    """`prepare`, with any failure turned into an error row."""
    path = None if isinstance(source, bytes) else printable(str(source))
    name = name or (Path(path).name if path else "upload")
    try:
        return prepare(source, cfg, max_pixels, name)
    except Exception as exc:  # one bad file must never stop a batch or the server
        return error_row(name, path, exc)


def prepare_chunk(paths: Sequence[str], cfg: PreprocessConfig, max_pixels: int) -> list[Prepared | dict[str, Any]]:
    """A worker's task: many files, one reply (one round trip per chunk, not per file)."""
    return [prepare_safe(p, cfg, max_pixels) for p in paths]


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)  # one process per core already; OpenCV's own threads would fight them


class ProcessPreparer:
    """Worker processes that read and canonicalise files, results in input order.

    Spawned (not forked: a fork after OpenCV has started its thread pool can hang) once and
    reused; start-up costs about half a second, so callers use it for large batches only.
    """

    def __init__(self, processes: int, cfg: PreprocessConfig, max_pixels: int) -> None:
        self.processes = max(1, processes)
        self.cfg = cfg
        self.max_pixels = max_pixels
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_init_worker)
        return self._pool

    def map(self, paths: Iterable[Path | str], chunk: int = CHUNK) -> Iterator[Prepared | dict[str, Any]]:
        """Prepared items (or error rows) in the order of `paths`, a few chunks ahead."""
        ahead = 2 * self.processes + 1
        pending: list[tuple[list[str], Future[list[Prepared | dict[str, Any]]], ProcessPoolExecutor | None]] = []
        batch: list[str] = []
        for p in paths:
            batch.append(str(p))
            if len(batch) == chunk:
                pending.append((batch, *self._submit(batch)))
                batch = []
                if len(pending) > ahead:
                    yield from self._result(*pending.pop(0))
        if batch:
            pending.append((batch, *self._submit(batch)))
        for names, future, pool in pending:
            yield from self._result(names, future, pool)

    def _submit(self, names: list[str]
                ) -> tuple[Future[list[Prepared | dict[str, Any]]], ProcessPoolExecutor | None]:
        """The chunk's future and the pool it went to (None: done here, in this process)."""
        for _ in range(2):  # a worker died since the last chunk: the pool takes no more work, a fresh one may
            pool = self._executor()
            try:
                return pool.submit(prepare_chunk, names, self.cfg, self.max_pixels), pool
            except BrokenExecutor as exc:
                self._discard(pool, exc)
        done: Future[list[Prepared | dict[str, Any]]] = Future()  # the fresh pool broke too
        done.set_result(prepare_chunk(names, self.cfg, self.max_pixels))
        return done, None

    def _result(self, names: list[str], future: Future[list[Prepared | dict[str, Any]]],
                pool: ProcessPoolExecutor | None) -> list[Prepared | dict[str, Any]]:
        try:
            return future.result()
        except Exception as exc:  # a worker died (killed, out of memory): redo its files here
            log.warning("worker process failed (%s: %s); preparing %d files in this process",
                        type(exc).__name__, exc, len(names))
            if isinstance(exc, BrokenExecutor) and pool is not None:
                self._discard(pool, exc)
            return prepare_chunk(names, self.cfg, self.max_pixels)

    def _discard(self, pool: ProcessPoolExecutor, exc: BaseException) -> None:
        """Drop a broken pool, so that the next chunk (and the next call) starts a fresh one; a
        pool started since (the chunks that failed with the old one come in after) is kept."""
        if self._pool is pool:
            log.warning("worker pool broken (%s); starting a new one", type(exc).__name__)
            pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
