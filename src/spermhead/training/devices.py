"""Where training runs: the CPU (the target this tool is tuned for) or a CUDA GPU."""

from __future__ import annotations

from typing import Any

import torch

from spermhead.errors import ConfigError

ACCELERATORS = ("auto", "cpu", "gpu")


def resolve_accelerator(name: str) -> str:
    """"auto" takes a CUDA GPU when torch sees one, else the CPU. Apple's MPS is never picked:
    nothing here has been tested on it."""
    if name not in ACCELERATORS:
        raise ConfigError(f"--accelerator {name!r}: {', '.join(ACCELERATORS)}")
    if name == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if name == "gpu" and not torch.cuda.is_available():
        raise ConfigError("--accelerator gpu: torch sees no CUDA GPU here; use --accelerator cpu")
    return name


def trainer_device(name: str) -> dict[str, Any]:
    """Lightning Trainer arguments for one device. Runs are bit-reproducible on the CPU; CUDA has
    no deterministic kernel for some ops (adaptive pooling's backward), so there a run only warns."""
    accelerator = resolve_accelerator(name)
    return {"accelerator": accelerator, "devices": 1, "deterministic": True if accelerator == "cpu" else "warn"}
