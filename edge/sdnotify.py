"""systemd's notify protocol (``Type=notify``, ``WatchdogSec=``), without a dependency.

A datagram with ``READY=1``, ``WATCHDOG=1``, ``STOPPING=1`` or ``STATUS=...`` sent to the
AF_UNIX socket named by ``$NOTIFY_SOCKET`` (sd_notify(3)). Outside systemd the variable is
unset and every call is a cheap no-op.
"""

from __future__ import annotations

import os
import socket


def notify(state: str) -> bool:
    """Send ``state`` to systemd; True if it was sent, False when not under systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address[0] == "@":  # abstract namespace socket
        address = "\0" + address[1:]
    elif address[0] != "/":
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # Never block the agent: a full receive queue (a reader that is not reading)
            # would otherwise stall the worker loop inside a watchdog ping.
            sock.setblocking(False)
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
    except OSError:
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between ``WATCHDOG=1`` pings systemd expects (half of WatchdogSec), or None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None
