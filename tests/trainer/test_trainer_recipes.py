"""Named recipes, their options, the learning-rate schedule and the augmentation policies."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from trainer.errors import OptionError
from trainer.recipes import RECIPES, deviations, resolve, validate


def test_the_paper_recipe_is_table_3():
    paper = RECIPES["paper"]
    assert (paper.epochs, paper.batch_size, paper.optimizer, paper.learning_rate,
            paper.beta_1, paper.beta_2) == (35, 64, "adam", 1e-3, 0.9, 0.99)
    assert (paper.weight_decay, paper.schedule, paper.warmup_epochs, paper.label_smoothing,
            paper.augment) == (0.0, "constant", 0.0, 0.0, "none")
    assert deviations("paper", paper.to_dict()) == []


def test_the_strong_recipe_and_overrides():
    values = resolve("strong", {"epochs": 50, "learning_rate": None})
    assert values["epochs"] == 50 and values["learning_rate"] == 1e-3  # None: not given
    assert (values["optimizer"], values["weight_decay"], values["schedule"],
            values["warmup_epochs"], values["label_smoothing"], values["augment"]) == (
        "adamw", 0.02, "cosine", 3.0, 0.1, "strong")
    [line] = deviations("strong", values)
    assert "adamw" in line and "label_smoothing 0.1 (paper: 0.0)" in line
    with pytest.raises(OptionError, match="unknown recipe 'fancy'"):
        resolve("fancy", {})


def test_a_run_shorter_than_the_warm_up_keeps_its_share():
    assert resolve("strong", {"epochs": 2})["warmup_epochs"] == pytest.approx(2 * 3 / 40)
    assert resolve("strong", {"epochs": 10})["warmup_epochs"] == 3.0  # fits: unchanged
    explicit = resolve("strong", {"epochs": 2, "warmup_epochs": 2.0})
    with pytest.raises(OptionError, match="less than --epochs"):
        validate(explicit)  # asked for: an error, not silently changed


@pytest.mark.parametrize("change, message", [
    ({"weight_decay": 0.01}, "needs --optimizer adamw"),
    ({"warmup_epochs": 35.0}, "less than --epochs"),
    ({"label_smoothing": 1.0}, "label-smoothing"),
    ({"augment": "heavy"}, "--augment must be one of"),
    ({"schedule": "step"}, "--schedule"),
])
def test_bad_recipe_settings_are_refused(change, message):
    values = {**RECIPES["paper"].to_dict(), **change}
    with pytest.raises(OptionError, match=message):
        validate(values)


def test_old_run_json_augment_booleans_still_load():
    pytest.importorskip("keras")
    from trainer.train import TrainConfig

    old = {"arch": "mlp", "data_dir": "d", "augment": True, "epochs": 3}
    config = TrainConfig.from_dict(old)
    assert config.augment == "light" and config.optimizer == "adam" and config.recipe == "paper"
    assert TrainConfig.from_dict({**old, "augment": False}).augment == "none"
    with pytest.raises(OptionError, match="augmentation must be one of"):
        TrainConfig(arch="mlp", data_dir="d", augment="heavy")


def test_warmup_then_cosine_then_floor():
    pytest.importorskip("keras")
    import keras

    from trainer.recipes import COSINE_FLOOR
    from trainer.train import TrainConfig, _learning_rate

    config = TrainConfig(arch="mlp", data_dir="d", epochs=10, learning_rate=2e-3,
                         schedule="cosine", warmup_epochs=2.0)
    schedule = _learning_rate(config, steps_per_epoch=10)

    def at(step):
        return float(keras.ops.convert_to_numpy(schedule(step)))

    assert at(0) == pytest.approx(2e-5)  # 1 % of the peak
    assert at(10) == pytest.approx(1e-3 + 1e-5, rel=0.02)  # half way up the warm-up
    assert at(20) == pytest.approx(2e-3)
    assert at(60) < at(40) < at(20)
    assert at(100) == pytest.approx(2e-3 * COSINE_FLOOR, rel=1e-3)
    flat = _learning_rate(TrainConfig(arch="mlp", data_dir="d", epochs=10,
                                      learning_rate=2e-3, warmup_epochs=1.0), 10)
    assert float(keras.ops.convert_to_numpy(flat(50))) == pytest.approx(2e-3)
    assert _learning_rate(TrainConfig(arch="mlp", data_dir="d"), 10) == 1e-3  # the paper's


def _cli_config(monkeypatch, tmp_path, *args):
    """The TrainConfig the CLI would train with (train itself replaced)."""
    pytest.importorskip("keras")
    from trainer_testdata import make_dataset

    import trainer.train as train_module
    from trainer.cli import main

    data = make_dataset(tmp_path / "data", train_per_class=2, test_per_class=1)
    seen = {}
    monkeypatch.setattr(train_module, "train", lambda config, **_: seen.setdefault("c", config))
    result = CliRunner().invoke(main, ["train", "--arch", "mlp", "--data", str(data), *args])
    return result, seen.get("c")


def test_cli_recipe_and_options(monkeypatch, tmp_path):
    result, config = _cli_config(monkeypatch, tmp_path, "--recipe", "strong", "--epochs", "7")
    assert result.exit_code == 0, result.output
    assert (config.recipe, config.epochs, config.optimizer, config.augment) == (
        "strong", 7, "adamw", "strong")
    result, config = _cli_config(monkeypatch, tmp_path, "--augment", "--epochs", "2")
    assert result.exit_code == 0, result.output
    assert (config.recipe, config.augment, config.optimizer, config.epochs) == (
        "paper", "light", "adam", 2)
    result, config = _cli_config(monkeypatch, tmp_path, "--recipe", "strong", "--no-augment")
    assert config.augment == "none" and config.reweight == "none"
    result, config = _cli_config(monkeypatch, tmp_path, "--recipe", "strong",
                                 "--reweight", "shortcuts")
    assert result.exit_code == 0, result.output
    assert (config.augment, config.reweight) == ("strong", "shortcuts")
    result, config = _cli_config(monkeypatch, tmp_path, "--recipe", "strong",
                                 "--reweight", "shortcuts+planes", "--planes", __file__)
    assert result.exit_code == 0, result.output
    assert config.reweight == "shortcuts+planes"
    assert config.planes_file == str(Path(__file__).resolve())


@pytest.mark.parametrize("args, message", [
    (("--weight-decay", "0.1"), "needs --optimizer adamw"),
    (("--recipe", "strong", "--warmup-epochs", "50"), "less than --epochs"),
    (("--augment", "strong", "--no-augment"), "contradict"),
    (("--recipe", "fancy"), "Invalid value for '--recipe'"),
    (("--reweight", "sources"), "Invalid value for '--reweight'"),
    (("--reweight", "planes", "--planes", "/no/such/planes.csv"), "make it with"),
    (("--reweight", "shortcuts", "--planes", __file__), "give both or neither"),
])
def test_cli_refuses_bad_recipe_options(monkeypatch, tmp_path, args, message):
    result, config = _cli_config(monkeypatch, tmp_path, *args)
    assert result.exit_code in (2, 64) and message in result.output and config is None
    assert "Traceback" not in result.output


def test_strong_augmentation_is_seeded_bounded_and_keeps_grey_grey():
    from trainer.augment import strong_batch

    rng = np.random.default_rng(0)
    grey = np.repeat(rng.integers(0, 255, (6, 48, 48, 1), dtype=np.uint8), 3, axis=3)
    a = strong_batch(grey, np.random.default_rng(7))
    b = strong_batch(grey, np.random.default_rng(7))
    assert a.dtype == np.float32 and a.shape == grey.shape
    assert np.array_equal(a, b)
    assert a.min() >= 0.0 and a.max() <= 1.0
    assert np.array_equal(a[..., 0], a[..., 2])
    assert not np.allclose(a, grey / 255.0, atol=0.05)  # something did change
    colour = rng.integers(0, 255, (2, 48, 48, 3), dtype=np.uint8)
    c = strong_batch(colour, np.random.default_rng(1))
    assert not np.array_equal(c[..., 0], c[..., 1])


def _head(size: int = 96) -> np.ndarray:
    """A bright disc (the head) with a thin dark line inside it, on a black background."""
    yy, xx = np.mgrid[:size, :size]
    picture = np.where((yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (size * 0.35) ** 2,
                       0.6, 0.0).astype(np.float32)
    picture[size // 2, 30:66] = 0.0  # a sulcus: dark, but thin and inside
    return picture


def test_the_background_is_the_large_dark_area_around_the_head_only():
    from trainer.augment import background_mask, refill_background

    picture = _head()
    mask = background_mask(picture)
    inside = picture > 0
    assert mask[0, 0] and mask[-1, -1] and not mask[inside].any()
    assert not mask[48, 30:66].any()  # the thin dark line inside the head is kept
    assert mask[picture == 0].mean() > 0.95
    a = refill_background(picture.copy(), np.random.default_rng(5))
    b = refill_background(picture.copy(), np.random.default_rng(5))
    assert np.array_equal(a, b) and a.min() >= 0 and a.max() <= 1
    assert np.array_equal(a[~mask], picture[~mask])  # the head is untouched
    refilled = [refill_background(picture.copy(), np.random.default_rng(seed))[mask].mean()
                for seed in range(20)]
    assert np.std(refilled) > 0.01  # the background's level varies from picture to picture
    colour = np.repeat(picture[..., None], 3, axis=2)
    c = refill_background(colour, np.random.default_rng(5))
    assert np.array_equal(c[..., 0], a) and np.array_equal(c[..., 2], a)


def test_the_background_mask_is_what_pillows_max_filters_made():
    """background_mask moved from Pillow's MaxFilter to scipy's maximum filter (20x faster):
    the masks, and so the background recipe's runs, stay the same, edges included."""
    pytest.importorskip("scipy")
    from PIL import Image, ImageFilter

    from trainer.augment import BACKGROUND_AREA, BACKGROUND_BELOW, background_mask

    def pillow(x):
        dark = x < BACKGROUND_BELOW
        image = Image.fromarray(np.where(dark, 0, 255).astype(np.uint8))
        area = np.asarray(image.filter(ImageFilter.MaxFilter(BACKGROUND_AREA))) == 0
        grown = np.asarray(Image.fromarray(np.where(area, 255, 0).astype(np.uint8)).filter(
            ImageFilter.MaxFilter(BACKGROUND_AREA))) > 0
        return grown & dark

    rng = np.random.default_rng(0)
    pictures = [_head(), _head(61)[:50], np.zeros((40, 40), np.float32)]
    for _ in range(20):  # random blobs and specks touching the edges
        blobs = (rng.random((12, 12)) < 0.4).repeat(8, 0).repeat(8, 1).astype(np.float32)
        pictures.append(np.clip(blobs * 0.5 + (rng.random(blobs.shape) < 0.02), 0, 1))
    for picture in pictures:
        assert np.array_equal(background_mask(picture), pillow(picture))


def test_the_background_recipe_is_strong_with_the_background_refilled():
    from trainer.augment import strong_batch
    from trainer.recipes import RECIPES, resolve

    assert resolve("background", {})["augment"] == "background"
    assert {k: v for k, v in RECIPES["background"].to_dict().items() if k != "augment"} == {
        k: v for k, v in RECIPES["strong"].to_dict().items() if k != "augment"}
    pictures = np.repeat((_head()[None, ..., None] * 255).astype(np.uint8), 3, axis=3)
    pictures = np.repeat(pictures, 8, axis=0)
    a = strong_batch(pictures, np.random.default_rng(2), background=True)
    assert np.array_equal(a, strong_batch(pictures, np.random.default_rng(2), background=True))
    corners = a[:, :6, :6].mean(axis=(1, 2, 3))
    plain = strong_batch(pictures, np.random.default_rng(2))[:, :6, :6].mean(axis=(1, 2, 3))
    assert np.std(corners) > np.std(plain)  # the corners vary more than brightness alone


def test_the_head_mask_keeps_dark_structures_inside_and_specks_outside_the_head():
    pytest.importorskip("scipy")
    from trainer.augment import head_mask

    picture = _head()
    picture[40:56, 40:56] = 0.0  # a dark core (fluid, necrosis) well inside the head
    picture[5, 5] = 0.5  # a bright noise speck in the background
    head = head_mask(picture)
    assert head[48, 48] and head[48, 31] and head[40, 40]  # core and sulcus are head
    assert not head[0, 0] and not head[5, 5] and not head[-1, -1]
    disc = (np.mgrid[:96, :96][0] - 48) ** 2 + (np.mgrid[:96, :96][1] - 48) ** 2 < 30 ** 2
    assert head[disc].all()  # everything well inside the disc
    assert np.array_equal(head, head_mask(np.repeat(picture[..., None], 3, axis=2)))


def test_contrast_curves_span_a_range_and_some_invert():
    from trainer.augment import CONTRAST_HIGH, CONTRAST_LOW, contrast_curve

    rng = np.random.default_rng(3)
    curves = [contrast_curve(rng) for _ in range(200)]
    for xs, ys in curves:
        assert xs[0] == 0.0 and xs[-1] == 1.0 and np.all(np.diff(xs) > 0)
        assert CONTRAST_LOW[0] <= ys.min() <= CONTRAST_LOW[1] + 1e-6
        assert CONTRAST_HIGH[0] - 1e-6 <= ys.max() <= CONTRAST_HIGH[1]
    inverted = sum(ys[0] > ys[-1] for _, ys in curves)
    non_monotonic = sum(np.any(np.diff(ys) > 0) and np.any(np.diff(ys) < 0) for _, ys in curves)
    assert 30 < inverted < 170 and non_monotonic > 30


def test_remapping_the_contrast_changes_the_head_and_leaves_the_background():
    pytest.importorskip("scipy")
    from trainer.augment import head_mask, remap_contrast

    picture = _head()
    picture[48, 30:66] = 0.2  # the sulcus darker than the head, brighter than black
    head = head_mask(picture)
    outs = [remap_contrast(picture.copy(), np.random.default_rng(seed)) for seed in range(40)]
    for out in outs:
        assert np.array_equal(out[~head], picture[~head])
        assert out.min() >= 0 and out.max() <= 1
    # the head's level and the sulcus's contrast to it vary, and sometimes turn over
    assert np.std([out[30, 48] for out in outs]) > 0.1
    assert any(out[48, 40] > out[30, 48] for out in outs)
    assert np.array_equal(remap_contrast(picture.copy(), np.random.default_rng(1)),
                          remap_contrast(picture.copy(), np.random.default_rng(1)))


def test_the_contrast_recipe_is_background_with_the_head_remapped():
    pytest.importorskip("scipy")
    from trainer.augment import strong_batch

    assert resolve("contrast", {})["augment"] == "contrast"
    assert {k: v for k, v in RECIPES["contrast"].to_dict().items() if k != "augment"} == {
        k: v for k, v in RECIPES["strong"].to_dict().items() if k != "augment"}
    pictures = np.repeat((_head()[None, ..., None] * 255).astype(np.uint8), 3, axis=3)
    pictures = np.repeat(pictures, 16, axis=0)
    a = strong_batch(pictures, np.random.default_rng(2), background=True, contrast=True)
    assert np.array_equal(a, strong_batch(pictures, np.random.default_rng(2), background=True,
                                          contrast=True))
    assert np.array_equal(a[..., 0], a[..., 2])  # grey stays grey
    centre = a[:, 40:56, 40:56, 0].mean(axis=(1, 2))
    plain = strong_batch(pictures, np.random.default_rng(2),
                         background=True)[:, 40:56, 40:56, 0].mean(axis=(1, 2))
    assert np.std(centre) > np.std(plain)  # the head's level varies more than gamma alone


def test_training_batches_are_the_same_from_many_threads():
    pytest.importorskip("keras")
    from trainer.batches import TrainingBatches

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (40, 32, 32, 3), dtype=np.uint8)
    labels = np.arange(40) % 4
    stream = TrainingBatches(images, labels, 4, 8, seed=3, augment="strong")
    expected = [stream[i][0] for i in range(15)]  # three epochs of five batches
    fresh = TrainingBatches(images, labels, 4, 8, seed=3, augment="strong")
    got: dict[int, np.ndarray] = {}

    def fetch(indices):
        for i in indices:
            got[i] = fresh[i][0]

    threads = [threading.Thread(target=fetch, args=(list(range(k, 15, 3)),)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(15):
        np.testing.assert_array_equal(got[i], expected[i])


def test_mixing_the_amplitude_takes_the_references_look_and_keeps_the_shapes():
    pytest.importorskip("scipy")
    from trainer.augment import mix_amplitude

    picture = _head()
    dark = np.clip(_head() * 0.4, 0, 1)  # the same shapes, a darker look
    rng = np.random.default_rng(0)
    other = np.clip(rng.random(picture.shape).astype(np.float32) * 0.3 + 0.5, 0, 1)
    assert np.allclose(mix_amplitude(picture, other, 0.1, 0.0), picture, atol=1e-5)
    assert np.allclose(mix_amplitude(picture, picture, 0.1, 1.0), picture, atol=1e-5)
    moved = mix_amplitude(picture, dark, 0.1, 1.0)
    assert moved.dtype == np.float32 and moved.shape == picture.shape
    assert 0.0 <= moved.min() and moved.max() <= 1.0
    # the zero frequency is in the band: the mean follows the reference's
    assert abs(moved.mean() - dark.mean()) < 0.25 * abs(picture.mean() - dark.mean())
    # the phase is kept: the shapes stay where they were
    assert np.corrcoef(moved.ravel(), picture.ravel())[0, 1] > 0.9
    half = mix_amplitude(picture, dark, 0.1, 0.5)
    assert dark.mean() < half.mean() < picture.mean()
    colour = np.repeat(picture[..., None], 3, axis=2)
    assert np.allclose(mix_amplitude(colour, dark, 0.1, 1.0)[..., 1], moved, atol=1e-5)


def test_the_fourier_recipe_is_strong_with_another_pictures_amplitude():
    pytest.importorskip("scipy")
    from trainer.augment import strong_batch

    assert resolve("fourier", {})["augment"] == "fourier"
    assert {k: v for k, v in RECIPES["fourier"].to_dict().items() if k != "augment"} == {
        k: v for k, v in RECIPES["strong"].to_dict().items() if k != "augment"}
    bright = (_head()[None, ..., None] * 255).astype(np.uint8)
    dim = (_head()[None, ..., None] * 60).astype(np.uint8)
    pictures = np.repeat(np.concatenate([np.repeat(bright, 8, 0), np.repeat(dim, 8, 0)]), 3, 3)
    a = strong_batch(pictures, np.random.default_rng(2), fourier=True)
    assert np.array_equal(a, strong_batch(pictures, np.random.default_rng(2), fourier=True))
    assert np.array_equal(a[..., 0], a[..., 2])  # grey stays grey
    plain = strong_batch(pictures, np.random.default_rng(2))
    # bright and dim pictures exchange some of their look: the two groups' brightness
    # overlaps more than without the policy
    gap = lambda x: x[:8].mean() - x[8:].mean()  # noqa: E731
    assert gap(a) < 0.8 * gap(plain)
    assert strong_batch(pictures[:1], np.random.default_rng(2), fourier=True).shape == (
        1, *pictures.shape[1:])  # one picture: nothing to mix with, no error
