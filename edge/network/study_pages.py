"""HTML for study reports: ``studies/<uid>.html`` and ``studies/index.html``.

Self-contained like the per-slice pages (``edge.pages``: same style, the same
Content-Security-Policy, every value escaped). The most suspicious slices show the pictures
their own report pages embed (the model's input, and any heat-map a report page carries),
copied from ``reports/<id>.html`` so that nothing is decoded or classified again.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..pages import _page, esc, percent

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
    c = doc["counts"]
    parts.append("<h2>Slices</h2><table><tr><th>instances</th><th>confidently judged</th>"
                 "<th>need review</th><th>show a tumour</th>"
                 + "".join(f"<th>{esc(k)}</th>" for k in c["by_label"]) + "</tr>"
                 f"<tr><td>{c['instances']}</td><td>{c['confident']}</td>"
                 f"<td>{c['needs_review']}</td><td>{c['tumour_slices']}</td>"
                 + "".join(f"<td>{v}</td>" for v in c["by_label"].values()) + "</tr></table>")
    probs = "".join(f"<tr><td>{esc(k)}</td><td>{percent(v['max'], 1)}</td>"
                    f"<td>{percent(v['mean'], 1)}</td></tr>"
                    for k, v in doc["probabilities"].items())
    parts.append("<h2>Per-class probabilities over the slices</h2><table><tr><th>class</th>"
                 f"<th>highest slice</th><th>mean of slices</th></tr>{probs}</table>")
    if doc["suspicious"]:
        cards = []
        for s in doc["suspicious"]:
            pictures = "".join(f"<img alt=\"{esc(alt)}\" title=\"{esc(alt)}\" src=\"{uri}\">"
                               for alt, uri in slice_pictures(outbox, s["report"]))
            flag = " (needs review)" if s["needs_review"] else ""
            normal = esc(doc["rule"]["normal_label"])
            cards.append(f"<div class=\"slice\">{pictures}<br><a href=\"../reports/"
                         f"{esc(s['report'])}.html\">{esc(s['label'])} "
                         f"{percent(s['confidence'])}</a>{flag}<br>not {normal}: "
                         f"{percent(s['probability_not_normal'])}</div>")
        parts.append("<h2>Most suspicious slices</h2><div class=\"slices\">" + "".join(cards)
                     + "</div>")
    rows = "".join(
        f"<tr><td class=\"mono\">{esc(s['series_instance_uid'])}</td>"
        f"<td>{esc(s.get('series_description'))}</td><td>{s['instances']}</td>"
        f"<td>{s['needs_review']}</td><td>{esc(_counts(s['by_label']))}</td></tr>"
        for s in doc["series"])
    parts.append("<h2>Series</h2><table><tr><th>Series Instance UID</th><th>description</th>"
                 f"<th>instances</th><th>need review</th><th>confident slices by label</th></tr>"
                 f"{rows}</table>")
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
        f"<tr><td><a href=\"../reports/{esc(i['report'])}.html\">{esc(i['label'])} "
        f"{percent(i['confidence'])}</a>{' (needs review)' if i['needs_review'] else ''}</td>"
        f"<td class=\"mono\">{esc(i['sop_instance_uid'])}</td></tr>" for i in doc["instances"])
    parts.append(f"<h2>All instances</h2><table><tr><th>answer</th><th>SOP Instance UID</th></tr>"
                 f"{instances}</table>")
    parts.append("<h2>About this report</h2><table>"
                 f"<tr><th>Study Instance UID</th><td class=\"mono\">"
                 f"{esc(doc['study_instance_uid'])}</td></tr>"
                 f"<tr><th>model</th><td>{esc(models)}</td></tr>"
                 f"<tr><th>revision</th><td>{doc['revision']}</td></tr>"
                 f"<tr><th>judged</th><td>{esc(doc['created_at'])}</td></tr></table>")
    return _page(f"{verdict} - study {doc.get('study_date') or ''}", "\n".join(parts))


def studies_index_page(rows: list[dict[str, Any]]) -> bytes:
    """Every judged study (``studies.index_row`` of each report), the latest judged first."""
    lines = []
    for d in sorted(rows, key=lambda d: d["created_at"], reverse=True):
        verdict = esc(d["verdict"])
        if d["verdict"] == "needs_review":  # in words, boxed like a day's page, not the code
            verdict = "<strong class=\"flag\">needs review</strong>"
        lines.append(f"<tr><td>{esc(d['created_at'])}</td><td>{esc(d['study_date'])}</td>"
                     f"<td><a href=\"{esc(d['study_instance_uid'])}.html\">{verdict}</a></td>"
                     f"<td>{d['instances']}</td><td>{d['series']}</td>"
                     f"<td class=\"mono\">{esc(d['study_instance_uid'])}</td></tr>")
    from ..report import NOTICE

    body = (f"<p class=\"notice\">{esc(NOTICE)}</p><h1>Studies</h1>"
            "<p><a href=\"../index.html\">all days</a></p><table><tr><th>judged</th>"
            "<th>study date</th><th>verdict</th><th>instances</th><th>series</th>"
            "<th>Study Instance UID</th></tr>" + "".join(lines) + "</table>")
    return _page("NeuroEdge studies", body)


def _counts(by_label: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in by_label.items() if v) or "-"
