"""The study verdict rule (edge.network.verdict), branch by branch, and the network settings."""

from __future__ import annotations

import pytest

from edge.config import config_from_dict
from edge.errors import ConfigError
from edge.network.settings import Peer, StudiesConfig, parse_peer
from edge.network.verdict import NEEDS_REVIEW, Slice, distinct, instances_hash, judge, suspicious

LABELS = ["glioma", "meningioma", "notumor", "pituitary"]
RULE = StudiesConfig()  # min_slices 3, agreement 0.7, max_review_share 0.5


def make_slice(n: int, label: str, confidence: float = 0.95, review: bool = False,
               series: str = "1.2.3", sop: str | None = None) -> Slice:
    rest = (1.0 - confidence) / 3
    probs = {k: (confidence if k == label else rest) for k in LABELS}
    return Slice(report_id=f"{n:064x}", sop_instance_uid=sop or f"1.2.3.{n}",
                 series_instance_uid=series, series_description="T1", label=label,
                 confidence=confidence, probabilities=probs, needs_review=review,
                 sop_class_uid="1.2.840.10008.5.1.4.1.1.4")


def study(*groups: tuple[int, str, bool]) -> list[Slice]:
    out, n = [], 0
    for count, label, review in groups:
        for _ in range(count):
            out.append(make_slice(n, label, review=review, confidence=0.5 if review else 0.95))
            n += 1
    return out


def test_enough_agreeing_tumour_slices_give_that_label() -> None:
    result = judge(study((20, "notumor", False), (4, "glioma", False), (1, "meningioma", False)),
                   RULE, LABELS)
    assert result["verdict"] == "glioma"  # 4 of 5 tumour slices = 80% >= 70%
    assert result["counts"] == {"instances": 25, "confident": 25, "needs_review": 0,
                                "tumour_slices": 5, "by_label": {"glioma": 4, "meningioma": 1,
                                                                 "notumor": 20, "pituitary": 0}}
    assert "5 of 25 slices" in result["verdict_reason"]


def test_tumour_slices_that_disagree_need_review() -> None:
    result = judge(study((20, "notumor", False), (3, "glioma", False), (3, "meningioma", False)),
                   RULE, LABELS)
    assert result["verdict"] == NEEDS_REVIEW
    assert "disagree" in result["verdict_reason"] and "50%" in result["verdict_reason"]


def test_a_few_tumour_slices_need_review_not_a_normal_verdict() -> None:
    result = judge(study((30, "notumor", False), (2, "pituitary", False)), RULE, LABELS)
    assert result["verdict"] == NEEDS_REVIEW
    assert "2 slice(s) confidently show a tumour" in result["verdict_reason"]


def test_no_tumour_slice_is_normal_unless_too_much_needs_review() -> None:
    assert judge(study((10, "notumor", False), (5, "notumor", True)), RULE,
                 LABELS)["verdict"] == "notumor"  # 5 of 15 uncertain: 33% <= 50%
    result = judge(study((4, "notumor", False), (6, "notumor", True)), RULE, LABELS)
    assert result["verdict"] == NEEDS_REVIEW and "60%" in result["verdict_reason"]


def test_uncertain_tumour_slices_do_not_count() -> None:
    result = judge(study((20, "notumor", False), (2, "glioma", True)), RULE, LABELS)
    assert result["counts"]["tumour_slices"] == 0 and result["verdict"] == "notumor"
    # ...but enough uncertain slices leaning to a tumour are worth a look
    result = judge(study((20, "notumor", False), (3, "glioma", True)), RULE, LABELS)
    assert result["verdict"] == NEEDS_REVIEW and "3 uncertain slices lean" in result[
        "verdict_reason"]


def test_too_few_slices_need_review() -> None:
    result = judge(study((2, "glioma", False)), RULE, LABELS)
    assert result["verdict"] == NEEDS_REVIEW and "only 2 slice(s)" in result["verdict_reason"]
    one = StudiesConfig(min_slices=1)
    assert judge(study((1, "glioma", False)), one, LABELS)["verdict"] == "glioma"


def test_an_instance_sent_twice_counts_once() -> None:
    a = make_slice(1, "glioma", sop="1.2.3.99")
    b = make_slice(2, "glioma", sop="1.2.3.99")  # other bytes, same SOP Instance UID
    assert len(distinct([a, b])) == 1 and distinct([b, a])[0].report_id == a.report_id
    assert judge([a, b], StudiesConfig(min_slices=1), LABELS)["counts"]["instances"] == 1
    assert instances_hash([a, b]) != instances_hash([a])  # but the set of reports changed


def test_probabilities_series_and_suspicious_slices() -> None:
    slices = study((6, "notumor", False), (3, "glioma", False))
    slices.append(make_slice(50, "meningioma", confidence=0.7, series="1.2.4"))
    result = judge(slices, RULE, LABELS)
    assert result["probabilities"]["glioma"]["max"] == pytest.approx(0.95)
    assert result["probabilities"]["notumor"]["mean"] == pytest.approx(
        (6 * 0.95 + 3 * 0.05 / 3 + 0.1) / 10, abs=1e-3)
    assert [s["instances"] for s in result["series"]] == [9, 1]
    top = suspicious(slices, RULE, 4)
    assert [s.label for s in top] == ["glioma", "glioma", "glioma", "meningioma"]
    assert suspicious(slices, RULE, 0) == []


# --- settings --------------------------------------------------------------------------

def test_network_sections_are_read_and_checked() -> None:
    config = config_from_dict({
        "network": {"dicom_port": 11112, "ae_title": "EDGE1",
                    "allowed_calling_aets": ["SCANNER", "PACS"]},
        "studies": {"settle_seconds": 30, "min_slices": 5},
        "pacs": {"send_to": "PACS@pacs.example.org:104", "sr_type": "basic"}}, "t.toml")
    assert config.network.dicom_port == 11112
    assert config.network.allowed_calling_aets == ("SCANNER", "PACS")
    assert config.studies.settle_seconds == 30.0 and config.studies.min_slices == 5
    assert config.pacs.peer == Peer("PACS", "pacs.example.org", 104)
    assert config_from_dict({}).network.dicom_port == 0  # no receiver unless asked


@pytest.mark.parametrize("section, key, value, message", [
    ("network", "dicom_port", 70000, "between 1 and 65535"),
    ("network", "ae_title", "A" * 17, "1 to 16 printable ASCII"),
    ("network", "ae_title", "   ", "not only spaces"),
    ("network", "allowed_calling_aets", ["OK", "BAD\\AE"], "holds 'BAD\\\\AE'"),
    ("network", "max_associations", 0, "between 1 and 64"),
    ("studies", "agreement", 0.3, "between 0.5 and 1"),
    ("studies", "settle_seconds", -1, ">= 0 seconds"),
    ("pacs", "send_to", "pacs.example.org:104", "AE_TITLE@HOST:PORT"),
    ("pacs", "send_to", "PACS@host:0", "between 1 and 65535"),
    ("pacs", "sr_type", "enhanced", "comprehensive, basic"),
    ("pacs", "retry_initial", 5000.0, "<= retry_max"),
])
def test_bad_network_values_name_the_key(section, key, value, message) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict({section: {key: value}}, "t.toml")
    text = str(err.value)
    assert f"[{section}] {key}" in text and message in text


def test_unknown_network_key_suggests_the_right_one() -> None:
    with pytest.raises(ConfigError, match="did you mean 'dicom_port'"):
        config_from_dict({"network": {"dicom_prot": 104}})


def test_peer_parsing() -> None:
    assert parse_peer("ORTHANC@[fd00::5]:4242") == Peer("ORTHANC", "fd00::5", 4242)
    assert str(parse_peer(" PACS@10.0.0.5:104 ")) == "PACS@10.0.0.5:104"
    with pytest.raises(ValueError, match="AE title"):
        parse_peer("BAD\\AE@host:104")


def test_once_with_a_dicom_port_is_a_usage_error(tmp_path) -> None:
    from agent_helpers import run_agent

    (tmp_path / "inbox").mkdir()
    proc = run_agent(["watch", str(tmp_path / "inbox"), "--once", "--dicom-port", "11112"])
    assert proc.returncode == 2 and "cannot be used with --once" in proc.stderr
    assert not (tmp_path / "outbox").exists()


def test_check_reports_the_dicom_network(tmp_path) -> None:
    from agent_helpers import run_agent

    pytest.importorskip("pynetdicom")
    config = tmp_path / "c.toml"
    config.write_text('[network]\ndicom_port = 11112\nallowed_calling_aets = ["MR1"]\n'
                      '[pacs]\nsend_to = "PACS@10.0.0.5:104"\n')
    proc = run_agent(["--config", str(config), "check"])
    line = next(x for x in proc.stdout.splitlines() if "dicom network" in x)
    assert line.startswith("ok") and "receiver NEUROEDGE on port 11112 (MR1)" in line
    assert "SRs (comprehensive) to PACS@10.0.0.5:104" in line
