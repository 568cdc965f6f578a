"""Test-time views (``edge.views``, manifest format 3): the mirror mean, in the manifest and
in the agent's classifier, with the shipped model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edge.classifier import Classifier
from edge.config import AgentConfig
from edge.decoded import DecodedImage
from edge.errors import ManifestError
from edge.manifest import MANIFEST_NAME, default_model_dir, load_verified
from edge.views import MIRROR_MEAN, NONE, views, with_views

SHIPPED = default_model_dir()


def test_the_mirror_is_left_right_for_one_picture_and_for_a_batch():
    picture = np.arange(2 * 3 * 1).reshape(2, 3, 1)
    as_is, mirror = views(picture, MIRROR_MEAN)
    assert as_is is picture
    assert mirror[:, :, 0].tolist() == [[2, 1, 0], [5, 4, 3]]
    batch = np.stack([picture, picture + 10])
    assert np.array_equal(views(batch, MIRROR_MEAN)[1], np.stack([mirror, mirror + 10]))
    assert views(picture, NONE) == [picture]


def test_with_views_averages_the_answers_and_none_is_the_model_itself():
    def predict(batch):  # "how much brighter is the right half": changes sign in the mirror
        right = batch[..., batch.shape[-2] // 2:, :].mean(axis=(-3, -2, -1))
        left = batch[..., :batch.shape[-2] // 2, :].mean(axis=(-3, -2, -1))
        return np.stack([right - left, np.ones_like(right)], axis=-1)

    batch = np.zeros((2, 4, 4, 1))
    batch[0, :, 2:] = 1.0
    assert predict(batch)[0, 0] == 1.0
    assert with_views(predict, NONE) is predict
    averaged = with_views(predict, MIRROR_MEAN)(batch)
    assert averaged.tolist() == [[0.0, 1.0], [0.0, 1.0]]
    with pytest.raises(ValueError, match="mirror-mean"):
        with_views(predict, "rotate-mean")


def _model_copy(tmp_path: Path, **changes) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(SHIPPED, folder)
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    manifest.update(changes)
    (folder / MANIFEST_NAME).write_text(json.dumps(manifest))
    return folder


@pytest.mark.skipif(SHIPPED is None, reason="no model is shipped in edge/models")
def test_a_manifest_that_names_a_test_time_is_format_3_and_round_trips(tmp_path):
    folder = _model_copy(tmp_path, test_time=MIRROR_MEAN, format_version=3)
    manifest, _ = load_verified(folder)
    assert manifest.test_time == MIRROR_MEAN and manifest.format_version == 3
    assert manifest.to_dict()["test_time"] == MIRROR_MEAN
    plain, _ = load_verified(SHIPPED)
    assert plain.test_time == NONE and "test_time" not in plain.to_dict()
    assert plain.format_version == 2  # what agents before format 3 read


@pytest.mark.skipif(SHIPPED is None, reason="no model is shipped in edge/models")
@pytest.mark.parametrize(("changes", "message"), [
    ({"test_time": MIRROR_MEAN}, "needs format_version 3"),  # an older writer's mistake
    ({"test_time": "rotate-mean", "format_version": 3}, "must be one of none, mirror-mean"),
    ({"format_version": 4}, "upgrade neuroedge"),
])
def test_a_bad_test_time_is_refused_with_what_to_do(tmp_path, changes, message):
    with pytest.raises(ManifestError, match=message):
        load_verified(_model_copy(tmp_path, **changes))


@pytest.mark.skipif(SHIPPED is None, reason="no model is shipped in edge/models")
def test_the_agent_answers_with_the_mean_of_the_picture_and_its_mirror(tmp_path):
    rng = np.random.default_rng(7)
    picture = rng.integers(0, 255, (224, 224), dtype=np.uint8)
    picture[:, :90] //= 4  # lopsided, so that the two views disagree

    def decoded(pixels: np.ndarray) -> DecodedImage:
        return DecodedImage(kind="png", picture=Image.fromarray(pixels, mode="L"))

    plain = Classifier(AgentConfig(), SHIPPED)
    mirrored = Classifier(AgentConfig(), _model_copy(tmp_path, test_time=MIRROR_MEAN,
                                                     format_version=3))
    as_is = plain.classify(decoded(picture), heatmap="none")
    mirror = plain.classify(decoded(picture[:, ::-1].copy()), heatmap="none")
    both = mirrored.classify(decoded(picture), heatmap="none")
    labels = plain.labels
    expected = np.mean([[as_is.probabilities[k] for k in labels],
                        [mirror.probabilities[k] for k in labels]], axis=0)
    got = np.array([both.probabilities[k] for k in labels])
    assert np.allclose(got, expected, atol=2e-6)
    assert not np.allclose(got, [as_is.probabilities[k] for k in labels], atol=1e-3)
    # the "unlike the training data" score is the picture's own (its threshold's meaning)
    assert both.trust["ood_score"] == as_is.trust["ood_score"]
    assert mirrored.describe()["test_time"] == MIRROR_MEAN
    assert plain.describe()["test_time"] == NONE
