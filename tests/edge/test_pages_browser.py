"""The pages as a radiographer sees them: rendered by headless Chromium, at a desktop's
1280 x 900 and a phone's 412 x 900 pixels, and measured there.

A page forbids scripts (its Content-Security-Policy), so a probe page of the test's own
holds it in an iframe of that size and measures it from outside (``--allow-file-access-
from-files`` lets one file page read another), then ``--dump-dom`` prints what it found.
Skipped where no Chromium or Chrome is installed (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from agent_helpers import page_day_entries, page_report, page_studies_rows, page_study

from edge import heatmap, pages

SIZES = ((1280, 900), (412, 900))
PHONE = (390, 844)  # the narrowest phone in common use
LONG_NAME = "scan_" + "x" * 140 + ".png"
_PROBE = """<!DOCTYPE html><html><body style="margin:0">
<iframe id="page" src="PAGE" width="WIDTH" height="HEIGHT" style="border:0"></iframe>
<pre id="found">not measured</pre><script>
window.addEventListener("load", function () {
  var doc = document.getElementById("page").contentDocument, found = {texts: {}};
  try {
    found.scrollWidth = doc.documentElement.scrollWidth;
    found.clientWidth = doc.documentElement.clientWidth;
    found.images = Array.prototype.map.call(doc.images, function (i) {
      return {alt: i.alt, naturalWidth: i.naturalWidth, shownWidth: i.width}; });
    found.tables = Array.prototype.map.call(doc.querySelectorAll("table"), function (t) {
      var cell = t.querySelector("td"), view = doc.defaultView;
      return {className: t.className, scrollWidth: t.scrollWidth, clientWidth: t.clientWidth,
              cellDisplay: cell ? view.getComputedStyle(cell).display : null,
              label: cell ? view.getComputedStyle(cell, "::before").content : null}; });
    var walk = doc.createTreeWalker(doc.body, NodeFilter.SHOW_TEXT), node;
    while ((node = walk.nextNode())) {
      TEXTS.forEach(function (text) {
        if (!(text in found.texts) && node.nodeValue.indexOf(text) >= 0) {
          var box = node.parentElement.getBoundingClientRect();
          found.texts[text] = {top: box.top, bottom: box.bottom, right: box.right};
        }
      });
    }
  } catch (e) { found.error = String(e); }
  document.getElementById("found").textContent = JSON.stringify(found);
});
</script></body></html>
"""


def _chromium() -> str:
    for name in (os.environ.get("NEUROEDGE_CHROMIUM"), "chromium", "chromium-browser",
                 "google-chrome", "google-chrome-stable"):
        found = name and shutil.which(name)
        if found:
            return found
    pytest.skip("no Chromium or Chrome to render the pages in (Debian: apt-get install "
                "chromium, or set NEUROEDGE_CHROMIUM); test_pages.py checks their markup")


def measure(page: Path, size: tuple[int, int], texts: list[str]) -> dict[str, Any]:
    """The page as shown at ``size``: its scroll and client widths, every image's natural
    width, every table's widths and how its first cell is laid out (``display``, and the
    column name its ``::before`` shows), and where the first text node holding each of
    ``texts`` is."""
    browser = _chromium()
    width, height = size
    probe = page.parent / f"probe-{page.stem}-{width}.html"
    probe.write_text(_PROBE.replace("PAGE", page.as_uri()).replace("WIDTH", str(width))
                     .replace("HEIGHT", str(height)).replace("TEXTS", json.dumps(texts)),
                     encoding="utf-8")
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--allow-file-access-from-files", f"--user-data-dir={profile}",
             f"--window-size={width + 100},{height + 100}", "--dump-dom", probe.as_uri()],
            capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="found">(.*?)</pre>', done.stdout, re.S)
    assert found and found.group(1).startswith("{"), (
        f"the probe measured nothing (exit {done.returncode}): {done.stderr[-2000:]}")
    result = json.loads(found.group(1).replace("&amp;", "&").replace("&lt;", "<")
                        .replace("&gt;", ">"))
    assert "error" not in result, result
    return result


def _fits(found: dict[str, Any], size: tuple[int, int], page: str) -> None:
    assert found["scrollWidth"] <= found["clientWidth"], (
        f"{page} at {size}: {found['scrollWidth']} pixels wide in a "
        f"{found['clientWidth']}-pixel window: part of it is off the screen")


def test_a_report_page_in_a_browser(tmp_path):
    """The answer, why it needs review, the model and the pictures: on the first screen,
    the pictures decoded (not a broken-image icon), and nothing off its side."""
    (tmp_path / "reports").mkdir()
    picture = np.tile(np.linspace(0, 255, 224, dtype=np.uint8), (224, 1))
    drawn = heatmap.png_bytes(heatmap.overlay(picture, np.eye(7)))
    page = tmp_path / "reports" / f"{'ab' * 32}.html"
    page.write_bytes(pages.report_page(page_report(LONG_NAME), picture, drawn))
    texts = ["NOT FOR CLINICAL USE", "Needs review.", "below the review threshold",
             "model brain-mri-test 9.8.7", "all days"]
    for size in SIZES:
        found = measure(page, size, texts)
        _fits(found, size, "the report page")
        assert [(i["alt"], i["naturalWidth"]) for i in found["images"]] == [
            ("model input", 224), ("heat-map over the model input", 224)]
        if size[0] >= 1000:  # a phone scrolls to them; a desktop must not need to
            for text in texts:
                assert found["texts"][text]["bottom"] <= size[1], (text, found["texts"][text])


def test_the_front_page_and_a_day_in_a_browser(tmp_path):
    """With a year of days and something needing attention, the alerts and the study link
    are on the first screen; a day with a long name keeps its "needs review" in sight."""
    (tmp_path / "index").mkdir()
    days = [(f"2026-{m:02d}-{d:02d}", 40) for m in range(1, 13) for d in range(1, 29)]
    front = tmp_path / "index.html"
    front.write_bytes(pages.index_page(days, ["The outbox's disk has 80 MB free"],
                                       as_of="2026-12-06T10:00:00+01:00"))
    day = tmp_path / "index" / "2026-12-06.html"
    day.write_bytes(pages.day_page("2026-12-06", page_day_entries(LONG_NAME)))
    for size in SIZES:
        found = measure(front, size, ["NOT FOR CLINICAL USE", "Needs attention",
                                      "80 MB free", "Study reports", "2026-12-28"])
        _fits(found, size, "the front page")
        for text, where in found["texts"].items():
            assert where["bottom"] <= size[1], (text, where)
        found = measure(day, size, ["1 need review", "needs review", "refused:", "notes.txt"])
        _fits(found, size, "the day's page")
        flag = found["texts"]["needs review"]
        assert flag["right"] <= found["clientWidth"] and flag["bottom"] <= size[1], flag


def test_the_study_pages_fit_a_phone_and_stay_tables_on_a_desktop(tmp_path):
    """At 390 pixels the studies table (six columns, a 58-character Study Instance UID) was
    wider than the phone and scrolled sideways inside itself, and so did a study's table of
    slices (eight columns) and of series. There each row is now a block of lines, each
    line with its column's name; on a desktop they are still tables."""
    from edge.network.study_pages import studies_index_page, study_page

    folder = tmp_path / "studies"
    folder.mkdir()
    index = folder / "index.html"
    index.write_bytes(studies_index_page(page_studies_rows()))
    study = folder / f"{page_study()['study_instance_uid']}.html"
    study.write_bytes(study_page(page_study(), tmp_path))
    for size in (PHONE, (1280, 900)):
        for page, name, stacked in ((index, "the studies page", 1),
                                    (study, "a study's page", 2)):
            found = measure(page, size, ["Study Instance UID"])
            _fits(found, size, name)
            for table in found["tables"]:
                assert table["scrollWidth"] <= table["clientWidth"], (name, size, table)
            blocks = [t for t in found["tables"] if t["cellDisplay"] == "block"]
            if size == PHONE:
                assert len(blocks) >= stacked, (name, found["tables"])
                assert all(t["label"] not in (None, "none", "normal") for t in blocks), blocks
            else:
                assert not blocks and found["tables"], (name, found["tables"])
    found = measure(index, PHONE, [])
    assert found["tables"][0]["label"].strip('"').startswith("judged"), found["tables"]
