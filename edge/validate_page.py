"""``validation.html``: the site validation as a page (same rules as the report pages:
self-contained, every value escaped, no scripts; the reliability plot is inline SVG)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .pages import _page, esc, heatmap_scale, percent, thumbnail_data_uri
from .report import shown_time


def _pct(value: Any) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def reliability_svg(bins: list[dict[str, Any]], size: int = 260) -> str:
    """Accuracy against confidence per bin (dots sized by count) and the diagonal."""
    pad = 34
    plot = size - 2 * pad
    total = sum(b["n"] for b in bins) or 1

    def xy(conf: float, acc: float) -> tuple[float, float]:
        return pad + conf * plot, pad + (1 - acc) * plot

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" '
             'role="img" aria-label="reliability diagram">',
             f'<rect x="{pad}" y="{pad}" width="{plot}" height="{plot}" fill="none" '
             'stroke="#999"/>',
             f'<line x1="{pad}" y1="{pad + plot}" x2="{pad + plot}" y2="{pad}" stroke="#bbb" '
             'stroke-dasharray="4 3"/>']
    for tick in (0.0, 0.5, 1.0):
        x, _ = xy(tick, 0)
        _, y = xy(0, tick)
        parts.append(f'<text x="{x:.1f}" y="{pad + plot + 14}" font-size="10" '
                     f'text-anchor="middle">{tick:g}</text>')
        parts.append(f'<text x="{pad - 6}" y="{y + 3:.1f}" font-size="10" '
                     f'text-anchor="end">{tick:g}</text>')
    parts.append(f'<text x="{pad + plot / 2}" y="{size - 4}" font-size="11" '
                 'text-anchor="middle">confidence</text>')
    parts.append(f'<text x="10" y="{pad + plot / 2}" font-size="11" text-anchor="middle" '
                 f'transform="rotate(-90 10 {pad + plot / 2})">accuracy</text>')
    for b in bins:
        if not b["n"]:
            continue
        x, y = xy(b["confidence"], b["accuracy"])
        r = 2.5 + 9 * np.sqrt(b["n"] / total)
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" fill="#4a6fa5" '
                     'fill-opacity="0.75"><title>' + esc(
                         f"{b['n']} answers, confidence {b['confidence']:.2f}, accuracy "
                         f"{b['accuracy']:.2f}") + "</title></circle>")
    parts.append("</svg>")
    return "".join(parts)


def validation_page(summary: dict[str, Any], worst: list[np.ndarray],
                    heatmap_kind: str | None = None) -> bytes:
    """The site validation's page; ``worst``: the most confident mistakes' pictures, with
    a heat-map of ``heatmap_kind`` laid over them (None: no map)."""
    from .report import NOTICE

    labels = summary["confusion_columns"]
    parts = [f"<p class=\"notice\">{esc(NOTICE)}</p>",
             f"<h1>Site validation: {esc(summary['model']['name'])} "
             f"{esc(summary['model']['version'])}</h1>",
             f"<p>{summary['n']} images from <span class=\"mono\">{esc(summary['folder'])}"
             f"</span>, {esc(shown_time(summary['created_at']))}.</p>"]
    rec = summary["recommended_review_threshold"]
    tumours = summary.get("tumours")
    rows = [("accuracy", _pct(summary["accuracy"])),
            ("flagged for review", _pct(summary["flagged_share"])),
            ("accuracy of the answers not flagged", _pct(summary["unflagged_accuracy"])),
            ("calibration error (ECE)", _pct(summary["calibration_error"])),
            ("unlike the training data", _pct(summary["unlike_training_share"])
             if summary["unlike_training_share"] is not None else "not checked by this model"),
            ("recommended [review] threshold",
             f"{rec['value']:.2f} ({_pct(rec['flagged_share'])} flagged, unflagged answers "
             f"{_pct(rec['unflagged_accuracy'])} right)" if rec["value"] is not None
             else rec["why"])]
    if tumours:
        rows.insert(1, ("tumours called 'no tumour' and not flagged",
                        f"{tumours['silently_missed']} of {tumours['n']} "
                        f"({_pct(tumours['silently_missed_share'])})"))
    parts.append("<table>" + "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>"
                                      for k, v in rows) + "</table>")
    head = "".join(f"<th>{esc(x)}</th>" for x in labels)
    body = "".join(
        f"<tr><th>{esc(row)}</th>" + "".join(f"<td>{n}</td>" for n in counts) + "</tr>"
        for row, counts in zip(summary["confusion_rows"], summary["confusion_matrix"]))
    parts.append("<h2>Confusion matrix</h2><p>Rows: true label; columns: the model's answer."
                 f"</p><table><tr><th></th>{head}</tr>{body}</table>")
    per = "".join(f"<tr><td>{esc(k)}</td><td>{v['n']}</td><td>{_pct(v['sensitivity'])}</td>"
                  f"<td>{_pct(v['specificity'])}</td></tr>"
                  for k, v in summary["per_class"].items())
    parts.append("<h2>Per class</h2><table><tr><th>label</th><th>images</th>"
                 f"<th>sensitivity</th><th>specificity</th></tr>{per}</table>")
    parts.append("<h2>Reliability</h2><p>Each dot: answers of similar confidence; on the "
                 "dashed line, confidence matches accuracy.</p>"
                 + reliability_svg(summary["reliability"]))
    if summary["worst_mistakes"]:
        cards = []
        for mistake, picture in zip(summary["worst_mistakes"], worst):
            flag = "flagged for review" if mistake["needs_review"] else "NOT flagged"
            cards.append(
                f"<figure style=\"display:inline-block;margin:.4rem;width:224px\">"
                f"<img class=\"thumb\" alt=\"mistake\" src=\"{thumbnail_data_uri(picture)}\">"
                f"<figcaption class=\"mono\">{esc(mistake['file'])}<br>true "
                f"{esc(mistake['truth'])}, answered {esc(mistake['label'])} "
                f"({percent(mistake['confidence'])}), {esc(flag)}</figcaption></figure>")
        parts.append("<h2>The most confident mistakes</h2>" + "".join(cards)
                     + (heatmap_scale(heatmap_kind) if heatmap_kind and worst else ""))
    if summary["refused"]:
        parts.append("<h2>Refused files</h2><ul>" + "".join(
            f"<li class=\"mono\">{esc(r['file'])}: {esc(r['reason'])}</li>"
            for r in summary["refused"]) + "</ul>")
    if summary["notes"]:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{esc(n)}</li>"
                                                  for n in summary["notes"]) + "</ul>")
    return _page("NeuroEdge site validation", "\n".join(parts))
