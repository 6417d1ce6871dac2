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
    """Read a single-frame DICOM image as uint8 (H, W).

    Stored values are mapped to modality values with RescaleSlope/RescaleIntercept, inverted
    when PhotometricInterpretation is MONOCHROME1 (where high values mean dark), windowed with
    the first WindowCenter/WindowWidth when present (otherwise the image's own min-max), and
    scaled to 0-255.
    """
    import pydicom  # a core dependency, but only DICOM users pay for the import

    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
    except Exception as e:  # pydicom raises several types for non-DICOM input
        raise SmallmedError(f"{path}: not a readable DICOM file ({e}).") from None
    if "PixelData" not in ds:
        raise SmallmedError(f"{path}: DICOM file has no pixel data (no PixelData element).")
    try:
        arr = ds.pixel_array.astype(np.float32)
    except Exception as e:
        raise SmallmedError(f"{path}: DICOM pixel data could not be decoded ({e}).") from None
    if arr.ndim != 2:
        raise SmallmedError(f"{path}: DICOM pixel array has shape {arr.shape}; expected one 2-D grayscale frame.")
    arr = arr * float(getattr(ds, "RescaleSlope", 1) or 1) + float(getattr(ds, "RescaleIntercept", 0) or 0)
    lo, hi = float(arr.min()), float(arr.max())
    center, width = _first(getattr(ds, "WindowCenter", None)), _first(getattr(ds, "WindowWidth", None))
    if center is not None and width is not None and width > 1:
        lo, hi = center - width / 2, center + width / 2
    arr = np.clip((arr - lo) / max(hi - lo, 1e-6), 0, 1)
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        arr = 1.0 - arr
    return np.round(arr * 255).astype(np.uint8)


def _first(value) -> float | None:
    if value is None:
        return None
    try:
        return float(value[0]) if hasattr(value, "__len__") and not isinstance(value, str) else float(value)
    except (TypeError, ValueError, IndexError):
        return None
