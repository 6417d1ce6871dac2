"""DICOM reading with the care radiographs need: rescale, MONOCHROME1 inversion, windowing."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import SmallmedError


def is_dicom(path: Path) -> bool:
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def read_dicom(path: str | Path) -> np.ndarray:
    """Read a single-frame DICOM image as uint8 (H, W), through pydicom's own LUT functions.

    ``apply_modality_lut`` maps stored values to modality values (RescaleSlope/Intercept or a
    Modality LUT Sequence); ``apply_voi_lut`` applies the first VOI LUT Sequence or window
    (LINEAR, LINEAR_EXACT and SIGMOID VOI LUT Functions). The result is scaled from the output
    range the standard gives it (the LUT's bit depth, or the stored bits for a window; the
    image's own min-max without either) to 0-255, and inverted for MONOCHROME1 (where high values
    mean dark).
    """
    import pydicom  # a core dependency, but only DICOM users pay for the import
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except Exception as e:  # pydicom raises several types for non-DICOM input
        raise SmallmedError(f"{path}: not a readable DICOM file ({e}).") from None
    if "PixelData" not in ds:
        raise SmallmedError(f"{path}: DICOM file has no pixel data (no PixelData element).")
    try:
        stored = ds.pixel_array
    except Exception as e:
        raise SmallmedError(f"{path}: DICOM pixel data could not be decoded ({e}).") from None
    if stored.ndim != 2:
        raise SmallmedError(f"{path}: DICOM pixel array has shape {stored.shape}; expected one 2-D grayscale frame.")
    try:
        modality = apply_modality_lut(stored, ds)
        if (
            getattr(ds, "VOILUTSequence", None)
            and np.issubdtype(modality.dtype, np.floating)
            and np.array_equal(modality, np.round(modality))
        ):
            modality = modality.astype(np.int64)  # a LUT is indexed by integers (a float rescale of 1, 0 is one)
        arr = np.asarray(apply_voi_lut(modality, ds), dtype=np.float64)
    except Exception as e:
        raise SmallmedError(f"{path}: its modality or VOI LUT could not be applied ({e}).") from None
    lo, hi = _output_range(ds, arr)
    arr = np.clip((arr - lo) / max(hi - lo, 1e-6), 0, 1)
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        arr = 1.0 - arr
    return np.round(arr * 255).astype(np.uint8)


def _output_range(ds, arr: np.ndarray) -> tuple[float, float]:
    """The range ``apply_voi_lut`` maps into: [0, 2^bits - 1] of a VOI LUT's descriptor, the stored
    bits' range for a window, else the image's own min and max."""
    seq = getattr(ds, "VOILUTSequence", None)
    if seq:
        bits = int(seq[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        bits = int(getattr(ds, "BitsStored", 8) or 8)
        if int(getattr(ds, "PixelRepresentation", 0) or 0):
            return float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
        return 0.0, float(2**bits - 1)
    return float(arr.min()), float(arr.max())
