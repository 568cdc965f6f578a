"""HTML for study reports: ``studies/<uid>.html`` and ``studies/index.html``.

Self-contained like the per-slice pages (``edge.pages``: same style, the same
Content-Security-Policy, every value escaped). The most suspicious slices show the pictures
their own report pages embed (the model's input, and any heat-map a report page carries),
copied from ``reports/<id>.html`` so that nothing is decoded or classified again.

A slice whose report ``edge-agent offload`` moved off the box (``offloaded_to``: the folder
it went to, set by ``edge.network.study_offload``) is named with where its report is now
instead of linking to a page that is gone; its pictures are read from there if it is at hand.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ..pages import _page, esc, heatmap_scale, percent, stack_table
from ..report import shown_time

_IMG_TAG = re.compile(r"<img\b[^>]*>")
_SRC = re.compile(r'\bsrc="(data:image/(?:png|jpeg);base64,[A-Za-z0-9+/=]+)"')
_ALT = re.compile(r'\balt="([^"<>]{0,120})"')
_MAX_PICTURES = 2  # per slice: the model input, and a heat-map where the report has one
_EXTRA_STYLE = ("<style>.slices{display:flex;flex-wrap:wrap;gap:1rem}.slice{width:232px}"
                ".slice img{width:224px;height:224px;image-rendering:pixelated;"
                "border:1px solid #999}</style>")


def slice_pictures(outbox: Path, report_id: str) -> list[tuple[str, str]]:
    """``(alt text, data URI)`` of the pictures on a slice's report page: the model's input
    and, where the report has one, its heat-map (none if the slice has no page)."""
    try:
        text = (outbox / "reports" / f"{report_id}.html").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []
    pictures = []
    for tag in _IMG_TAG.findall(text):
        src, alt = _SRC.search(tag), _ALT.search(tag)
        if src:
            pictures.append((alt.group(1) if alt else "slice picture", src.group(1)))
    return pictures[:_MAX_PICTURES]


def _home(outbox: Path, s: dict[str, Any]) -> Path:
    """Where a slice's report is: the outbox, or the offload folder it was moved to."""
    moved = s.get("offloaded_to")
    return Path(moved) if isinstance(moved, str) and moved else outbox


def _answer(s: dict[str, Any]) -> str:
    """A slice's answer, linked to its report page, or saying where that page went."""
    text = f"{esc(s['label'])} {percent(s['confidence'])}"
    moved = s.get("offloaded_to")
    if isinstance(moved, str) and moved:
        return (f"{text} (report moved off the box: "
                f"<span class=\"mono\">{esc(moved)}/reports/{esc(s['report'])}.html</span>)")
    return f"<a href=\"../reports/{esc(s['report'])}.html\">{text}</a>"


def _heatmap_kind(reports: list[tuple[Path, str]]) -> str | None:
    """The kind of heat-map the slices' reports drew (None: unknown, or not all alike)."""
    kinds = set()
    for home, report_id in reports:
        try:
            doc = json.loads((home / "reports" / f"{report_id}.json").read_text("utf-8"))
            kinds.add(str((doc.get("heatmap") or {}).get("kind")))
        except (OSError, ValueError, AttributeError):
            return None
    return kinds.pop() if len(kinds) == 1 else None


def study_page(doc: dict[str, Any], outbox: Path) -> bytes:
    """The clinician's page for one study."""
    verdict = doc["verdict"]
    parts = [_EXTRA_STYLE, f"<p class=\"notice\">{esc(doc['notice'])}</p>",
             f"<h1>Study {esc(doc.get('study_date') or '')}</h1>",
             "<p><a href=\"index.html\">all studies</a> &middot; "
             "<a href=\"../index.html\">all days</a></p>"]
    box = "review" if verdict == "needs_review" else "ok"
    head = "Needs review." if verdict == "needs_review" else f"Verdict: {esc(verdict)}"
    parts.append(f"<div class=\"{box}\"><strong>{head}</strong> {esc(doc['verdict_reason'])}"
                 "</div>")
    moved = {i["report"]: i["offloaded_to"] for i in doc["instances"] if i.get("offloaded_to")}
    if moved:
        parts.append(f"<p>{len(moved)} of this study's {len(doc['instances'])} slice reports "
                     "were moved off the box by <code>edge-agent offload</code> (to "
                     f"{esc(', '.join(sorted(set(moved.values()))))}): their slices say "
                     "where each report is now.</p>")
    c = doc["counts"]
    counts = [c["instances"], c["confident"], c["needs_review"], c["tumour_slices"],
              *c["by_label"].values()]
    parts.append("<h2>Slices</h2>" + stack_table(
        ["instances", "confidently judged", "need review", "show a tumour", *c["by_label"]],
        [[("", esc(n)) for n in counts]]))
    probs = "".join(f"<tr><td>{esc(k)}</td><td>{percent(v['max'], 1)}</td>"
                    f"<td>{percent(v['mean'], 1)}</td></tr>"
                    for k, v in doc["probabilities"].items())
    parts.append("<h2>Per-class probabilities over the slices</h2><table><tr><th>class</th>"
                 f"<th>highest slice</th><th>mean of slices</th></tr>{probs}</table>")
    if doc["suspicious"]:
        cards, mapped = [], []
        for s in doc["suspicious"]:
            home = _home(outbox, s)
            shown = slice_pictures(home, s["report"])
            if any(alt.startswith("heat-map") for alt, _ in shown):
                mapped.append((home, s["report"]))
            pictures = "".join(f"<img alt=\"{esc(alt)}\" title=\"{esc(alt)}\" src=\"{uri}\">"
                               for alt, uri in shown)
            flag = " (needs review)" if s["needs_review"] else ""
            normal = esc(doc["rule"]["normal_label"])
            cards.append(f"<div class=\"slice\">{pictures}<br>{_answer(s)}{flag}<br>not "
                         f"{normal}: {percent(s['probability_not_normal'])}</div>")
        parts.append("<h2>Most suspicious slices</h2><div class=\"slices\">" + "".join(cards)
                     + "</div>" + (heatmap_scale(_heatmap_kind(mapped)) if mapped else ""))
    parts.append("<h2>Series</h2>" + stack_table(
        ["Series Instance UID", "description", "instances", "need review",
         "confident slices by label"],
        ([("mono", esc(s["series_instance_uid"])), ("wrap", esc(s.get("series_description"))),
          ("", esc(s["instances"])), ("", esc(s["needs_review"])),
          ("", esc(_counts(s["by_label"])))] for s in doc["series"])))
    rule = doc["rule"]
    normal, n = esc(rule["normal_label"]), rule["min_slices"]
    parts.append("<h2>The rule</h2><p>A slice is <em>confident</em> when its own report does "
                 "not need review (top probability at least "
                 f"{esc(rule.get('review_threshold'))}). A tumour verdict needs at least {n} "
                 f"confident slices with a label other than {normal}, {rule['agreement']:.0%} "
                 f"of them agreeing on it. {normal} needs no such slice, fewer than {n} "
                 f"uncertain slices leaning to a tumour, and at most "
                 f"{rule['max_review_share']:.0%} of the slices needing review. A study of "
                 f"fewer than {n} slices, or anything else: needs review.</p>")
    if doc.get("notes"):
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>" for n in doc["notes"])
                     + "</ul>")
    models = "; ".join(f"{m.get('name')} {m.get('version')} ({str(m.get('sha256'))[:12]})"
                       for m in doc["models"])
    instances = "".join(
        f"<tr><td>{_answer(i)}{' (needs review)' if i['needs_review'] else ''}</td>"
        f"<td class=\"mono\">{esc(i['sop_instance_uid'])}</td></tr>" for i in doc["instances"])
    parts.append(f"<h2>All instances</h2><table><tr><th>answer</th><th>SOP Instance UID</th></tr>"
                 f"{instances}</table>")
    parts.append("<h2>About this report</h2><table>"
                 f"<tr><th>Study Instance UID</th><td class=\"mono\">"
                 f"{esc(doc['study_instance_uid'])}</td></tr>"
                 f"<tr><th>model</th><td>{esc(models)}</td></tr>"
                 f"<tr><th>revision</th><td>{doc['revision']}</td></tr>"
                 f"<tr><th>judged</th><td>{esc(shown_time(doc['created_at']))}</td></tr>"
                 "</table>")
    return _page(f"{verdict} - study {doc.get('study_date') or ''}", "\n".join(parts))


def studies_index_page(rows: list[dict[str, Any]]) -> bytes:
    """Every judged study (``studies.index_row`` of each report), the latest judged first."""
    lines = []
    for d in sorted(rows, key=lambda d: d["created_at"], reverse=True):
        verdict = esc(d["verdict"])
        if d["verdict"] == "needs_review":  # in words, boxed like a day's page, not the code
            verdict = "<strong class=\"flag\">needs review</strong>"
        lines.append([("nowrap", esc(shown_time(d["created_at"]))), ("", esc(d["study_date"])),
                      ("", f"<a href=\"{esc(d['study_instance_uid'])}.html\">{verdict}</a>"),
                      ("", esc(d["instances"])), ("", esc(d["series"])),
                      ("mono", esc(d["study_instance_uid"]))])
    from ..report import NOTICE

    body = (f"<p class=\"notice\">{esc(NOTICE)}</p><h1>Studies</h1>"
            "<p><a href=\"../index.html\">all days</a></p>" + stack_table(
                ["judged", "study date", "verdict", "instances", "series",
                 "Study Instance UID"], lines))
    return _page("NeuroEdge studies", body)


def _counts(by_label: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in by_label.items() if v) or "-"
