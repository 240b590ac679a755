"""CPU throughput of the registered models: training (forward + backward + AdamW step) and
inference images/s, plus parameters. Prints a markdown table for benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/bench_models.py                 # all models + timm:resnet18
    .venv/bin/python benchmarks/bench_models.py --spermnet-grid # spermnet width/depth options
    .venv/bin/python benchmarks/bench_models.py --threads 1     # adds load-robust CPU-time columns
    .venv/bin/python benchmarks/bench_models.py --layout both   # channels-last (training's) vs usual

Each figure is the batch size over the median step time of a few timed steps after
warm-up, so a neighbour's burst of CPU use moves it less than a mean would. On a shared
machine wall-clock figures fall with the load (printed per row). With `--threads 1` the
table adds "img/CPU-s": images per second of CPU time this process used, which other
processes barely change (with more threads, OpenMP threads spin while they wait for a
core, so CPU time would overstate the work)."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from typing import Any

import torch
from torch import nn

from spermhead.models.inference import fast_input, fast_layout
from spermhead.models.registry import build_model, count_parameters, model_names

SPERMNET_GRID: list[dict[str, Any]] = [
    # stem stride 2 at 64 px: the first stage runs at 32 x 32
    {"width": 12, "depths": [1, 1, 2, 1], "stem_stride": 2},
    {"width": 16, "depths": [1, 1, 1, 1], "stem_stride": 2},
    {"width": 16, "depths": [1, 1, 2, 1], "stem_stride": 2},
    {"width": 16, "depths": [1, 1, 2, 2], "stem_stride": 2},
    {"width": 24, "depths": [1, 1, 2, 1], "stem_stride": 2},
    {"width": 32, "depths": [1, 1, 2, 1], "stem_stride": 2},
    {"width": 16, "depths": [1, 1, 2, 1], "stem_stride": 1},
    # stem stride 4 (two stride-2 convs): the first stage runs at 16 x 16
    {"width": 24, "depths": [1, 1, 2, 1], "stem_stride": 4},  # the default
    {"width": 32, "depths": [1, 1, 1], "stem_stride": 4},
    {"width": 32, "depths": [1, 1, 1, 1], "stem_stride": 4},
    {"width": 32, "depths": [1, 1, 2, 1], "stem_stride": 4},
    {"width": 48, "depths": [1, 1, 1], "stem_stride": 4},
]


def _median_step(step: Any, warmup: int, iters: int) -> tuple[float, float]:
    """Median wall-clock and CPU seconds (all of this process's threads) per step."""
    for _ in range(warmup):
        step()
    wall, cpu = [], []
    for _ in range(iters):
        t, c = time.perf_counter(), time.process_time()
        step()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def measure(model: nn.Module, *, batch: int, size: int, in_chans: int, warmup: int, iters: int,
            infer_batch: int, channels_last: bool = True) -> dict[str, float]:
    layout = fast_input if channels_last else (lambda t: t)
    if channels_last:
        fast_layout(model)
    x = layout(torch.randn(batch, in_chans, size, size))
    y = torch.randint(0, 4, (batch,))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    train_s, train_cpu = _median_step(train_step, warmup, iters)
    model.eval()
    xi = layout(torch.randn(infer_batch, in_chans, size, size))

    def infer_step() -> None:
        with torch.inference_mode():
            model(xi)

    infer_s, infer_cpu = _median_step(infer_step, warmup, iters)
    return {"train_ips": batch / train_s, "infer_ips": infer_batch / infer_s, "step_s": train_s,
            "train_core": batch / train_cpu, "infer_core": infer_batch / infer_cpu}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="*", default=[*model_names(), "timm:resnet18"])
    ap.add_argument("--spermnet-grid", action="store_true", help="benchmark spermnet options instead")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--infer-batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--in-chans", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--iters", type=int, default=8)
    ap.add_argument("--slow-iters", type=int, default=3, help="timed steps for models over 20M params")
    ap.add_argument("--layout", choices=("channels-last", "usual", "both"), default="channels-last",
                    help="memory layout: channels-last (how spermhead trains and serves since session 23)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    runs: list[tuple[str, str, dict[str, Any]]] = (
        [("spermnet", str(kw), kw) for kw in SPERMNET_GRID] if args.spermnet_grid
        else [(name, "", {}) for name in args.models])
    layouts = {"both": ["usual", "channels-last"]}.get(args.layout, [args.layout])
    if len(layouts) > 1 or args.layout == "usual":  # the layout becomes part of each row's options
        runs = [(name, " ".join(filter(None, [label, layout])), {**kw, "_layout": layout})
                for name, label, kw in runs for layout in layouts]
    print(f"<!-- {dt.date.today()} | {' '.join([os.path.basename(sys.argv[0]), *(argv or sys.argv[1:])])} | "
          f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f} -->")
    print(f"batch {args.batch} (train) / {args.infer_batch} (inference), {args.size} px, "
          f"{args.in_chans} channel(s), median of timed steps after {args.warmup} warm-up\n")
    # CPU time is a fair yardstick only for one thread: idle OpenMP threads spin on a busy machine.
    cpu_cols = args.threads == 1
    print("| model | options | params | trainable | train img/s | infer img/s | train s/step "
          + ("| train img/CPU-s | infer img/CPU-s " if cpu_cols else "") + "| load |")
    print("|---|---|---:|---:|---:|---:|---:|" + ("---:|---:|" if cpu_cols else "") + "---:|")
    for name, label, kwargs in runs:
        t0, load = time.perf_counter(), os.getloadavg()[0]  # other processes' CPU use skews timings
        kwargs = dict(kwargs)
        channels_last = kwargs.pop("_layout", args.layout) == "channels-last"
        model = build_model(name, num_classes=4, in_chans=args.in_chans, image_size=args.size, **kwargs)
        params = count_parameters(model)
        iters = args.iters if params < 20_000_000 else args.slow_iters
        warmup = args.warmup if params < 20_000_000 else 1
        r = measure(model, batch=args.batch, size=args.size, in_chans=args.in_chans, warmup=warmup,
                    iters=iters, infer_batch=args.infer_batch, channels_last=channels_last)
        print(f"| {name} | {label or '-'} | {params / 1e6:.2f}M | {count_parameters(model, True) / 1e6:.2f}M "
              f"| {r['train_ips']:.0f} | {r['infer_ips']:.0f} | {r['step_s']:.3f} "
              + (f"| {r['train_core']:.0f} | {r['infer_core']:.0f} " if cpu_cols else "")
              + f"| {load:.1f} |", flush=True)
        print(f"<!-- {name} {label}: {time.perf_counter() - t0:.0f}s -->", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
