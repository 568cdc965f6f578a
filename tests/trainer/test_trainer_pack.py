"""Data packs: pre-resized lossy copies that travel to a GPU machine, and back to folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from trainer_testdata import make_dataset

from edge.preprocess import PreprocessSpec
from trainer.cli import main
from trainer.data import load_split
from trainer.errors import DataError, OptionError
from trainer.pack import PACK_FORMAT, pack, read_pack, unpack

SPEC = PreprocessSpec(height=32, width=32)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("synthetic"), train_per_class=6,
                        test_per_class=3)


def test_pack_and_unpack_give_back_the_training_pixels(dataset, tmp_path):
    record = pack(dataset, tmp_path / "pack", quality=95, spec=SPEC)
    assert record["format"] == PACK_FORMAT and record["images"] == 36
    assert read_pack(tmp_path / "pack")["files"] == record["files"]
    assert record["files"]["Training/glioma/glioma_000.webp"] == "Training/glioma/glioma_000.jpg"
    assert len(list((tmp_path / "pack").rglob("*.webp"))) == 36
    with Image.open(tmp_path / "pack/Testing/pituitary/pituitary_001.webp") as image:
        assert image.size == (32, 32)

    assert unpack(tmp_path / "pack", tmp_path / "data") == 36
    for split in ("Training", "Testing"):
        original = load_split(dataset, split, SPEC, use_cache=False)
        copy = load_split(tmp_path / "data", split, SPEC, use_cache=False)
        assert [p.rsplit(".", 1)[0] for p in copy.paths] == \
               [p.rsplit(".", 1)[0] for p in original.paths]
        assert copy.class_names == original.class_names
        np.testing.assert_array_equal(copy.labels, original.labels)
        error = np.abs(copy.images.astype(int) - original.images.astype(int)).mean()
        assert error < 6.0  # lossy, but close: these noisy pictures are a hard case for WebP


def test_pack_refuses_a_used_folder_and_colour_pictures(dataset, tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("keep me")
    with pytest.raises(DataError, match="not empty"):
        pack(dataset, tmp_path / "used", spec=SPEC)
    assert (tmp_path / "used" / "x").read_text() == "keep me"
    with pytest.raises(OptionError, match="quality"):  # a wrong option: exit 64
        pack(dataset, tmp_path / "q", quality=0, spec=SPEC)
    with pytest.raises(DataError, match="is a file"):
        pack(dataset, tmp_path / "used" / "x", spec=SPEC)

    colour = make_dataset(tmp_path / "colour", train_per_class=2, test_per_class=1)
    pixels = np.zeros((20, 20, 3), np.uint8)
    pixels[..., 0] = 200
    Image.fromarray(pixels).save(colour / "Training/glioma/red.png")
    with pytest.raises(DataError, match="colour picture"):
        pack(colour, tmp_path / "colour-pack", spec=SPEC)


def test_unpack_says_what_is_wrong_with_a_pack(dataset, tmp_path):
    with pytest.raises(DataError, match="not a data pack"):
        unpack(dataset, tmp_path / "out")
    pack(dataset, tmp_path / "pack", spec=SPEC)
    with pytest.raises(DataError, match="data folder .* is not empty"):
        unpack(tmp_path / "pack", dataset)  # never mixed into another data set
    (tmp_path / "pack/Training/notumor/notumor_002.webp").unlink()
    with pytest.raises(DataError, match="lacks 1 of its 36 files"):
        unpack(tmp_path / "pack", tmp_path / "out")
    meta = tmp_path / "pack/pack.json"
    meta.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(DataError, match="expected neuroedge-data-pack/1"):
        read_pack(tmp_path / "pack")


def test_pack_and_unpack_commands(dataset, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["pack", "--data", str(dataset), "--out", str(tmp_path / "p"),
                                  "--split", "Testing", "--image-size", "32"])
    assert result.exit_code == 0, result.output
    assert "12 images" in result.output
    assert not (tmp_path / "p/Training").exists()
    result = runner.invoke(main, ["unpack", str(tmp_path / "p"), "--out", str(tmp_path / "d")])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "d/Testing").rglob("*.png"))) == 12
    result = runner.invoke(main, ["unpack", str(tmp_path / "nowhere"), "--out", str(tmp_path)])
    assert result.exit_code != 0 and "not a data pack" in result.output
    assert "Traceback" not in result.output
