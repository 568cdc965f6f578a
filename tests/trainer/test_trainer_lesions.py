"""Synthetic lesions (the ``lesion`` recipe) and fine-tuning from a finished run (--init-from)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("scipy")

from trainer import lesions  # noqa: E402
from trainer.lesions import brain_mask, paint_lesions, synthetic_lesion  # noqa: E402


def _slice(size: int = 128, background: float = 0.0, seed: int = 0) -> np.ndarray:
    """A head: a bright skull ring round a grey, textured brain with dark ventricles, on a
    background of level ``background`` with noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    r = np.sqrt((yy - size / 2) ** 2 + ((xx - size / 2) / 0.85) ** 2) / (size * 0.42)
    picture = np.full((size, size), background, dtype=np.float32)
    picture[r < 1.0] = 0.9  # skull and scalp
    picture[r < 0.88] = 0.45  # brain
    picture[(np.abs(yy - size / 2) < size * 0.08) & (np.abs(xx - size / 2) < size * 0.03)] = 0.1
    picture += rng.normal(0, 0.03, picture.shape).astype(np.float32)
    return np.clip(picture, 0, 1)


def test_the_brain_mask_finds_the_head_on_a_grey_noisy_background():
    # the background of many web-collected pictures is grey and noisy, not black: the
    # fixed threshold of trainer.augment.head_mask takes it for head, this must not
    picture = _slice(background=0.12)
    mask = brain_mask(picture)
    assert not mask[:4, :4].any() and not mask[-4:, -4:].any()
    assert mask[64, 64] and mask[64, 30]  # the ventricles (dark) and the brain belong to it
    assert 0.4 < mask.mean() < 0.6


@pytest.mark.parametrize("kind", lesions.KINDS)
def test_each_kind_of_lesion_is_drawn_inside_the_head_and_changes_it(kind, monkeypatch):
    monkeypatch.setattr(lesions, "KIND_P", tuple(float(k == kind) for k in lesions.KINDS))
    picture = _slice(background=0.05)
    head = brain_mask(picture)
    changed = 0
    for seed in range(12):
        drawn = synthetic_lesion(picture, np.random.default_rng(seed))
        assert drawn is not None
        out, lesion = drawn
        assert lesion.kind == kind and out.dtype == np.float32 and out.shape == picture.shape
        assert 0.0 <= out.min() and out.max() <= 1.0
        assert lesion.mask.any() and not (lesion.mask & ~head).any()
        # the background far from the head is left alone (mass effect and halo included)
        assert np.array_equal(out[:3], picture[:3]), (seed, lesion.centre, lesion.radius)
        assert head[lesion.centre]
        # the lesion differs from the tissue it replaced, in its mean or in its rim
        difference = np.abs(out - picture)[lesion.mask].mean()
        changed += difference > 0.08
        # the same generator state draws the same lesion
        again, _ = synthetic_lesion(picture, np.random.default_rng(seed))
        np.testing.assert_array_equal(out, again)
    assert changed >= 9, f"only {changed} of 12 {kind} lesions stand out"


def test_a_forced_kind_lands_where_the_drawn_one_would():
    picture = _slice(background=0.05)
    _, drawn = synthetic_lesion(picture, np.random.default_rng(4))
    for kind in lesions.KINDS:
        _, forced = synthetic_lesion(picture, np.random.default_rng(4), kind=kind)
        assert forced.kind == kind
        assert (forced.centre, forced.radius) == (drawn.centre, drawn.radius)
    with pytest.raises(ValueError, match="kind must be one of"):
        synthetic_lesion(picture, np.random.default_rng(4), kind="cyst")


def test_no_room_for_a_lesion_leaves_the_picture_alone():
    black = np.zeros((64, 64), dtype=np.float32)
    assert synthetic_lesion(black, np.random.default_rng(0)) is None
    speck = black.copy()
    speck[30:34, 30:34] = 0.8  # a head too small to hold one away from its edge
    assert synthetic_lesion(speck, np.random.default_rng(0)) is None


def _batch(size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    grey = (_slice(size) * 255).astype(np.uint8)
    images = np.repeat(np.repeat(grey[None, ..., None], 3, axis=3), 8, axis=0)
    labels = np.array([0, 1, 2, 3, 2, 2, 2, 2])
    return images, np.eye(4, dtype=np.float32)[labels]


def test_painting_changes_only_no_tumour_pictures_and_relabels_them():
    images, targets = _batch()
    before = images.copy()
    out, new_targets = paint_lesions(images, targets, negative=2, rng=np.random.default_rng(0),
                                     p=1.0)
    np.testing.assert_array_equal(images, before)  # the cache is never written to
    for i in range(len(images)):
        if targets[i, 2] == 1.0:  # no tumour: a lesion, and "a tumour, class unknown"
            assert not np.array_equal(out[i], images[i])
            np.testing.assert_allclose(new_targets[i], [1 / 3, 1 / 3, 0, 1 / 3])
            assert np.array_equal(out[i, ..., 0], out[i, ..., 2])  # grey stays grey
        else:
            np.testing.assert_array_equal(out[i], images[i])
            np.testing.assert_array_equal(new_targets[i], targets[i])
    none, same = paint_lesions(images, targets, 2, np.random.default_rng(0), p=0.0)
    np.testing.assert_array_equal(none, images)
    np.testing.assert_array_equal(same, targets)


def test_the_lesion_batches_are_the_strong_ones_with_lesions_painted_in():
    pytest.importorskip("keras")
    from trainer.batches import TrainingBatches

    images, targets = _batch()
    labels = targets.argmax(axis=1)
    with pytest.raises(ValueError, match="no-tumour class"):
        TrainingBatches(images, labels, 4, 8, seed=3, augment="lesion")
    lesion = TrainingBatches(images, labels, 4, 8, seed=3, augment="lesion", negative_class=2)
    strong = TrainingBatches(images, labels, 4, 8, seed=3, augment="strong")
    relabelled = 0
    for epoch in range(4):
        x, y = lesion.batch(epoch, 0)
        x_strong, y_strong = strong.batch(epoch, 0)
        again = lesion.batch(epoch, 0)
        np.testing.assert_array_equal(x, again[0])
        painted = ~np.all(y == y_strong, axis=1)
        relabelled += int(painted.sum())
        assert np.all(y_strong[painted, 2] == 1.0)  # only no-tumour pictures, relabelled
        np.testing.assert_allclose(y[painted], 1 / 3 * (y[painted] > 0))
        # every other picture is exactly what the strong policy makes of it: the lesions
        # draw from their own generator
        np.testing.assert_array_equal(x[~painted], x_strong[~painted])
    assert 0 < relabelled < 4 * 5  # about 30 % of the five no-tumour pictures per batch


def test_the_lesion_recipe_is_strong_with_lesions():
    from trainer.recipes import RECIPES, resolve

    assert resolve("lesion", {})["augment"] == "lesion"
    assert {k: v for k, v in RECIPES["lesion"].to_dict().items() if k != "augment"} == {
        k: v for k, v in RECIPES["strong"].to_dict().items() if k != "augment"}


# -- training: the lesion recipe, and --init-from ---------------------------------------------

keras = pytest.importorskip("keras")

from trainer_testdata import make_dataset  # noqa: E402

from edge.preprocess import PreprocessSpec, scale  # noqa: E402
from trainer.errors import OptionError  # noqa: E402
from trainer.train import TrainConfig, train  # noqa: E402

SPEC = PreprocessSpec(height=32, width=32)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("lesiondata"), train_per_class=16,
                        test_per_class=4)


def _config(dataset, runs, name, **changes):
    base = {"arch": "mlp", "data_dir": str(dataset), "runs_dir": str(runs), "name": name,
            "epochs": 1, "batch_size": 16, "seed": 5, "spec": SPEC, "use_cache": False,
            "model_options": {"hidden_units": (16,)}, "val_fraction": 0.25}
    base.update(changes)
    return TrainConfig(**base)


def test_a_lesion_run_trains_and_records_its_policy(dataset, tmp_path):
    run = train(_config(dataset, tmp_path, "lesion", augment="lesion", recipe="lesion"),
                verbose=0)
    record = run.read_record().raw
    assert record["status"] == "completed" and record["augment"] == "lesion"
    missed = run.read_history()["val_lesion_missed"]  # every epoch, in history.csv too
    assert len(missed) == 1 and 0.0 <= missed[0] <= 1.0
    assert "val_lesion_missed" in (run.path / "history.csv").read_text().splitlines()[0]


class _Answers:
    """A stand-in model that answers every picture with one class."""

    def __init__(self, answer: int):
        self.answer = answer

    def predict(self, batches, verbose=0):
        return np.eye(4)[np.full(len(batches.images), self.answer)]


def test_the_validator_counts_the_drawn_validation_lesions_answered_no_tumour(dataset):
    from trainer.train import _Validator, load_training_data

    config = _config(dataset, "unused", "v", augment="lesion-any", recipe="lesion-any")
    data = load_training_data(config)
    negative = data.labels.index("notumor")
    validate = _Validator(config, data)
    assert len(validate.lesions.images) == int(np.sum(data.val.labels == negative)) > 0
    says_none = validate(_Answers(negative))
    assert says_none["val_lesion_missed"] == 1.0
    assert says_none["val_accuracy"] == np.mean(data.val.labels == negative)
    assert validate(_Answers(0))["val_lesion_missed"] == 0.0
    # the other policies draw no lesions and report none
    assert "val_lesion_missed" not in _Validator(_config(dataset, "unused", "v",
                                                         augment="strong"), data)(_Answers(0))


def test_the_painted_validation_pictures_are_the_same_draws_every_time(dataset):
    from trainer.train import load_training_data, painted_validation

    data = load_training_data(_config(dataset, "unused", "v"))
    pictures = data.val.images[data.val.labels == data.labels.index("notumor")]
    first, again = painted_validation(pictures, 5), painted_validation(pictures, 5)
    np.testing.assert_array_equal(first, again)
    assert first.shape == pictures.shape and first.dtype == np.uint8
    assert all(not np.array_equal(a, b) for a, b in zip(first, pictures, strict=True))
    assert not np.array_equal(painted_validation(pictures, 6), first)


def test_a_run_resumed_by_code_that_adds_the_lesion_score_pads_its_first_epochs(dataset,
                                                                                 tmp_path):
    # a lesion run begun before val_lesion_missed existed: its history lacks the key; the
    # epochs after the resume have it and the earlier ones read NaN (not a shifted column)
    import json

    from trainer.train import resume

    run = train(_config(dataset, tmp_path, "old", augment="lesion", recipe="lesion"),
                verbose=0)
    state_file = run.checkpoints / "state.json"
    state = json.loads(state_file.read_text())
    del state["history"]["val_lesion_missed"]
    state_file.write_text(json.dumps(state))
    resume(run.path, epochs=2, verbose=0)
    missed = run.read_history()["val_lesion_missed"]
    assert len(missed) == 2 and np.isnan(missed[0]) and 0.0 <= missed[1] <= 1.0


def test_a_lesion_run_without_a_no_tumour_class_is_refused_before_its_folder(tmp_path):
    from trainer_testdata import picture

    for split, count in (("Training", 8), ("Testing", 2)):
        for label, name in enumerate(("glioma", "meningioma")):
            folder = tmp_path / "data" / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                picture(label, np.random.default_rng(i)).save(folder / f"{i}.png")
    config = _config(tmp_path / "data", tmp_path / "runs", "nolesion", augment="lesion")
    with pytest.raises(OptionError, match="no such class"):
        train(config, verbose=0)
    assert not (tmp_path / "runs" / "nolesion").exists()


class _FirstLogits(keras.callbacks.Callback):
    """The fitted model's answer to ``x`` before its first step."""

    def __init__(self, x):
        super().__init__()
        self.x, self.logits = x, None

    def on_train_begin(self, logs=None):
        self.logits = keras.ops.convert_to_numpy(self.model(self.x, training=False))


def test_init_from_starts_where_the_finished_run_ended(dataset, tmp_path):
    import trainer.layers  # noqa: F401
    from trainer.data import load_split

    first = train(_config(dataset, tmp_path, "first", epochs=2), verbose=0)
    x = scale(load_split(dataset, "Testing", SPEC, use_cache=False).images, SPEC)
    trained = keras.ops.convert_to_numpy(keras.saving.load_model(
        first.model, compile=False)(x, training=False))
    probe = _FirstLogits(x)
    second = train(_config(dataset, tmp_path, "second", init_from=str(first.path),
                           augment="lesion"), verbose=0, callbacks=[probe])
    np.testing.assert_allclose(keras.ops.softmax(probe.logits, axis=-1), trained, atol=1e-5)
    record = second.read_record().raw
    assert record["init_from"]["run"] == str(first.path.resolve())
    assert len(record["init_from"]["model_sha256"]) == 64
    assert any("fine-tuning" in d for d in record["deviations"])
    # a fresh run of the same config does not start there
    probe = _FirstLogits(x)
    train(_config(dataset, tmp_path, "fresh", seed=6), verbose=0, callbacks=[probe])
    assert np.abs(keras.ops.convert_to_numpy(keras.ops.softmax(probe.logits, axis=-1))
                  - trained).max() > 1e-3


def test_init_from_refuses_another_split_or_architecture(dataset, tmp_path):
    first = train(_config(dataset, tmp_path, "first"), verbose=0)
    with pytest.raises(OptionError, match="same --seed"):
        train(_config(dataset, tmp_path, "b", seed=9, init_from=str(first.path)), verbose=0)
    with pytest.raises(OptionError, match="model options"):
        train(_config(dataset, tmp_path, "c", init_from=str(first.path),
                      model_options={"hidden_units": (8,)}), verbose=0)
    from trainer.errors import RunError

    with pytest.raises(RunError, match="does not exist"):
        train(_config(dataset, tmp_path, "d", init_from=str(tmp_path / "nothing")), verbose=0)
    for name in "bcd":
        assert not (tmp_path / name).exists()


def test_the_cli_passes_init_from_and_resume_refuses_it(monkeypatch, tmp_path):
    from click.testing import CliRunner

    import trainer.train as train_module
    from trainer.cli import main

    data = make_dataset(tmp_path / "data", train_per_class=2, test_per_class=1)
    seen = {}
    monkeypatch.setattr(train_module, "train", lambda config, **_: seen.setdefault("c", config))
    result = CliRunner().invoke(main, ["train", "--arch", "mlp", "--data", str(data),
                                       "--recipe", "lesion", "--init-from", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert seen["c"].init_from == str(tmp_path.resolve()) and seen["c"].augment == "lesion"
    result = CliRunner().invoke(main, ["train", "--resume", str(tmp_path), "--init-from",
                                       str(tmp_path)])
    assert result.exit_code != 0 and "--init-from" in result.output
    assert "Traceback" not in result.output
