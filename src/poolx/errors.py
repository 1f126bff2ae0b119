"""Typed errors. Every failure a user can cause is a `PoolxError` with a one-line message that names the problem
and a fix; the CLI prints it to stderr and exits with `exit_code` (no traceback)."""

from __future__ import annotations


def first_line(error: BaseException) -> str:
    """The first line of an error's message (a library's multi-line report cut to what a one-line error can
    carry), or its type's name when the message is empty."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class PoolxError(Exception):
    """Base class. `exit_code` is what the CLI exits with."""

    exit_code = 2


class UsageError(PoolxError, ValueError):
    """Bad arguments: an unknown pooler, a layer index out of range, an option a pooler does not take."""


class UnknownPoolerError(UsageError):
    """A pooler name that is not in the registry."""


class ModelLoadError(PoolxError):
    """A model source that is missing, is not a model, or cannot be loaded offline."""


class ExportError(PoolxError):
    """The export could not be written (the output exists, tracing failed, the graph is invalid)."""


class BrokenExportError(PoolxError):
    """An export directory that is incomplete, edited or corrupted: its files do not match its manifest."""


class ParityError(PoolxError):
    """The ONNX graph does not compute what eager PyTorch computes (or does not have the declared interface).
    `report` holds the verify report when there is one."""

    exit_code = 1

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report


class ProviderUnavailableError(PoolxError):
    """An execution provider was asked for that cannot run here; poolx never falls back silently."""
