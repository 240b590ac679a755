"""Training progress as a user reads it: each fit announced by what it trains, and Lightning's
bar without the logger's version number (`v_num`), which means nothing to a user."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import RichProgressBar
from rich import get_console


class QuietProgressBar(RichProgressBar):
    def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items

    def _get_train_description(self, current_epoch: int) -> str:
        # Lightning counts from 0 ("Epoch 19/19" for the last of 20); a user counts from 1
        text = f"Epoch {current_epoch + 1}" + (f"/{self.trainer.max_epochs}" if self.trainer.max_epochs else "")
        return f"{text:{len(self.validation_description)}}"


def announce(label: str, images: int, validation: int, epochs: int) -> None:
    """One line before a fit, so that the bars below it say which fold, refit or source model
    they belong to."""
    watched = f", watching {validation} validation images" if validation else ""
    get_console().print(f"{label}: {epochs} epoch{'s' * (epochs != 1)} on {images} images{watched}", highlight=False)
