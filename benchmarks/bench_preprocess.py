"""Preprocessing throughput on real HuSHeM: 131 px RGB crops -> aligned 64 px canonical images.

Images per second, best of `--runs` runs over all 216 HuSHeM images repeated `--repeat` times:
    decode        read_image only (BMP -> RGB array)
    decoded       arrays already in memory -> canonicalize
    files         BMP files -> read_image -> canonicalize (`canonicalize_paths`, the training path)
each with 1 and 2 workers (threads, as `canonicalize_paths(workers=2)`), gray and rgb output, and
for comparison 2 worker processes (spawned; pool start-up not counted). Target: >= 2000 images/s.
CPU figures are per image and summed over all threads; the load average shows how much of the
machine other jobs were using.

    .venv/bin/python benchmarks/bench_preprocess.py [--repeat 10] [--runs 3] [--json out.json]

Skips (exit 0) with a message where the datasets are absent: set SPERMHEAD_TEST_DATA or place
them in ../shared/datasets beside the repository.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import cv2

from spermhead.config import PreprocessConfig
from spermhead.preprocess.acquisition import describe
from spermhead.preprocess.align import canonicalize, canonicalize_paths, load_canonical
from spermhead.preprocess.io import read_image

REPO = Path(__file__).resolve().parents[1]
TARGET = 2000.0


def real_data_dir() -> Path | None:
    """$SPERMHEAD_TEST_DATA, else ../shared/datasets beside the repo (as tests/conftest.py)."""
    for c in (os.environ.get("SPERMHEAD_TEST_DATA"), REPO.parent / "shared" / "datasets"):
        if c and (Path(c) / "HuSHeM").is_dir():
            return Path(c)
    return None


def measure(fn: Callable[[], Any], n: int, runs: int) -> tuple[float, float]:
    """(images/s of the fastest run, CPU microseconds per image in that run), after a warm-up."""
    fn()
    best = (float("inf"), 0.0)
    for _ in range(runs):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        best = min(best, (time.perf_counter() - t0, time.process_time() - c0))
    return n / best[0], best[1] / n * 1e6


def _threads(fn: Callable[[Any], Any], items: list[Any], workers: int) -> Callable[[], Any]:
    if workers <= 1:
        return lambda: [fn(x) for x in items]

    def run() -> list[Any]:
        previous = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            with ThreadPoolExecutor(workers) as pool:
                return list(pool.map(fn, items))
        finally:
            cv2.setNumThreads(previous)

    return run


def _init_worker() -> None:
    cv2.setNumThreads(1)


def _load_image_only(path: str, cfg: PreprocessConfig) -> Any:
    return load_canonical(path, cfg).image  # ship only the small canonical array back


def run(repeat: int, runs: int, image_size: int) -> dict[str, Any]:
    root = real_data_dir()
    assert root is not None
    paths = sorted(p for p in (root / "HuSHeM").glob("*/*") if p.suffix.lower() == ".bmp")
    files = [str(p) for p in paths] * repeat
    n = len(files)
    arrays = [read_image(p) for p in paths] * repeat
    rows = []
    rate, cpu = measure(lambda: [read_image(p) for p in files], n, runs)
    rows.append({"input": "decode only", "color": "-", "workers": "1 thread", "images_per_s": rate, "cpu_us": cpu})
    for color in ("gray", "rgb"):
        cfg = PreprocessConfig(image_size=image_size, color=color)
        for workers in (1, 2):
            label = f"{workers} thread{'s' if workers > 1 else ''}"
            rate, cpu = measure(_threads(partial(canonicalize, cfg=cfg), arrays, workers), n, runs)
            rows.append({"input": "decoded", "color": color, "workers": label, "images_per_s": rate, "cpu_us": cpu})
            rate, cpu = measure(lambda cfg=cfg, w=workers: canonicalize_paths(files, cfg, workers=w), n, runs)
            rows.append({"input": "files", "color": color, "workers": label, "images_per_s": rate, "cpu_us": cpu})
    # the acquisition descriptors every prepared image also gets (preprocess/acquisition.py)
    cfg = PreprocessConfig(image_size=image_size)
    canon = [canonicalize(a, cfg) for a in arrays]
    rate, cpu = measure(lambda: [describe(c) for c in canon], n, runs)
    rows.append({"input": "canonical: describe only", "color": "gray", "workers": "1 thread",
                 "images_per_s": rate, "cpu_us": cpu})
    # processes for comparison: spawned (forking a process that has used OpenCV's threads can hang)
    cfg = PreprocessConfig(image_size=image_size, color="rgb")
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=ctx, initializer=_init_worker) as pool:
        fn = partial(_load_image_only, cfg=cfg)
        rate, _ = measure(lambda: list(pool.map(fn, files, chunksize=64)), n, runs)
    rows.append({"input": "files", "color": "rgb", "workers": "2 processes*", "images_per_s": rate, "cpu_us": None})
    # alignment outcome, for the record
    _, results = canonicalize_paths([str(p) for p in paths], cfg)
    aligned = sum(r.aligned for r in results)
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python benchmarks/bench_preprocess.py", *sys.argv[1:]]).strip(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                   f"Python {platform.python_version()}, OpenCV {cv2.__version__}",
        "load_average": os.getloadavg(),
        "images": n, "distinct": len(paths), "image_size": image_size, "aligned": aligned,
        "rows": rows,
    }


def markdown(res: dict[str, Any]) -> str:
    lines = [
        f"{res['date']}: `{res['command']}`; {res['machine']}; load average "
        f"{res['load_average'][0]:.1f} at the end. HuSHeM {res['distinct']} images x "
        f"{res['images'] // res['distinct']} = {res['images']}, 131 px RGB BMP -> aligned "
        f"{res['image_size']} px; {res['aligned']}/{res['distinct']} aligned.",
        "",
        "| input | output | workers | images/s | CPU µs/image |",
        "|---|---|---|---:|---:|",
    ]
    for r in res["rows"]:
        cpu = "-" if r["cpu_us"] is None else f"{r['cpu_us']:.0f}"
        lines.append(f"| {r['input']} | {r['color']} | {r['workers']} | {r['images_per_s']:.0f} | {cpu} |")
    lines.append("")
    lines.append("\\* worker processes spawned once, start-up not counted; canonical arrays sent back.")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=10, help="times the 216 images are repeated per run")
    ap.add_argument("--runs", type=int, default=3, help="timed runs; the fastest counts")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    if real_data_dir() is None:
        print("skipped: real datasets not found (set SPERMHEAD_TEST_DATA or place them in ../shared/datasets)")
        return 0
    res = run(args.repeat, args.runs, args.image_size)
    print(markdown(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
