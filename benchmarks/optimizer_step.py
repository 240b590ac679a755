"""How much of a spermnet training step AdamW's update takes, per implementation.

torch picks AdamW's per-tensor loop on the CPU unless told otherwise; `foreach` batches the
tensors and `fused` does the whole update in one kernel. Each kind trains the same network from
the same seed on the same random batch, the kinds taking turns so that a busy machine slows all
of them alike.

    .venv/bin/python benchmarks/optimizer_step.py --image-size 48 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from spermhead.models.inference import fast_input, fast_layout
from spermhead.models.registry import build_model

KINDS = ("loop", "foreach", "fused")


def step_times(kind: str, image_size: int, batch: int, steps: int) -> tuple[float, float]:
    """Mean ms of a whole training step and of its optimizer update."""
    torch.manual_seed(0)
    model = fast_layout(build_model("spermnet", 4, 1, image_size))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, **({} if kind == "loop" else {kind: True}))
    x, y = fast_input(torch.randn(batch, 1, image_size, image_size)), torch.randint(0, 4, (batch,))
    total = update = 0.0
    for i in range(steps + 3):  # three to warm up
        start = time.perf_counter()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        mid = time.perf_counter()
        opt.step()
        end = time.perf_counter()
        if i >= 3:
            total, update = total + end - start, update + end - mid
    return 1000 * total / steps, 1000 * update / steps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--image-size", type=int, default=48)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3, help="turns each kind takes")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    seen: dict[str, list[tuple[float, float]]] = {k: [] for k in KINDS}
    for _ in range(args.rounds):
        for kind in KINDS:
            seen[kind].append(step_times(kind, args.image_size, args.batch, args.steps))
    print(f"spermnet, {args.image_size} px, batch {args.batch}, {args.threads} thread(s); medians of {args.rounds} rounds")
    print("| AdamW | training step (ms) | its update (ms) | update share |")
    print("|---|---|---|---|")
    for kind in KINDS:
        total = statistics.median(t for t, _ in seen[kind])
        update = statistics.median(u for _, u in seen[kind])
        print(f"| {kind} | {total:.1f} | {update:.2f} | {100 * update / total:.1f}% |")


if __name__ == "__main__":
    main()
