"""Errors a user can act on: each names the file and the problem."""

from __future__ import annotations


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
