"""Sends the SR queue (``edge.network.sendqueue``) to the PACS: C-STORE, what its failure
statuses mean, and the thread that tries every SR when it is due.

An attempt that finds the PACS unreachable stands for all the SRs due with it (one
connection attempt per backoff, however many wait); a failure status concerns that SR only.
A refusal that lasts (a status only a change at the PACS cures) is an error the first
time, a reminder after.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

from ..liveness import Progress
from .receiver import bound_reads
from .sendqueue import Outgoing, SendQueue
from .settings import NetworkConfig, PacsConfig, Peer

log = logging.getLogger(__name__)

SUCCESS_STATUSES = (0x0000, 0xB000, 0xB006, 0xB007)  # success, and the C-STORE warnings
# Seconds between looks at the queue when no SR is due sooner, or when the queue's own
# files could not be read or written (a record read again at the next look); a new SR
# wakes the sender at once.
_LOOK_AGAIN = 60.0

# What a C-STORE failure status means (DICOM PS3.4 B.2.3 and PS3.7 C), what to do, and
# whether the PACS will refuse the same SR again until something changes there (its SOP
# classes, this box's rights): such a refusal is logged as an error naming the fix, the SR
# waits retry_max between attempts instead of backing off from retry_initial, and
# `edge-agent check` lists it. The SR stays queued whatever the status.
_STATUS_MEANINGS: tuple[tuple[int, int, bool, str], ...] = (
    (0xA700, 0xFF00, False, "out of resources at the PACS (a full disk or a limit there); "
                            "it is tried again"),
    (0xA900, 0xFF00, True, "the PACS says the SR does not match its SOP class; it will "
                           "refuse it again until its configuration changes ([pacs] sr_type "
                           "= \"basic\" may help)"),
    (0xC000, 0xF000, True, "the PACS cannot understand the SR; it will likely refuse it "
                           "again: ask its administrator what its log says"),
    (0x0122, 0xFFFF, True, "the PACS does not support this SR's SOP class ([pacs] sr_type = "
                           "\"basic\" may help)"),
    (0x0124, 0xFFFF, True, "this box is not authorized to store at the PACS: ask its "
                           "administrator to allow this AE title"),
    (0x0110, 0xFFFF, False, "processing failure at the PACS; it is tried again"),
    (0x0211, 0xFFFF, True, "the PACS did not recognise the operation"),
    (0x0117, 0xFFFF, True, "the PACS found the SR's instance UID invalid"),
)


def describe_store_status(code: int) -> str:
    """A C-STORE failure status for a reader: its hex code and, where known, its meaning."""
    for value, mask, _, meaning in _STATUS_MEANINGS:
        if code & mask == value:
            return f"status 0x{code:04X}: {meaning}"
    return f"status 0x{code:04X}; it is tried again"


def status_lasts(code: int) -> bool:
    """Whether the PACS will answer the same SR with this failure status again until
    something is changed there (an unknown status: no, it is tried as usual)."""
    for value, mask, lasting, _ in _STATUS_MEANINGS:
        if code & mask == value:
            return lasting
    return False


class SendError(Exception):
    """A send that did not succeed; the message says why, for the log and the record.

    ``peer_down``: the PACS could not be reached at all (no connection, no answer to the
    association request), so no other SR can be sent to it now either. ``lasting``: the PACS
    answered, and will answer the same until something is changed there."""

    def __init__(self, message: str, peer_down: bool = False, lasting: bool = False) -> None:
        super().__init__(message)
        self.peer_down = peer_down
        self.lasting = lasting


def send_file(path: Path, item: Outgoing, peer: Peer, network: NetworkConfig,
              pacs: PacsConfig) -> int:
    """C-STORE one DICOM file to ``peer``; return the status, or raise ``SendError``."""
    import pydicom
    from pynetdicom import AE, evt

    ds = pydicom.dcmread(str(path))
    try:  # pynetdicom reports a refused connection as an aborted association: ask first
        socket.create_connection((peer.host, peer.port), timeout=pacs.timeout).close()
    except OSError as exc:
        why = "connection refused" if isinstance(exc, ConnectionRefusedError) else (
            exc.strerror or exc.__class__.__name__)
        raise SendError(f"no connection to {peer} ({why}: the PACS is down or unreachable "
                        "from here)", peer_down=True) from None
    ae = AE(ae_title=network.ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = pacs.timeout
    ae.connection_timeout = pacs.timeout
    ae.add_requested_context(item.sop_class_uid, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])

    def on_connected(event: Any) -> None:
        # pynetdicom clears the socket's timeout once connected: a PACS that stops inside a
        # PDU (a half-open link, a PACS that hangs mid-answer) held the reader, and this
        # thread, which waits for it, for ever (no SR sent again until a restart, and a
        # process that could not exit: the reader is not a daemon thread)
        bound_reads(event.assoc.dul.socket, str(peer), pacs.timeout)

    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title,
                         evt_handlers=[(evt.EVT_CONN_OPEN, on_connected)])
    if not assoc.is_established:
        if assoc.is_rejected:
            raise SendError(f"{peer} rejected the association (is this box's AE title "
                            f"{network.ae_title} registered there?)", lasting=True)
        if assoc.is_aborted:
            raise SendError(f"{peer} aborted the association (or did not answer the request "
                            f"within {pacs.timeout:g}s)", peer_down=True)
        raise SendError(f"no connection to {peer} (PACS down, or unreachable from here)",
                        peer_down=True)
    try:
        if not assoc.accepted_contexts:
            raise SendError(f"{peer} does not accept this SR's SOP class {item.sop_class_uid} "
                            "([pacs] sr_type = \"basic\" may help)", lasting=True)
        status = assoc.send_c_store(ds)
    finally:
        if assoc.is_established:
            assoc.release()
    code = int(getattr(status, "Status", -1)) if status is not None else -1
    if code == -1:
        raise SendError(f"{peer} did not answer the C-STORE (timeout or connection lost)")
    if code not in SUCCESS_STATUSES:
        raise SendError(f"{peer} refused the SR with {describe_store_status(code)}",
                        lasting=status_lasts(code))
    return code


class Sender:
    """Sends the queue on its own thread: the oldest due item first, one at a time."""

    def __init__(self, queue: SendQueue, peer: Peer, network: NetworkConfig, pacs: PacsConfig,
                 send: Callable[..., int] = send_file) -> None:
        self.queue = queue
        self.peer = peer
        self.network = network
        self.pacs = pacs
        self._send = send
        self.counts = {"sent": 0, "failed_attempts": 0}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # one attempt waits at most for the connection, the association, the C-STORE and
        # the release, each bounded by [pacs] timeout; stuck past this (a PACS that never
        # lets go), the watchdog pings stop (``edge.liveness``)
        self.progress = Progress("SR sender", 6 * pacs.timeout + 60.0)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sender", daemon=True)
        self._thread.start()
        self.progress.running(self._thread)

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float) -> None:
        self._stop.set()
        self._wake.set()
        self.progress.running(None)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def send_due(self, now: float | None = None,
                 alive: Callable[[], None] = lambda: None) -> float | None:
        """Try every item that is due; return seconds until the next is due (None: empty).
        ``alive`` is called after each item (``NetworkServices.finish``)."""
        # No attempt is ever scheduled further ahead than retry_max (+10%): one that is was
        # scheduled before the clock was set back, and is due now rather than that much later.
        horizon = self.pacs.retry_max * 1.1 + 5.0
        down: Outgoing | None = None  # the attempt that found the PACS unreachable
        postponed = 0
        for item in self.queue.items():
            if self._stop.is_set():
                return None
            moment = time.time() if now is None else now
            if moment < item.next_attempt <= moment + horizon:
                continue
            if down is not None:  # one connection attempt per backoff, not one per SR
                self.queue.postpone(item, down.next_attempt)
                postponed += 1
                continue
            if not self._attempt(item):
                down = item
            alive()
        if down is not None and postponed:
            log.log(logging.WARNING if down.attempts == 1 else logging.INFO,
                    "the PACS %s cannot be reached (%s); %d other SR(s) wait with the one "
                    "tried, next attempt in %.0fs", self.peer, down.last_error, postponed,
                    max(0.0, down.next_attempt - time.time()))
        clock = time.time()
        waits = [min(item.next_attempt - clock, horizon) for item in self.queue.items()]
        return max(0.0, min(waits)) if waits else None

    def _attempt(self, item: Outgoing) -> bool:
        """Send one SR; False if the PACS could not be reached at all."""
        self._name_predecessor(item)
        path = self.queue.path_of(item)
        self.progress.begin()  # each attempt has the bound to itself
        try:
            code = self._send(path, item, self.peer, self.network, self.pacs)
        except Exception as exc:  # noqa: BLE001 - every failure is retried later
            why = str(exc) if isinstance(exc, SendError) else (
                f"{exc.__class__.__name__}: {str(exc)[:200]}")
            lasting = isinstance(exc, SendError) and exc.lasting
            was_refused = item.refused
            delay = self.queue.failed(item, why, self.pacs, lasting=lasting)
            self.counts["failed_attempts"] += 1
            peer_down = isinstance(exc, SendError) and exc.peer_down
            if peer_down and item.attempts > 1:  # said at the first; then once per backoff
                log.info("the PACS %s still cannot be reached; next attempt in %.0fs",
                         self.peer, delay)
            elif lasting:  # an error the first time; then a reminder at each attempt
                log.log(logging.INFO if was_refused else logging.ERROR,
                        "the PACS refused the SR of study %s (%s); it will refuse it again "
                        "until that is changed there. The SR stays queued and is tried again "
                        "every %.0fs (attempt %d); `edge-agent check` lists such SRs",
                        item.study, why, delay, item.attempts)
            else:
                log.warning("could not send the SR of study %s (%s); attempt %d failed, next "
                            "in %.0fs", item.study, why, item.attempts, delay)
            return not peer_down
        self.queue.delivered(item, self.peer)
        self.counts["sent"] += 1
        log.info("sent the SR of study %s to %s%s", item.study, self.peer,
                 f" (warning status 0x{code:04X})" if code else "")
        return True

    def _name_predecessor(self, item: Outgoing) -> None:
        """Name in ``item``'s SR the last SR of its study the PACS took, if it names none.

        A study judged again builds its SR naming the last SR of the study known to have
        arrived then (``NetworkServices._on_judged``). Judged again while this thread was
        sending the earlier SR, the new SR named none, and the PACS got two reports of one
        study with nothing saying that the second replaces the first. Sends are one at a
        time, so here, before each attempt, the PACS's last SR of the study is known; the
        queued file is rewritten with it (once: then it names one)."""
        last = self.queue.last_sent(item.group)
        if last is None or last[0] == item.key:
            return
        import pydicom
        from pydicom.errors import InvalidDicomError

        from .sr import encode, name_predecessor

        path = self.queue.path_of(item)
        try:
            ds = pydicom.dcmread(str(path))
        except (OSError, InvalidDicomError, ValueError, AttributeError):
            return  # not readable now: the attempt says why (or sends it as it is)
        if "PredecessorDocumentsSequence" in ds or "SeriesInstanceUID" not in ds:
            return
        name_predecessor(ds, last[2] or item.sop_class_uid, last[1])
        # a disk error writing it is the queue's own (``_run``: tried again in a minute)
        if self.queue.rewrite(item, encode(ds)):
            log.info("the SR of study %s names the SR the PACS took before it as its "
                     "predecessor", item.study)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.progress.begin()
            try:
                wait = self.send_due()
            except OSError as exc:  # the queue's own files: a full disk, a folder's owner
                log.error("cannot write the SR queue in %s (%s); the SRs stay queued there "
                          "and are tried again in a minute: check the disk's free space and "
                          "the folder's owner", self.queue.folder, exc.strerror or exc)
                wait = _LOOK_AGAIN
            except Exception:  # noqa: BLE001 - keep the thread alive; the queue is on disk
                log.exception("the SR sender failed unexpectedly; retrying in a minute")
                wait = _LOOK_AGAIN
            self.progress.end()
            self._wake.wait(_LOOK_AGAIN if wait is None else min(wait, _LOOK_AGAIN))
            self._wake.clear()
