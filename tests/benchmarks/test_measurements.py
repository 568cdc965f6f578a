"""The suite's measurements on the tiny trained model of ``converters.testing``.

These run the real code paths (subprocess probes, the agent, the device-environment
launcher) with few repeats; they assert the structure of the results and that every number
is a finite positive time, not how fast anything is.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import agent, int8_study, latency, memory, sizes, startup
from benchmarks.models import BuiltModel, model_from_file

pytestmark = pytest.mark.slow


def _finite_positive(value: float) -> bool:
    return isinstance(value, float) and math.isfinite(value) and value > 0


def test_latency_rows_ratios_and_table(tiny, tiny_built, monkeypatch):
    monkeypatch.delenv("NEUROEDGE_TFLITE_RUNTIME_PYTHON", raising=False)
    float32 = BuiltModel("tiny", "float32", tiny_built[0].path, "trained (tiny)", "",
                         tiny_built[0].bytes, 0.0)  # the int8 file again: a ratio near 1
    result = latency.measure([tiny_built[0], float32, tiny_built[1]], [1, 2], runs=5, warmup=1,
                             tflite_python=None)
    rows = result["rows"]
    assert {(r["format"], r["runtime"], r["threads"]) for r in rows} == {
        (f, rt, t) for f, rt in (("int8", "ai-edge-litert"), ("float32", "ai-edge-litert"),
                                 ("keras", "keras")) for t in (1, 2)}
    for r in rows:
        assert "error" not in r, r
        assert _finite_positive(r["median_ms"]) and r["p90_ms"] >= r["median_ms"]
        assert r["n"] == 5
    int8 = next(r for r in rows if r["format"] == "int8" and r["threads"] == 1)
    base = next(r for r in rows if r["format"] == "float32" and r["threads"] == 1)
    assert int8["speedup_vs_float32"] == pytest.approx(base["median_ms"] / int8["median_ms"])
    assert any("tflite-runtime not measured" in n for n in result["notes"])
    text = latency.markdown(result, [1, 2])
    assert text.splitlines()[0].startswith("| model | format | MB | runtime | 1 thr median")
    assert "| tiny | int8 |" in text and "| tiny | keras |" in text


@pytest.mark.skipif(not os.environ.get("NEUROEDGE_TFLITE_RUNTIME_PYTHON"),
                    reason="set NEUROEDGE_TFLITE_RUNTIME_PYTHON to a tflite-runtime venv's python")
def test_latency_in_tflite_runtime(tiny_built):
    result = latency.measure(tiny_built[:1], [1], runs=3, warmup=1,
                             tflite_python=os.environ["NEUROEDGE_TFLITE_RUNTIME_PYTHON"])
    row = next(r for r in result["rows"] if r["runtime"] == "tflite-runtime")
    assert _finite_positive(row["median_ms"]) and row["version"].startswith("2.")


def test_a_broken_model_is_a_row_with_its_error(tmp_path):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"not a flatbuffer")
    model = BuiltModel("bad", "int8", str(bad), "none", "", bad.stat().st_size, 0.0)
    result = latency.measure([model], [1], runs=2, warmup=0, tflite_python=None)
    assert "cannot load bad.tflite" in result["rows"][0]["error"]
    assert "fails:" in latency.markdown(result, [1])


def test_sizes_fraction_of_float32(tiny_built):
    f32 = BuiltModel("tiny", "float32", tiny_built[0].path, "w", "", 4 * tiny_built[0].bytes, 0)
    result = sizes.measure([tiny_built[0], f32])
    int8 = result["rows"][0]
    assert int8["fraction_of_float32"] == pytest.approx(0.25)
    assert "0.250" in sizes.markdown(result)


def test_model_from_file_reads_the_manifest(tiny):
    model = model_from_file(Path(tiny.model_dir), "tiny-given")
    assert model.fmt == "int8" and model.path.endswith("model.tflite") and model.bytes > 0


def test_agent_stages_add_up(tiny, tmp_path):
    result = agent.measure(str(tiny.model_dir), 6, ("png", "dicom"), None, tmp_path,
                           tmpfs_too=False)
    for kind in ("png", "dicom"):
        entry = result["kinds"][kind]
        run, bare = entry["agent_disk"], entry["bare"]
        assert run["counts"]["classified"] == 6 and bare["files"] == 6
        assert set(run["stages_ms"]) == set(agent.STAGES)
        assert sum(run["stages_ms"].values()) == pytest.approx(run["ms_per_file"])
        assert run["stages_ms"]["invoke"] > 0 and run["stages_ms"]["decode"] > 0
        assert set(run["committer_ms"]) == set(agent.COMMITTER_STAGES)
        assert sum(run["committer_ms"].values()) == pytest.approx(run["ms_per_file"])
        assert run["committer_ms"]["reports (thumbnail + HTML + JSON)"] > 0
        assert run["claimer_ms"]["claim (journal + rename)"] > 0
        assert run["fsync_per_file"] >= 1  # the journal is durable
        heat = run["stages_ms"]["occlusion heat-map (49 more invokes)"]
        assert run["heatmap"] == "occlusion" and heat == run["heatmap_ms_per_file"] > 0
        assert run["overhead_ms_per_file"] == pytest.approx(run["ms_per_file"]
                                                            - bare["ms_per_file"] - heat)
    assert list(tmp_path.iterdir()) == []  # scratch inboxes are removed
    text = agent.markdown(result)
    assert "| **total** |" in text and "overhead ÷ bare inference" in text
    assert "| committer: archive (move) |" in text


def test_agent_tables_of_runs_saved_before_the_committer_thread_still_render():
    """`--render` of a run saved by the one-thread agent (docs/performance-runs)."""
    saved = Path(__file__).resolve().parents[2] / "docs" / "performance-runs" / (
        "2026-11-26-agent-before-693885b.json")
    text = agent.markdown(json.loads(saved.read_text())["agent"])
    assert "| report (build + HTML + JSON) | 5.95 | 3.79 |" in text
    assert "committer:" not in text and "| **total** | **31.53** |" in text


def test_memory_and_startup_in_this_environment(tiny, tmp_path):
    result = memory.measure(sys.executable, str(tiny.model_dir), 3, tmp_path)
    assert [r["files"] for r in result["rows"]] == [0, 3, 6]
    assert result["rows"][1]["reports"] == 3 and result["rows"][2]["reports"] == 6
    floor = result["launcher_floor_mb"]
    for r in result["rows"]:
        assert floor <= r["peak_rss_mb"] < 2000  # the agent's own peak, not this process's
    assert result["rows"][2]["peak_rss_mb"] > result["rows"][0]["peak_rss_mb"]
    assert "peak RSS (MB)" in memory.markdown(result)
    start = startup.measure(sys.executable, str(tiny.model_dir), 1, tmp_path)
    assert 0 < start["help_median_s"] < start["watch_exit_median_s"]
    assert 0 < start["watch_first_result_median_s"] <= start["watch_exit_median_s"]


def test_group_key_names_layers():
    assert int8_study._group_key("dsconv_cbam_1/cbam2_1/channel_attention_1/Max") == \
        "cbam2/channel_attention"
    assert int8_study._group_key("net_1/relu3_1/Relu;net_1/bn3_1/batchnorm") == "sepconv3"
    assert int8_study._group_key("StatefulPartitionedCall_1:0") == \
        "output (StatefulPartitionedCall_1:0)"


def test_op_profile_covers_every_op(tiny):
    profile = int8_study.op_profile(Path(tiny.model_path), runs=3, rounds=1)
    groups = profile["groups"]
    assert groups[0]["first_op"] == 0
    assert all(b["first_op"] == a["last_op"] + 1
               for a, b in zip(groups, groups[1:], strict=False))
    assert profile["total_ms"] == groups[-1]["cumulative_ms"] > 0
    assert sum(g["ms"] for g in groups) == pytest.approx(profile["total_ms"])


def test_variants_convert_and_the_rewrite_is_exact(tiny):
    import keras

    from converters.testing import SIZE
    from edge.preprocess import DEFAULT_SPEC  # noqa: F401 - the tiny model's own size is used

    model = keras.saving.load_model(str(Path(tiny.run_dir) / "model.keras"), compile=False)
    calibration = np.random.default_rng(0).random((6, SIZE, SIZE, 3), dtype=np.float32)
    rows = {r["variant"]: r for r in int8_study.variants(model, calibration, runs=3)}
    assert "error" not in rows["int8, CBAM without PACK (identical maths)"]
    packfree = rows["float32, CBAM without PACK (identical maths)"]
    assert packfree["max_abs_diff_vs_plain"] < 1e-5
    assert not any(o.startswith("PACK") for o in packfree["outside_xnnpack"])
    assert any(o.startswith("PACK") for o in rows["float32, as converted today"]["outside_xnnpack"])
    for row in rows.values():
        if "error" not in row:
            assert _finite_positive(row["ms_1_thread"]) and row["speedup_vs_float32"] > 0
    assert "Levers on" in int8_study.markdown({"variants": list(rows.values()),
                                               "variants_model": "tiny"})


def test_interpreter_switches_are_timed(tiny):
    rows = int8_study.interpreter_options(Path(tiny.model_path), runs=3)
    assert [r["option"].split(" ")[0] for r in rows] == [
        "default", "experimental_default_delegate_latest_features=True",
        "experimental_disable_delegate_clustering=True", "op"]
    assert all(_finite_positive(r["ms_1_thread"]) for r in rows)
    text = int8_study.markdown({"interpreter_options": rows, "interpreter_model": "tiny"})
    assert "| interpreter option | ms |" in text
