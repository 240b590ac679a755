"""Batch prediction throughput: the default model (spermnet) beside timm:resnet18, torch and
onnxruntime, at 64 px, with preprocessing (alignment) included.

Three figures per model and backend, images per second:
    model     canonical uint8 crops -> probabilities (`Predictor.probabilities`)
    decoded   decoded RGB arrays in memory -> canonicalise -> probabilities
    files     BMP files on disk (HuSHeM's format) -> read -> canonicalise -> probabilities
              (`Predictor.predict_files`, the path of `spermhead predict`: from 512 files on,
              worker processes align while the main process runs the model)
Untrained weights: speed does not depend on training. Target: >= 3000 images/s (decoded).

    .venv/bin/python benchmarks/bench_predict.py [--n 2048] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from spermhead.data.synthetic import render_head
from spermhead.serving.predictor import Predictor, untrained_bundle

LABELS = ("normal", "tapered", "pyriform", "amorphous")
TARGET = 3000.0


def best_rate(fn: Callable[[], Any], n: int, repeats: int) -> float:
    """Images per second of the fastest of `repeats` runs (after one warm-up run)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


def make_images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [render_head(LABELS[i % 4], "hushem", rng)[0] for i in range(n)]


def run(n: int, models: list[str], backends: list[str], image_size: int, batch_size: int, workers: int,
        repeats: int, tta_row: bool, processes: int = 0) -> dict[str, Any]:
    images = make_images(n)
    rows = []
    with tempfile.TemporaryDirectory(prefix="spermhead-bench-") as tmp:
        files = []
        for i, rgb in enumerate(images):
            files.append(Path(tmp) / f"head{i:05d}.bmp")
            Image.fromarray(rgb).save(files[-1])
        configs = [(m, b, False) for m in models for b in backends]
        if tta_row:
            configs.append((models[0], "torch", True))
        for name, backend, tta in configs:
            bundle = untrained_bundle(Path(tmp) / f"bundle-{name.replace(':', '_')}-{tta}", name,
                                      image_size=image_size, tta=tta)
            with Predictor(bundle, backend=backend, batch_size=batch_size, workers=workers,
                           processes=processes) as p:
                canon = np.stack([p.prepare_array(im, "x").image for im in images[:batch_size]])
                reps = -(-n // len(canon))
                batch = np.concatenate([canon] * reps)[:n]

                def decoded(p: Predictor = p) -> None:
                    for s in range(0, n, batch_size):
                        chunk = images[s:s + batch_size]
                        prepared = p._map(lambda im: p.prepare_array(im, "x"), [(im,) for im in chunk])
                        p.classify(prepared)

                def from_files(p: Predictor = p) -> None:
                    for _ in p.predict_files(files):
                        pass

                row = {
                    "model": name, "backend": backend, "tta": tta,
                    "model_only": best_rate(lambda p=p, b=batch: p.probabilities(b), n, repeats),
                    "decoded": best_rate(decoded, n, repeats),
                    "files": best_rate(from_files, n, repeats),
                    "parameters": sum(x.numel() for x in p.bundle.model.parameters()),
                }
            rows.append(row)
            print(f"{name:16s} {backend:5s} tta={'on ' if tta else 'off'} model {row['model_only']:8.0f}  "
                  f"decoded {row['decoded']:7.0f}  files {row['files']:7.0f} images/s", flush=True)
    return {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "n": n, "image_size": image_size, "batch_size": batch_size, "workers": workers, "processes": processes,
        "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0], "platform": platform.platform(), "cpu": platform.processor(),
        "target_images_per_s": TARGET, "rows": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2048, help="images per timed run")
    ap.add_argument("--models", default="spermnet,timm:resnet18")
    ap.add_argument("--backends", default="torch,onnx")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=0, help="preprocessing threads (0: predictor default)")
    ap.add_argument("--processes", type=int, default=0,
                    help="worker processes aligning files (0: one per CPU; 1: none, threads only)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--no-tta-row", action="store_true", help="skip the spermnet + flip-TTA row")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    result = run(args.n, args.models.split(","), args.backends.split(","), args.image_size, args.batch_size,
                 args.workers, args.repeats, not args.no_tta_row, args.processes)
    print(f"{result['cpus']} CPUs, torch threads {result['torch_threads']}, load {result['load_avg_1m']:.1f}; "
          f"target {TARGET:.0f} images/s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
