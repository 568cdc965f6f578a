"""The ``[network]``, ``[studies]`` and ``[pacs]`` sections of the agent's configuration.

They live here rather than in ``edge.config`` so that the DICOM network code stays in one
package; ``edge.config`` lists them as sections like any other (same TOML rules: unknown
keys are an error, types are checked against the defaults) and calls ``validate`` on each.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, NamedTuple

from ..errors import ConfigError

DEFAULT_PORT = 11112  # IANA's "dicom" port: unprivileged, unlike the historic 104
SR_TYPES = ("comprehensive", "basic")
_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # printable ASCII except backslash
_SEND_TO = re.compile(r"^(?P<aet>[^@]{1,16})@(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)"
                      r":(?P<port>[0-9]{1,5})$")

BadValue = Callable[[str, str], ConfigError]


def check_ae_title(value: str) -> str:
    """Empty if ``value`` is a valid AE title (PS3.5: 1-16 characters, no backslash or
    control characters, not only spaces), else what is wrong with it."""
    if not _AE_TITLE.match(value) or not value.strip():
        return ("must be 1 to 16 printable ASCII characters (no backslash), not only spaces, "
                "e.g. \"NEUROEDGE\"")
    return ""


class Peer(NamedTuple):
    """A remote DICOM node: where to send, and the AE title it answers to."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def parse_peer(value: str) -> Peer:
    """``"PACS@pacs.example.org:104"`` as a ``Peer``; ValueError says what is wrong."""
    match = _SEND_TO.match(value.strip())
    if not match:
        raise ValueError("must look like AE_TITLE@HOST:PORT, e.g. \"PACS@pacs.example.org:104\" "
                         "(an IPv6 host in brackets: \"PACS@[fd00::5]:104\")")
    aet = match.group("aet").strip()
    problem = check_ae_title(aet)
    if problem:
        raise ValueError(f"its AE title {aet!r} {problem}")
    port = int(match.group("port"))
    if not 1 <= port <= 65535:
        raise ValueError(f"its port {port} must be between 1 and 65535")
    return Peer(aet, match.group("host").strip("[]"), port)


@dataclass(frozen=True)
class NetworkConfig:
    """The DICOM receiver (C-ECHO, C-STORE) started with ``edge-agent watch``."""

    dicom_port: int = 0  # 0: no receiver
    ae_title: str = "NEUROEDGE"
    listen_address: str = ""  # "": every interface
    allowed_calling_aets: tuple[str, ...] = ()  # empty: any caller
    max_associations: int = 4
    acse_timeout: float = 10.0  # a connection must ask for its association within this
    min_free_mb: int = 200

    def validate(self, bad: BadValue) -> None:
        if not 0 <= self.dicom_port <= 65535:
            raise bad("dicom_port", f"must be between 1 and 65535 (0: no receiver; "
                      f"{DEFAULT_PORT} is the usual unprivileged DICOM port)")
        problem = check_ae_title(self.ae_title)
        if problem:
            raise bad("ae_title", problem)
        for aet in self.allowed_calling_aets:
            problem = check_ae_title(aet)
            if problem:
                raise bad("allowed_calling_aets", f"holds {aet!r}, which {problem}")
        if not 1 <= self.max_associations <= 64:
            raise bad("max_associations", "must be between 1 and 64")
        if not 1 <= self.acse_timeout <= 300:
            raise bad("acse_timeout", "must be between 1 and 300 seconds")
        if self.min_free_mb < 0:
            raise bad("min_free_mb", "must be >= 0 megabytes")


@dataclass(frozen=True)
class StudiesConfig:
    """When a study counts as complete, and the rule that turns its slices into a verdict."""

    enabled: bool = True
    settle_seconds: float = 60.0
    normal_label: str = "notumor"
    min_slices: int = 3
    agreement: float = 0.7
    max_review_share: float = 0.5
    suspicious_slices: int = 6

    def validate(self, bad: BadValue) -> None:
        if not self.settle_seconds >= 0:
            raise bad("settle_seconds", "must be >= 0 seconds")
        if not self.normal_label.strip():
            raise bad("normal_label", "must name the model's label for \"no finding\"")
        if self.min_slices < 1:
            raise bad("min_slices", "must be at least 1")
        if not 0.5 <= self.agreement <= 1.0:
            raise bad("agreement", "must be between 0.5 and 1 (a share of the tumour slices)")
        if not 0.0 <= self.max_review_share <= 1.0:
            raise bad("max_review_share", "must be between 0 and 1")
        if not 0 <= self.suspicious_slices <= 50:
            raise bad("suspicious_slices", "must be between 0 and 50")


@dataclass(frozen=True)
class PacsConfig:
    """Where study results go back to, as DICOM Structured Reports, and how sends retry."""

    send_to: str = ""  # "AE@host:port"; "": no sending
    sr_type: str = "comprehensive"
    timeout: float = 30.0
    retry_initial: float = 30.0
    retry_max: float = 900.0

    @property
    def peer(self) -> Peer | None:
        return parse_peer(self.send_to) if self.send_to else None

    def validate(self, bad: BadValue) -> None:
        if self.send_to:
            try:
                parse_peer(self.send_to)
            except ValueError as exc:
                raise bad("send_to", str(exc)) from None
        if self.sr_type not in SR_TYPES:
            raise bad("sr_type", f"must be one of {', '.join(SR_TYPES)}")
        if not 1.0 <= self.timeout <= 600.0:
            raise bad("timeout", "must be between 1 and 600 seconds")
        if not 0.1 <= self.retry_initial <= self.retry_max:
            raise bad("retry_initial", "must be >= 0.1 seconds and <= retry_max")
        if not self.retry_max <= 86400.0:
            raise bad("retry_max", "must be at most 86400 seconds (a day)")
