"""Typed errors. Everything the tool raises on purpose derives from :class:`SdfnError`;
the CLI turns these into a message and a non-zero exit code."""

from __future__ import annotations

from collections.abc import Iterator


class SdfnError(Exception):
    """Base class of every domain error of sdfn-bench."""


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what caused it, each once: a Ray error's ``cause`` (an actor's exception), else
    ``__cause__``, else ``__context__`` (typer's silent ``Exit(130)`` hides a KeyboardInterrupt there)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        nxt = getattr(cur, "cause", None)
        cur = nxt if isinstance(nxt, BaseException) else (cur.__cause__ or cur.__context__)


class ManifestError(SdfnError):
    """A manifest is malformed (schema, values, duplicates); the message names the file and row."""


class ImageReadError(SdfnError):
    """An image cannot be read: missing, empty, truncated, unsupported or too large."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ImageInputError(SdfnError):
    """An in-memory image has pixels whose range cannot be known (a dtype other than uint8, uint16
    or float in [0, 1]); the message says how to convert it."""


class ClassOrderError(SdfnError):
    """Class names of two artifacts do not match by name and order."""


class CheckpointError(SdfnError):
    """A checkpoint is missing, malformed, or its keys do not match the architecture."""


class EngineError(SdfnError):
    """An engine cannot be built, loaded, or fails its numerical parity check."""


class BackendUnavailableError(EngineError):
    """A requested backend (TensorRT, CUDA, DALI...) is not installed or has no device here."""


class ScoreError(SdfnError):
    """A scoring run cannot proceed (manifest-level problem, too many image errors, bad resume)."""


class StatsError(SdfnError):
    """Statistics cannot be computed from the given predictions and labels."""


class CamError(SdfnError):
    """Class activation maps cannot be stored, loaded or evaluated (the message names the file)."""
