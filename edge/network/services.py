"""Starts and stops the network side of ``edge-agent watch``: receiver, studies, PACS sender.

The agent (``edge.watch.Agent``) calls ``start`` once it has recovered and watches the
inbox, ``stop_receiver`` first thing when it stops (nothing new comes in while it finishes
the files it has taken), and ``finish`` after its last report is written. With ``--once``
there is no receiver; every pending study is judged at the end and each SR due is tried
once.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Any, Callable

from ..config import AgentConfig
from ..dicom import uid_hash
from ..errors import ConfigError
from ..liveness import Progress
from ..worker import describe_error
from .dest_reads import DestReads
from .receiver import DicomReceiver, sweep_spool
from .sender import Sender
from .sendqueue import Outgoing, SendQueue
from .settings import StudiesConfig
from .studies import StudyTracker
from .verdict import Slice

log = logging.getLogger(__name__)


class NetworkServices:
    def __init__(self, config: AgentConfig, inbox: Path, outbox: Path, labels: list[str],
                 on_received: Callable[[str], None]) -> None:
        self.config = config
        self.inbox = inbox
        self.outbox = outbox
        self.receiver = (DicomReceiver(config.network, inbox, on_received)
                         if config.network.dicom_port else None)
        self.tracker: StudyTracker | None = None
        self.dest_reads = DestReads()  # at an offload's DEST: the tracker's, and the SR's
        studies = config.studies.enabled
        if studies and config.studies.normal_label not in labels:
            problem = (f"[studies] normal_label {config.studies.normal_label!r} is not one of "
                       f"the model's labels ({', '.join(labels)})")
            if config.studies.normal_label != StudiesConfig.normal_label or config.pacs.send_to:
                raise ConfigError(f"{config.source or 'config'}: {problem}; set it to the "
                                  "label that means \"no finding\", or turn study reports off "
                                  "with [studies] enabled = false")
            # the default label, and a model without it: an old config keeps working
            log.warning("%s: study reports are off; set it to the label that means \"no "
                        "finding\" to have them", problem)
            studies = False
        if studies:
            review = {"review_threshold": config.review.threshold,
                      "review_min_margin": config.review.min_margin}
            self.tracker = StudyTracker(outbox, config.studies, labels, review,
                                        html=config.report.html, on_judged=self._on_judged,
                                        dest_reads=self.dest_reads)
        peer = config.pacs.peer
        if peer is not None and self.tracker is None:
            raise ConfigError(f"{config.source or 'config'}: [pacs] send_to needs study "
                              "reports: set [studies] enabled = true (or send_to = \"\")")
        self.queue = SendQueue(outbox) if peer is not None else None
        self.sender = (Sender(self.queue, peer, config.network, config.pacs)
                       if self.queue is not None and peer is not None else None)
        self._started = False

    def progress(self) -> list[Progress]:
        """The network's threads, for the watchdog (``edge.liveness``)."""
        return [part.progress for part in (self.tracker, self.sender) if part is not None]

    def page_alerts(self) -> list[str]:
        """What the outbox's front page must say of the studies and SRs (none: all is well)."""
        lines = self.tracker.page_lines() if self.tracker is not None else []
        if self.queue is not None:
            lines += self.queue.state().page_lines(str(self.config.pacs.peer))
        return lines

    def start(self, once: bool) -> None:
        self._started = True
        sweep_spool(self.inbox, max_age=0.0)  # a receiver killed mid-transfer, even an old one
        if self.queue is not None:
            self.queue.open()
            waiting = len(self.queue.items())
            if waiting:
                log.info("%d SR(s) wait in the queue for %s", waiting, self.config.pacs.peer)
        if self.tracker is not None:
            self.tracker.open()
        if once:
            if self.receiver is not None:
                log.info("--once: the DICOM receiver is not started")
            return
        if self.tracker is not None:
            self.tracker.start()
        if self.sender is not None:
            self.sender.start()
        if self.receiver is not None:
            self.receiver.start()

    def stop_receiver(self) -> None:
        if self.receiver is not None:
            self.receiver.stop()

    def finish(self, once: bool, alive: Callable[[], None] = lambda: None) -> None:
        """After the agent's last report: judge and send (``once``), or just stop.
        ``alive`` is called after each study judged and each SR tried (the agent's
        ``SelfWatchdog``: a long, healthy finish is not a hang)."""
        if not self._started:  # the agent failed before (perhaps another one owns the outbox)
            return
        try:
            if self.tracker is not None:
                self.tracker.stop()
                if once:
                    self.tracker.finish(alive)
            if self.sender is not None:
                if once:
                    self.sender.send_due(alive=alive)
        except OSError as exc:  # a disk that failed: one line; pending stays on disk
            log.error("could not finish the study reports or SRs (%s); they are resumed at "
                      "the next start", describe_error(exc))
        except Exception:  # noqa: BLE001 - what is pending stays on disk for the next run
            log.exception("could not finish the study reports or SRs; they are resumed at the "
                          "next start")
        finally:
            if self.sender is not None:
                self.sender.stop(self.config.pacs.timeout + 5)

    def _on_judged(self, doc: dict[str, Any], slices: list[Slice]) -> None:
        """Queue the study's SR for the PACS (a replayed judgment is not queued twice)."""
        if self.queue is None:
            return
        from .sr import build_sr, encode, read_header, sop_class_for

        study = doc["study_instance_uid"]
        tag = uid_hash(study)
        header, disk_error = None, None
        archived = [self.outbox / s.archived_as for s in slices if s.archived_as]
        # an offloaded slice's instance went with its day to DEST, in the same layout: the
        # only copy at hand of a study judged after all of its instances moved (it was
        # pending when its day was offloaded), whose SR was otherwise never queued. Read
        # there within a bound (a share that stopped answering: the judgment is retried)
        at_dest = {Path(s.offloaded_to) / s.archived_as: s.offloaded_to for s in slices
                   if s.archived_as and s.offloaded_to}
        for path in [*archived, *at_dest]:
            try:
                header = (self.dest_reads.read(at_dest[path], path, partial(read_header, path))
                          if path in at_dest else read_header(path))
                break
            except (FileNotFoundError, NotADirectoryError):
                continue  # moved away (offloaded, by hand): the study's next instance
            except OSError as exc:  # a disk error is not "not in the archive"
                disk_error = exc
            except Exception:  # noqa: BLE001 - a damaged file: the study's next instance
                continue
        if header is None and disk_error is not None:
            # raised, the study stays pending and its judgment is retried (the same report,
            # and the SR queued then); taken for absence, the SR was never sent
            raise disk_error
        if header is None:
            log.error("cannot send the SR of study %s: none of its instances is in the archive "
                      "any more (the PACS needs their patient and study attributes)", tag)
            return
        # the last SR of the study the PACS took, as the sender names it before each attempt
        # (``Sender._name_predecessor``: one sent meanwhile is named then)
        key = f"{tag}-{doc['instances_hash'][:16]}"
        last = self.queue.last_sent(tag)
        predecessor = last[1] if last is not None and last[0] != key else None
        ds = build_sr(doc, slices, header, self.config.pacs, predecessor)
        item = Outgoing(key=key, study=tag, group=tag,
                        sop_class_uid=sop_class_for(self.config.pacs),
                        sop_instance_uid=str(ds.SOPInstanceUID), created_at=doc["created_at"])
        if self.queue.enqueue(item, encode(ds)):
            log.info("the SR of study %s is queued for %s", tag, self.config.pacs.peer)
            if self.sender is not None:
                self.sender.wake()
