"""Free space on the outbox's disk: new inputs are taken only while there is enough.

Every input the agent takes costs outbox space (its archived copy, its report, page and
heat-map, journal records). On a full disk each of those writes fails and is retried, so
nothing is lost, but every input then fails over and over and the log fills with the same
error. So the agent looks first: below ``[watch] min_free_mb`` it takes no new input (they
wait in the inbox, untouched), says so once in the log and on the outbox's front page, and
takes them again once space is freed. Inputs already taken are finished. The DICOM receiver
has its own floor for the inbox (``[network] min_free_mb``).

A clinic should not learn of the floor when it is reached: ``DiskForecast`` keeps an hourly
sample of the free space (in ``.state/disk-usage.json``, across restarts), measures how
much the last week used a day, and from ``[watch] warn_days`` before the floor says when it
will be reached, in the log (once a day), on the front page and in ``edge-agent check``.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path
from typing import Callable

from .durable import read_json_if_there, write_json_atomic

log = logging.getLogger(__name__)

MB = 1_000_000  # as ``[network] min_free_mb`` counts them
DAY = 86_400.0

HISTORY_FILE = "disk-usage.json"  # in the outbox's .state folder
HISTORY_SCHEMA = "neuroedge.disk-usage/1"
SAMPLE_EVERY = 3_600.0  # seconds of wall clock between two kept samples
WINDOW_DAYS = 7.0  # the rate of use is measured over this many days ...
MIN_SPAN_DAYS = 1.0  # ... once the samples span at least this much
FREED_MB = 100.0  # free space up by more than this between two samples: freed on purpose
CLOCK_SLACK = 600.0  # a clock set back by less (a time server's correction) is not a reset


def free_bytes(path: Path) -> int | None:
    """Bytes free for this user on the filesystem holding ``path`` (None: cannot tell)."""
    try:
        return shutil.disk_usage(str(path)).free
    except OSError:
        return None


class DiskForecast:
    """When the outbox's disk will reach the floor, at the rate the last week used it.

    The rate is the fall in free space over the samples of the last ``WINDOW_DAYS`` (at
    least ``MIN_SPAN_DAYS`` of them), leaving out any rise of more than ``FREED_MB`` between
    two samples: an offload or a clean-up frees space on purpose, and counting it would hide
    the use; smaller ups and downs (logs rotated, temporary files) cancel out. What else
    fills the disk counts too: the floor is reached all the same. The samples use the wall
    clock; one set back by more than ``CLOCK_SLACK`` (a board without a real-time clock)
    starts the history afresh.
    """

    def __init__(self, path: Path, floor_bytes: float, warn_days: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.floor = floor_bytes
        self.warn_days = warn_days
        self._clock = clock
        self._samples = self._load()
        self.free: int | None = None
        self.rate: float | None = None  # bytes a day; None: not enough history yet
        self.days_left: float | None = None  # None: not falling, or not enough history
        self._said_on: str | None = None  # the local day the log was last told

    def observe(self, free: int, save: bool = True) -> None:
        """A new measurement: kept as a sample if the last one is an hour old, then the
        forecast is made again. ``save=False``: read-only (``edge-agent check``)."""
        now = self._clock()
        if self._samples and now < self._samples[-1][0] - CLOCK_SLACK:
            log.info("the clock is behind the disk-usage history of %s: starting it afresh",
                     self.path)
            self._samples = []
        if save and (not self._samples or now - self._samples[-1][0] >= SAMPLE_EVERY):
            self._samples = [s for s in self._samples if now - s[0] <= WINDOW_DAYS * DAY]
            self._samples.append((now, free))
            self._save()
        self.free = free
        self._forecast(now, free)

    def _forecast(self, now: float, free: int) -> None:
        points = [s for s in self._samples if now - s[0] <= WINDOW_DAYS * DAY]
        if not points or points[-1] != (now, free):
            points.append((now, free))
        span_days = (now - points[0][0]) / DAY
        self.rate = self.days_left = None
        if span_days < MIN_SPAN_DAYS:
            return
        used = sum(before - after for (_, before), (_, after) in zip(points, points[1:])
                   if after - before <= FREED_MB * MB)
        self.rate = max(used, 0) / span_days
        if self.rate > 0:
            self.days_left = max(free - self.floor, 0) / self.rate

    def warning(self) -> bool:
        """True when the floor is ``warn_days`` away or less at the recent rate."""
        return (self.warn_days > 0 and self.days_left is not None
                and self.days_left <= self.warn_days)

    def describe(self) -> str:
        """The forecast in words: free space, the rate and the days left."""
        if self.free is None:
            return "not measured yet"
        if self.rate is None:
            return (f"{self.free // MB:,} MB free; not enough history yet to say how fast it "
                    "fills (the agent keeps an hourly sample; a day of them is needed)")
        rate = f"{self.rate / MB:,.0f} MB a day used over the last {self._span():g} days"
        if self.days_left is None:
            return f"{self.free // MB:,} MB free; {rate}: not filling"
        when = time.strftime("%Y-%m-%d", time.localtime(self._clock() + self.days_left * DAY))
        return (f"{self.free // MB:,} MB free, {rate}: at that rate it reaches [watch] "
                f"min_free_mb = {self.floor / MB:g} in about {_days(self.days_left)} "
                f"(around {when}), and new inputs then wait in the inbox")

    def due(self) -> str | None:
        """What to log: the warning, at most once a local day while it lasts."""
        if not self.warning():
            self._said_on = None
            return None
        today = time.strftime("%Y-%m-%d", time.localtime(self._clock()))
        if today == self._said_on:
            return None
        self._said_on = today
        return f"the disk holding the outbox is filling: {self.describe()}; {_WHAT_TO_DO}"

    def _span(self) -> float:
        now = self._clock()
        first = next((t for t, _ in self._samples if now - t <= WINDOW_DAYS * DAY), now)
        return round(min((now - first) / DAY, WINDOW_DAYS), 1)

    def _load(self) -> list[tuple[float, int]]:
        try:
            data = read_json_if_there(self.path)
        except OSError as exc:
            log.warning("could not read the disk-usage history %s (%s); starting it afresh",
                        self.path, exc.strerror or exc)
            return []
        if data is None:
            return []
        try:
            if data["schema"] != HISTORY_SCHEMA:
                raise ValueError(data["schema"])
            samples = [(float(t), int(f)) for t, f in data["samples"]]
            if not all(math.isfinite(t) for t, _ in samples):
                raise ValueError("not a time")
        except (KeyError, TypeError, ValueError):
            log.warning("the disk-usage history %s could not be read; starting it afresh",
                        self.path)
            return []
        return sorted(samples)

    def _save(self) -> None:
        try:  # not durable: a lost sample costs an hour of history, nothing else
            write_json_atomic(self.path, {"schema": HISTORY_SCHEMA,
                                          "samples": [list(s) for s in self._samples]},
                              durable=False, compact=True)
        except OSError as exc:
            log.debug("could not save the disk-usage history %s (%s)", self.path, exc)


_WHAT_TO_DO = ("move old days elsewhere with edge-agent offload (they stay readable "
               "there), or tell the person who looks after this box")


def _days(days: float) -> str:
    if days < 1:
        return "less than a day"
    return f"{days:.0f} day{'s' if round(days) != 1 else ''}"


class SpaceGuard:
    """Whether the agent may take new inputs; measured at most every ``every`` seconds.
    ``forecast``: also say ahead of time when the floor will be reached."""

    def __init__(self, outbox: Path, min_free_mb: float, every: float = 5.0,
                 measure: Callable[[Path], int | None] = free_bytes,
                 forecast: DiskForecast | None = None) -> None:
        self.outbox = outbox
        self.min_free = min_free_mb * MB
        self.every = every
        self._measure = measure
        self.forecast = forecast
        self._checked = -float("inf")
        self.free: int | None = None
        self.low = False

    def room(self, now: float | None = None) -> bool:
        """True while the outbox's disk has at least ``min_free_mb`` free (or the floor is 0,
        or the free space cannot be read: then the writes themselves say what is wrong)."""
        if self.min_free <= 0 and self.forecast is None:
            return True
        now = time.monotonic() if now is None else now
        if now - self._checked < self.every:
            return not self.low
        self._checked = now
        self.free = self._measure(self.outbox)
        if self.forecast is not None and self.free is not None:
            self.forecast.observe(self.free)
            said = self.forecast.due()
            if said is not None and self.free >= self.min_free:
                log.warning("%s", said)
        low = self.min_free > 0 and self.free is not None and self.free < self.min_free
        if low and not self.low:
            log.warning("%s; new inputs wait in the inbox, untouched, until space is freed "
                        "(move old days of %s elsewhere, or lower [watch] min_free_mb)",
                        self.describe(), self.outbox / "archive")
        elif self.low and not low:
            log.info("the outbox's disk has %s MB free again: taking new inputs",
                     "?" if self.free is None else self.free // MB)
        self.low = low
        return not low

    def describe(self) -> str:
        free = "?" if self.free is None else f"{self.free // MB}"
        return (f"the disk holding the outbox {self.outbox} has only {free} MB free, below "
                f"[watch] min_free_mb = {self.min_free / MB:g}")

    def page_lines(self) -> list[str]:
        """What the outbox's front page says while space is low, or will be soon."""
        if not self.low:
            if self.forecast is not None and self.forecast.warning():
                return [f"The disk holding the outbox is filling: {self.forecast.describe()}. "
                        f"Before then, {_WHAT_TO_DO}."]
            return []
        return [f"New inputs are not being taken: {self.describe()}. They wait in the inbox, "
                "untouched, and are taken once space is freed; tell the person who looks "
                "after this box."]
