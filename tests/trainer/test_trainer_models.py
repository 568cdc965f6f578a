"""The architectures: the paper's model layer by layer, CBAM maths, every model's save/load."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from trainer.errors import ArchitectureError, WeightsNotFoundError  # noqa: E402
from trainer.layers import CBAM, ChannelAttention, SpatialAttention  # noqa: E402
from trainer.models import (  # noqa: E402
    ARCHITECTURE_INFO,
    ARCHITECTURES,
    MOBILENETV2_WEIGHTS_FILE,
    build_model,
    deviations,
)

SMALL = (32, 32, 3)


@pytest.fixture(scope="module")
def paper_model():
    return build_model("dsconv_cbam")


def test_paper_architecture_layer_by_layer(paper_model):
    layers = paper_model.layers[1:]  # after the InputLayer
    expected = []
    for filters in (32, 64, 128):
        expected += [("SeparableConv2D", filters), ("MaxPooling2D", None), ("CBAM", filters)]
    # Dense(4) then softmax as its own layer: Dense(4, softmax), with the logits named
    # (trainer.logits trains on them)
    expected += [("Flatten", None), ("Dense", 128), ("Dense", 4), ("Activation", None)]
    assert [type(layer).__name__ for layer in layers] == [t for t, _ in expected]
    channels = None
    for layer, (kind, width) in zip(layers, expected, strict=True):
        if kind == "SeparableConv2D":
            assert layer.filters == width
            assert tuple(layer.kernel_size) == (3, 3)
            assert layer.padding == "same"
            assert layer.activation.__name__ == "relu"
            assert layer.use_bias
            channels = width
        elif kind == "MaxPooling2D":
            assert tuple(layer.pool_size) == (2, 2)
        elif kind == "CBAM":
            assert layer.ratio == 16 and layer.kernel_size == 5
            assert layer.channel.hidden.units == channels // 16
            assert layer.channel.expand.units == channels
            assert tuple(layer.spatial.conv.kernel_size) == (5, 5)
            assert layer.spatial.conv.filters == 1
            assert layer.spatial.conv.activation.__name__ == "sigmoid"
    assert layers[-3].activation.__name__ == "relu"
    assert layers[-2].name == "logits" and layers[-2].activation.__name__ == "linear"
    assert layers[-1].name == "predictions" and layers[-1].activation.__name__ == "softmax"
    assert paper_model.input_shape == (None, 224, 224, 3)
    assert paper_model.output_shape == (None, 4)


def test_paper_parameter_counts(paper_model):
    assert paper_model.count_params() == 12_860_230
    dense = paper_model.get_layer("dense")
    assert dense.count_params() == 100_352 * 128 + 128
    assert dense.count_params() / paper_model.count_params() > 0.998
    assert build_model("dsconv_cbam", padding="valid").count_params() == 11_090_758


@pytest.mark.parametrize(("arch", "options", "count"), [
    ("dsconv_cbam_bn", {}, 12_860_902),
    ("dsconv_cbam_gap", {}, 32_230),
    ("dsconv_cbam_gap", {"batch_norm": False}, 31_558),
    ("mlp", {}, 19_268_228),
    ("mobilenetv2", {"backbone_weights": "none"}, 2_422_468),
])
def test_parameter_counts_of_the_variants(arch, options, count):
    assert build_model(arch, **options).count_params() == count


def test_bn_variant_blocks():
    model = build_model("dsconv_cbam_bn", input_shape=SMALL)
    for stage in (1, 2, 3):
        assert not model.get_layer(f"sepconv{stage}").use_bias
        assert model.get_layer(f"sepconv{stage}").activation.__name__ == "linear"
        assert model.get_layer(f"bn{stage}").momentum == pytest.approx(0.9)
        assert isinstance(model.get_layer(f"relu{stage}"), keras.layers.ReLU)
    assert build_model("dsconv_cbam_bn", input_shape=SMALL,
                       bn_momentum=0.99).get_layer("bn1").momentum == pytest.approx(0.99)


def test_channel_attention_one_call_equals_two_calls():
    rng = np.random.default_rng(0)
    x = rng.random((2, 6, 6, 32)).astype("float32")
    layer = ChannelAttention(ratio=16)
    out = keras.ops.convert_to_numpy(layer(x))
    w1, b1 = layer.hidden.get_weights()
    w2, b2 = layer.expand.get_weights()

    def mlp(v):  # the textbook CBAM: the shared MLP applied to each descriptor separately
        return np.maximum(v @ w1 + b1, 0) @ w2 + b2

    gate = 1 / (1 + np.exp(-(mlp(x.mean(axis=(1, 2))) + mlp(x.max(axis=(1, 2))))))
    np.testing.assert_allclose(out, x * gate[:, None, None, :], rtol=1e-5, atol=1e-6)


def test_spatial_attention_matches_its_definition():
    rng = np.random.default_rng(1)
    x = rng.random((2, 8, 8, 4)).astype("float32")
    layer = SpatialAttention(kernel_size=5)
    out = keras.ops.convert_to_numpy(layer(x))
    descriptors = np.concatenate([x.mean(-1, keepdims=True), x.max(-1, keepdims=True)], -1)
    gate = keras.ops.convert_to_numpy(layer.conv(descriptors))
    assert gate.shape == (2, 8, 8, 1)
    assert np.all((gate > 0) & (gate < 1))
    np.testing.assert_allclose(out, x * gate, rtol=1e-6)


def test_cbam_is_channel_then_spatial_and_serializable():
    layer = CBAM(ratio=8, kernel_size=3)
    x = np.random.default_rng(2).random((1, 4, 4, 16)).astype("float32")
    expected = layer.spatial(layer.channel(x))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)),
                               keras.ops.convert_to_numpy(expected), rtol=1e-6)
    clone = CBAM.from_config(layer.get_config())
    assert (clone.ratio, clone.kernel_size) == (8, 3)
    assert keras.saving.get_registered_name(CBAM) == "neuroedge>CBAM"


def _small(arch):
    options = {"backbone_weights": "none"} if arch == "mobilenetv2" else {}
    return build_model(arch, input_shape=SMALL, **options)


@pytest.mark.parametrize("arch", [
    pytest.param(a, marks=pytest.mark.slow) if a == "mobilenetv2" else a for a in ARCHITECTURES])
def test_save_load_round_trip(arch, tmp_path):
    model = _small(arch)
    x = np.random.default_rng(3).random((2, *SMALL)).astype("float32")
    expected = keras.ops.convert_to_numpy(model(x, training=False))
    path = tmp_path / f"{arch}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)  # no custom_objects: the layers are registered
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x, training=False)), expected,
                               rtol=1e-5, atol=1e-6)
    assert [type(layer).__name__ for layer in loaded.layers] == \
        [type(layer).__name__ for layer in model.layers]
    assert loaded.count_params() == model.count_params()


def test_mobilenetv2_rescales_inputs_to_minus_one_one():
    model = _small("mobilenetv2")
    rescale = model.get_layer("to_minus1_1")
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(rescale(np.array([[0.0, 0.5, 1.0]], dtype="float32"))),
        [[-1.0, 0.0, 1.0]])
    backbone = model.layers[2]
    assert backbone.trainable  # from scratch: a frozen random backbone would learn nothing


def test_mobilenetv2_without_weights_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(WeightsNotFoundError) as info:
        build_model("mobilenetv2", input_shape=SMALL)
    message = str(info.value)
    assert MOBILENETV2_WEIGHTS_FILE in message
    assert str(tmp_path / "models" / MOBILENETV2_WEIGHTS_FILE) in message
    assert "--backbone-weights none" in message
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        build_model("mobilenetv2", input_shape=SMALL, backbone_weights=tmp_path / "nope.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(WeightsNotFoundError, match="could not load"):
        build_model("mobilenetv2", input_shape=SMALL, backbone_weights=junk)


@pytest.mark.slow
def test_mobilenetv2_loads_a_keras_h5_weights_file_and_freezes(tmp_path):
    h5py = pytest.importorskip("h5py")
    from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

    source = keras.applications.MobileNetV2(input_shape=SMALL, include_top=False, weights=None)
    path = tmp_path / MOBILENETV2_WEIGHTS_FILE
    with h5py.File(path, "w") as handle:  # the layout of Keras' published no-top files
        save_weights_to_hdf5_group(handle, source)
    model = build_model("mobilenetv2", input_shape=SMALL, backbone_weights=path)
    backbone = model.layers[2]
    assert not backbone.trainable
    for mine, theirs in zip(backbone.get_weights(), source.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, theirs)
    assert model.count_params() - sum(int(np.prod(w.shape)) for w in model.trainable_weights) \
        == source.count_params()


def test_unknown_architecture_and_options_are_clear_errors():
    with pytest.raises(ArchitectureError, match="choose one of dsconv_cbam"):
        build_model("resnet")
    with pytest.raises(ArchitectureError, match="does not take option"):
        build_model("mlp", padding="same")
    with pytest.raises(ArchitectureError, match="padding"):
        build_model("dsconv_cbam", input_shape=SMALL, padding="full")


def test_every_variant_documents_its_deviations():
    assert deviations("dsconv_cbam") == []
    for arch in ("dsconv_cbam_bn", "dsconv_cbam_gap", "mlp", "mobilenetv2"):
        assert deviations(arch), arch
        assert ARCHITECTURE_INFO[arch].summary
    assert any("no ImageNet" in d
               for d in deviations("mobilenetv2", {"backbone_weights": "none"}))
    assert not any("Batch" in d for d in deviations("dsconv_cbam_gap", {"batch_norm": False}))
