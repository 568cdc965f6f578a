"""What the HTML pages show a radiographer, checked on their markup (no browser: the same
pages in headless Chromium are in test_pages_browser.py)."""

from __future__ import annotations

import html
import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from agent_helpers import (
    gray_png,
    make_config,
    make_dicom,
    page_day_entries,
    page_report,
    page_studies_rows,
    page_study,
    run_once,
)

from edge import pages

LONG_NAME = "scan_" + "x" * 140 + ".png"  # one word: nothing to wrap it at


def test_a_long_name_wraps_instead_of_pushing_the_answer_off_the_page():
    """A 145-character name with no space made the day's table 2,500 pixels wide: at 1280
    pixels the result column, with "needs review", was off the screen."""
    day = pages.day_page("2026-12-06", page_day_entries(LONG_NAME)).decode()
    cell = re.search(r"<td([^>]*)><a [^>]*>" + re.escape(LONG_NAME), day)
    assert cell and 'class="wrap"' in cell.group(1)
    assert ".wrap{overflow-wrap:anywhere}" in day
    report = pages.report_page(page_report(LONG_NAME), None).decode()
    assert re.search(r"h1\{[^}]*overflow-wrap:anywhere", report)
    assert f'<td class="wrap">{LONG_NAME}</td>' in report  # the Input table's file name


def test_a_day_page_says_how_many_need_a_look_in_words():
    """"needs review" was bold text in the middle of a cell, and nothing counted them."""
    day = pages.day_page("2026-12-06", page_day_entries("a.png")).decode()
    assert "3 inputs: 1 need review, 1 refused" in day
    assert day.count('<strong class="flag">needs review</strong>') == 1
    assert "<strong>refused:</strong> the file is a text file" in day
    assert "1 input: 0 need review" in pages.day_page("2026-12-06", page_day_entries(
        "a.png")[1:2]).decode().replace("1 refused", "")


def test_the_front_page_links_the_studies_before_a_year_of_days():
    """With a year of days the study reports' link came after 365 lines."""
    days = [(f"2026-{m:02d}-{d:02d}", 40) for m in range(1, 13) for d in range(1, 29)]
    page = pages.index_page(days, ["2 SR(s) wait for the PACS"]).decode()
    assert page.index("Needs attention") < page.index('href="studies/index.html"') < page.index(
        'href="index/2026-12-28.html"') < page.index('href="index/2026-01-01.html"')
    assert "(40 inputs)" in page and "(1 input)" in pages.index_page([("2026-12-06", 1)]).decode()
    assert "studies/index.html" not in pages.index_page(days, studies=False).decode()
    entry = dict(page_day_entries("a.dcm")[0], study="1.2.3")
    assert 'href="../studies/1.2.3.html"' in pages.day_page("2026-12-06", [entry]).decode()
    assert "studies/" not in pages.day_page("2026-12-06", [entry], studies=False).decode()


def test_a_report_page_names_its_model_and_the_way_back_beside_the_answer():
    """The model and its version were only in the last table, below the fold; a page opened
    on its own from a share had no link to the other pages."""
    thumbnail = np.zeros((224, 224), np.uint8)
    page = pages.report_page(page_report("IM0001"), thumbnail).decode()
    near = page[page.index("Needs review."):page.index("<img")]
    assert "model brain-mri-test 9.8.7" in near and 'href="../index.html"' in near
    assert "<strong>meningioma</strong> (62%), but" in near
    assert "<figcaption>the picture as the model got it</figcaption>" in page
    fine = pages.report_page(page_report(needs_review=False), None).decode()
    assert "(62% confidence); not flagged for review." in fine  # not said by colour alone


def test_pages_print_their_colours_and_keep_boxes_whole():
    """A browser prints without backgrounds by default: the probability bars (background
    only) vanished from paper, and a heading could end a page with its table on the next."""
    page = pages.report_page(page_report(), None).decode()
    print_css = page[page.index("@media print"):]
    assert "print-color-adjust:exact" in print_css and "break-after:avoid" in print_css
    assert re.search(r"\.review[^{]*\{break-inside:avoid", print_css)


def test_an_unrecognised_picture_is_refused_without_the_agent_s_working_path(tmp_path):
    """Pillow's message named the agent's working copy in .state ("cannot identify image
    file <_io.BufferedReader name='/.../.state/claimed/...'>"), shown on the day's page."""
    from edge.config import LimitsConfig
    from edge.errors import DecodeError
    from edge.images import decode_picture

    path = tmp_path / "20261206T100000-abcdef"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(20))
    with pytest.raises(DecodeError) as caught:
        decode_picture(path, "png", LimitsConfig())
    assert str(tmp_path) not in str(caught.value) and "BufferedReader" not in str(caught.value)
    assert "it is damaged or not really a PNG" in str(caught.value)


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if tag == "a" and name == "href" and value:
                self.links.append(value)


def _broken_links(outbox: Path) -> list[str]:
    broken = []
    for page in sorted(outbox.rglob("*.html")):
        parser = _Links()
        parser.feed(page.read_text(encoding="utf-8"))
        for link in parser.links:
            if not (page.parent / unquote(link)).resolve().is_file():
                broken.append(f"{page.relative_to(outbox)} -> {link}")
    return broken


def _outbox_with_a_study(folders: dict[str, Path], test_model, **sections) -> Path:
    gray_png(folders["inbox"] / LONG_NAME, 120)
    (folders["inbox"] / "notes.txt").write_text("not a scan")
    for i in range(2):
        make_dicom(folders["inbox"] / f"slice{i}.dcm", np.full((32, 32), 100 + i, np.uint16),
                   StudyInstanceUID="1.2.826.0.1.5", SOPInstanceUID=f"1.2.826.0.1.5.{i}")
    run_once(make_config(folders, test_model.path, **sections))
    return folders["outbox"]


def test_every_link_in_an_outbox_leads_to_a_page(folders, test_model):
    """Opened from a USB stick or a share every link is relative and must find its page."""
    outbox = _outbox_with_a_study(folders, test_model)
    assert len(list((outbox / "reports").glob("*.html"))) == 3
    assert (outbox / "studies" / "1.2.826.0.1.5.html").is_file()
    assert _broken_links(outbox) == []


def test_no_link_to_study_reports_that_are_not_made(folders, test_model):
    """With [studies] enabled = false the front page and the day's page linked study
    reports that are never written."""
    outbox = _outbox_with_a_study(folders, test_model, studies={"enabled": False})
    assert _broken_links(outbox) == []


def test_the_front_page_says_which_days_need_a_look(folders, test_model, tmp_path):
    """Each day on the front page gave only its count of inputs: which days held answers
    flagged for review or refused inputs could only be found by opening every day."""
    from edge.durable import json_bytes
    from edge.index import DailyIndex

    outbox = _outbox_with_a_study(folders, test_model)
    (day,) = DailyIndex(outbox).days()
    lines = [json.loads(x) for x in (outbox / "index" / f"{day[0]}.jsonl").read_text().splitlines()]
    review = sum(x.get("needs_review") is True for x in lines)
    assert day[1:] == (len(lines), review, 1)  # notes.txt was refused
    front = (outbox / "index.html").read_text()
    marks = ([f'<strong class="flag">{review} need{"s" if review == 1 else ""} review</strong>']
             if review else []) + ["1 refused"]
    assert f"({len(lines)} inputs: {', '.join(marks)})" in front
    # counted from the bytes of compact JSON lines: a name holding the words is not a flag
    index = tmp_path / "other" / "index"
    index.mkdir(parents=True)
    tricky = [{"outcome": "classified", "needs_review": True, "file_name": "a.png"},
              {"outcome": "classified", "needs_review": False,
               "file_name": '"needs_review":true "outcome":"quarantined".png'},
              {"outcome": "quarantined", "needs_review": None, "file_name": "b.txt"}]
    (index / "2026-12-06.jsonl").write_bytes(b"".join(json_bytes(x, compact=True)
                                                      for x in tricky))
    assert DailyIndex(tmp_path / "other").days() == [("2026-12-06", 3, 1, 1)]
    assert "(3 inputs)" in pages.index_page([("2026-12-06", 3, 0, 0)]).decode()


def test_a_reason_never_reads_a_value_below_its_threshold_as_equal_to_it():
    """A "notumor" answer at 0.94959 read "only given unreviewed at a confidence of 0.95 or
    more (this one: 0.95)" on its page: the reader could not see why it was flagged."""
    from edge.trust import Assessment, review_reasons

    def reasons(confidence: float, label: str = "notumor") -> list[str]:
        return review_reasons(label=label, confidence=confidence, margin=0.5,
                              runner_up="glioma", assessment=Assessment(np.zeros(4), True),
                              threshold=0.95, min_margin=0.0, no_tumour_threshold=0.95,
                              negative_label="notumor")

    first, *_, last = reasons(0.94959)
    assert first == "confidence 0.9496 is below the review threshold 0.95"
    assert "(this one: 0.9496)" in last
    assert reasons(0.62, "glioma") == ["confidence 0.62 is below the review threshold 0.95"]


# --- what a reader can rely on: times, the heat-map's scale, file names ---------------------

_FULL_TIME = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} [+-]\d{2}:\d{2}(?![\d:])")


def _seen(page: bytes) -> str:
    """The words a reader sees: no style sheet, no tags, entities decoded."""
    text = re.sub(r"<style>.*?</style>", "", page.decode(), flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", text))


def _validation_summary() -> dict:
    return {"model": {"name": "brain-mri-test", "version": "9.8.7"}, "n": 3, "folder": "/site",
            "created_at": "2026-12-06T10:00:00-05:00", "confusion_columns": ["a", "b"],
            "confusion_rows": ["a", "b"], "confusion_matrix": [[1, 0], [1, 1]],
            "accuracy": 0.67, "flagged_share": 0.3, "unflagged_accuracy": 1.0,
            "calibration_error": 0.1, "unlike_training_share": None, "tumours": None,
            "recommended_review_threshold": {"value": None, "why": "too few images"},
            "per_class": {"a": {"n": 2, "sensitivity": 0.5, "specificity": 1.0}},
            "reliability": [], "worst_mistakes": [], "refused": [], "notes": []}


def test_every_time_on_every_page_says_its_zone(tmp_path):
    """A day's page showed "10:00:00", a report "2026-12-06T10:00:01+01:00" and the front
    page "2026-12-06 10:00:00+01:00": three forms, and one with no zone at all, so on a PC
    set to another zone, or the night the clocks go back, a reader could not tell which
    moment it was. Every page now shows every time one way: date, clock, UTC offset."""
    from edge.network.sendqueue import QueueState
    from edge.network.study_pages import studies_index_page, study_page
    from edge.validate_page import validation_page

    alert = QueueState(waiting=1, failing=1, oldest="2026-12-05T23:59:59+00:00",
                       waiting_error="no connection").page_lines("PACS")
    rendered = {
        "report": pages.report_page(page_report(), None),
        "day": pages.day_page("2026-12-06", page_day_entries("a.png")),
        "front": pages.index_page([("2026-12-06", 3)], alert, as_of="2026-12-06T10:00:00+01:00"),
        "study": study_page(page_study(), tmp_path),
        "studies": studies_index_page(page_studies_rows()),
        "validation": validation_page(_validation_summary(), []),
    }
    for name, page in rendered.items():
        text = _seen(page)
        full = [m.span() for m in _FULL_TIME.finditer(text)]
        assert full, f"the {name} page shows no time"
        for clock in re.finditer(r"\d{1,2}:\d{2}(?::\d{2})?", text):
            assert any(a <= clock.start() and clock.end() <= b for a, b in full), (
                f"the {name} page shows {text[clock.start() - 12:clock.end() + 8]!r}")
    seen = {name: _seen(page) for name, page in rendered.items()}
    assert "received 2026-12-06 10:00:00 +01:00" in seen["report"]
    assert "2026-12-06 10:00:01 +01:00" in seen["report"]  # report created
    assert "2026-12-06 10:02:00 +01:00" in seen["day"]
    assert "oldest queued 2026-12-05 23:59:59 +00:00" in seen["front"]
    assert "as of 2026-12-06 10:00:00 +01:00" in seen["front"]
    assert "2026-12-06 10:05:00 +01:00" in seen["study"]
    assert "2026-12-06 10:02:00 +01:00" in seen["studies"]
    assert "2026-12-06 10:00:00 -05:00" in seen["validation"]


def test_a_time_without_a_zone_or_not_a_time_is_not_dressed_up_as_one():
    from edge.report import shown_time

    assert shown_time("2026-03-29T01:59:59+00:00") == "2026-03-29 01:59:59 +00:00"
    assert shown_time("2026-03-29T03:00:00.250+02:00") == "2026-03-29 03:00:00 +02:00"
    assert shown_time("2026-10-25T02:30:00+05:30") == "2026-10-25 02:30:00 +05:30"
    assert shown_time("2026-12-06T10:00:00") == "2026-12-06 10:00:00 (time zone not recorded)"
    assert shown_time("yesterday") == "yesterday" and shown_time(None) == ""
    # forms Python 3.8's fromisoformat does not read, read alike on every Python
    assert shown_time("2026-12-06T10:00:00Z") == "2026-12-06 10:00:00 +00:00"
    assert shown_time("2026-12-06T10:00:00+0100") == "2026-12-06 10:00:00 +01:00"
    assert shown_time("2026-12-06T10:00:00.5-0330") == "2026-12-06 10:00:00 -03:30"
    assert shown_time("2026-12-06 10:00:00.1234567") == (
        "2026-12-06 10:00:00 (time zone not recorded)")


def _legend_colours(page: str) -> list[tuple[int, int, int]]:
    ramp = re.search(r"linear-gradient\(90deg,([^)]*)\)", page)
    assert ramp, "no colour scale on the page"
    return [tuple(bytes.fromhex(c.strip()[1:])) for c in ramp.group(1).split(",")]


def test_the_heat_map_has_a_colour_scale_that_says_what_its_colours_mean(tmp_path):
    """The heat-map stood beside the picture with no scale: nothing said which colour meant
    "this region drove the answer". The scale is drawn with the colours the map itself gives
    a mid-grey pixel from its lowest level to its highest (asked of ``heatmap.overlay``
    here), its ends are named, and the page says what the map is not."""
    from edge import heatmap
    from edge.network.study_pages import study_page

    picture = np.full((224, 224), 128, np.uint8)
    drawn = heatmap.png_bytes(heatmap.overlay(picture, np.eye(7)))
    page = pages.report_page(page_report(), picture, drawn).decode()
    colours = _legend_colours(page)
    assert len(colours) >= 5
    levels = np.linspace(0.0, 1.0, len(colours))[None, :]
    painted = heatmap.overlay(np.full((1, len(colours)), 128, np.uint8), levels)[0]
    assert colours == [tuple(int(v) for v in c) for c in painted]
    assert colours[0] == (128, 128, 128) and colours[-1] != colours[0]
    text = _seen(page.encode())
    assert "no colour: covering this region changed the answer least" in text
    assert "brightest: covering this region weakened the answer most" in text
    assert "not an outline of a tumour" in text
    assert page.index("heat-map over the model input") < page.index("linear-gradient(90deg")
    assert "100%" not in page
    no_map = pages.report_page(page_report(), picture).decode()
    assert "linear-gradient" not in no_map  # no map, no scale
    # a study page showing slices' heat-maps shows the same scale once
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / f"{'ab' * 32}.html").write_text(page, encoding="utf-8")
    doc = {**page_study(), "suspicious": [
        {"report": "ab" * 32, "label": "glioma", "confidence": 0.9, "needs_review": False,
         "probability_not_normal": 0.95}] * 2}
    study = study_page(doc, tmp_path).decode()
    assert _legend_colours(study) == colours and study.count("linear-gradient(") == 1
    assert "not an outline of a tumour" in study and "this region counted most" in study
    (tmp_path / "reports" / f"{'ab' * 32}.json").write_text('{"heatmap": {"kind": "occlusion"}}')
    assert "covering this region weakened the answer most" in study_page(doc, tmp_path).decode()


def test_a_moved_to_name_that_is_not_utf8_is_shown_as_every_other_such_name(folders,
                                                                             test_model):
    """A file in the quarantine whose name is not UTF-8 (``M\\xfcller.png``, put there by
    hand or by an older agent) gets its index line back from ``fsck``; its "input moved to"
    cell read "quarantine/M[U+DCFC]ller.png", a code point no file browser shows, while its
    input cell, like every other page and record, read "M\ufffdller.png" (``display_name``).
    It now reads the same, says why, and that name finds the file."""
    import glob

    from edge.durable import display_name
    from edge.fsck import check_outbox
    from edge.index import DailyIndex

    run_once(make_config(folders, test_model.path))  # an empty outbox, as the agent makes it
    outbox = folders["outbox"]
    (outbox / "quarantine").mkdir(exist_ok=True)
    raw = os.path.join(os.fsencode(str(outbox / "quarantine")), b"M\xfcller.png")
    with open(raw, "wb") as handle:
        handle.write(b"not a scan")
    check_outbox(outbox)
    (day,) = [d for d, *_ in DailyIndex(outbox).days()]
    (entry,) = DailyIndex(outbox).read(day)
    assert entry["moved_to"] == os.fsdecode(b"quarantine/M\xfcller.png")  # kept exactly
    DailyIndex(outbox).render([day])
    page = (outbox / "index" / f"{day}.html").read_text(encoding="utf-8")
    cell = re.search(r'<td class="mono"[^>]*>(quarantine/[^<]*)</td>', page)
    assert cell, page
    shown = html.unescape(cell.group(1))
    assert "[U+" not in shown
    assert shown.startswith(display_name(entry["moved_to"]) + " ")
    assert shown.startswith("quarantine/M\ufffdller.png (")
    assert "not UTF-8" in shown and "\ufffd stands for a byte" in shown
    name = shown.split(" (")[0].replace("\ufffd", "?")  # what a reader would look for
    assert [os.fsencode(p) for p in glob.glob(str(outbox / name))] == [raw]
    # a name the agent gave the file itself holds U+FFFD: shown as it is, no note
    ok = pages.day_page(day, [dict(entry, moved_to="quarantine/M\ufffdller.png")]).decode()
    assert ">quarantine/M\ufffdller.png</td>" in ok
