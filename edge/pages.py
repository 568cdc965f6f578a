"""Human-readable HTML: one page per report, one page per day, and ``index.html``.

Pages are self-contained (inline CSS, the thumbnail embedded as a base64 PNG), so they open
from a USB stick or a file share with no server. Every value from an input file or a
report is HTML-escaped, and a Content-Security-Policy forbids scripts outright: a DICOM tag
or a file name such as ``<script>`` can only ever show up as text.
"""

from __future__ import annotations

import base64
import functools
import html
import re
from typing import Any, Iterable

import numpy as np

from . import png
from .durable import display_name
from .report import shown_time

_CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
        "base-uri 'none'; form-action 'none'")
# Looked at in Chromium at 1280, 412 and 390 pixels wide and printed (docs/agent.md,
# "Reading the pages"): a long name wraps instead of pushing the answer off the screen
# (``wrap``, ``h1``), a wide table scrolls inside itself, a ``stack`` table (a day's
# inputs, the studies) turns into one block per row on a phone, each line led by its
# column's name (``data-label``), and printing keeps the boxes' and bars' colours (browsers
# drop backgrounds by default) without splitting a box or a row across pages.
_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem;max-width:60rem;
color:#1b1b1b}
h1{font-size:1.4rem;overflow-wrap:anywhere}h2{font-size:1.1rem;margin-top:1.6rem}
.notice{background:#fff3cd;border:2px solid #b58100;padding:.8rem;font-weight:600}
.review{background:#fde2e1;border:2px solid #b3261e;padding:.8rem;margin-top:1rem}
.ok{background:#e6f4ea;border:2px solid #1e7e34;padding:.8rem;margin-top:1rem}
.alert{background:#fde2e1;border:2px solid #b3261e;padding:0 .8rem;margin-top:1rem}
.flag{background:#fde2e1;border:1px solid #b3261e;padding:0 .3rem;font-weight:700;
white-space:nowrap}
.small{font-size:.85rem;color:#555}
table{border-collapse:collapse;margin-top:.5rem;display:block;overflow-x:auto}
td,th{border:1px solid #ccc;padding:.3rem .6rem;text-align:left;vertical-align:top}
th{background:#f3f3f3}.wrap{overflow-wrap:anywhere}td.nowrap{white-space:nowrap}
.bar{background:#4a6fa5;height:.8rem;display:inline-block}
.mono{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85rem;word-break:break-all}
img.thumb{width:224px;height:224px;image-rendering:pixelated;border:1px solid #999}
figure{display:inline-block;margin:0 .5rem .5rem 0;vertical-align:top}
figcaption{font-size:.85rem;color:#555;max-width:224px}
.scale{max-width:28rem;margin:.3rem 0}.scale .ramp{height:.9rem;border:1px solid #999}
.scale .ends{display:flex;justify-content:space-between;gap:1rem;font-size:.85rem}
.scale .ends span:last-child{text-align:right}
ul.days{display:grid;grid-template-columns:repeat(auto-fill,minmax(min(24rem,100vw - 1.5rem),1fr));
gap:.2rem 1rem;
list-style:none;padding:0}
@media (max-width:40rem){body{margin:.75rem}
table.stack,table.stack tr,table.stack td{display:block}
table.stack tr:first-child{display:none}
table.stack tr{border-top:2px solid #999;padding:.3rem 0}
table.stack td{border:0;padding:.1rem .3rem}
table.stack td[data-label]::before{content:attr(data-label) ": ";font-weight:600}}
@media print{body{margin:0;max-width:none}table{display:table}h1,h2{break-after:avoid}
tr,figure,.notice,.review,.ok,.alert{break-inside:avoid}
*{-webkit-print-color-adjust:exact;print-color-adjust:exact}}
"""


# Control and format characters (Unicode categories Cc, Cf, Cs): a right-to-left override in
# a file name would make "scan<U+202E>gnp.exe" display as "scanexe.png"; a NUL or a lone
# surrogate has no place in a page. They are shown as their code point instead.
_INVISIBLE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\xad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2"
    "\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff"
    "\ufff9-\ufffb\ud800-\udfff\U000110bd\U000110cd\U00013430-\U0001343f"
    "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0001\U000e0020-\U000e007f]")


def esc(value: Any) -> str:
    """Text for a page: HTML-escaped, with invisible characters made visible."""
    text = "" if value is None else str(value)
    text = _INVISIBLE.sub(lambda m: f"[U+{ord(m.group()):04X}]", text)
    return html.escape(text, quote=True)


def percent(p: float, digits: int = 0) -> str:
    """A probability as a percentage with ``digits`` decimals, never rounded into a certainty
    it is not: below 1 it never reads "100%", above 0 never "0%" (0.9965 is "99.7%", not
    "100%"; 0.99996 is ">99.9%"; 0.003 is "0.3%")."""
    p = float(p)
    if not 0.0 < p < 1.0:
        return f"{p:.{digits}%}"
    finest = max(digits, 1)
    for places in range(digits, finest + 1):
        text = f"{p:.{places}%}"
        if float(text[:-1]) not in (0.0, 100.0):
            return text
    if p > 0.5:
        return f">{1 - 10 ** -(finest + 2):.{finest}%}"
    return f"<{10 ** -(finest + 2):.{finest}%}"


def thumbnail_data_uri(pixels: np.ndarray) -> str:
    """The model's input as a lossless PNG data URI, encoded for speed, not for size.

    A grey picture replicated to RGB (every MR scan) is stored as one channel, through
    ``edge.png`` (one filter, zlib level 1): measured on 100 Testing pictures, 0.7 ms and
    30 kB against Pillow's 1.2 ms and 29 kB at level 1 (``python -m benchmarks reports``),
    and 82 ms with ``optimize=True`` on RGB, which once was most of the agent's time per
    file (docs/performance.md).
    """
    pixels = np.asarray(pixels, dtype=np.uint8)
    if pixels.ndim == 3 and pixels.shape[-1] == 3 and np.array_equal(
            pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 0], pixels[..., 2]):
        pixels = pixels[..., 0]
    return "data:image/png;base64," + base64.b64encode(png.encode(pixels)).decode("ascii")


def _page(title: str, body: str) -> bytes:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta http-equiv=\"Content-Security-Policy\" content=\"{_CSP}\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{_STYLE}</style></head><body>\n"
            f"{body}\n</body></html>\n").encode()


def _rows(pairs: Iterable[tuple[str, Any]], mono: tuple[str, ...] = ()) -> str:
    out = []
    for key, value in pairs:
        if value is None or value == "":
            continue
        cls = ' class="mono"' if key in mono else ' class="wrap"'  # a name may be one word
        out.append(f"<tr><th>{esc(key)}</th><td{cls}>{esc(value)}</td></tr>")
    return "<table>" + "".join(out) + "</table>"


def report_page(report: dict[str, Any], thumbnail: np.ndarray | None,
                heatmap: bytes | None = None) -> bytes:
    """The clinician's page for one input (``heatmap``: PNG of the thumbnail with the map)."""
    pred = report["prediction"]
    label, confidence = pred["label"], pred["confidence"]
    model = report["model"]
    parts = [f"<p class=\"notice\">{esc(report['notice'])}</p>",
             f"<h1>{esc(report['input']['file_name'])}</h1>"]
    # the box says in words what its colour says, for a reader who cannot tell red from green
    if report["needs_review"]:
        reasons = "".join(f"<li>{esc(r)}</li>" for r in report["review_reasons"])
        parts.append(f"<div class=\"review\"><strong>Needs review.</strong> Model's answer: "
                     f"<strong>{esc(label)}</strong> ({percent(confidence)}), but<ul>{reasons}"
                     "</ul></div>")
    else:
        parts.append(f"<div class=\"ok\">Model's answer: <strong>{esc(label)}</strong> "
                     f"({percent(confidence)} confidence); not flagged for review.</div>")
    # which model said so, in sight with the answer (the full details are at the end), and
    # the way back: the page is often opened on its own, from a share or a USB stick
    parts.append(f"<p class=\"small\">model {esc(model['name'])} {esc(model['version'])}; "
                 f"received {esc(shown_time(report['intake']['received_at']))} "
                 "&middot; <a href=\"../index.html\">all days</a></p>")
    if thumbnail is not None or heatmap is not None:
        parts.append("<h2>What the model saw</h2>")
    if thumbnail is not None:
        uri = thumbnail_data_uri(thumbnail)
        parts.append(f"<figure><img class=\"thumb\" alt=\"model input\" src=\"{uri}\">"
                     "<figcaption>the picture as the model got it</figcaption></figure>")
    parts.extend(_trust_parts(report, heatmap))
    probs = "".join(
        f"<tr><td>{esc(name)}</td><td>{percent(p, 1)}</td><td><span class=\"bar\" "
        f"style=\"width:{max(0.0, min(1.0, p)) * 20:.2f}rem\"></span></td></tr>"
        for name, p in sorted(pred["probabilities"].items(), key=lambda kv: -kv[1]))
    parts.append("<h2>Probabilities</h2><table><tr><th>class</th><th>probability</th><th></th>"
                 f"</tr>{probs}</table>")
    if report.get("notes"):
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in report["notes"])
                     + "</ul>")
    inp = report["input"]
    parts.append("<h2>Input</h2>" + _rows(
        [("file name", inp["file_name"]), ("format", inp["format"]),
         ("size (bytes)", inp["size_bytes"]), ("sha256", inp["sha256"]),
         ("received", shown_time(report["intake"]["received_at"]))], mono=("sha256",)))
    dicom = report.get("dicom")
    if dicom:
        window = dicom.get("window") or {}
        parts.append("<h2>DICOM</h2>" + _rows(
            [("Study Instance UID", dicom.get("study_instance_uid")),
             ("Series Instance UID", dicom.get("series_instance_uid")),
             ("SOP Instance UID", dicom.get("sop_instance_uid")),
             ("SOP Class", dicom.get("sop_class")), ("Modality", dicom.get("modality")),
             ("Study date", dicom.get("study_date")),
             ("Series description", dicom.get("series_description")),
             ("Transfer syntax", dicom.get("transfer_syntax")),
             ("Photometric interpretation", dicom.get("photometric_interpretation")),
             ("Size", f"{dicom.get('columns')} x {dicom.get('rows')}"),
             ("Frames", f"{dicom.get('frames')} (classified: {dicom.get('frame_index')})"),
             ("Windowing", window.get("method"))],
            mono=("Study Instance UID", "Series Instance UID", "SOP Instance UID")))
    parts.append("<h2>Model and software</h2>" + _rows(
        [("model", f"{model['name']} {model['version']} ({model['architecture']}, "
                   f"{model['quantization']})"), ("model sha256", model["sha256"]),
         ("runtime", model.get("runtime")),
         ("agent", f"edge-agent {report['agent']['version']}"),
         ("timings (ms)", ", ".join(f"{k} {v:g}" for k, v in report["timings_ms"].items())),
         ("report created", shown_time(report["created_at"])), ("report id", report["id"])],
        mono=("model sha256", "report id")))
    return _page(f"{label} - {report['input']['file_name']}", "\n".join(parts))


def _trust_parts(report: dict[str, Any], heatmap: bytes | None) -> list[str]:
    """Issue 13: where the model looked, and what the trust checks said (report v2)."""
    parts = []
    if heatmap is not None:
        section = report.get("heatmap") or {}
        kind = section.get("kind")
        label = report["prediction"]["label"]
        what = {"occlusion": f"how much the answer '{label}' weakened when each region was "
                             "blacked out and the picture shown to the model again",
                "spatial_attention": "the weight the model's last attention block gave each "
                                     "region",
                "class_activation": f"how much each region added to the answer '{label}', "
                                    "compared with an average training picture"}.get(
            kind, "the model's activation in each region")
        if kind == "occlusion" and not section.get("peak_effect"):
            what += " (no region's removal weakened it: the map is empty)"
        parts.append("<figure><img class=\"thumb\" alt=\"heat-map over the model input\" "
                     "src=\"data:image/png;base64,"
                     f"{base64.b64encode(heatmap).decode('ascii')}\"><figcaption>the same, with "
                     "where the model looked in colour</figcaption></figure><p>Where the model "
                     f"looked: {esc(what)}, brighter colour for more.</p>" + heatmap_scale(kind))
    trust = report.get("trust")
    if trust:
        share = trust.get("ood_validation_share_below")
        temperature = trust.get("temperature")
        calibrated = ("calibrated" + (f" (temperature {temperature:.2f})"
                                      if isinstance(temperature, (int, float)) else ""))
        rows = [("probabilities", calibrated if trust.get("calibrated") else
                 "as the model gives them (not calibrated)")]
        if trust.get("ood_score") is not None:
            rows.append(("unlike the training data",
                         f"score {trust['ood_score']:.2f}, threshold {trust['ood_threshold']:.2f}"
                         + (f" (higher than {share:.1%} of the validation images)"
                            if share is not None else "")
                         + ("" if trust.get("in_distribution") else ": UNLIKE them")))
        else:
            rows.append(("unlike the training data", "not checked: this model has no "
                         "statistics for it"))
        parts.append("<h2>How far to trust it</h2>" + _rows(rows))
    return parts


# What the colour scale's ends mean for each kind of heat-map (edge.heatmap), and what the
# map shows; None: the kind is not known (a study page whose slices' maps differ)
_SCALE_WORDS = {
    "occlusion": ("covering this region changed the answer least",
                  "covering this region weakened the answer most",
                  "where covering the picture changed the answer most"),
    "spatial_attention": ("the model's attention weighed this region least",
                          "the model's attention weighed this region most",
                          "where the model's attention lay"),
    "class_activation": ("this region added least to the answer",
                         "this region added most to the answer",
                         "which regions added most to the answer"),
    "feature_map": ("the model's last layers were least active here",
                    "the model's last layers were most active here",
                    "where the model's last layers were most active"),
    None: ("this region counted least in the answer", "this region counted most in the answer",
           "what the answer rests on"),
}


def heatmap_scale(kind: str | None) -> str:
    """The colour scale of a heat-map of ``kind``, in the colours the map is drawn with
    (``edge.heatmap.scale_colours``), its ends in words, and what the map is not."""
    low, high, shows = _SCALE_WORDS.get(kind, _SCALE_WORDS[None])
    return ("<div class=\"scale\"><div class=\"ramp\" role=\"img\" aria-label=\"colour "
            "scale of the heat-map\" style=\"background:linear-gradient(90deg,"
            f"{','.join(_scale_colours())})\"></div><div class=\"ends\"><span>no colour: "
            f"{esc(low)}</span><span>brightest: {esc(high)}</span></div></div>"
            f"<p class=\"small\">The heat-map shows {esc(shows)}. It is not an outline of a "
            "tumour: a tumour may lie where it shows no colour.</p>")


@functools.lru_cache(maxsize=None)
def _scale_colours() -> tuple[str, ...]:
    from .heatmap import scale_colours  # Pillow: only when a page shows a heat-map

    return tuple(scale_colours())


def stack_table(head: list[str], rows: Iterable[Iterable[tuple[str, str]]]) -> str:
    """A table that on a phone turns into one block per row, each cell a line led by its
    column's name from ``head``. ``rows``: (class, HTML) of each cell, in ``head``'s order."""
    cells = ("<tr>" + "".join(
        "<td" + (f' class="{cls}"' if cls else "") + f' data-label="{esc(name)}">{value}</td>'
        for name, (cls, value) in zip(head, row)) + "</tr>" for row in rows)
    return ("<table class=\"stack\"><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head)
            + "</tr>" + "".join(cells) + "</table>")


def moved_to(value: Any) -> str:
    """Where an input went, named as every record and page names a file (``display_name``),
    and where that is not the name on disk (bytes that are not UTF-8), saying so."""
    if not value:
        return ""
    shown = display_name(str(value))
    if shown != value:
        shown += " (its name on disk is not UTF-8: each \ufffd stands for a byte that is not)"
    return esc(shown)


def day_page(day: str, entries: list[dict[str, Any]], studies: bool = True) -> bytes:
    """Everything processed on one day, newest first, linking to the report pages (and to
    the study reports, when ``studies`` are made); above them, how many need a person's
    look."""
    rows = []
    review = refused = 0
    for e in reversed(entries):
        outcome = e.get("outcome")
        link = e.get("html") or e.get("report")
        name = esc(e.get("file_name"))
        if link:
            name = f"<a href=\"../{esc(link)}\">{name}</a>"
        if outcome == "quarantined":
            refused += 1
            result = f"<strong>refused:</strong> {esc(e.get('reason'))}"
        else:
            result = f"{esc(e.get('label'))} ({percent(e.get('confidence') or 0)})"
            if e.get("needs_review"):
                review += 1
                result += " <strong class=\"flag\">needs review</strong>"
            if outcome == "duplicate":
                result += " (same content as an earlier input)"
        if studies and e.get("study"):  # issue 15: the study report this input is part of
            result += f" <a href=\"../studies/{esc(e['study'])}.html\">study</a>"
        rows.append([("nowrap", esc(shown_time(e.get("time")))), ("wrap", name),
                     ("nowrap", esc(outcome)), ("wrap", result),
                     ("mono", moved_to(e.get("moved_to")))])
    summary = (f"{_count(len(entries), 'input')}: {review} need review, {refused} refused "
               "(a refused input's reason is in its row)")
    body = (f"<p class=\"notice\">{esc(_notice())}</p><h1>Processed on {esc(day)}</h1>"
            f"<p><a href=\"../index.html\">all days</a></p><p>{summary}</p>"
            + stack_table(["time", "input", "outcome", "result", "input moved to"], rows))
    return _page(f"NeuroEdge {day}", body)


def index_page(days: list[tuple[Any, ...]], alerts: Iterable[str] = (),
               as_of: str | None = None, studies: bool = True) -> bytes:
    """The outbox's front page: the days, and ``alerts`` (what needs a person: SRs the
    PACS does not take), stamped ``as_of`` since the page is only as fresh as its writing.
    ``days``: (day, inputs) or (day, inputs, flagged for review, refused), so that the days
    that need a person's look stand out. ``studies``: whether ``studies/index.html`` is
    there to link to (not with ``[studies] enabled = false``). The links come before the
    days: a year of days is a long list."""
    items = "".join(f"<li><a href=\"index/{esc(d[0])}.html\">{esc(d[0])}</a> "
                    f"({_day_counts(*d[1:])})</li>" for d in sorted(days, reverse=True))
    alerts = list(alerts)
    warning = ("<div class=\"alert\"><h2>Needs attention</h2>"
               + "".join(f"<p>{esc(line)}</p>" for line in alerts)
               + (f"<p class=\"small\">as of {esc(shown_time(as_of))} (the page is "
                  "rewritten when this changes)</p>" if as_of else "")
               + "</div>") if alerts else ""
    link = ("<p><a href=\"studies/index.html\">Study reports</a> (DICOM studies judged "
            "whole)</p>") if studies else ""
    body = (f"<p class=\"notice\">{esc(_notice())}</p><h1>NeuroEdge reports</h1>{warning}"
            f"{link}<h2>Days</h2><p class=\"small\">Each day's page lists its inputs, the ones "
            "that need review and the ones refused.</p>"
            f"<ul class=\"days\">{items or '<li>nothing processed yet</li>'}</ul>")
    return _page("NeuroEdge reports", body)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _day_counts(inputs: int, review: int = 0, refused: int = 0) -> str:
    """"3 inputs", or "40 inputs: 3 need review, 1 refused", the flag boxed like the day's."""
    text = esc(_count(inputs, "input"))
    marks = ([f"<strong class=\"flag\">{review} need{'s' if review == 1 else ''} review"
              "</strong>"] if review else []) + ([f"{refused} refused"] if refused else [])
    return text + (": " + ", ".join(marks) if marks else "")


def _notice() -> str:
    from .report import NOTICE
    return NOTICE
