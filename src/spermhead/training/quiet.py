"""Lightning warnings that are noise, not news, for the fits spermhead runs."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# Lightning's start-up chatter (GPU/TPU availability, tips) is noise for a CPU tool; every module
# that fits (training, the synthetic source, SimCLR pretraining) imports this one.
logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)


@contextmanager
def quiet_fit() -> Iterator[None]:
    with warnings.catch_warnings():
        # training without a validation part is deliberate (the synthetic source, a refit, SimCLR)
        warnings.filterwarnings("ignore", message="You defined a `validation_step` but have no `val_dataloader`")
        # Lightning's own use of a pytree API that torch 2.14 deprecated: harmless
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
        # --swa swaps the one-cycle (per-step) schedule for its own per-epoch one, as intended
        warnings.filterwarnings("ignore", message="SWA is currently only supported every epoch")
        # the images sit in memory as tensors and are augmented a batch at a time on the model's
        # device, so loader workers would only add processes (Lightning asks on every machine with
        # more than two cores)
        warnings.filterwarnings("ignore", message="The '.*dataloader' does not have many workers")
        # --resume goes on in the fold's own checkpoint folder; a fresh run never finds one there
        warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
        # --accelerator cpu on a machine with a GPU is the user's choice, not an oversight
        warnings.filterwarnings("ignore", message="GPU available but not used")
        yield


def quiet_trainer(**kwargs: Any) -> Any:
    """`lightning.Trainer(**kwargs)` without the noise above: it speaks about the devices as it is
    built, before any fit."""
    import lightning as L

    with quiet_fit():
        return L.Trainer(**kwargs)


def fit_quietly(trainer: Any, *args: Any, **kwargs: Any) -> None:
    """`trainer.fit` without the noise above. Lightning answers Ctrl-C by ending the process
    (`sys.exit(1)`); here it comes out as KeyboardInterrupt again, so the command can say what
    becomes of the run."""
    with quiet_fit():
        try:
            trainer.fit(*args, **kwargs)
        except SystemExit:
            if not trainer.interrupted:
                raise
            raise KeyboardInterrupt from None  # (its teardown has put the SIGINT handler back)
