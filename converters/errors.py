"""Expected converter failures, each with a message for the user and an exit code.

The CLI prints the message and exits with ``exit_code``; no traceback for a user mistake.
The base and the sysexits.h codes are the project's one set, in ``edge.errors``; a model the
gate refused exits with ``EXIT_REJECTED`` (3) so a script can tell "bad input" from "bad
model".
"""

from __future__ import annotations

from edge.errors import (
    EX_CANTCREAT,
    EX_DATAERR,
    EX_NOINPUT,
    EX_SOFTWARE,
    EX_UNAVAILABLE,
    EX_USAGE,
    EdgeError,
)

__all__ = ["EXIT_REJECTED", "EX_CANTCREAT", "EX_DATAERR", "EX_NOINPUT", "EX_SOFTWARE",
           "EX_UNAVAILABLE", "EX_USAGE", "ConversionFailedError", "ConverterError",
           "GateRejected", "OutputError", "SourceModelError", "UsageError"]
EXIT_REJECTED = 3


class ConverterError(EdgeError):
    """Base class: an expected failure whose message says what to do next."""

    exit_code = 1


class UsageError(ConverterError):
    """Options that contradict each other or the source model."""

    exit_code = EX_USAGE


class SourceModelError(ConverterError):
    """The Keras model or its run folder is missing, unreadable or incomplete."""

    exit_code = EX_NOINPUT


class ConversionFailedError(ConverterError):
    """TensorFlow's converter refused the model (an op it cannot quantize, for instance)."""

    exit_code = EX_SOFTWARE


class OutputError(ConverterError):
    """The output folder cannot be written, or holds a model that would be overwritten."""

    exit_code = EX_CANTCREAT


class GateRejected(ConverterError):
    """The converted model failed the accuracy gate or did not load in the edge runtime."""

    exit_code = EXIT_REJECTED
