"""Errors a user can act on: each names the file and the problem."""

from __future__ import annotations

from collections.abc import Sequence

MAX_LISTED = 20  # unusable files named in one error; the rest are counted


class SpermheadError(Exception):
    """Base class for errors shown to users as one line, without a traceback."""


class DataError(SpermheadError):
    """A dataset's layout or annotations are wrong (missing folder, unknown code, ...)."""


class ImageError(SpermheadError):
    """One image cannot be used. `status` is the HTTP code the server answers with."""

    def __init__(self, name: str, problem: str, status: int = 400) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name
        self.problem = problem
        self.status = status


class ConfigError(SpermheadError):
    """Options that cannot work together, or a model or recipe that does not exist."""


def raise_for_unusable(failed: Sequence[ImageError], total: int) -> None:
    """Nothing for no failures; one bad file raises its ImageError; several raise one DataError
    naming them all, so a lab fixes its folder in one pass instead of one file per run."""
    if len(failed) == 1:
        raise failed[0]
    if failed:
        raise DataError(unusable_message(failed, total))


def unusable_message(failed: Sequence[ImageError], total: int, why: str = "") -> str:
    """"N of M images cannot be used{why}; fix or remove them:" and the first MAX_LISTED, one a line."""
    listed = "".join(f"\n  {e}" for e in failed[:MAX_LISTED])
    if len(failed) > MAX_LISTED:
        listed += f"\n  ... and {len(failed) - MAX_LISTED} more"
    return f"{len(failed)} of {total} images cannot be used{why}; fix or remove them:{listed}"
