"""One API over pydicom 2.4 and pydicom 3.x pixel handling.

pydicom 3 moved the pixel tools to ``pydicom.pixels`` and decodes one frame at a time,
converting YCbCr to RGB itself; pydicom 2.4 (the newest for Python 3.8 on a Jetson Nano)
keeps them in ``pydicom.pixel_data_handlers.util``, decodes every frame and returns YCbCr as
stored. Everything version-dependent lives here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pydicom
from pydicom.uid import UID

try:  # pydicom >= 3
    from pydicom.pixels import (
        apply_color_lut,
        apply_modality_lut,
        apply_voi_lut,
        convert_color_space,
    )
    from pydicom.pixels import pixel_array as _pixel_array

    PYDICOM_3 = True
except ImportError:  # pydicom 2.4
    from pydicom.pixel_data_handlers.util import (  # type: ignore[no-redef]
        apply_color_lut,
        apply_modality_lut,
        apply_voi_lut,
        convert_color_space,
    )

    _pixel_array = None
    PYDICOM_3 = False

__all__ = ["apply_color_lut", "apply_modality_lut", "apply_voi_lut", "convert_color_space",
           "decode_frame", "decoder_problem", "PYDICOM_3"]

# Which pip package decodes which transfer syntax (all in the `dicom-codecs` extra).
_PACKAGE_FOR = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg-libjpeg",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51": "pylibjpeg-libjpeg",  # JPEG Extended
    "1.2.840.10008.1.2.4.57": "pylibjpeg-libjpeg",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70": "pylibjpeg-libjpeg",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80": "pylibjpeg-libjpeg",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81": "pylibjpeg-libjpeg",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90": "pylibjpeg-openjpeg",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91": "pylibjpeg-openjpeg",  # JPEG 2000
    "1.2.840.10008.1.2.4.201": "pylibjpeg-openjpeg",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202": "pylibjpeg-openjpeg",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203": "pylibjpeg-openjpeg",  # HTJ2K
    "1.2.840.10008.1.2.5": "pylibjpeg-rle",  # RLE Lossless
}
YBR_TO_RGB = ("YBR_FULL", "YBR_FULL_422")
DECODER_RGB = ("YBR_ICT", "YBR_RCT")  # JPEG 2000 colour transforms, undone by the decoder


def decoder_problem(tsyntax: UID) -> str:
    """Empty if pixel data in ``tsyntax`` can be decoded here, else the specific reason."""
    uid = UID(str(tsyntax))
    if not uid.is_transfer_syntax:
        return (f"the transfer syntax {uid} is not one pydicom {pydicom.__version__} knows; "
                "export the series uncompressed or as JPEG / JPEG-LS / JPEG 2000 / RLE")
    if not uid.is_compressed:
        return ""
    install = ("install the DICOM codecs with `pip install 'neuroedge[dicom-codecs]'`"
               f" (it provides {_PACKAGE_FOR.get(str(uid), 'pylibjpeg and its plugins')})")
    what = f"{uid.name} ({uid})" if uid.name != str(uid) else str(uid)
    if PYDICOM_3:
        from pydicom.pixels import get_decoder
        try:
            decoder = get_decoder(uid)
        except NotImplementedError:
            return (f"the pixel data is compressed as {what}, which pydicom "
                    f"{pydicom.__version__} cannot decode at all; export the series "
                    "uncompressed or as JPEG / JPEG-LS / JPEG 2000 / RLE")
        if decoder.is_available:
            return ""
        missing: list[str] = list(decoder.missing_dependencies)
        return (f"the pixel data is compressed as {what} and no installed decoder can read it; "
                f"{install}. Missing: {'; '.join(missing)}")
    handlers = [h for h in pydicom.config.pixel_data_handlers
                if h.supports_transfer_syntax(uid)]
    if not handlers:
        return (f"the pixel data is compressed as {what}, which pydicom "
                f"{pydicom.__version__} cannot decode at all; export the series uncompressed "
                "or as JPEG / JPEG-LS / JPEG 2000 / RLE")
    if any(h.is_available() for h in handlers):
        return ""
    return (f"the pixel data is compressed as {what} and no installed decoder can read it; "
            f"{install}")


def decode_frame(ds: Any, index: int, frames: int) -> tuple[np.ndarray, str]:
    """Decode frame ``index`` of ``ds``; return it and its photometric interpretation.

    YCbCr data comes back as RGB in both pydicom versions, so callers see one of
    MONOCHROME1, MONOCHROME2, RGB or PALETTE COLOR.
    """
    photometric = str(ds.PhotometricInterpretation).strip().upper()
    if PYDICOM_3:
        arr = _pixel_array(ds, index=index)  # only this frame is decoded; YBR -> RGB
        if photometric in YBR_TO_RGB or photometric in DECODER_RGB:
            photometric = "RGB"
        return arr, photometric
    arr = ds.pixel_array  # pydicom 2.4 decodes every frame (bounded by the limits beforehand)
    if frames > 1:
        arr = arr[index]
    if photometric in YBR_TO_RGB:
        arr = convert_color_space(arr, "YBR_FULL", "RGB")
        photometric = "RGB"
    elif photometric in DECODER_RGB:
        photometric = "RGB"
    return arr, photometric
