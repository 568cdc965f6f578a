"""The model in other Python environments: tflite-runtime in its own numpy<2 venv."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from converters.runtimes import MAX_PROB_DIFF, TFLITE_RUNTIME_ENV, check_subprocess
from converters.testing import convert_tiny
from edge.manifest import load_verified
from edge.preprocess import scale
from edge.runtime import TFLiteClassifier


def _probe(tiny) -> tuple[np.ndarray, np.ndarray]:
    from trainer.data import load_split

    manifest, model_path = load_verified(tiny.model_dir)
    test = load_split(tiny.data_dir, "Testing", spec=manifest.preprocess, limit=6,
                      use_cache=False)
    images = scale(test.images, manifest.preprocess)
    return images, TFLiteClassifier(model_path, manifest).predict(images)


@pytest.mark.slow
def test_probe_explains_a_runtime_that_is_not_installed(tiny_int8):
    images, reference = _probe(tiny_int8)
    try:
        import tflite_runtime  # noqa: F401
        pytest.skip("tflite-runtime is installed in this environment")
    except ImportError:
        pass
    check = check_subprocess("tflite-runtime", sys.executable, tiny_int8.model_dir, images,
                             reference, "ai-edge-litert")
    assert not check.ok
    assert "RuntimeUnavailableError" in check.error and "tflite-runtime" in check.error


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get(TFLITE_RUNTIME_ENV),
                    reason=f"set {TFLITE_RUNTIME_ENV} to the python of a venv with "
                           "'tflite-runtime==2.14.0' 'numpy<2' pillow to run this check")
def test_int8_model_verifies_in_tflite_runtime_venv(tiny_run, tmp_path):
    data_dir, run_dir = tiny_run
    outcome = convert_tiny(run_dir, data_dir, tmp_path / "out",
                           require_runtimes=("tflite-runtime",))
    assert outcome.passed, outcome.summary
    manifest, _ = load_verified(tmp_path / "out")
    verified = {r["name"]: r for r in manifest.verified_runtimes}
    assert set(verified) == {"ai-edge-litert", "tflite-runtime"}
    tflrt = verified["tflite-runtime"]
    assert tflrt["numpy"].startswith("1.")  # it really ran in the numpy<2 environment
    assert tflrt["max_abs_prob_diff"] <= MAX_PROB_DIFF and tflrt["top1_agreement_pct"] == 100.0
    assert tflrt["compared_with"] == "ai-edge-litert"
    assert tflrt["accepted_by"] == f"within {MAX_PROB_DIFF} of ai-edge-litert"
    # both runtimes measured against the float model on the same probe images
    assert tflrt["top1_agreement_with_float_pct"] == 100.0
    assert 0 <= verified["ai-edge-litert"]["max_abs_diff_from_float"] < 0.2


def _probs(rng, n=64, classes=4, sharp=3.0):
    logits = sharp * rng.standard_normal((n, classes))
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _nudged(probs, rng, size):
    """``probs`` moved by up to ``size`` per entry (rounding-like noise), top-1 unchanged."""
    out = np.clip(probs + rng.uniform(-size, size, probs.shape), 1e-6, None)
    out /= out.sum(1, keepdims=True)
    top = probs.argmax(1)
    clash = out.argmax(1) != top
    out[clash] = probs[clash]
    return out


def test_judge_accepts_a_runtime_within_the_plain_tolerance():
    from converters.runtimes import judge

    rng = np.random.default_rng(0)
    reference = _probs(rng)
    accepted, refused = judge(_nudged(reference, rng, 0.01), reference, "ai-edge-litert",
                              None, 98.0)
    assert refused == "" and accepted == f"within {MAX_PROB_DIFF} of ai-edge-litert"


def test_judge_accepts_different_rounding_that_is_as_faithful_to_the_float_model():
    # issue 12's residual networks: XNNPACK and the reference kernels each stand ~0.1 from
    # the float model and 0.06-0.08 from each other; both are equally good int8 versions
    from converters.runtimes import Closeness, judge

    rng = np.random.default_rng(1)
    float_probs = _probs(rng)
    xnnpack, reference_kernels = (_nudged(float_probs, rng, 0.06),
                                  _nudged(float_probs, rng, 0.06))
    assert Closeness.of(reference_kernels, xnnpack).max_abs_diff > MAX_PROB_DIFF
    accepted, refused = judge(reference_kernels, xnnpack, "ai-edge-litert", float_probs, 98.0)
    assert refused == "", refused
    assert accepted.startswith("as close to the float model as ai-edge-litert")


def test_judge_refuses_a_runtime_that_runs_the_model_differently():
    from converters.runtimes import judge

    rng = np.random.default_rng(2)
    float_probs = _probs(rng)
    xnnpack = _nudged(float_probs, rng, 0.01)
    misread = _nudged(float_probs[:, ::-1], rng, 0.01)  # e.g. outputs read in another order
    accepted, refused = judge(misread, xnnpack, "ai-edge-litert", float_probs, 98.0)
    assert accepted == ""
    assert "differ from ai-edge-litert" in refused and "from the float model" in refused
    # without the float model's probabilities only the plain tolerance speaks
    _, refused = judge(misread, xnnpack, "ai-edge-litert", None, 98.0)
    assert refused.startswith("outputs differ from ai-edge-litert") and "float" not in refused


def test_judge_refuses_a_runtime_that_changes_answers_the_other_keeps():
    from converters.runtimes import judge

    float_probs = np.tile([0.38, 0.32, 0.16, 0.14], (64, 1))
    xnnpack = float_probs.copy()
    flipped = xnnpack.copy()
    flipped[:4] = xnnpack[:4][:, [1, 0, 2, 3]]  # 4 of 64 answers changed by 0.06 each
    accepted, refused = judge(flipped, xnnpack, "ai-edge-litert", float_probs, 98.0)
    assert accepted == ""
    assert "float model's answer on 93.8% of the probe images, ai-edge-litert on 100.0% " \
           "(wanted 98.0%)" in refused
    # one flip in 64 is within the gate's own --min-agreement 98%
    flipped[1:4] = xnnpack[1:4]
    accepted, refused = judge(flipped, xnnpack, "ai-edge-litert", float_probs, 98.0)
    assert refused == "" and accepted.startswith("as close to the float model")


def test_judge_weighs_the_other_runtime_against_the_spread_the_gate_accepted():
    # the CPU-trained dsconv_cbam_res (2026-12-04): on the 64 probe pictures XNNPACK stood
    # 0.022 from the float model and the reference kernels 0.0753 (same answers), but on the
    # whole test set XNNPACK's largest distance was 0.188, which the gate had accepted; the
    # reference kernels were as faithful there (99.77% top-1 agreement, 98.32% accuracy)
    from converters.runtimes import judge

    float_probs = np.tile([0.70, 0.10, 0.10, 0.10], (64, 1))
    xnnpack, reference_kernels = float_probs.copy(), float_probs.copy()
    xnnpack[0] = [0.678, 0.122, 0.10, 0.10]
    reference_kernels[0] = [0.6247, 0.1753, 0.10, 0.10]
    accepted, refused = judge(reference_kernels, xnnpack, "ai-edge-litert", float_probs, 98.0)
    assert accepted == "" and "(allowed 0.0750)" in refused  # the probe alone: refused
    accepted, refused = judge(reference_kernels, xnnpack, "ai-edge-litert", float_probs, 98.0,
                              reference_spread=0.188)
    assert refused == "" and accepted == ("as close to the float model as ai-edge-litert "
                                          "(0.0753 vs 0.0220, 0.1880 on the evaluation set)")
    # the spread raises the bar for distance only: changed answers are still refused
    flipped = reference_kernels.copy()
    flipped[:4] = [0.10, 0.70, 0.10, 0.10]
    _, refused = judge(flipped, xnnpack, "ai-edge-litert", float_probs, 98.0,
                       reference_spread=1.0)
    assert "float model's answer on 93.8%" in refused
