"""Training on data the tests make: learning, the run folder, resume, BN recalibration."""

from __future__ import annotations

import json

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from trainer_testdata import make_dataset  # noqa: E402

from edge.preprocess import PreprocessSpec, scale  # noqa: E402
from trainer.data import load_split  # noqa: E402
from trainer.errors import OptionError, RunError  # noqa: E402
from trainer.runs import RunFolder  # noqa: E402
from trainer.train import TrainConfig, resume, train  # noqa: E402

SPEC = PreprocessSpec(height=32, width=32)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("synthetic"), train_per_class=24,
                        test_per_class=8)


@pytest.fixture(scope="module")
def learned_run(dataset, tmp_path_factory):
    """dsconv_cbam_gap (BN blocks) trained for a few seconds, BN statistics recalibrated."""
    config = TrainConfig(arch="dsconv_cbam_gap", data_dir=str(dataset),
                         runs_dir=str(tmp_path_factory.mktemp("runs")), name="learned",
                         epochs=5, batch_size=16, val_fraction=0.25, recalibrate_bn=6,
                         spec=SPEC, use_cache=False)
    return train(config, verbose=0)


def _test_accuracy(model_path, dataset) -> float:
    import trainer.layers  # noqa: F401

    model = keras.saving.load_model(model_path, compile=False)
    test = load_split(dataset, "Testing", SPEC, use_cache=False)
    probs = keras.ops.convert_to_numpy(model(scale(test.images, SPEC), training=False))
    return float(np.mean(probs.argmax(axis=1) == test.labels))


@pytest.mark.slow
def test_a_small_synthetic_problem_is_learned(learned_run, dataset):
    assert _test_accuracy(learned_run.model, dataset) >= 0.75  # chance is 0.25
    record = learned_run.read_record().raw
    assert record["best_val_accuracy"] >= 0.75 and record["bn_recalibration_batches"] == 6


@pytest.mark.slow
def test_the_run_folder_holds_everything(learned_run):
    record = learned_run.read_record().raw
    assert record["status"] == "completed" and record["epochs_done"] == 5
    assert record["labels"] == ["glioma", "meningioma", "notumor", "pituitary"]
    assert PreprocessSpec.from_dict(record["preprocess"]) == SPEC
    assert record["optimizer"] == {"name": "adam", "learning_rate": 1e-3, "beta_1": 0.9,
                                   "beta_2": 0.99, "epsilon": 1e-7}
    assert record["loss"] == "categorical_crossentropy"
    assert record["environment"]["backend"] == keras.backend.backend()
    assert "keras" in record["environment"]["packages"] and record["environment"]["devices"]
    assert any("GlobalAveragePooling2D" in d for d in record["deviations"])
    assert record["no_imagenet_weights"] is False
    assert record["data"]["train"] == 72 and record["data"]["validation"] == 24
    assert 1 <= record["best_epoch"] <= 5
    history = json.loads((learned_run.path / "history.json").read_text())
    assert len(history["loss"]) == 5 and len(history["val_accuracy"]) == 5
    csv_lines = (learned_run.path / "history.csv").read_text().splitlines()
    assert csv_lines[0].startswith("epoch,loss,accuracy,val_loss,val_accuracy")
    assert len(csv_lines) == 6
    split = json.loads((learned_run.path / "data_split.json").read_text())
    assert set(split["train"]).isdisjoint(split["validation"])
    state = learned_run.read_state()
    assert state["epochs_done"] == 5 and (learned_run.checkpoints / state["checkpoint"]).is_file()
    assert learned_run.best_checkpoint.is_file()
    # model.keras carries no optimizer state: much smaller than a checkpoint
    assert learned_run.model.stat().st_size < 0.7 * (learned_run.checkpoints /
                                                     state["checkpoint"]).stat().st_size


class _InterruptAfter(keras.callbacks.Callback):
    def __init__(self, epochs: int) -> None:
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epochs:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_resume_after_an_interruption_equals_an_uninterrupted_run(dataset, tmp_path):
    base = {"arch": "mlp", "data_dir": str(dataset), "runs_dir": str(tmp_path), "epochs": 3,
            "batch_size": 16, "limit": 80, "augment": True, "seed": 7, "spec": SPEC,
            "use_cache": False, "model_options": {"hidden_units": (16,)}}
    whole = train(TrainConfig(name="whole", **base), verbose=0)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(name="cut", **base), verbose=0, callbacks=[_InterruptAfter(1)])
    cut = RunFolder.open(tmp_path / "cut")
    assert cut.read_record().raw["status"] == "interrupted"
    assert cut.read_state()["epochs_done"] == 1 and not cut.model.exists()
    resume(cut.path, verbose=0)
    assert cut.read_record().raw["status"] == "completed"
    final = [keras.saving.load_model(run.checkpoints / "epoch-003.keras").get_weights()
             for run in (whole, cut)]
    for a, b in zip(*final, strict=True):
        np.testing.assert_array_equal(a, b)
    history = [json.loads((run.path / "history.json").read_text()) for run in (whole, cut)]
    assert history[0]["loss"] == history[1]["loss"]
    data = whole.read_record().raw["data"]
    assert data["train"] + data["validation"] == 80
    with pytest.raises(RunError, match="already trained 3 of 3"):
        resume(cut.path, verbose=0)


def test_resume_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(RunError, match="does not exist"):
        resume(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match="no run.json"):
        resume(tmp_path / "empty")


def test_batchnorm_recalibration_sets_exact_population_statistics():
    from trainer.bn import recalibrate_batchnorm

    inputs = keras.Input((4,))
    bn = keras.layers.BatchNormalization(momentum=0.99)
    model = keras.Model(inputs, bn(inputs))
    model(np.zeros((1, 4), "float32"))
    bn.moving_mean.assign(np.full(4, 50.0, "float32"))
    bn.moving_variance.assign(np.full(4, 1e-6, "float32"))
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, (32, 4)).astype("float32") for _ in range(5)]
    assert recalibrate_batchnorm(model, iter(batches)) == 5
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_mean),
                               np.mean([b.mean(0) for b in batches], axis=0), rtol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_variance),
                               np.mean([b.var(0) for b in batches], axis=0), rtol=1e-3)
    assert bn.momentum == pytest.approx(0.99)


@pytest.mark.slow
def test_diagnose_reports_the_first_steps(dataset, tmp_path):
    from trainer.diagnose import diagnose

    out = tmp_path / "diagnose.json"
    report = diagnose("dsconv_cbam", str(dataset), spec=SPEC, limit=32, steps=2, batch_size=8,
                      probe_size=8, out=str(out))
    assert json.loads(out.read_text())["arch"] == "dsconv_cbam"
    steps = report["steps"]
    assert [s["step"] for s in steps] == [0, 1, 2]
    assert len(steps[0]["dead_channels"]) == 3 and len(steps[0]["mean_activation"]) == 3
    assert steps[0]["conv_bias_mean"] == [0.0, 0.0, 0.0]  # biases start at zero
    assert all(0.0 <= d <= 1.0 for s in steps for d in s["dead_channels"])
    assert steps[1]["dense_update_relative"] > 0 and "batch_loss" in steps[1]
    assert 1 <= steps[0]["distinct_predictions"] <= 4


@pytest.mark.slow
def test_a_time_limit_stops_at_an_epoch_end_and_resume_continues(dataset, tmp_path):
    config = TrainConfig(arch="mlp", data_dir=str(dataset), runs_dir=str(tmp_path),
                         name="timed", epochs=3, batch_size=16, limit=40, spec=SPEC,
                         use_cache=False, model_options={"hidden_units": (8,)})
    run = train(config, verbose=0, time_limit=0.01)  # the first epoch ends past it: stop
    record = run.read_record().raw
    assert record["status"] == "stopped_time_limit" and record["epochs_done"] == 1
    assert run.model.is_file()  # the best epoch so far is usable
    resume(run.path, verbose=0, time_limit=3600)
    record = run.read_record().raw
    assert record["status"] == "completed" and record["epochs_done"] == 3
    with pytest.raises(OptionError, match="positive number of seconds"):
        train(TrainConfig(**{**config.__dict__, "name": "bad"}), verbose=0, time_limit=0)
