"""The set-valued cross-entropy (trainer.losses) and the ``lesion-any`` recipe that uses it."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from trainer.losses import (  # noqa: E402
    CROSSENTROPY,
    SET_CROSSENTROPY,
    SetCrossentropy,
    loss_name,
    training_loss,
)

LOGITS = np.array([[2.0, -1.0, 0.5, 0.1],
                   [-0.3, 0.2, 3.0, -2.0],
                   [0.0, 0.0, 0.0, 0.0],
                   [5.0, -4.0, 1.0, 2.5]], dtype=np.float32)
ONE_HOT = np.eye(4, dtype=np.float32)[[0, 2, 3, 1]]
ANY_TUMOUR = np.array([1, 1, 0, 1], dtype=np.float32)  # glioma, meningioma, pituitary


def _value(loss, y_true, y_pred) -> np.ndarray:
    loss.reduction = None  # one value per row
    return keras.ops.convert_to_numpy(loss(y_true, y_pred))


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
@pytest.mark.parametrize("from_logits", [True, False])
def test_on_one_hot_rows_it_is_the_keras_crossentropy_with_the_same_smoothing(smoothing,
                                                                                from_logits):
    y_pred = LOGITS if from_logits else _softmax(LOGITS)
    ours = _value(SetCrossentropy(from_logits=from_logits, label_smoothing=smoothing),
                  ONE_HOT, y_pred)
    theirs = _value(keras.losses.CategoricalCrossentropy(from_logits=from_logits,
                                                         label_smoothing=smoothing),
                    ONE_HOT, y_pred)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_on_a_set_row_it_is_minus_the_log_of_the_sets_probability():
    rows = np.stack([ANY_TUMOUR] * len(LOGITS))
    p = _softmax(LOGITS)
    expected = -np.log((p * rows).sum(axis=1))
    np.testing.assert_allclose(_value(SetCrossentropy(from_logits=True), rows, LOGITS),
                               expected, rtol=1e-5)
    smoothed = 0.9 * expected - 0.1 * np.log(p).mean(axis=1)
    np.testing.assert_allclose(
        _value(SetCrossentropy(from_logits=True, label_smoothing=0.1), rows, LOGITS),
        smoothed, rtol=1e-5)


def test_any_tumour_answer_satisfies_the_set_and_the_uniform_target_does_not():
    # the reason for this loss: on a drawn lesion, a confident glioma answer is as good as
    # any other tumour answer; the 1/3-each target under the ordinary cross-entropy charges
    # it nearly as much as a confident "no tumour"
    confident_glioma = np.log(np.array([[0.9, 0.03, 0.04, 0.03]], dtype=np.float32))
    hedged = np.log(np.array([[0.32, 0.32, 0.04, 0.32]], dtype=np.float32))
    no_tumour = np.log(np.array([[0.05, 0.05, 0.85, 0.05]], dtype=np.float32))
    set_loss = SetCrossentropy(from_logits=True)
    uniform = keras.losses.CategoricalCrossentropy(from_logits=True)
    row, third = ANY_TUMOUR[None], (ANY_TUMOUR / 3)[None]
    glioma, hedge, none = (float(_value(set_loss, row, x)[0])
                           for x in (confident_glioma, hedged, no_tumour))
    assert glioma < 0.05 and hedge < 0.05 and none > 1.8
    glioma_u, hedge_u, none_u = (float(_value(uniform, third, x)[0])
                                 for x in (confident_glioma, hedged, no_tumour))
    assert hedge_u < 1.2 < glioma_u and glioma_u > 0.75 * none_u


def test_its_gradient_is_finite_and_moves_mass_off_the_classes_outside_the_set():
    import tensorflow as tf  # the host backend; the loss itself is keras.ops only

    logits = tf.Variable(np.array([[-30.0, -30.0, 40.0, -30.0]], dtype=np.float32))
    with tf.GradientTape() as tape:
        value = SetCrossentropy(from_logits=True)(ANY_TUMOUR[None], logits)
    gradient = tape.gradient(value, logits).numpy()
    assert np.all(np.isfinite(gradient))
    assert gradient[0, 2] > 0  # descent lowers "no tumour"
    assert np.all(gradient[0, [0, 1, 3]] < 0)  # and raises every tumour class alike
    np.testing.assert_allclose(gradient[0, 0], gradient[0, 1])


def test_it_round_trips_through_its_config_and_keras_serialization():
    loss = SetCrossentropy(from_logits=True, label_smoothing=0.2)
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(again, SetCrossentropy)
    assert again.from_logits and again.label_smoothing == pytest.approx(0.2)
    with pytest.raises(ValueError, match="label_smoothing"):
        SetCrossentropy(label_smoothing=1.0)


def test_each_augmentation_policy_gets_its_loss():
    assert loss_name("lesion-any") == SET_CROSSENTROPY
    for policy in ("none", "strong", "lesion", "fourier"):
        assert loss_name(policy) == CROSSENTROPY
    assert isinstance(training_loss("lesion-any", 0.1, True), SetCrossentropy)
    assert isinstance(training_loss("lesion", 0.1, True), keras.losses.CategoricalCrossentropy)


# -- the lesion-any policy: the same painting, the set as target ---------------------------

def test_any_targets_mark_the_tumour_classes_and_paint_exactly_what_uniform_paints():
    pytest.importorskip("scipy")
    from test_trainer_lesions import _batch

    from trainer.lesions import paint_lesions

    images, targets = _batch()
    uniform = paint_lesions(images, targets, 2, np.random.default_rng(4), p=1.0)
    anyone = paint_lesions(images, targets, 2, np.random.default_rng(4), p=1.0, target="any")
    np.testing.assert_array_equal(uniform[0], anyone[0])
    painted = targets[:, 2] == 1.0
    np.testing.assert_array_equal(anyone[1][painted], np.tile(ANY_TUMOUR, (painted.sum(), 1)))
    np.testing.assert_array_equal(anyone[1][~painted], targets[~painted])
    with pytest.raises(ValueError, match="target"):
        paint_lesions(images, targets, 2, np.random.default_rng(4), target="soft")


def test_the_lesion_any_batches_differ_from_lesion_ones_only_in_their_targets():
    pytest.importorskip("scipy")
    from test_trainer_lesions import _batch

    from trainer.batches import TrainingBatches

    images, targets = _batch()
    labels = targets.argmax(axis=1)
    lesion = TrainingBatches(images, labels, 4, 8, seed=3, augment="lesion", negative_class=2)
    anyone = TrainingBatches(images, labels, 4, 8, seed=3, augment="lesion-any",
                             negative_class=2)
    painted_rows = 0
    for epoch in range(3):
        (x, y), (x_any, y_any) = lesion.batch(epoch, 0), anyone.batch(epoch, 0)
        np.testing.assert_array_equal(x, x_any)
        np.testing.assert_array_equal(y_any > 0, y > 0)
        painted = y_any.sum(axis=1) > 1
        painted_rows += int(painted.sum())
    assert painted_rows > 0


def _lesion_any_config(tmp_path, name: str, epochs: int):
    """A tiny lesion-any run (MLP, 32 x 32) on synthetic pictures."""
    pytest.importorskip("scipy")
    from test_trainer_lesions import SPEC
    from trainer_testdata import make_dataset

    from trainer.train import TrainConfig

    data = make_dataset(tmp_path / "data", train_per_class=16, test_per_class=4)
    return TrainConfig(arch="mlp", data_dir=str(data), runs_dir=str(tmp_path / "runs"),
                       name=name, epochs=epochs, batch_size=16, seed=5, spec=SPEC,
                       use_cache=False, model_options={"hidden_units": (16,)},
                       val_fraction=0.25, recipe="lesion-any", augment="lesion-any",
                       label_smoothing=0.1)


def test_a_lesion_any_run_trains_with_the_set_loss_and_records_it(tmp_path):
    from trainer.recipes import RECIPES, resolve
    from trainer.train import train

    assert resolve("lesion-any", {})["augment"] == "lesion-any"
    assert {k: v for k, v in RECIPES["lesion-any"].to_dict().items() if k != "augment"} == {
        k: v for k, v in RECIPES["lesion"].to_dict().items() if k != "augment"}
    run = train(_lesion_any_config(tmp_path, "any", epochs=2), verbose=0)
    record = run.read_record().raw
    assert record["status"] == "completed" and record["augment"] == "lesion-any"
    assert record["loss"] == SET_CROSSENTROPY
    assert record["loss_settings"] == {"name": SET_CROSSENTROPY, "from_logits": True,
                                       "label_smoothing": 0.1}
    assert any("set_crossentropy" in line for line in record["deviations"])
    assert np.all(np.isfinite(run.read_history()["loss"]))


def test_a_lesion_any_run_resumes_in_a_new_process_with_its_loss(tmp_path):
    # the checkpoint is a compiled model whose loss is SetCrossentropy: a fresh process
    # that resumes it must know that class before loading (trainer.train.resume)
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from trainer.train import train

    run = train(_lesion_any_config(tmp_path, "anyresume", epochs=1), verbose=0)
    root = Path(__file__).resolve().parents[2]
    code = ("import sys; from trainer.train import resume; "
            "resume(sys.argv[1], epochs=2, verbose=0)")
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-c", code, str(run.path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((run.path / "run.json").read_text())
    assert record["status"] == "completed" and record["loss"] == SET_CROSSENTROPY
    assert len(run.read_history()["loss"]) == 2
