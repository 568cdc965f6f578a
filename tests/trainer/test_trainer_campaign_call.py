"""trainer/campaign.sh end to end, as the lent GPU machine will run it: the JAX backend, and
none of the packages that machine lacks (TensorFlow, pydicom, pynetdicom, watchdog, the
TFLite runtimes) importable. A tiny pack, a two-link chain (a fine-tune of an earlier
entry), both evaluations of each run with the external check, the weights sent back in
parts, and campaign-collect.sh putting them together again; then, as here after a real
call, trainer/campaign-after.sh: scored on the original files, converted to int8 both ways
the agent may run a model, and judged by the shipping rule.

Slow (JAX compiles each model; the network is the smallest, an MLP). The GPU machine's
own Python 3.12 stack was rehearsed by hand (docs/gpu-campaign.md); this holds the script
and the trainer to it between GPU sessions.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from trainer_testdata import make_dataset

REPO = Path(__file__).resolve().parents[2]
# What the GPU machine does not have (the device tool's KINDS.md); keras, namex and optree
# travel as wheels and are importable here.
ABSENT_THERE = ("tensorflow", "pydicom", "pynetdicom", "watchdog", "ai_edge_litert",
                "tflite_runtime")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                       reason="jax is not installed (pip install -e .[jax])"),
]


def test_the_campaign_trains_chains_evaluates_and_returns_with_the_gpu_machines_packages(
        tmp_path):
    from trainer.pack import pack

    data = make_dataset(tmp_path / "data", train_per_class=10, test_per_class=3)
    # the test pictures take names from the deduplicated list the script applies
    listed = [line.strip() for line in (REPO / "docs/leakage/dedup_test.txt").read_text(
        ).splitlines() if line.startswith("Testing/")]
    for folder in (data / "Testing").iterdir():
        names = [Path(n).stem for n in listed if n.startswith(f"Testing/{folder.name}/")]
        for picture, name in zip(sorted(folder.iterdir()), names, strict=False):
            picture.rename(folder / (name + picture.suffix))
    pack(data, tmp_path / "pack")
    with tarfile.open(tmp_path / "pack.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "pack", arcname="pack")
    external = tmp_path / "ext" / "br35h-tumour" / "tumour"
    external.mkdir(parents=True)
    for i, picture in enumerate(sorted((data / "Testing" / "glioma").iterdir())):
        (external / f"y{i}{picture.suffix}").write_bytes(picture.read_bytes())
    with tarfile.open(tmp_path / "br35h-tumour.tar.gz", "w:gz") as tar:
        tar.add(external.parent, arcname="br35h-tumour")
    blocker = tmp_path / "absent"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(  # imported by every Python the script starts
        "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in ABSENT_THERE))

    # the smallest network: the script, the recipes and the chain are what is tested here
    small = "--image-size,32,--mlp-hidden,8,--batch-size,8"
    models = (f"pre:mlp:--recipe,strong,--reweight,shortcuts,{small},--time-limit,200 "
              f"ft:mlp:--recipe,lesion-any,--init-from,@pre,--lr,2e-4,--warmup-epochs,0.5,"
              f"{small}")
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(blocker), MODELS=models,
               EPOCHS="1", BUDGET="400", HARD_STOP="600", THROUGHPUT_BEFORE="0",
               PACK=str(tmp_path / "pack.tar.gz"), EXTERNAL=str(tmp_path / "br35h-tumour.tar.gz"),
               WORK=str(tmp_path / "work"), OUT=str(out), KERAS_BACKEND="jax")
    done = subprocess.run(["bash", "trainer/campaign.sh"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    log = (out / "campaign.log").read_text() if (out / "campaign.log").exists() else ""
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "backend jax" in log
    for name in ABSENT_THERE:  # the stand-in held: nothing the machine lacks was used
        assert f"No module named '{name}'" not in log and f"import of {name} halted" not in log
    assert "ft: " in log and "starting from pre" in (tmp_path / "work/logs/ft.log").read_text()
    table = [line for line in log.splitlines() if line.startswith(("| pre ", "| ft "))]
    assert len(table) == 2 and all("| completed |" in line for line in table), table

    with tarfile.open(out / "results.tar.gz") as tar:
        names = set(tar.getnames())
    for run in ("pre", "ft"):
        for folder in ("evaluation", "evaluation-mirror-mean"):
            assert f"runs/{run}/{folder}/metrics.json" in names, sorted(names)
    with tarfile.open(out / "results.tar.gz") as tar:
        metrics = json.load(tar.extractfile("runs/ft/evaluation-mirror-mean/metrics.json"))
    assert metrics["test_time"] == "mirror-mean"
    assert [e["name"] for e in metrics["external"]] == ["br35h-tumour"]
    with tarfile.open(out / "results.tar.gz") as tar:
        run = json.load(tar.extractfile("runs/ft/run.json"))
    assert run["init_from"]["run"].endswith("/runs/pre") and run["recipe"] == "lesion-any"

    # the rule's pick, then (parts left) the other run: both judged in int8 back here
    returned = [line.split()[1] for line in (out / "weights.sha256").read_text().splitlines()]
    assert sorted(returned) == ["runs/ft/model.keras", "runs/pre/model.keras"]
    collected = subprocess.run(["bash", "trainer/campaign-collect.sh", str(out),
                                str(tmp_path / "back")], cwd=REPO, capture_output=True,
                               text=True, timeout=120)
    assert collected.returncode == 0, collected.stderr
    assert all((tmp_path / "back" / path).is_file() for path in returned)

    # here, after the call: scored on the original files, int8 through the gate both ways
    # the agent may run it, judged by the shipping rule beside the shipped model
    after = subprocess.run(["bash", "trainer/campaign-after.sh", str(out),
                            str(tmp_path / "after")], cwd=REPO, capture_output=True,
                           text=True, timeout=600,
                           env=dict(os.environ, PYTHON=sys.executable, DATA=str(data),
                                    NO_TFLITE_RUNTIME="1"))
    assert after.returncode == 0, after.stdout[-3000:] + after.stderr[-3000:]
    rule = json.loads((tmp_path / "after/rule.json").read_text())
    judged = {Path(m["folder"]).name: m for m in rule["models"]}
    for run_name in ("pre", "ft"):
        for suffix in ("", "-mirror"):
            assert (tmp_path / "after/runs" / run_name / f"evaluation-original{suffix}"
                    / "metrics.json").is_file()
            # untrained, and tflite-runtime not checked: out
            assert not judged[f"{run_name}{suffix}-int8"]["candidate"]
            assert any("tflite-runtime was not required" in why
                       for why in judged[f"{run_name}{suffix}-int8"]["out"])
    again = subprocess.run(["bash", "trainer/campaign-after.sh", str(out),
                            str(tmp_path / "after")], cwd=REPO, capture_output=True,
                           text=True, timeout=600,
                           env=dict(os.environ, PYTHON=sys.executable, DATA=str(data),
                                    NO_TFLITE_RUNTIME="1"))
    assert again.returncode == 0 and "through the gate" not in again.stdout  # kept

    refused = subprocess.run(["bash", "trainer/campaign-after.sh", str(out),
                              str(tmp_path / "after2")], cwd=REPO, capture_output=True,
                             text=True, timeout=60, env=dict(os.environ, DATA=str(data)))
    assert refused.returncode == 2 and "TFLITE_RUNTIME_PYTHON" in refused.stderr


def test_judge_runs_refuses_a_folder_that_is_not_a_trained_run(tmp_path: Path) -> None:
    """trainer/judge-runs.sh (what campaign-after.sh does once the runs are collected, and
    how a CPU run is judged): a folder with no model.keras is named, before any work."""
    data = tmp_path / "data"
    (data / "Testing").mkdir(parents=True)
    (tmp_path / "run").mkdir()
    env = dict(os.environ, DATA=str(data), NO_TFLITE_RUNTIME="1")
    judged = subprocess.run(["bash", "trainer/judge-runs.sh", str(tmp_path / "dest"),
                             str(tmp_path / "run")], cwd=REPO, capture_output=True, text=True,
                            timeout=60, env=env)
    assert judged.returncode == 2 and "holds no model.keras" in judged.stderr, judged.stderr
    ready = subprocess.run(["bash", "trainer/judge-runs.sh", "--check"], cwd=REPO,
                           capture_output=True, text=True, timeout=60, env=env)
    assert ready.returncode == 0, ready.stderr
    env.pop("NO_TFLITE_RUNTIME")
    env.pop("TFLITE_RUNTIME_PYTHON", None)
    unready = subprocess.run(["bash", "trainer/judge-runs.sh", "--check"], cwd=REPO,
                             capture_output=True, text=True, timeout=60, env=env)
    assert unready.returncode == 2 and "TFLITE_RUNTIME_PYTHON" in unready.stderr
