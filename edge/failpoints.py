"""Crash injection for the durability tests: ``NEUROEDGE_FAILPOINT=<name>[:<n>]``.

When set, the agent kills itself with SIGKILL (no cleanup, exactly like ``kill -9`` or a
power cut) the n-th time (default: first) it reaches the named point. The tests use it to
crash deterministically between every pair of durable steps and check that the next start
finishes the work with nothing lost or duplicated. Unset (always, in production), ``hit``
costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal

_SPEC = os.environ.get("NEUROEDGE_FAILPOINT", "")
_NAME, _, _COUNT = _SPEC.partition(":")
_remaining = int(_COUNT) if _COUNT.isdigit() else 1

POINTS = ("after_claim", "after_report", "after_move", "after_index")
# reached only when the inbox is on another filesystem than the outbox (edge.claim)
CROSS_FILESYSTEM_POINTS = ("after_hide", "after_copy")
# ``edge-agent offload``: before each source file is removed (edge.offload)
OFFLOAD_POINTS = ("offload_remove",)


def hit(name: str) -> None:
    global _remaining
    if not _NAME or name != _NAME:
        return
    _remaining -= 1
    if _remaining <= 0:
        os.kill(os.getpid(), signal.SIGKILL)
