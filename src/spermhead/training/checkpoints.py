"""Checkpoints that survive their run folder being moved or copied before a --resume."""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint


class MovableCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint whose record of the best checkpoints follows its folder.

    Lightning stores absolute paths in each checkpoint and, when the folder differs on resume,
    drops the best score and the best-k record. The first resumed epoch then counts as an
    improvement whatever its score and overwrites best.ckpt, so a fit resumed in a moved run folder
    could keep another epoch than the uninterrupted fit. Paths under the old folder are rebased
    onto the new one instead, and the record is kept."""

    @property
    def state_key(self) -> str:
        # Lightning files a callback's state under its class name: keep ModelCheckpoint's, so
        # checkpoints written before this class existed still resume with their record
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old = state_dict.get("dirpath")
        if old and self.dirpath and old != self.dirpath:
            state_dict = {**state_dict, "dirpath": self.dirpath,
                          "best_k_models": {self._rebased(k, old): v
                                            for k, v in (state_dict.get("best_k_models") or {}).items()}}
            for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
                if state_dict.get(key):
                    state_dict[key] = self._rebased(state_dict[key], old)
        super().load_state_dict(state_dict)

    def _rebased(self, path: str, old: str) -> str:
        """`path` under the old folder, moved to the same place under this one."""
        try:
            relative = os.path.relpath(path, old)
        except ValueError:  # another drive (Windows): not under the old folder
            return path
        outside = relative == os.pardir or relative.startswith(os.pardir + os.sep)
        return path if outside else os.path.join(self.dirpath or "", relative)


class ResumableEarlyStopping(EarlyStopping):
    """Early stopping that also stops a fit resumed from the checkpoint of the very epoch it
    stopped at (a run killed between that checkpoint and the end of the fit): the checkpoint
    records the stop, but Lightning would train one more epoch, so the resumed fold would keep
    another model than the uninterrupted one."""

    @property
    def state_key(self) -> str:
        # filed under EarlyStopping's own key, so checkpoints written before this class resume alike
        return super().state_key.replace(type(self).__qualname__, EarlyStopping.__qualname__, 1)

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self.stopped_epoch > 0:
            trainer.should_stop = True
