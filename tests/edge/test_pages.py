"""What the HTML pages show a radiographer, checked on their markup (no browser: the same
pages in headless Chromium are in test_pages_browser.py)."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from agent_helpers import gray_png, make_config, make_dicom, page_day_entries, page_report, run_once

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
