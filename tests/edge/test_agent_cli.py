"""The ``edge-agent`` command line, run as a user would run it (subprocesses)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from agent_helpers import REPO_ROOT, agent_env, fast_config, gray_png, pydicom_file, run_agent

from edge import __version__
from edge.errors import EX_CONFIG, EX_DATAERR


def test_version_and_help():
    result = run_agent(["--version"])
    assert result.returncode == 0 and __version__ in result.stdout
    result = run_agent(["--help"])
    assert result.returncode == 0
    for command in ("watch", "classify", "check", "sample-inbox"):
        assert command in result.stdout


def test_classify_prints_json_and_flags_refusals(tmp_path, test_model):
    mr = pydicom_file("MR_small.dcm")
    ct = pydicom_file("CT_small.dcm")
    result = run_agent(["classify", "--model", str(test_model.path), str(mr), str(ct)])
    assert result.returncode == EX_DATAERR, result.stderr
    entries = json.loads(result.stdout)
    assert [e["status"] for e in entries] == ["classified", "refused"]
    first = entries[0]
    assert first["input"]["file_name"] == "MR_small.dcm"
    assert set(first["prediction"]["probabilities"]) == set(first["model"]["labels"])
    assert first["dicom"]["modality"] == "MR" and "NOT FOR CLINICAL USE" in first["notice"]
    assert "Modality is CT" in entries[1]["reason"]
    again = run_agent(["classify", "--model", str(test_model.path), str(mr)])
    assert again.returncode == 0
    assert json.loads(again.stdout)[0]["prediction"] == first["prediction"]  # deterministic


def test_without_model_uses_the_shipped_one_or_says_none_is_shipped(tmp_path):
    from edge.manifest import default_model_dir, load_manifest

    png = gray_png(tmp_path / "x.png", 50)
    # no heat-map: the occlusion map's 49 runs of the shipped model took over the timeout
    # under arm64 emulation, and this test is about which model is found
    config = tmp_path / "config.toml"
    config.write_text('[report]\nheatmap = "none"\n')
    result = run_agent(["classify", str(png)], NEUROEDGE_CONFIG=str(config))
    assert "Traceback" not in result.stderr
    shipped = default_model_dir()
    if shipped is None:
        assert result.returncode == EX_CONFIG
        assert "no model is shipped" in result.stderr and "--model" in result.stderr
    else:
        assert result.returncode == 0, result.stderr
        entry = json.loads(result.stdout)[0]
        assert entry["model"]["sha256"] == load_manifest(shipped).model_sha256
    no_manifest = run_agent(["classify", str(png), "--model", str(tmp_path)])
    assert no_manifest.returncode == EX_CONFIG and "model.json" in no_manifest.stderr
    missing = run_agent(["classify", str(tmp_path / "nope.png"), "--model", str(tmp_path)])
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_check_passes_then_fails_on_a_tampered_model(tmp_path, test_model):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    ok = run_agent(["check", "--model", str(test_model.path), "--inbox", str(inbox),
                    "--outbox", str(tmp_path / "outbox")])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "all checks passed" in ok.stdout and "runtime" in ok.stdout
    tampered = tmp_path / "model"
    shutil.copytree(str(test_model.path), str(tampered))
    with open(str(tampered / "model.tflite"), "ab") as handle:
        handle.write(b"\0")
    bad = run_agent(["check", "--model", str(tampered), "--inbox", str(inbox)])
    assert bad.returncode == EX_CONFIG
    assert "sha256" in bad.stdout and "check failed" in bad.stderr
    no_inbox = run_agent(["check", "--model", str(test_model.path), "--inbox",
                          str(tmp_path / "missing")])
    assert no_inbox.returncode == EX_CONFIG and "does not exist" in no_inbox.stdout


@pytest.mark.parametrize("heatmap, advice", [("occlusion", 'set [report] heatmap = "none"'),
                                              ("none", "a burst of slices will wait")])
def test_check_times_one_input_and_warns_when_it_is_slow(tmp_path, test_model, monkeypatch,
                                                          heatmap, advice):
    """`check` (which install.sh runs on the box itself) says how long one input takes
    with the configured heat-map; a slow box is a warning with what to change, not a
    failure."""
    from edge import checks
    from edge.config import load_config

    config_file = tmp_path / "agent.toml"
    config_file.write_text(f'[paths]\nmodel = "{test_model.path}"\n'
                           f'[report]\nheatmap = "{heatmap}"\n')
    config = load_config(str(config_file))
    lines: list[str] = []
    assert checks.run_checks(config, lines.append) == []
    speed = [line for line in lines if " speed: " in line]
    assert len(speed) == 1 and speed[0].startswith("ok      speed: one input takes")
    assert f'[report] heatmap = "{heatmap}"' in speed[0] and "inputs a minute" in speed[0]
    assert (", heatmap " in speed[0]) == (heatmap == "occlusion")  # its own time
    monkeypatch.setattr(checks, "SLOW_INPUT_S", 0.0)
    lines.clear()
    assert checks.run_checks(config, lines.append) == []  # slow is not a failure
    speed = [line for line in lines if " speed: " in line]
    assert speed[0].startswith("WARNING speed: one input takes") and advice in speed[0]


def test_check_lists_srs_the_pacs_refuses_without_failing(tmp_path, test_model):
    """An SR the PACS refuses until it is changed there needs a person; it is a warning,
    not a failed check (install.sh runs `check`, and the agent must keep running)."""
    from agent_helpers import fast_config

    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    queue = outbox / ".state" / "outgoing"
    queue.mkdir(parents=True)
    record = {"key": "k1", "study": "abc", "group": "abc", "sop_class_uid": "1.2",
              "sop_instance_uid": "1.3", "created_at": "2026-12-05T08:00:00+00:00",
              "attempts": 3, "next_attempt": 0.0, "refused": True,
              "last_error": "PACS@127.0.0.1:104 refused the SR with status 0x0124: this box "
                            "is not authorized to store at the PACS"}
    (queue / "k1.json").write_text(json.dumps(record))
    (queue / "k1.dcm").write_bytes(b"sr")
    config = fast_config(tmp_path, "[pacs]\nsend_to = \"PACS@127.0.0.1:104\"\n")
    result = run_agent(["--config", str(config), "check", "--model", str(test_model.path),
                        "--inbox", str(inbox), "--outbox", str(outbox)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING sr queue: 1 SR(s) refused by PACS@127.0.0.1:104" in result.stdout
    assert "0x0124" in result.stdout and "all checks passed" in result.stdout


def test_watch_without_inbox_is_a_config_error():
    result = run_agent(["watch", "--once", "--model", "."])
    assert result.returncode == EX_CONFIG and "no inbox given" in result.stderr


def test_agent_runs_with_tensorflow_blocked(tmp_path, test_model):
    """The device has no TensorFlow: import and run the agent with it made unimportable."""
    png = gray_png(tmp_path / "x.png", 200)
    code = (
        "import sys\n"
        "sys.modules['tensorflow'] = None\n"
        "sys.modules['keras'] = None\n"
        "import edge, edge.cli, edge.watch, edge.worker, edge.classifier, edge.dicom\n"
        f"sys.argv = ['edge-agent', 'classify', '--model', {str(test_model.path)!r}, "
        f"{str(png)!r}]\n"
        "try:\n"
        "    edge.cli.main()\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        "assert sys.modules['tensorflow'] is None\n"
        "assert not [m for m in sys.modules if m.startswith(('trainer', 'converters'))]\n"
        "print('NO-TF-OK')\n"
    )
    env = agent_env()
    if env.get("NEUROEDGE_RUNTIME") == "tensorflow":
        pytest.skip("NEUROEDGE_RUNTIME=tensorflow forces the runtime this test blocks")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, cwd=str(REPO_ROOT), timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "NO-TF-OK" in result.stdout
    assert json.loads(result.stdout.split("NO-TF-OK")[0])[0]["status"] == "classified"


def test_sample_inbox_end_to_end(tmp_path, test_model):
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    made = run_agent(["sample-inbox", str(inbox)])
    assert made.returncode == 0, made.stderr
    names = sorted(p.name for p in inbox.iterdir())
    assert len(names) >= 9 and "IM0003" in names and "phantom.png" in names
    run = run_agent(["--config", str(fast_config(tmp_path)), "watch", str(inbox), "--outbox",
                     str(outbox), "--model", str(test_model.path), "--once"])
    assert run.returncode == 0, run.stderr[-3000:]
    assert not list(inbox.iterdir())
    quarantined = {p.name for p in (outbox / "quarantine").iterdir()
                   if not p.name.endswith(".reason.json")}
    assert {"ct_small.dcm", "structured_report.dcm", "notes.txt"} <= quarantined
    archived = {p.name for p in (outbox / "archive").rglob("*") if p.is_file()}
    assert {"mr_small.dcm", "IM0003", "mr_small_rle.dcm", "phantom.png"} <= archived
    assert len(archived) + len(quarantined) == len(names)
    entries = [json.loads(line) for f in (outbox / "index").glob("*.jsonl")
               for line in f.read_text().splitlines()]
    if "mr_abdomen.dcm" in names:  # shipped by pydicom >= 3 only
        abdomen = next(e for e in entries if e["file_name"] == "mr_abdomen.dcm")
        assert abdomen["needs_review"] is True
        report = json.loads((outbox / abdomen["report"]).read_text())
        assert any("Body Part Examined is ABDOMEN" in r for r in report["review_reasons"])
    index_page = (outbox / "index.html").read_text()
    assert "NOT FOR CLINICAL USE" in index_page and "index/" in index_page
    assert "Needs attention" not in index_page  # a healthy run raises no alarm


def test_verbose_logs_of_a_real_run_carry_no_patient_data(tmp_path, test_model):
    import warnings

    import numpy as np
    from agent_helpers import make_dicom

    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    name, pid = "DOEJANESECRET^JANE", "MRN-99887766"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make_dicom(inbox / "scan1.dcm", np.full((32, 32), 7, np.uint16), PatientName=name,
                   PatientID=pid, OtherPatientIDs=pid, PatientBirthDate="19700101")
        make_dicom(inbox / "scan2.dcm", np.full((32, 32), 7, np.uint16), modality="CT",
                   PatientName=name, PatientID=pid)
    (inbox / "scan3.dcm").write_bytes((inbox / "scan1.dcm").read_bytes()[:700])  # truncated
    run = run_agent(["-v", "--config", str(fast_config(tmp_path)), "watch", str(inbox),
                     "--outbox", str(outbox), "--model", str(test_model.path), "--once"])
    assert run.returncode == 0, run.stderr[-3000:]
    logs = run.stdout + run.stderr
    assert "DEBUG" in logs and "quarantined" in logs  # the logs did say something
    for secret in ("DOEJANESECRET", pid):
        assert secret not in logs
        assert not [p for p in outbox.rglob("*") if secret in str(p)]
        for report in (outbox / "reports").glob("*"):  # JSON, HTML and heat-map PNG
            assert secret.encode() not in report.read_bytes()


def test_missing_folders_exit_66_so_a_service_manager_retries(tmp_path, test_model):
    """A share or USB disk that is not mounted yet is not a configuration error."""
    gone = run_agent(["watch", str(tmp_path / "not-mounted"), "--once", "--model", "."])
    assert gone.returncode == 66 and "mount" in gone.stderr
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    outbox = tmp_path / "usb" / "outbox"
    result = run_agent(["watch", str(inbox), "--outbox", str(outbox), "--once", "--model",
                        str(test_model.path)])
    assert result.returncode == 66 and "mount" in result.stderr
    assert not (tmp_path / "usb").exists()  # parents are never created


def test_once_exits_75_when_a_settled_file_could_not_be_taken(tmp_path, test_model):
    # a file whose claim is refused (a folder where it cannot be moved) was skipped and the
    # run exited 0; it must say so and exit 75, like a folder it cannot read
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    gray_png(inbox / "stuck.png", 40)
    code = ("import errno, sys; import edge.claim\n"
            "def refused(self, job, path, barrier):\n"
            "    raise PermissionError(errno.EACCES, 'Permission denied', path)\n"
            "edge.claim.Claim._take_one = refused\n"
            "from edge.cli import main; sys.argv[0] = 'edge-agent'; main()\n")
    args = ["--config", str(fast_config(tmp_path)), "watch", str(inbox), "--outbox",
            str(tmp_path / "outbox"), "--model", str(test_model.path), "--once"]
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                            text=True, timeout=120, env=agent_env(), cwd=str(REPO_ROOT))
    assert result.returncode == 75, result.stderr[-2000:]
    assert "1 file(s) in the inbox could not be taken" in result.stderr
    assert "it stays in the inbox; find it with: find" in result.stderr
    assert "stuck" not in result.stderr and "Traceback" not in result.stderr
    assert (inbox / "stuck.png").is_file()


def test_outputs_that_cannot_be_written_are_one_line_and_exit_73(tmp_path, test_model):
    # a file where a folder must be made (as root, permissions cannot be used to test this;
    # a read-only folder takes the same path): no traceback, nothing classified first
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")
    sample = run_agent(["sample-inbox", str(blocker / "inbox")])
    assert sample.returncode == 73, sample.stderr[-2000:]
    assert "cannot write the sample inbox" in sample.stderr and "Traceback" not in sample.stderr
    data = tmp_path / "val"
    for label in ("glioma", "notumor"):
        (data / label).mkdir(parents=True)
        gray_png(data / label / "a.png", 40)
    validated = run_agent(["validate", str(data), "--out", str(blocker / "report"),
                           "--model", str(test_model.path)])
    assert validated.returncode == 73, validated.stderr[-2000:]
    assert "cannot write the --out folder" in validated.stderr
    assert "validating" not in validated.stdout  # refused before classifying anything
    nan = run_agent(["validate", str(data), "--out", str(tmp_path / "r"), "--model",
                     str(test_model.path), "--target-accuracy", "nan"])
    assert nan.returncode == 2 and "--target-accuracy" in nan.stderr


def test_a_file_given_as_the_model_or_the_outbox_is_named_as_such(tmp_path, test_model):
    picture = gray_png(tmp_path / "scan.png", 40)
    result = run_agent(["classify", str(picture), "--model", str(picture)])
    assert result.returncode == EX_CONFIG
    assert "is a file, not a model" in result.stderr and "Traceback" not in result.stderr
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    config = fast_config(tmp_path, f"[paths]\ninbox = '{inbox}'\noutbox = '{picture}'\n")
    checked = run_agent(["--config", str(config), "check", "--model", str(test_model.path)])
    assert checked.returncode == EX_CONFIG
    assert "is a file, not a folder" in checked.stdout and "does not exist" not in checked.stdout
