"""The DICOM receiver: a pynetdicom Storage SCP that writes each instance into the inbox.

It answers C-ECHO and C-STORE for every storage SOP class pynetdicom knows: MR images are
classified, anything else (CT, structured reports, ...) reaches the inbox like a copied file
and is quarantined with its reason, so a scanner that sends a whole study never sees a
refusal it would abort on. Transfer syntaxes: uncompressed first (Explicit, then Implicit
VR Little Endian; the acceptor's order decides), then the compressed ones the installed
decoders can read (JPEG, JPEG-LS, JPEG 2000, RLE: the ``dicom-codecs`` extra), so a sender
that can decompress never sends something the agent cannot decode.

No instance is held in memory: pynetdicom streams each C-STORE's data set to a temporary
file (``STORE_RECV_CHUNKED_DATASET``), which this module creates in the inbox folder itself,
named like the agent's other temporary files (``.neuroedge-*.tmp``: the inbox never takes
them). When the last fragment has arrived the file is fsynced and renamed to its final name
in the inbox (``<time>-<SOP UID hash>-<random>.dcm``), the folder is fsynced, and only then
is the C-STORE answered with success: an acknowledged instance is on disk, and from there the
agent's journal takes over exactly as for a copied file.

An answer can be lost on the way (a ``kill -9`` or a power cut between the rename and the
answer, a connection that drops): the sender then sends the instance again, which must not
be stored twice. So the temporary file is kept, a second hard link to the received instance
(no space of its own), until the answer has surely arrived: the sender's next request on
the association, or its release. A temporary file with a second link is such an instance
"in doubt": kept by the start-up's clean-up, and an instance received again with the same
bytes is answered with success and not stored again (one line in the log); both links gone
once it has (``IN_DOUBT_SECONDS`` at most). A failed write (a full disk, an
inbox that cannot be written, less than ``[network] min_free_mb`` free, checked as the file
grows) stops writing, removes the file and answers 0xA700 (out of resources): the sender keeps
the instance. A transfer that ends without an answer (an abort, a lost connection) has its
partial file removed when the association ends. Memory is bounded by
``[network] max_associations`` times the PDU size, whatever the size of the instances.

Logs name callers by AE title and address, instances by a hash of their SOP Instance UID;
pynetdicom's own event logging is switched off (it would log UIDs and, for queries, patient
identifiers).
"""

from __future__ import annotations

import filecmp
import logging
import os
import secrets
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ..dicom import uid_hash
from ..durable import (
    NO_HARD_LINKS,
    TMP_PREFIX,
    TMP_SUFFIX,
    create_temp,
    fsync_dir,
    move_no_replace,
)
from ..errors import ConfigError, ReceiverUnavailableError
from ..worker import describe_error
from .settings import NetworkConfig

log = logging.getLogger(__name__)

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
MAX_PDU = 131072  # bytes held per association while receiving (dcmtk's largest)
STALE_SPOOL_SECONDS = 3600.0  # a temporary file unchanged this long is a transfer given up
# An instance stored whose answer may not have reached its sender is recognised if sent
# again within this long (its temporary file, a second link to it, is kept as long)
IN_DOUBT_SECONDS = 86400.0
_SWEEP_EVERY = 300.0

UNCOMPRESSED = ("1.2.840.10008.1.2.1",  # Explicit VR Little Endian
                "1.2.840.10008.1.2",  # Implicit VR Little Endian
                "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
                "1.2.840.10008.1.2.2")  # Explicit VR Big Endian (retired, still sent)
COMPRESSED = ("1.2.840.10008.1.2.5",  # RLE Lossless
              "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
              "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
              "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
              "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
              "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
              "1.2.840.10008.1.2.4.57",  # JPEG Lossless
              "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
              "1.2.840.10008.1.2.4.91",  # JPEG 2000
              "1.2.840.10008.1.2.4.203",  # HTJ2K
              "1.2.840.10008.1.2.4.50",  # JPEG Baseline (8-bit)
              "1.2.840.10008.1.2.4.51")  # JPEG Extended (12-bit)

_SPOOL_CHECK_BYTES = 8 << 20  # free space is checked again every 8 MB an instance grows
# pynetdicom reads each PDU whole, as long as its length field says (up to 4 GB), however
# long the peer takes, and its timers cannot run meanwhile: a PDU is read here instead,
# refused past this length (a sender may overshoot MAX_PDU, never by this much) ...
PDU_READ_LIMIT = 4 << 20
# ... and given up (the connection closed, its slot freed) when it has not arrived whole
# this long after it began (pynetdicom's own idle timeout between PDUs)
PDU_READ_SECONDS = 60.0
_PDU_READ_POLL = 0.5  # a stopping receiver is noticed this fast by a read in progress

_spool_lock = threading.Lock()
_active: DicomReceiver | None = None  # where pynetdicom's received data sets go (one receiver)


def accepted_transfer_syntaxes() -> list[str]:
    """Uncompressed syntaxes, then the compressed ones an installed decoder can read."""
    from .. import dicom_compat

    return list(UNCOMPRESSED) + [uid for uid in COMPRESSED
                                 if not dicom_compat.decoder_problem(dicom_compat.UID(uid))]


class _SpoolFile:
    """What pynetdicom expects from ``NamedTemporaryFile(delete=False)``, created where the
    agent wants it: in the inbox (same filesystem: the final rename is atomic), named as one
    of the agent's temporary files, with a normal file's permissions (0666 less the umask).

    It never raises: pynetdicom writes it from the association's reader thread, where an
    exception aborts the association with a traceback and leaves the sender guessing. A
    failed create or write (a full disk, an inbox that cannot be written), or free space
    below ``[network] min_free_mb``, removes the file and discards the rest of the instance;
    ``error`` says why, and the C-STORE is answered Out of Resources. ``owner`` is the
    association's reader thread: what it leaves unfinished is removed when it ends."""

    def __init__(self, folder: Path, min_free: float) -> None:
        self.owner = threading.current_thread()
        self.error: str | None = None
        self.name = str(folder / f"{TMP_PREFIX}not-created-{secrets.token_hex(8)}{TMP_SUFFIX}")
        self._folder, self._min_free = folder, min_free
        self._handle: Any = None
        self._lock = threading.Lock()
        self._unchecked = 0
        try:
            if self._low_on_space():
                return
            fd, self.name = create_temp(folder)
            self._handle = os.fdopen(fd, "wb")
        except OSError as exc:
            self._fail(describe_error(exc))

    @property
    def file(self) -> _SpoolFile:  # pynetdicom calls ``.file.flush()`` after each fragment
        return self

    def write(self, data: bytes) -> int:
        with self._lock:
            if self._handle is not None:
                try:
                    self._handle.write(data)
                    self._unchecked += len(data)
                    if self._unchecked >= _SPOOL_CHECK_BYTES:
                        self._unchecked = 0
                        self._low_on_space()
                except (OSError, ValueError) as exc:
                    self._fail(describe_error(exc))
        return len(data)

    def flush(self) -> None:
        with self._lock:
            if self._handle is not None:
                try:
                    self._handle.flush()
                except (OSError, ValueError) as exc:
                    self._fail(describe_error(exc))

    def close(self) -> None:
        with self._lock:
            if self._handle is not None:
                try:
                    self._handle.close()
                except OSError as exc:
                    self._fail(describe_error(exc))
                self._handle = None

    def discard(self, why: str) -> None:
        """Remove the file: the instance will not be acknowledged (any thread)."""
        with self._lock:
            self._fail(why)

    def _low_on_space(self) -> bool:
        free = shutil.disk_usage(str(self._folder)).free
        if free >= self._min_free:
            return False
        self._fail(f"only {free // 1000000} MB free in the inbox's filesystem ([network] "
                   f"min_free_mb = {self._min_free / 1e6:.0f})")
        return True

    def _fail(self, why: str) -> None:
        self.error = self.error or why
        handle, self._handle = self._handle, None
        if handle is not None:
            try:
                handle.close()
            except OSError:
                pass
            try:
                os.unlink(self.name)
            except OSError:
                pass


def _spool_file_factory(original: Callable[..., Any]) -> Callable[..., Any]:
    def factory(*args: Any, **kwargs: Any) -> Any:
        receiver = _active
        return receiver._new_spool() if receiver is not None else original(*args, **kwargs)
    return factory


def _printable(text: Any, limit: int = 64) -> str:
    """A value from the network, safe to put in a log line (no control characters)."""
    return "".join(c if c.isprintable() else "?" for c in str(text)[:limit])


class DicomReceiver:
    """A Storage SCP on ``[network] dicom_port`` writing into ``inbox``.

    ``on_received(path)`` is called, from the association's thread, with the inbox path of
    every instance acknowledged to its sender.
    """

    def __init__(self, config: NetworkConfig, inbox: Path,
                 on_received: Callable[[str], None]) -> None:
        self.config = config
        self.inbox = inbox
        self.on_received = on_received
        self.counts = {"associations": 0, "refused": 0, "instances": 0, "failed": 0,
                       "bytes": 0}
        self._lock = threading.Lock()
        self._sessions: dict[int, dict[str, Any]] = {}
        self._spools: dict[str, _SpoolFile] = {}  # received into, not yet answered
        # Second links to instances stored and answered: whose answer is not confirmed yet,
        # by association (its next request confirms it); in doubt (a crash, an abort)
        self._unconfirmed: dict[int, list[str]] = {}
        self._in_doubt: set[str] = set()
        self._server: Any = None
        self._ae: Any = None
        self._patched: tuple[Any, Any] | None = None
        self._last_sweep = 0.0
        self._stopping = False
        self.port = 0  # the port actually listened on (config 0 is not started at all)

    # --- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Listen; raise ``ReceiverUnavailableError``/``ConfigError`` with what to do."""
        global _active
        try:
            import pynetdicom
            from pynetdicom import AE, AllStoragePresentationContexts, _config, dimse_messages, evt
            from pynetdicom.sop_class import Verification
        except ImportError:
            raise ConfigError(
                "[network] dicom_port is set but pynetdicom is not installed: "
                "pip install 'neuroedge[edge]' (it brings pynetdicom), or set dicom_port = 0"
            ) from None
        if not hasattr(dimse_messages, "NamedTemporaryFile") or not hasattr(
                _config, "STORE_RECV_CHUNKED_DATASET"):
            raise ConfigError(
                f"pynetdicom {pynetdicom.__version__} cannot stream received instances to "
                "disk; install a supported version: pip install 'neuroedge[edge]'")
        with _spool_lock:
            if _active is not None:
                raise ConfigError("a DICOM receiver is already running in this process")
            _active = self
        self._stopping = False
        sweep_spool(self.inbox, max_age=0.0)  # what a crash left half-received
        with self._lock:
            self._in_doubt = set(in_doubt(self.inbox))  # what a crash left unconfirmed
        if self._in_doubt:
            log.info("%d instance(s) stored before a crash or an abort may not have been "
                     "acknowledged: sent again, they are not stored twice", len(self._in_doubt))
        _config.LOG_HANDLER_LEVEL = "none"  # its standard logs carry UIDs and identifiers
        _config.LOG_REQUEST_IDENTIFIERS = False
        _config.STORE_RECV_CHUNKED_DATASET = True
        original = dimse_messages.NamedTemporaryFile
        dimse_messages.NamedTemporaryFile = _spool_file_factory(original)
        self._patched = (dimse_messages, original)

        ae = AE(ae_title=self.config.ae_title)
        ae.maximum_associations = self.config.max_associations
        # a connection that never asks for an association (a port scan, a stuck client)
        # would hold one of those slots for pynetdicom's default 30 s
        ae.acse_timeout = self.config.acse_timeout
        ae.maximum_pdu_size = MAX_PDU
        ae.require_calling_aet = list(self.config.allowed_calling_aets)
        syntaxes = accepted_transfer_syntaxes()
        ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, syntaxes)
        handlers = [(evt.EVT_CONN_OPEN, self._on_connected),
                    (evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, self._on_echo),
                    (evt.EVT_ACCEPTED, self._on_accepted), (evt.EVT_REJECTED, self._on_rejected),
                    (evt.EVT_RELEASED, self._on_ended), (evt.EVT_ABORTED, self._on_ended)]
        address = (self.config.listen_address, self.config.dicom_port)
        try:
            self._server = ae.start_server(address, block=False, evt_handlers=handlers)
        except OSError as exc:
            self._unpatch()
            raise self._bind_error(exc) from None
        except Exception:
            self._unpatch()
            raise
        self._ae = ae
        self.port = self._server.server_address[1]
        compressed = len(syntaxes) - len(UNCOMPRESSED)
        log.info("DICOM receiver %s listening on %s:%d (C-ECHO, C-STORE of %d storage classes, "
                 "%d compressed transfer syntaxes; callers: %s)", self.config.ae_title,
                 self.config.listen_address or "*", self.port,
                 len(AllStoragePresentationContexts), compressed,
                 ", ".join(self.config.allowed_calling_aets) or "any")

    def stop(self) -> None:
        """Stop listening; a transfer still running is aborted (not acknowledged: the
        sender keeps it and sends it again)."""
        self._stopping = True  # a PDU half-read gives up at once: nothing waits on a peer
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._ae is not None:
            self._ae.shutdown()
            self._ae = None
            c = self.counts
            log.info("DICOM receiver stopped: %d associations, %d instances (%.1f MB) stored, "
                     "%d failed, %d associations refused", c["associations"], c["instances"],
                     c["bytes"] / 1e6, c["failed"], c["refused"])
        self._unpatch()

    def _unpatch(self) -> None:
        global _active
        if self._patched is not None:
            module, original = self._patched
            module.NamedTemporaryFile = original
            self._patched = None
        with _spool_lock:
            if _active is self:
                _active = None
        self._discard_spools(lambda spool: True)  # transfers cut short: none acknowledged

    # --- the files instances are received into ----------------------------------------------

    def _new_spool(self) -> _SpoolFile:
        spool = _SpoolFile(self.inbox, self.config.min_free_mb * 1e6)
        with self._lock:
            self._spools[spool.name] = spool
        return spool

    def _take_spool(self, path: str) -> _SpoolFile | None:
        with self._lock:
            return self._spools.pop(path, None)

    def _discard_spools(self, which: Callable[[_SpoolFile], bool]) -> int:
        """Remove the partial files of transfers that ended without a C-STORE answer."""
        with self._lock:
            gone = [spool for spool in self._spools.values() if which(spool)]
            for spool in gone:
                del self._spools[spool.name]
        for spool in gone:
            spool.discard("the association ended before the instance was complete")
        return len(gone)

    def _bind_error(self, exc: OSError) -> Exception:
        port = self.config.dicom_port
        where = f"{self.config.listen_address or '*'}:{port}"
        if isinstance(exc, PermissionError):
            return ConfigError(
                f"cannot listen on {where}: permission denied. Ports below 1024 need root or "
                f"the CAP_NET_BIND_SERVICE capability; use an unprivileged port such as 11112 "
                "([network] dicom_port or --dicom-port)")
        if exc.errno == 98:  # EADDRINUSE
            return ReceiverUnavailableError(
                f"cannot listen on {where}: the port is in use by another program (another "
                "edge-agent, storescp, a PACS?); stop it or choose another [network] dicom_port")
        return ReceiverUnavailableError(
            f"cannot listen on {where}: {exc.strerror or exc}; check [network] listen_address")

    # --- event handlers (each runs in the association's own thread) ---------------------

    def _caller(self, event: Any) -> str:
        requestor = event.assoc.requestor
        return (f"{_printable(requestor.ae_title, 16).strip() or '?'}@"
                f"{_printable(requestor.address, 46)}:{requestor.port}")

    def _on_connected(self, event: Any) -> None:
        requestor = event.assoc.requestor
        bound_reads(event.assoc.dul.socket,
                    f"{_printable(requestor.address, 46)}:{requestor.port}", PDU_READ_SECONDS,
                    lambda: self._stopping)

    def _on_accepted(self, event: Any) -> None:
        with self._lock:
            self.counts["associations"] += 1
            self._sessions[id(event.assoc)] = {"caller": self._caller(event), "instances": 0,
                                               "bytes": 0, "failed": 0,
                                               "started": time.monotonic()}
        log.debug("association from %s accepted", self._caller(event))

    def _on_rejected(self, event: Any) -> None:
        # Why, from the A-ASSOCIATE-RJ that was sent (source, diagnostic): PS3.8 9.3.4.
        reject = getattr(event.assoc.acceptor, "primitive", None)
        code = (getattr(reject, "result_source", None), getattr(reject, "diagnostic", None))
        allowed = ", ".join(self.config.allowed_calling_aets)
        why = {(1, 3): f"its calling AE title is not in [network] allowed_calling_aets "
                       f"({allowed})",
               (3, 2): f"[network] max_associations ({self.config.max_associations}) are "
                       "already open; the sender should retry later",
               (1, 7): "it called another AE title"}.get(
            code, f"the association request was not acceptable (source {code[0]}, "
                  f"reason {code[1]})")
        with self._lock:
            self.counts["refused"] += 1
        log.warning("refused a DICOM association from %s: %s", self._caller(event), why)

    def _on_ended(self, event: Any) -> None:
        reader = getattr(event.assoc, "dul", None)
        self._discard_spools(lambda spool: spool.owner is reader or not spool.owner.is_alive())
        if event.event.name == "EVT_RELEASED":  # the sender had every answer
            self._confirm(event.assoc)
        else:  # an abort: the last answer may not have reached the sender
            with self._lock:
                self._in_doubt.update(self._unconfirmed.pop(id(event.assoc), []))
        with self._lock:
            session = self._sessions.pop(id(event.assoc), None)
        if session is None:
            return
        seconds = time.monotonic() - session["started"]
        how = "released" if event.event.name == "EVT_RELEASED" else "aborted"
        level = logging.INFO if session["instances"] or session["failed"] else logging.DEBUG
        log.log(level, "association from %s %s after %.1fs: %d instance(s) stored (%.1f MB)%s",
                session["caller"], how, seconds, session["instances"], session["bytes"] / 1e6,
                f", {session['failed']} failed" if session["failed"] else "")
        self._maybe_sweep()

    def _on_echo(self, event: Any) -> int:
        log.debug("C-ECHO from %s", self._caller(event))
        return SUCCESS

    def _on_store(self, event: Any) -> int:
        """Make the received instance durable in the inbox, then (and only then) say so."""
        caller = self._caller(event)
        sop = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")
        tag = uid_hash(sop) if sop else "no-uid"
        self._confirm(event.assoc)  # a new request: the sender had the last answer
        try:
            spooled = Path(event.dataset_path)
            spool = self._take_spool(str(spooled))
            if spool is not None and spool.error:
                self._failed(event, "failed to store instance %s from %s: %s; the sender was "
                             "told to retry", tag, caller, spool.error)
                return OUT_OF_RESOURCES
            size = spooled.stat().st_size
            free = shutil.disk_usage(str(self.inbox)).free  # the instance is in already
            if free < self.config.min_free_mb * 1e6:
                self._failed(event, "failed to store instance %s from %s: only %d MB free in "
                             "the inbox's filesystem ([network] min_free_mb = %d); the sender "
                             "was told to retry", tag, caller, free // 1000000,
                             self.config.min_free_mb)
                return OUT_OF_RESOURCES
            earlier = self._stored_before(spooled, size)
            if earlier is not None:  # in doubt until this answer is confirmed in turn
                with self._lock:
                    self._in_doubt.discard(earlier)
                    self._unconfirmed.setdefault(id(event.assoc), []).append(earlier)
                log.info("instance %s from %s received again, the same bytes as one stored "
                         "whose answer it may not have had: not stored twice", tag, caller)
                return SUCCESS  # pynetdicom removes the spooled copy
            final, kept = self._publish(spooled, tag)
        except Exception as exc:  # noqa: BLE001 - never acknowledge what is not on disk
            self._failed(event, "failed to store instance %s from %s (%s); the sender was told "
                         "to retry", tag, caller, describe_error(exc))
            return OUT_OF_RESOURCES
        with self._lock:
            if kept is not None:
                self._unconfirmed.setdefault(id(event.assoc), []).append(kept)
            self.counts["instances"] += 1
            self.counts["bytes"] += size
            session = self._sessions.get(id(event.assoc))
            if session is not None:
                session["instances"] += 1
                session["bytes"] += size
        log.debug("stored instance %s from %s as %s", tag, caller, final.name)
        try:
            self.on_received(str(final))
        except Exception:  # noqa: BLE001 - the file is in the inbox; a rescan finds it
            log.exception("could not signal a received instance; the next rescan takes it")
        return SUCCESS

    def _failed(self, event: Any, message: str, *args: Any) -> None:
        with self._lock:
            self.counts["failed"] += 1
            session = self._sessions.get(id(event.assoc))
            if session is not None:
                session["failed"] += 1
        log.error(message, *args)

    def _publish(self, spooled: Path, tag: str) -> tuple[Path, str | None]:
        """Give the instance its name in the inbox, durably; keep its temporary file as a
        second link (returned) where the filesystem has hard links."""
        fd = os.open(str(spooled), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        # out of pynetdicom's way (it removes the spooled file once answered); a crash here
        # leaves a temporary file with one link: never published, removed at the next start
        kept = str(self.inbox / f"{TMP_PREFIX}{secrets.token_hex(8)}{TMP_SUFFIX}")
        os.rename(str(spooled), kept)
        try:
            final, linked = self._link(kept, tag)
        except BaseException:
            self._forget(kept)  # not published: the sender is told to retry
            raise
        if not linked:
            return final, None
        try:
            fsync_dir(self.inbox)
        except OSError:  # in the inbox, maybe not for good: a resend is not stored again
            with self._lock:
                self._in_doubt.add(kept)
            raise
        return final, kept

    def _link(self, kept: str, tag: str) -> tuple[Path, bool]:
        """The instance's name in the inbox, never replacing anything: a second link to
        ``kept`` (True), or, where the filesystem has no hard links (FAT and the like),
        ``kept`` moved there and fsynced (False: nothing kept)."""
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for _ in range(10):
            final = self.inbox / f"{stamp}-{tag}-{secrets.token_hex(3)}.dcm"
            try:
                os.link(kept, str(final), follow_symlinks=False)
                return final, True
            except FileExistsError:
                continue
            except OSError as exc:
                if exc.errno not in NO_HARD_LINKS:
                    raise
            try:
                move_no_replace(Path(kept), final)  # and fsync the inbox folder
                return final, False
            except FileExistsError:
                continue
        raise FileExistsError(f"no free name for a received instance in {self.inbox}")

    def _confirm(self, assoc: Any) -> None:
        """The answers given on ``assoc`` reached its sender: their second links go."""
        with self._lock:
            kept = self._unconfirmed.pop(id(assoc), [])
        for path in kept:
            try:
                os.unlink(path)
            except OSError:
                pass  # in doubt at the next start, gone within IN_DOUBT_SECONDS

    def _stored_before(self, spooled: Path, size: int) -> str | None:
        """The second link of an instance in doubt with the same bytes, if there is one."""
        with self._lock:
            candidates = sorted(self._in_doubt)
        for path in candidates:
            try:
                if os.stat(path).st_size == size and filecmp.cmp(path, str(spooled),
                                                                  shallow=False):
                    return path
            except OSError:
                self._forget(path)  # removed meanwhile (expired)
        return None

    def _forget(self, path: str) -> None:
        with self._lock:
            self._in_doubt.discard(path)
        try:
            os.unlink(path)
        except OSError:
            pass

    # --- housekeeping ---------------------------------------------------------------------

    def _maybe_sweep(self) -> None:
        now = time.monotonic()
        if now - self._last_sweep >= _SWEEP_EVERY:
            self._last_sweep = now
            sweep_spool(self.inbox, STALE_SPOOL_SECONDS)


def bound_reads(channel: Any, where: str, seconds: float,
                stopping: Callable[[], bool] = lambda: False) -> None:
    """Have pynetdicom read the PDUs of a connection (its ``AssociationSocket``) with a bound
    on their length (``PDU_READ_LIMIT``) and on their time: each must arrive whole within
    ``seconds`` of its start, and ``stopping()`` gives up at once. pynetdicom's own ``recv``
    reads as many bytes as a PDU's length field says, on a socket without a timeout, and its
    timers cannot run meanwhile: a peer that stopped inside a PDU held the connection, and
    the thread that waits for it, for ever. A read given up returns what came (fewer bytes
    than asked: the connection is over for pynetdicom, which ends the association) and shuts
    the connection down both ways, so nothing after it is taken for a PDU and the peer sees
    it end (pynetdicom 2.0.2 left it open after a short read before an association)."""
    raw = channel.socket
    given_up: list[bool] = []
    try:  # what pynetdicom sends must not block for ever either
        raw.settimeout(seconds)
    except OSError:
        pass

    def give_up(data: bytearray) -> bytearray:
        given_up.append(True)
        try:
            raw.shutdown(socket.SHUT_RDWR)  # the peer sees the connection end
        except OSError:
            pass
        return data

    def recv(count: int) -> bytearray:
        data = bytearray()
        if given_up:
            return data
        if count > PDU_READ_LIMIT:
            log.warning("closed the DICOM connection with %s: it announced a PDU of %d bytes "
                        "(at most %d are read)", where, count, PDU_READ_LIMIT)
            return give_up(data)
        deadline = time.monotonic() + seconds
        try:
            while len(data) < count:
                if stopping():
                    return give_up(data)
                left = deadline - time.monotonic()
                if left <= 0:
                    log.warning("closed the DICOM connection with %s: a PDU it began did not "
                                "arrive whole within %.0fs (%d of %d bytes)", where, seconds,
                                len(data), count)
                    return give_up(data)
                raw.settimeout(min(left, _PDU_READ_POLL))
                try:
                    chunk = raw.recv(min(count - len(data), 65536))
                except socket.timeout:
                    continue
                if not chunk:
                    break
                data.extend(chunk)
        finally:
            try:
                raw.settimeout(seconds)
            except OSError:
                pass
        return data

    channel.recv = recv


def sweep_spool(inbox: Path, max_age: float) -> int:
    """Delete temporary files of transfers that were given up (an aborted association, a
    crash): ours only (``.neuroedge-*.tmp``), and only once unchanged for ``max_age``
    seconds. None of them was acknowledged: their senders still have the instances. One
    with a second link is an instance stored, in doubt: kept ``IN_DOUBT_SECONDS``."""
    removed = 0
    now = time.time()
    for path, info in _temp_files(inbox):
        stored = info.st_nlink > 1  # in doubt (not counted: it is archived, not lost)
        if now - info.st_mtime < (max(max_age, IN_DOUBT_SECONDS) if stored else max_age):
            continue
        try:
            os.unlink(path)
        except OSError:
            continue
        if not stored:
            removed += 1
    if removed:
        fsync_dir(inbox)
        log.warning("removed %d partly received instance(s) left in the inbox by an "
                    "interrupted transfer (never acknowledged: the sender still has them)",
                    removed)
    return removed


def in_doubt(inbox: Path) -> list[str]:
    """The temporary files in ``inbox`` with a second link: instances stored whose answer
    may not have reached their sender (``DicomReceiver._publish``)."""
    return [path for path, info in _temp_files(inbox) if info.st_nlink > 1]


def _temp_files(inbox: Path) -> list[tuple[str, os.stat_result]]:
    """Our temporary files in ``inbox`` (``.neuroedge-*.tmp``) with their status; none when
    the folder cannot be read."""
    found = []
    try:
        entries = list(os.scandir(str(inbox)))
    except OSError:
        return found
    for entry in entries:
        if entry.name.startswith(TMP_PREFIX) and entry.name.endswith(TMP_SUFFIX):
            try:
                found.append((entry.path, entry.stat(follow_symlinks=False)))
            except OSError:
                continue
    return found
