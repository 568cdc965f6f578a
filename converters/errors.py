"""Expected converter failures, each with a message for the user and an exit code.

The CLI prints the message and exits with ``exit_code``; no traceback for a user mistake.
Codes follow sysexits.h like the trainer and the device side; a model the gate refused
exits with ``EXIT_REJECTED`` so a script can tell "bad input" from "bad model".
"""

from __future__ import annotations

EXIT_REJECTED = 3
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_CANTCREAT = 73


class ConverterError(Exception):
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
