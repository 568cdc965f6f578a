"""Expected trainer failures, each with a message for the user and an exit code.

The CLI prints the message and exits with ``exit_code``; no traceback for a user mistake.
The base and the exit codes are the project's one set, in ``edge.errors``.
"""

from __future__ import annotations

from edge.errors import EX_CANTCREAT, EX_DATAERR, EX_NOINPUT, EX_USAGE, EdgeError

__all__ = ["EX_CANTCREAT", "EX_DATAERR", "EX_NOINPUT", "EX_USAGE", "ArchitectureError",
           "DataError", "DivergedError", "OptionError", "OutputError", "RunError",
           "TrainerError", "WeightsNotFoundError"]


class TrainerError(EdgeError):
    """Base class: an expected failure whose message says what to do next."""

    exit_code = 1


class DataError(TrainerError):
    """A data folder is missing, empty, mislaid out, or holds an unreadable image."""

    exit_code = EX_DATAERR


class OptionError(TrainerError):
    """A command-line option or training setting out of its valid range."""

    exit_code = EX_USAGE


class ArchitectureError(OptionError):
    """An unknown architecture name or an option the architecture does not take."""


class WeightsNotFoundError(TrainerError):
    """Pretrained backbone weights were asked for (or needed) but are not on this machine."""

    exit_code = EX_NOINPUT


class RunError(TrainerError):
    """A run folder is missing, incomplete, or would be overwritten."""

    exit_code = EX_NOINPUT


class DivergedError(OptionError):
    """Training produced a NaN or infinite loss: the settings (most often the learning rate)
    made it diverge. The run folder is kept, marked ``diverged``, for inspection."""


class OutputError(TrainerError):
    """An output folder or file cannot be created or written (a file in the way, no
    permission, a read-only file system)."""

    exit_code = EX_CANTCREAT
