"""Group commit and the committer thread: fewer fsyncs, same books, same recovery."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
from agent_helpers import gray_png, make_config, run_once

from edge.commit import GroupCommit
from edge.manifest import sha256_file
from edge.worker import Worker


def index_lines(outbox: Path) -> list:
    return [json.loads(line) for path in sorted((outbox / "index").glob("*.jsonl"))
            for line in path.read_text().splitlines()]


@pytest.fixture()
def agent(folders, test_model):
    """An agent whose outbox is prepared, to drive its worker step by step."""
    from edge.classifier import Classifier
    from edge.watch import Agent

    config = make_config(folders, test_model.path)
    made = Agent(config, Classifier(config), once=True)
    made.outbox.prepare()
    return made


@pytest.fixture()
def count_fsyncs(monkeypatch):
    calls = {"n": 0}
    real = os.fsync

    def counted(fd: int) -> None:
        calls["n"] += 1
        real(fd)

    monkeypatch.setattr(os, "fsync", counted)
    return calls


def fill(inbox: Path, levels: list[int], prefix: str = "scan") -> list[str]:
    return [str(gray_png(inbox / f"{prefix}{i:02d}.png", level)) for i, level in
            enumerate(levels)]


def test_a_group_shares_its_folder_fsyncs(folders, agent, count_fsyncs):
    """One group of 8: about 7 fsyncs per input (its record four times, its heat-map PNG,
    HTML and JSON report) plus one per folder per step; one at a time: 15 per input (13
    before the "claimed" and "moved" records fsynced their data, 12 before the heat-map)."""
    worker: Worker = agent.worker
    levels = list(range(10, 250, 15))  # 16 distinct inputs
    paths = fill(folders["inbox"], levels)
    count_fsyncs["n"] = 0
    jobs, refused = worker.claim(paths[:8])
    assert not refused and len(jobs) == 8
    assert worker.commit([worker.prepare(job) for job in jobs]) == []
    grouped = count_fsyncs["n"]
    count_fsyncs["n"] = 0
    for path in paths[8:]:
        (job,), _ = worker.claim([path])
        assert worker.commit([worker.prepare(job)]) == []
    alone = count_fsyncs["n"]
    assert grouped <= 7 * 8 + 12, grouped  # 16 fsyncs per folder step would break this
    assert alone == 15 * 8, alone
    assert worker.counts["classified"] == 16
    assert len(index_lines(folders["outbox"])) == 16
    assert not os.listdir(folders["outbox"] / ".state" / "jobs")


def test_identical_inputs_in_one_group_are_classified_once(folders, agent):
    worker: Worker = agent.worker
    paths = fill(folders["inbox"], [90, 90, 200, 90])
    jobs, _ = worker.claim(paths)
    works = [worker.prepare(job) for job in jobs]
    assert [w.job.outcome for w in works] == ["classified", "duplicate", "classified",
                                              "duplicate"]
    assert worker.commit(works) == []
    outbox = folders["outbox"]
    assert len(list((outbox / "reports").glob("*.json"))) == 2
    lines = index_lines(outbox)
    assert sorted(e["outcome"] for e in lines) == ["classified", "classified", "duplicate",
                                                   "duplicate"]
    shared = {e["report"] for e in lines if e["outcome"] == "duplicate"}
    assert shared == {e["report"] for e in lines if e["file_name"] == "scan00.png"}
    assert all(e["label"] for e in lines)  # a duplicate's summary comes from the shared report
    assert len(list((outbox / "archive").rglob("*.png"))) == 4


def test_same_names_in_one_group_get_distinct_archive_names(folders, test_model):
    inbox = folders["inbox"]
    for sub, level in (("a", 40), ("b", 160), ("c", 220)):
        (inbox / sub).mkdir()
        gray_png(inbox / sub / "scan.png", level)
    counts = run_once(make_config(folders, test_model.path, watch={"recursive": True}))
    assert counts["classified"] == 3
    archived = sorted(p.name for p in (folders["outbox"] / "archive").rglob("scan*.png"))
    assert len(archived) == 3 and archived[0] == "scan.png", archived


def test_a_failed_write_spares_the_group_and_is_finished_later(folders, agent, monkeypatch):
    """A full disk while writing one report: the other inputs of the group finish; that one
    and the identical input waiting on its report stay journaled, and are finished later."""
    worker: Worker = agent.worker
    paths = fill(folders["inbox"], [70, 70, 180])
    failing = sha256_file(Path(paths[0]))
    real = GroupCommit.write_report

    def disk_full_once(self, work, barrier):
        if work.job.sha256 == failing and work.prepared is not None:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, work, barrier)

    monkeypatch.setattr(GroupCommit, "write_report", disk_full_once)
    jobs, _ = worker.claim(paths)
    failures = worker.commit([worker.prepare(job) for job in jobs])
    assert sorted(job.file_name for job, _ in failures) == ["scan00.png", "scan01.png"]
    assert worker.counts == {"classified": 1, "duplicate": 0, "quarantined": 0}
    outbox = folders["outbox"]
    assert len(os.listdir(outbox / ".state" / "claimed")) == 2  # kept, not lost
    monkeypatch.setattr(GroupCommit, "write_report", real)
    outcomes = sorted(str(worker.run(job, replay=True)) for job, _ in failures)
    assert outcomes == ["classified", "duplicate"]
    assert all(job.attempts == 1 for job, _ in failures)  # a retry is not a crash
    assert not os.listdir(outbox / ".state" / "claimed")
    assert not os.listdir(outbox / ".state" / "jobs")
    assert len(index_lines(outbox)) == 3
    assert {p.stem for p in (outbox / "reports").glob("*.json")} == {
        failing, sha256_file(next((outbox / "archive").rglob("scan02.png")))}


def test_backlog_through_the_committer_thread_balances(folders, test_model):
    """The whole agent (claim groups of 8, committer thread) on 20 inputs: 15 distinct
    pictures, and 5 copies of the first of them."""
    inbox, outbox = folders["inbox"], folders["outbox"]
    fill(inbox, list(range(20, 245, 15)))
    fill(inbox, [20] * 5, prefix="same")
    counts = run_once(make_config(folders, test_model.path))
    assert counts == {"classified": 15, "duplicate": 5, "quarantined": 0, "unfinished": 0,
                      "unreachable": 0, "not_taken": 0, "waiting_for_space": 0,
                      "left_while_failing": 0, "still_written": 0}
    assert len(index_lines(outbox)) == 20
    assert len(list((outbox / "archive").rglob("*.png"))) == 20
    assert len(list((outbox / "reports").glob("*.json"))) == 15
    assert not os.listdir(outbox / ".state" / "jobs")
    assert not any(inbox.iterdir())


class _CommitsFirst:
    """A lock that, the first time it is taken, first lets ``action`` run: the committer
    finishing another input at that exact moment."""

    def __init__(self, real, action) -> None:
        self.real, self.action = real, action

    def __enter__(self):
        action, self.action = self.action, None
        if action is not None:
            action()
        return self.real.__enter__()

    def __exit__(self, *exc):
        return self.real.__exit__(*exc)


def test_a_copy_prepared_while_the_first_is_committed_is_still_a_duplicate(folders, agent):
    """The committer may finish the first copy between the second copy's two checks (in
    flight? on disk?); whichever moment it is, the second copy is a duplicate and the first
    copy's report is never replaced."""
    worker: Worker = agent.worker
    paths = fill(folders["inbox"], [120, 120])
    (first, second), _ = worker.claim(paths)
    work_first = worker.prepare(first)
    assert first.outcome == "classified"
    real_lock = worker.in_flight._lock
    worker.in_flight._lock = _CommitsFirst(real_lock, lambda: worker.commit([work_first]))
    work_second = worker.prepare(second)
    worker.in_flight._lock = real_lock
    assert second.outcome == "duplicate"
    report = folders["outbox"] / "reports" / f"{first.sha256}.json"
    assert json.loads(report.read_text())["intake"]["token"] == first.token
    assert worker.commit([work_second]) == []
    assert json.loads(report.read_text())["intake"]["token"] == first.token
    assert sorted(e["outcome"] for e in index_lines(folders["outbox"])) == ["classified",
                                                                          "duplicate"]


# --- the heat-map and page drawn on the main loop (issue 13's cost, perf-reports) ----------

def embedded_heatmap(page: str) -> bytes:
    """The heat-map PNG a report page carries (its second data: URI picture)."""
    import base64
    import re

    found = re.search(r'alt="heat-map over the model input" src="data:image/png;base64,'
                      r'([A-Za-z0-9+/=]+)"', page)
    assert found, "the page has no heat-map picture"
    return base64.b64decode(found.group(1))


def test_the_heatmap_file_is_the_picture_in_the_page(folders, test_model):
    fill(folders["inbox"], [40, 120, 200])
    assert run_once(make_config(folders, test_model.path))["classified"] == 3
    reports = folders["outbox"] / "reports"
    for report in reports.glob("*.json"):
        entry = json.loads(report.read_text())
        saved = (reports / entry["heatmap"]["file"]).read_bytes()
        assert saved.startswith(b"\x89PNG")
        page = (reports / f"{entry['id']}.html").read_text()
        assert embedded_heatmap(page) == saved


def test_a_heatmap_drawn_on_the_main_loop_is_durable_before_the_move(folders, agent,
                                                                     monkeypatch):
    """``Worker.render`` (the main loop, while the committer's queue is full) writes nothing; the
    committer then writes the same files, each fsynced before its rename, and the reports
    folder is fsynced before the input is moved: the order of durable steps is unchanged."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to name the files fsynced")
    worker: Worker = agent.worker
    (path,) = fill(folders["inbox"], [150])
    (job,), _ = worker.claim([path])
    work = worker.prepare(job)
    worker.render(work)
    found = work.prepared
    assert found.rendered and found.heatmap_png and found.page and found.thumbnail is None
    reports = folders["outbox"] / "reports"
    assert not list(reports.iterdir())  # drawn, not written
    events: list = []
    real_fsync, real_replace, real_move = os.fsync, os.replace, GroupCommit.move

    def fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst) -> None:
        events.append(("replace", str(src), str(dst)))
        real_replace(src, dst)

    def move(self, work, barrier) -> None:
        events.append(("move", work.job.token))
        real_move(self, work, barrier)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(GroupCommit, "move", move)
    assert worker.commit([work]) == []
    heat = reports / f"{job.sha256}.heatmap.png"
    (renamed,) = [i for i, e in enumerate(events) if e[0] == "replace" and e[2] == str(heat)]
    data_synced = events.index(("fsync", events[renamed][1]))
    folder_synced = events.index(("fsync", str(reports)), renamed)
    moved = events.index(("move", job.token))
    assert data_synced < renamed < folder_synced < moved
    page = (reports / f"{job.sha256}.html").read_text()
    assert embedded_heatmap(page) == heat.read_bytes()
    assert "What the model saw" in page  # the thumbnail, drawn on the main loop too
    assert worker.counts["classified"] == 1


def test_a_full_queue_makes_the_main_loop_draw_instead_of_waiting():
    """``Committer.submit`` on a full queue draws its own job's pictures, then the queued
    ones newest first, each once; with nothing left to draw it waits for a free place."""
    import threading

    from edge.pipeline import Committer

    class Drawer:
        def __init__(self) -> None:
            self.asked: list = []
            self.drawn: list = []

        def render(self, work) -> bool:
            self.asked.append(work)
            if work in self.drawn:
                return False
            self.drawn.append(work)
            return True

    drawer = Drawer()
    committer = Committer(drawer, lambda job, exc: None, depth=2)  # never started
    committer.submit("a")
    committer.submit("b")
    assert drawer.asked == []  # a free place: nothing drawn
    late = threading.Thread(target=committer.submit, args=("c",), daemon=True)
    late.start()
    late.join(2.0)
    assert late.is_alive()  # all drawn: now it waits
    assert drawer.drawn == ["c", "b", "a"]  # its own, then the queued ones newest first
    assert committer._queue.get_nowait() == "a"
    late.join(2.0)
    assert not late.is_alive() and committer._queue.qsize() == 2


def test_a_slow_committer_gets_help_with_the_pictures(folders, test_model, monkeypatch):
    """A slow committer (a slow disk): its queue fills, and the main loop draws heat-maps
    and pages meanwhile; each input is drawn once, and every report has both, with the
    same picture in each."""
    import threading
    import time

    from edge.classifier import Classifier
    from edge.watch import Agent

    drawn_by: list = []
    real_render, real_write = GroupCommit.render, GroupCommit.write_report

    def render(self, work, wait=True) -> bool:
        done = real_render(self, work, wait)
        if done:
            drawn_by.append(threading.current_thread().name)
        return done

    def slow_write(self, work, barrier) -> None:
        time.sleep(0.05)
        real_write(self, work, barrier)

    monkeypatch.setattr(GroupCommit, "render", render)
    monkeypatch.setattr(GroupCommit, "write_report", slow_write)
    levels = list(range(10, 250, 10))  # 24 distinct inputs
    fill(folders["inbox"], levels)
    # the model's own map, nearly free: the occlusion map's 49 runs per input slow the main
    # loop so much under emulation (arm64 CI) that the committer is never behind
    config = make_config(folders, test_model.path, report={"heatmap": "model"})
    assert Agent(config, Classifier(config), once=True).run()["classified"] == len(levels)
    assert len(drawn_by) == len(levels)
    assert "MainThread" in drawn_by and "committer" in drawn_by, drawn_by
    reports = folders["outbox"] / "reports"
    for heat in reports.glob("*.heatmap.png"):
        page = (reports / heat.name.replace(".heatmap.png", ".html")).read_text()
        assert embedded_heatmap(page) == heat.read_bytes()
    assert len(list(reports.glob("*.heatmap.png"))) == len(levels)
