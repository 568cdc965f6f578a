"""DICOM decoding: pydicom's shipped files, files built here, and everything refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from agent_helpers import REPO_ROOT, agent_env, make_dicom, pydicom_file
from PIL import Image

from edge.config import DicomConfig, LimitsConfig
from edge.dicom import apply_window
from edge.errors import (
    DecodeError,
    InputLimitError,
    MissingDecoderError,
    UnsupportedInputError,
)
from edge.inputs import decode_file

DICOM = DicomConfig()
LIMITS = LimitsConfig()


def decode(path: Path, dicom: DicomConfig = DICOM, limits: LimitsConfig = LIMITS):
    return decode_file(path, dicom, limits)


def pixels(result) -> np.ndarray:
    return np.asarray(result.picture)


def test_mr_small_uses_the_file_window():
    result = decode(pydicom_file("MR_small.dcm"))
    assert result.kind == "dicom" and result.picture.mode == "L"
    assert result.picture.size == (64, 64)
    window = result.details["window"]
    assert (window["method"], window["center"], window["width"]) == ("file_window", 600.0, 1600.0)
    assert result.details["modality"] == "MR"
    assert result.details["sop_instance_uid"].startswith("1.3.6.1.4.1.5962")
    assert result.details["study_instance_uid"] and result.details["series_instance_uid"]
    # the window maps [-199.5, 1399.5] to [0, 255]: check against the raw pixels
    import pydicom
    raw = pydicom.dcmread(str(pydicom_file("MR_small.dcm"))).pixel_array.astype(float)
    np.testing.assert_array_equal(pixels(result), apply_window(raw, 600.0, 1600.0, "LINEAR"))


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm",
                                  "MR_small_jp2klossless.dcm", "MR_small_bigendian.dcm",
                                  "MR_small_implicit.dcm", "MR_small_expb.dcm",
                                  "MR_small_padded.dcm"])
def test_mr_small_variants_decode_to_the_same_picture(name):
    reference = pixels(decode(pydicom_file("MR_small.dcm")))
    result = decode(pydicom_file(name))
    np.testing.assert_array_equal(pixels(result), reference)


def test_compressed_colour_jpeg_baseline_ybr_matches_rgb():
    """YBR_FULL_422 JPEG and the same picture stored as RGB JPEG end up alike, in RGB."""
    accept = DicomConfig(modalities=("OT",))
    ybr = decode(pydicom_file("SC_rgb_dcmtk_+eb+cy+np.dcm"), accept)
    rgb = decode(pydicom_file("SC_rgb_dcmtk_+eb+cr.dcm"), accept)
    assert ybr.picture.mode == rgb.picture.mode == "RGB"
    diff = np.abs(pixels(ybr).astype(int) - pixels(rgb).astype(int))
    assert diff.mean() < 3, diff.mean()
    # the picture is colour bars: red really is red after the YCbCr -> RGB conversion
    assert pixels(ybr)[5, 5].tolist()[0] > 200 and pixels(ybr)[5, 5].tolist()[1] < 60


def test_uncompressed_ybr_full_422_becomes_rgb():
    accept = DicomConfig(modalities=("OT",))
    ybr = decode(pydicom_file("SC_ybr_full_422_uncompressed.dcm"), accept)
    rgb = decode(pydicom_file("SC_rgb_dcmtk_+eb+cr.dcm"), accept)
    assert np.abs(pixels(ybr).astype(int) - pixels(rgb).astype(int)).mean() < 3


def test_ct_is_refused_for_modality():
    with pytest.raises(UnsupportedInputError, match="Modality is CT"):
        decode(pydicom_file("CT_small.dcm"))


@pytest.mark.parametrize("name, what", [("test-SR.dcm", "SR Storage"),
                                        ("rtplan.dcm", "RT Plan"),
                                        ("rtstruct.dcm", "RT Structure Set")])
def test_objects_without_pixel_data_are_refused(name, what):
    with pytest.raises(UnsupportedInputError, match=f"no pixel data.*{what}"):
        decode(pydicom_file(name))


def test_truncated_pixel_data_is_a_decode_error():
    with pytest.raises(DecodeError, match="(?i)truncated|less than expected"):
        decode(pydicom_file("MR_truncated.dcm"))


def test_truncated_file_is_a_decode_error(tmp_path):
    data = pydicom_file("MR_small.dcm").read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(DecodeError):
        decode(cut)


@pytest.mark.parametrize("body", [b"", b"\x08\x00\x16\x00"], ids=["empty", "truncated"])
def test_a_file_meta_with_no_data_set_says_so(tmp_path, body):
    """What the DICOM receiver keeps of a C-STORE whose data set was empty or cut inside its
    first element (tests/edge/test_network_receiver.py): file meta, then nothing usable."""
    import pydicom
    from pydicom.dataset import FileMetaDataset

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    path = tmp_path / "empty.dcm"
    with open(path, "wb") as out:
        out.write(b"\0" * 128 + b"DICM")
        pydicom.filewriter.write_file_meta_info(out, meta, enforce_standard=True)
        out.write(body)
    with pytest.raises(DecodeError, match="holds no readable DICOM elements.*copy it again"):
        decode(path)


def test_monochrome1_is_inverted(tmp_path):
    ramp = np.tile(np.arange(64, dtype=np.uint16) * 64, (64, 1))
    mono2 = decode(make_dicom(tmp_path / "m2.dcm", ramp, window=(2048, 4096)))
    mono1 = decode(make_dicom(tmp_path / "m1.dcm", ramp, photometric="MONOCHROME1",
                              window=(2048, 4096)))
    np.testing.assert_array_equal(pixels(mono1), 255 - pixels(mono2))
    assert pixels(mono2)[0, 0] < 10 and pixels(mono1)[0, 0] > 245
    assert any("MONOCHROME1" in n for n in mono1.notes)


def test_signed_16bit_with_rescale_applies_the_modality_lut(tmp_path):
    raw = np.full((64, 64), -1000, dtype=np.int16)
    raw[:, 32:] = 500
    # values after rescale: -1000*2+1000 = -1000 and 500*2+1000 = 2000; window [0, 1000]
    result = decode(make_dicom(tmp_path / "s.dcm", raw, signed=True, slope=2.0,
                               intercept=1000.0, window=(500, 1000)))
    assert result.details["signed"] is True
    assert result.details["window"]["rescale"] == {"slope": 2.0, "intercept": 1000.0}
    assert pixels(result)[0, 0] == 0 and pixels(result)[0, 63] == 255


def test_no_window_uses_percentiles_and_clips_outliers(tmp_path):
    rng = np.random.default_rng(0)
    raw = rng.integers(100, 1100, (64, 64)).astype(np.uint16)
    raw[0, 0] = 60000  # one hot pixel must not squash the picture
    result = decode(make_dicom(tmp_path / "p.dcm", raw))
    assert result.details["window"]["method"] == "percentile"
    assert result.details["window"]["high"] < 1200
    assert pixels(result).std() > 50
    minmax = decode(make_dicom(tmp_path / "p2.dcm", raw), DicomConfig(fallback_window="minmax"))
    assert minmax.details["window"]["method"] == "minmax"
    assert pixels(minmax).std() < 5  # the hot pixel squashed everything: why percentile is default


def test_8bit_without_window_is_used_as_stored(tmp_path):
    raw = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))
    result = decode(make_dicom(tmp_path / "e.dcm", raw))
    assert result.details["window"]["method"] == "as_stored"
    np.testing.assert_array_equal(pixels(result), raw)


def test_multiframe_classifies_the_middle_frame(tmp_path):
    frames = np.stack([np.full((32, 32), 100 * (i + 1), dtype=np.uint16) for i in range(5)])
    frames[:, 0, 0] = 0  # a little contrast so the window is not flat
    path = make_dicom(tmp_path / "mf.dcm", frames, frames=5, window=(250, 500))
    result = decode(path)
    assert result.details["frames"] == 5 and result.details["frame_index"] == 2
    expected = apply_window(frames[2].astype(float), 250, 500, "LINEAR")
    np.testing.assert_array_equal(pixels(result), expected)
    assert any("5 frames" in n for n in result.notes)
    first = decode(path, DicomConfig(frame="first"))
    assert first.details["frame_index"] == 0


def test_rgb_dicom(tmp_path):
    rgb = np.zeros((32, 32, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    result = decode(make_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB"))
    assert result.picture.mode == "RGB"
    assert pixels(result)[0, 0].tolist() == [200, 0, 0]
    assert any("colour" in n for n in result.notes)


def test_voi_lut_sequence_is_applied(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    raw = np.tile(np.arange(64, dtype=np.uint16), (64, 1))
    path = make_dicom(tmp_path / "voi.dcm", raw)
    import pydicom
    ds = pydicom.dcmread(str(path))
    item = Dataset()
    item.LUTDescriptor = [64, 0, 16]
    lut = [int(v) for v in (65535 - np.arange(64) * 1024)]  # an inverting LUT
    item.add_new(0x00283006, "US", lut)  # LUT Data
    ds.VOILUTSequence = Sequence([item])
    ds.save_as(str(path))
    result = decode(path)
    assert result.details["window"]["method"] == "voi_lut"
    assert pixels(result)[0, 0] == 255 and pixels(result)[0, 63] < 10


def test_dicom_without_preamble_is_read_by_content(tmp_path):
    raw = np.tile(np.arange(64, dtype=np.uint16) * 10, (64, 1))
    path = make_dicom(tmp_path / "IM0001", raw, window=(320, 640), preamble=False)
    assert path.read_bytes()[128:132] != b"DICM"
    result = decode(path)
    assert result.details["preamble"] is False
    assert result.details["window"]["method"] == "file_window"
    with pytest.raises(UnsupportedInputError, match="preamble"):
        decode(path, DicomConfig(allow_no_preamble=False))


def test_absurd_and_bomb_dimensions_are_refused_before_decoding(tmp_path):
    tiny = make_dicom(tmp_path / "tiny.dcm", np.zeros((4, 4), np.uint16))
    with pytest.raises(UnsupportedInputError, match="at least 16"):
        decode(tiny)
    strip = make_dicom(tmp_path / "strip.dcm", np.zeros((16, 1600), np.uint16))
    with pytest.raises(UnsupportedInputError, match="aspect"):
        decode(strip)
    # a header promising 60000 x 60000 pixels with almost no data: refused unread
    import pydicom
    ds = pydicom.dcmread(str(tiny))
    ds.Rows = ds.Columns = 60000
    ds.save_as(str(tmp_path / "bomb.dcm"))
    with pytest.raises(InputLimitError, match="decompression bomb"):
        decode(tmp_path / "bomb.dcm")
    frames = np.zeros((40, 64, 64), np.uint16)
    many = make_dicom(tmp_path / "many.dcm", frames, frames=40)
    with pytest.raises(InputLimitError, match="max_total_pixels"):
        decode(many, limits=LimitsConfig(max_total_pixels=64 * 64 * 10))


def test_compressed_frame_larger_than_its_header_is_refused():
    with pytest.raises(InputLimitError, match="compressed frame declares"):
        decode(pydicom_file("JPEG2000-embedded-sequence-delimiter.dcm"),
               DicomConfig(modalities=("NM",)))


def test_missing_decoder_gives_a_specific_reason():
    """With the pylibjpeg plugins unavailable, JPEG-LS is refused naming what to install."""
    code = (
        "import sys\n"
        "for m in ('pylibjpeg', 'libjpeg', 'openjpeg', 'rle', 'gdcm', 'jpeg_ls', 'pyjpegls'):\n"
        "    sys.modules[m] = None\n"
        "from pathlib import Path\n"
        "from edge.config import DicomConfig, LimitsConfig\n"
        "from edge.errors import MissingDecoderError\n"
        "from edge.inputs import decode_file\n"
        "try:\n"
        "    decode_file(Path(sys.argv[1]), DicomConfig(), LimitsConfig())\n"
        "except MissingDecoderError as exc:\n"
        "    print('REFUSED', exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code,
                          str(pydicom_file("MR_small_jpeg_ls_lossless.dcm"))],
                         capture_output=True, text=True, env=agent_env(), cwd=str(REPO_ROOT),
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert "REFUSED" in out.stdout
    assert "JPEG-LS Lossless" in out.stdout and "neuroedge[dicom-codecs]" in out.stdout
    assert "pylibjpeg-libjpeg" in out.stdout
    assert MissingDecoderError.__mro__[1] is DecodeError


def test_dicom_picture_is_what_preprocess_receives():
    from edge.preprocess import resize_uint8
    result = decode(pydicom_file("MR_small.dcm"))
    resized = resize_uint8(result.picture)
    assert resized.shape == (224, 224, 3)
    reference = np.asarray(Image.fromarray(pixels(result)).resize((224, 224), Image.BILINEAR))
    np.testing.assert_array_equal(resized[..., 0], reference)
