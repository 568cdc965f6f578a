"""Training throughput: real optimiser steps timed apart from compilation."""

from __future__ import annotations

import json
from functools import partial

import numpy as np
import pytest
from click.testing import CliRunner

keras = pytest.importorskip("keras")

from trainer.cli import main  # noqa: E402
from trainer.throughput import measure  # noqa: E402


def test_measure_times_real_training_steps():
    record = measure("mlp", batch_size=8, steps=3, warmup=1, image_size=16, hidden_units=(4,))
    assert record["arch"] == "mlp" and record["backend"] == keras.backend.backend()
    assert record["images_per_second"] > 0 and record["median_step_seconds"] > 0
    assert record["images_per_second"] == pytest.approx(8 / record["median_step_seconds"],
                                                        rel=0.01)
    assert record["devices"] and record["final_loss"] == record["final_loss"]  # not NaN


def test_throughput_command_prints_and_writes_json(tmp_path):
    out = tmp_path / "t.json"
    result = CliRunner().invoke(main, ["throughput", "--arch", "mlp", "--image-size", "16",
                                       "--mlp-hidden", "4", "--batch-size", "4", "--steps", "2",
                                       "--warmup", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "images/s" in result.output
    assert json.loads(out.read_text())["batch_size"] == 4
    result = CliRunner().invoke(main, ["throughput", "--arch", "mlp", "--steps", "0"])
    assert result.exit_code != 0 and "--steps" in result.output
    assert "Traceback" not in result.output


# --- the TensorFlow CPU kernels (trainer/cpu_kernels.py) and the interleaved comparison ---

tf_only = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                             reason="the CPU kernels replace TensorFlow backend functions")


def _grads(fn, x, *weights, dy_seed=3):
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch([x, *weights])
        y = fn(x, *weights)
    dy = tf.random.stateless_normal(tf.shape(y), [dy_seed, 0])
    return y, tape.gradient(y, [x, *weights], output_gradients=dy)


@tf_only
def test_pool_gradient_is_bit_identical_to_maxpoolgrad_with_ties():
    import tensorflow as tf

    from trainer.cpu_kernels import _pool2x2

    rng = np.random.default_rng(1)
    x = np.maximum(rng.standard_normal((3, 8, 6, 5)).astype(np.float32), 0)  # ReLU zeros tie
    x[..., 0] = np.round(x[..., 0])  # positive ties too
    x[0, :2, :2, 1] = 7.0  # a window of four equal maxima
    x = tf.constant(x)
    stock, stock_grad = _grads(lambda t: tf.nn.max_pool2d(t, 2, 2, "VALID"), x)
    fast, fast_grad = _grads(_pool2x2, x)
    np.testing.assert_array_equal(fast.numpy(), stock.numpy())
    np.testing.assert_array_equal(fast_grad[0].numpy(), stock_grad[0].numpy())
    # the tied window: everything went to its first element, as MaxPoolGrad does
    assert fast_grad[0][0, 0, 0, 1] != 0
    assert np.all(fast_grad[0].numpy()[0, :2, :2, 1].ravel()[1:] == 0)


@tf_only
@pytest.mark.parametrize("channels", [3, 8])  # composed 3x3 conv / depthwise + matmul
def test_separable_conv_kernels_match_keras_up_to_rounding(channels):
    import tensorflow as tf
    from keras.src import backend as keras_backend

    from trainer.cpu_kernels import separable_conv

    stock_fn = keras_backend.nn.separable_conv
    rng = np.random.default_rng(2)
    x = tf.constant(rng.standard_normal((2, 10, 12, channels)).astype(np.float32))
    dw = tf.constant(rng.standard_normal((3, 3, channels, 1)).astype(np.float32))
    pw = tf.constant(rng.standard_normal((1, 1, channels, 6)).astype(np.float32))
    for padding in ("same", "valid"):
        stock, stock_grads = _grads(partial(stock_fn, padding=padding), x, dw, pw)
        fast, fast_grads = _grads(
            partial(separable_conv, padding=padding, _stock=stock_fn), x, dw, pw)
        assert fast.shape == stock.shape
        np.testing.assert_allclose(fast.numpy(), stock.numpy(), rtol=1e-5, atol=1e-5)
        for a, b in zip(fast_grads, stock_grads, strict=True):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)
    calls = []
    strided = separable_conv(x, dw, pw, strides=2, _stock=lambda *a: calls.append(a) or "stock")
    assert strided == "stock" and len(calls) == 1  # anything unusual goes to Keras


@tf_only
def test_kernels_are_scoped_and_leave_saved_models_unchanged(tmp_path):
    from keras.src import backend as keras_backend

    import trainer.layers  # noqa: F401 - registers CBAM for loading
    from trainer.cpu_kernels import cpu_kernels
    from trainer.models import build_model

    stock_pool = keras_backend.nn.max_pool
    keras.utils.set_random_seed(0)
    model = build_model("dsconv_cbam", input_shape=(32, 32, 3))
    before = tmp_path / "before.keras"
    model.save(before)  # saved with Keras' own kernels, as every existing model was
    x = np.random.default_rng(0).random((4, 32, 32, 3), dtype=np.float32)
    reference = keras.ops.convert_to_numpy(model(x))
    with cpu_kernels() as active:
        assert active  # TensorFlow on a CPU-only machine
        assert keras_backend.nn.max_pool is not stock_pool
        loaded = keras.saving.load_model(before)
        inside = keras.ops.convert_to_numpy(loaded(x))
        loaded.save(tmp_path / "after.keras")
    assert keras_backend.nn.max_pool is stock_pool
    np.testing.assert_allclose(inside, reference, rtol=1e-5, atol=1e-6)
    again = keras.saving.load_model(tmp_path / "after.keras")
    assert [type(layer).__name__ for layer in again.layers] == [
        type(layer).__name__ for layer in model.layers]
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(again(x)), inside)
    with cpu_kernels(enabled=False) as active:
        assert not active and keras_backend.nn.max_pool is stock_pool


@tf_only
def test_compare_interleaves_variants_and_reports_ratios():
    from trainer.throughput import compare

    records = compare("dsconv_cbam", ("stock", "cpu-kernels"), batch_size=2, steps=2,
                      warmup=1, image_size=32)
    assert [r["variant"] for r in records] == ["stock", "cpu-kernels"]
    assert records[0]["speedup"] == 1.0 and records[1]["speedup"] > 0
    assert [r["cpu_kernels"] for r in records] == [False, True]
    # same initial weights, same batch, same mathematics: the same loss up to rounding
    assert records[1]["final_loss"] == pytest.approx(records[0]["final_loss"], rel=1e-3)
    with pytest.raises(ValueError, match="variants"):
        compare("mlp", ("stock", "fast"))


def test_throughput_compare_rejects_unknown_variants_without_traceback():
    result = CliRunner().invoke(main, ["throughput", "--arch", "mlp", "--compare", "stock,fast"])
    assert result.exit_code != 0 and "--compare" in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
@tf_only
def test_training_records_whether_the_cpu_kernels_ran(tmp_path):
    from trainer_testdata import make_dataset

    from edge.preprocess import PreprocessSpec
    from trainer.train import TrainConfig, train

    data = make_dataset(tmp_path / "data", train_per_class=6, test_per_class=1)
    base = {"arch": "dsconv_cbam", "data_dir": str(data), "runs_dir": str(tmp_path / "runs"),
            "epochs": 1, "batch_size": 8, "val_fraction": 0.25,
            "spec": PreprocessSpec(height=32, width=32), "use_cache": False}
    runs = [train(TrainConfig(name=name, cpu_kernels=on, **base), verbose=0)
            for name, on in (("kernels", True), ("stock", False))]
    assert [run.read_record().raw["cpu_kernels"] for run in runs] == [True, False]
    losses = [json.loads((run.path / "history.json").read_text())["loss"][0] for run in runs]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)  # same data order, same maths


@tf_only
def test_per_layer_profile_times_every_layer_and_rejects_compare(tmp_path):
    out = tmp_path / "layers.json"
    result = CliRunner().invoke(main, ["throughput", "--arch", "dsconv_cbam", "--image-size",
                                       "32", "--batch-size", "2", "--per-layer", "--cpu-kernels",
                                       "--json", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    assert [r["layer"] for r in rows][:3] == ["sepconv1", "pool1", "cbam1"]
    # ... Dense(128), Dense(4) "logits", softmax "predictions" (trainer.logits)
    assert [r["layer"] for r in rows][-2:] == ["logits", "predictions"] and len(rows) == 13
    assert all(r["forward_backward_ms"] > 0 and r["forward_ms"] > 0 for r in rows)
    assert sum(r["share"] for r in rows) == pytest.approx(1.0, abs=0.01)
    assert "| sepconv1 | 32x32x3 |" in result.output
    result = CliRunner().invoke(main, ["throughput", "--arch", "mlp", "--per-layer",
                                       "--compare", "stock"])
    assert result.exit_code != 0 and "--per-layer" in result.output
    assert "Traceback" not in result.output
