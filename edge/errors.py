"""The project's one error base and its exit codes, and the errors the device side raises.

Every message says what happened and what to do next. Each command line turns an
``EdgeError`` (or a subclass: ``trainer.errors.TrainerError``,
``converters.errors.ConverterError``, ``benchmarks.errors.BenchmarkError``) into a one-line
message and the class's ``exit_code``; no traceback for a user error. The codes are
sysexits.h's, the same in every package.
"""

from __future__ import annotations

import errno

EX_USAGE = 64  # a command-line option is wrong
EX_DATAERR = 65  # an input is wrong (a refused file, a bad data folder)
EX_NOINPUT = 66  # an input or a folder is missing
EX_UNAVAILABLE = 69  # a package or service the program needs is not there
EX_SOFTWARE = 70  # a library failed where it should not (TensorFlow's converter, say)
EX_CANTCREAT = 73  # an output cannot be written
EX_TEMPFAIL = 75  # try again later (busy, interrupted work waits)
EX_CONFIG = 78  # the configuration is wrong; restarting cannot fix it
EX_INTERRUPTED = 130  # Ctrl-C: 128 + SIGINT, as a shell reports a command it stopped


class EdgeError(Exception):
    """Base class of every expected failure in the project: a message meant for the user and
    an exit code."""

    exit_code = 1


class ConfigError(EdgeError):
    """The configuration file or a command-line option is wrong."""

    exit_code = EX_CONFIG


class ManifestError(EdgeError):
    """``model.json`` is missing, malformed, or does not describe the model beside it."""

    exit_code = EX_CONFIG


class ModelIntegrityError(ManifestError):
    """The ``.tflite`` file does not match the sha256 recorded in its manifest."""


class RuntimeUnavailableError(EdgeError):
    """No TFLite interpreter package is installed, or it cannot load the model."""

    exit_code = EX_UNAVAILABLE


class UnsupportedInputError(EdgeError):
    """An input file the model was not made for (not MR, no pixel data, unknown format).

    Such a file is quarantined with this message as its reason, never classified.
    ``log_message``: the same without values quoted from the file, for the log (a DICOM tag
    can hold anything, a patient's name included); None when the message quotes nothing.
    """

    exit_code = EX_DATAERR

    def __init__(self, message: str, log_message: str | None = None) -> None:
        super().__init__(message)
        self.log_message = log_message


class DecodeError(UnsupportedInputError):
    """An input file that claims to be an image but cannot be decoded."""


class MissingDecoderError(DecodeError):
    """A compressed DICOM whose transfer syntax no installed pixel-data plugin can decode."""


class InputLimitError(UnsupportedInputError):
    """An input larger than the configured limits (file size, pixels, dimensions).

    The guard against decompression bombs: the header is checked before any pixel is decoded.
    """

    @classmethod
    def file_too_large(cls, size: int, max_file_mb: float) -> InputLimitError:
        return cls(f"the file is {size / 2**20:.0f} MB, above the limit of {max_file_mb:g} MB "
                   "([limits] max_file_mb); raise the limit if such files are expected")


class ModelOutputError(UnsupportedInputError):
    """The model returned something that is not a probability for this input (NaN, inf)."""


class OutputError(EdgeError):
    """An output folder or file cannot be written (permissions, a file in the way, full)."""

    exit_code = EX_CANTCREAT


class AgentBusyError(EdgeError):
    """Another edge-agent already holds the outbox's lock; two agents must not share one."""

    exit_code = EX_TEMPFAIL


class FolderUnavailableError(EdgeError):
    """The inbox, or the folder the outbox lives in, does not exist (yet).

    Not a configuration error: a network share or USB disk may simply not be mounted yet,
    so a service manager should retry (exit code 66, not 78).
    """

    exit_code = EX_NOINPUT


class StorageError(EdgeError):
    """A disk or share failed a read or write the agent needed before it could start (EIO,
    ENOSPC, a share gone stale): nothing was taken or lost.

    Passing as often as not (a USB disk that dropped out, a share reconnecting), so a
    service manager should retry: exit code 75, not 78, which the unit does not restart.
    """

    exit_code = EX_TEMPFAIL

    @classmethod
    def starting(cls, exc: OSError) -> StorageError:
        where = f" ({exc.filename})" if exc.filename else ""
        if exc.errno in (errno.EACCES, errno.EPERM):  # not the disk: a file's owner or mode
            return cls(f"this user may not open a file of the outbox while starting: "
                       f"{exc.strerror or exc}{where}; nothing was taken or lost. A command "
                       "run as root in the outbox leaves files the agent may not open: give "
                       "them back to the agent's user (sudo chown -R neuroedge: OUTBOX); the "
                       "agent is started again (systemd) and goes on once it may")
        return cls(f"a disk error while starting: {exc.strerror or exc}{where}; nothing was "
                   "taken or lost. The agent is started again (systemd) or can be run again; "
                   "if this goes on, check the disk or share (dmesg, the cable, its mount)")


class ReceiverUnavailableError(EdgeError):
    """The DICOM receiver cannot listen on its port (in use, address not available).

    Often passing (the previous agent still holds the port while it stops), so a service
    manager should retry: exit code 75, not 78.
    """

    exit_code = EX_TEMPFAIL
