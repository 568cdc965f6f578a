"""The agent's configuration: frozen dataclasses read from a TOML file.

Every key has a default, so an empty file (or none) is a valid configuration; command-line
flags override the file. An unknown section or key is an error, never silently ignored: a
typo such as ``setle_seconds`` would otherwise leave a clinic running with a setting it
believes it changed. ``edge/config.example.toml`` documents every key.
"""

from __future__ import annotations

import difflib
import math
import sys
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .network.settings import NetworkConfig, PacsConfig, StudiesConfig  # issue 15

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.8-3.10: the same parser, from PyPI
    import tomli as tomllib

LOG_LEVELS = ("debug", "info", "warning", "error")
FRAME_CHOICES = ("middle", "first")
FALLBACK_WINDOWS = ("percentile", "minmax")
RUNTIME_CHOICES = ("", "ai-edge-litert", "tflite-runtime", "tensorflow")
HEATMAP_CHOICES = ("occlusion", "model", "none")  # edge.heatmap
# More interpreter threads than this only slows a small model down; far more (100000) makes
# the runtime crash while creating them.
MAX_THREADS = 64


@dataclass(frozen=True)
class PathsConfig:
    """Where files come from and go to. Empty strings mean "not set here"."""

    inbox: str = ""
    outbox: str = ""  # default: a folder named "outbox" beside the inbox
    model: str = ""  # a model folder, model.tflite or model.json; default: the shipped model


@dataclass(frozen=True)
class WatchConfig:
    """How the inbox is watched and when a file counts as completely written."""

    poll: bool = False
    poll_interval: float = 2.0
    rescan_interval: float = 30.0
    settle_seconds: float = 3.0
    settle_after_close: float = 0.5
    once_settle_limit: float = 120.0  # watch --once: stop waiting for a file still changing
    stall_limit: float = 600.0  # no systemd watchdog: end the agent after this long stuck
    recursive: bool = True
    max_pending: int = 1000
    retry_interval: float = 60.0
    min_free_mb: float = 200.0  # edge.diskspace: no new input below this on the outbox's disk
    warn_days: float = 14.0  # edge.diskspace: say this long ahead when the floor will be reached


@dataclass(frozen=True)
class ReviewConfig:
    """When a prediction is flagged ``needs_review`` instead of being trusted."""

    threshold: float = 0.9  # calibrated: flag what the model gives under a 90 % chance
    min_margin: float = 0.0
    no_tumour_threshold: float = 0.95  # a "no tumour" answer needs this much (edge.trust)


@dataclass(frozen=True)
class DicomConfig:
    """Which DICOM files are classified, and how their pixels become an 8-bit picture."""

    modalities: tuple[str, ...] = ("MR",)
    body_parts: tuple[str, ...] = ("BRAIN", "HEAD", "HEADNECK", "HEAD_NECK", "SKULL",
                                   "CEREBRUM", "NEURO", "NEUROCRANIUM")
    frame: str = "middle"
    use_file_window: bool = True
    fallback_window: str = "percentile"
    percentile_low: float = 0.5
    percentile_high: float = 99.5
    allow_no_preamble: bool = True


@dataclass(frozen=True)
class LimitsConfig:
    """Guards against decompression bombs and absurd inputs, checked before decoding."""

    max_file_mb: float = 512.0
    max_decode_mb: float = 256.0
    max_pixels: int = 50_000_000
    max_total_pixels: int = 1_000_000_000
    min_side: int = 16
    max_aspect: float = 20.0
    max_attempts: int = 3


@dataclass(frozen=True)
class RuntimeConfig:
    """Which TFLite interpreter runs the model, and with how many threads."""

    name: str = ""
    threads: int = 0


@dataclass(frozen=True)
class ReportConfig:
    html: bool = True
    # the heat-map: "occlusion" (the answer's margin lost when each region is blacked out;
    # 49 more runs of the model), "model" (the model's own map: cheap, and for the shipped
    # model not where the answer comes from: docs/trust.md), "none"
    heatmap: str = "occlusion"


@dataclass(frozen=True)
class LoggingConfig:
    level: str = "info"


@dataclass(frozen=True)
class AgentConfig:
    paths: PathsConfig = field(default_factory=PathsConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)
    review: ReviewConfig = field(default_factory=ReviewConfig)
    dicom: DicomConfig = field(default_factory=DicomConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)  # issue 15: DICOM network
    studies: StudiesConfig = field(default_factory=StudiesConfig)
    pacs: PacsConfig = field(default_factory=PacsConfig)
    source: str = ""  # the file it was read from, for messages; not a TOML key

    def override(self, section: str, **values: Any) -> AgentConfig:
        """A copy with ``values`` replacing keys of ``section`` (None values are skipped)."""
        values = {k: v for k, v in values.items() if v is not None}
        if not values:
            return self
        current = getattr(self, section)
        updated = replace(current, **values)
        _validate_section(section, updated, "command line")
        return replace(self, **{section: updated})


_SECTIONS = {f.name: f.default_factory() for f in fields(AgentConfig)  # type: ignore[misc]
             if f.name != "source"}


def load_config(path: str | None) -> AgentConfig:
    """Read and validate a TOML configuration file; None gives the defaults."""
    if not path:
        return AgentConfig()
    file = Path(path)
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file {file} does not exist; copy edge/config.example.toml "
                          "there or pass --config with the right path") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {file} is a folder; pass the TOML file itself "
                          "(see edge/config.example.toml)") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {file}: {exc.strerror}; make it readable "
                          "by the user the agent runs as (the service runs as 'neuroedge')"
                          ) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file} is not valid TOML: {exc}") from None
    return config_from_dict(data, str(file))


def config_from_dict(data: dict[str, Any], source: str = "config") -> AgentConfig:
    """Build a validated ``AgentConfig`` from parsed TOML; unknown keys are an error."""
    _refuse_unknown(data, _SECTIONS, "section", "", source)
    sections = {}
    for name, default in _SECTIONS.items():
        table = data.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: [{name}] must be a table of keys")
        sections[name] = _section_from_dict(name, default, table, source)
    return AgentConfig(source=source, **sections)


def _refuse_unknown(given: Any, known: Any, what: str, where: str, source: str) -> None:
    """A typo must not pass silently: name the first unknown key, with a close match."""
    unknown = sorted(set(given) - set(known))
    if unknown:
        close = difflib.get_close_matches(unknown[0], list(known), n=1)
        name = f"'{unknown[0]}'" + (f" (did you mean '{close[0]}'?)" if close else "")
        raise ConfigError(f"{source}: unknown {what} {name}{where}; known {what}s: "
                          f"{', '.join(known)}")


def _section_from_dict(name: str, default: Any, table: dict[str, Any], source: str) -> Any:
    known = {f.name: f for f in fields(default)}
    _refuse_unknown(table, known, "key", f" in [{name}]", source)
    values = {}
    for key, value in table.items():
        expected = getattr(default, key)
        values[key] = _coerce(f"[{name}] {key}", value, expected, source)
    section = replace(default, **values)
    _validate_section(name, section, source)
    return section


_KINDS = {bool: "a boolean (true or false)", int: "an integer", float: "a number",
          str: "a string", tuple: "a list of strings"}


def _coerce(where: str, value: Any, expected: Any, source: str) -> Any:
    """Check a TOML value against the type of its default (ints are accepted for floats)."""
    if isinstance(expected, bool):
        ok = isinstance(value, bool)
    elif isinstance(expected, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(expected, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and not math.isfinite(value):  # TOML has inf and nan; no setting means them
            raise ConfigError(f"{source}: {where} must be a finite number, got {value!r}")
        value = float(value) if ok else value
    elif isinstance(expected, tuple):
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        value = tuple(value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        kind = next(text for base, text in _KINDS.items() if isinstance(expected, base))
        raise ConfigError(f"{source}: {where} must be {kind}, got {value!r}")
    return value


def _validate_section(name: str, s: Any, source: str) -> None:
    def bad(key: str, rule: str) -> ConfigError:
        return ConfigError(f"{source}: [{name}] {key} {rule}, got {getattr(s, key)!r}")

    if hasattr(s, "validate"):  # sections defined beside their code (edge.network.settings)
        s.validate(bad)
    elif name == "watch":
        for key in ("poll_interval", "rescan_interval", "retry_interval",
                    "once_settle_limit", "stall_limit"):
            if not getattr(s, key) > 0:
                raise bad(key, "must be > 0 seconds")
        for key in ("settle_seconds", "settle_after_close"):
            if not getattr(s, key) >= 0:
                raise bad(key, "must be >= 0 seconds")
        if s.max_pending < 1:
            raise bad("max_pending", "must be at least 1")
        if not s.min_free_mb >= 0:
            raise bad("min_free_mb", "must be >= 0 megabytes (0: no floor)")
        if not s.warn_days >= 0:
            raise bad("warn_days", "must be >= 0 days (0: no warning ahead)")
    elif name == "review":
        if not 0.0 <= s.threshold <= 1.0:
            raise bad("threshold", "must be between 0 and 1")
        if not 0.0 <= s.min_margin <= 1.0:
            raise bad("min_margin", "must be between 0 and 1")
        if not 0.0 <= s.no_tumour_threshold <= 1.0:
            raise bad("no_tumour_threshold", "must be between 0 and 1")
    elif name == "dicom":
        if not s.modalities or not all(m.strip() for m in s.modalities):
            raise bad("modalities", "must name at least one modality, e.g. [\"MR\"]")
        if s.frame not in FRAME_CHOICES:
            raise bad("frame", f"must be one of {', '.join(FRAME_CHOICES)}")
        if s.fallback_window not in FALLBACK_WINDOWS:
            raise bad("fallback_window", f"must be one of {', '.join(FALLBACK_WINDOWS)}")
        if not 0.0 <= s.percentile_low < s.percentile_high <= 100.0:
            raise bad("percentile_low", "must satisfy 0 <= percentile_low < percentile_high "
                      "<= 100")
    elif name == "limits":
        for key in ("max_file_mb", "max_decode_mb"):
            if not getattr(s, key) > 0:
                raise bad(key, "must be > 0")
        for key in ("max_pixels", "max_total_pixels", "min_side", "max_attempts"):
            if getattr(s, key) < 1:
                raise bad(key, "must be at least 1")
        if not s.max_aspect >= 1:
            raise bad("max_aspect", "must be >= 1")
    elif name == "runtime":
        if s.name not in RUNTIME_CHOICES:
            raise bad("name", "must be one of " + ", ".join(repr(c) for c in RUNTIME_CHOICES))
        if not 0 <= s.threads <= MAX_THREADS:
            raise bad("threads", f"must be between 0 (the runtime's default) and {MAX_THREADS}")
    elif name == "report":
        if s.heatmap not in HEATMAP_CHOICES:
            raise bad("heatmap", "must be one of " + ", ".join(repr(c) for c in HEATMAP_CHOICES))
    elif name == "logging":
        if s.level not in LOG_LEVELS:
            raise bad("level", f"must be one of {', '.join(LOG_LEVELS)}")
