"""spermnet inference in the usual and the channels-last layout, timed alternately.

    .venv/bin/python benchmarks/layout_inference.py [--repeats 5]

`bench_models.py --layout both` times one layout's steps, then the other's; on a machine whose
speed drifts that order can favour either. Here the two share every repeat: one timed block of the
usual layout, then one of channels-last, `--repeats` times, per input size and batch, and the
median images/s of each is printed. The two models hold the same weights."""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from spermhead.models.inference import fast_input, fast_layout
from spermhead.models.registry import build_model


def images_per_second(model: torch.nn.Module, x: torch.Tensor, images: int = 1000) -> float:
    with torch.inference_mode():
        model(x)  # warm-up
        reps = max(3, images // len(x))
        start = time.perf_counter()
        for _ in range(reps):
            model(x)
        return len(x) * reps / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print("| size | batch | usual img/s | channels-last img/s | ratio |\n|---:|---:|---:|---:|---:|")
    for size in (48, 64):
        usual = build_model("spermnet", 4, 1, size).eval()
        fast = build_model("spermnet", 4, 1, size).eval()
        fast.load_state_dict(usual.state_dict())
        fast_layout(fast)
        for batch in (1, 16, 64, 256):
            x = torch.rand(batch, 1, size, size)
            got: dict[str, list[float]] = {"usual": [], "fast": []}
            for _ in range(args.repeats):
                got["usual"].append(images_per_second(usual, x))
                got["fast"].append(images_per_second(fast, fast_input(x)))
            a, b = statistics.median(got["usual"]), statistics.median(got["fast"])
            print(f"| {size} | {batch} | {a:.0f} | {b:.0f} | {b / a:.2f} |", flush=True)


if __name__ == "__main__":
    main()
