"""Download official MedMNIST files with checksum verification (for users who are online).

Downloads go to a temporary file beside the destination and are renamed only after the MD5
matches, so an interrupted or corrupted download never looks like a dataset.
"""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Callable
from pathlib import Path

from ..errors import SmallmedError
from ..hub import download_file, file_hash
from .catalog import MEDMNIST, split_name
from .paths import cache_dir

log = logging.getLogger(__name__)


def md5sum(path: str | Path) -> str:
    return file_hash(path, "md5")


def fetch(
    name: str,
    *,
    size: int | None = None,
    dest: str | Path | None = None,
    force: bool = False,
    opener: Callable = urllib.request.urlopen,
    progress: bool = True,
) -> Path:
    """Download MedMNIST ``name`` (e.g. ``pneumoniamnist`` or ``pneumoniamnist_64``) and verify it.

    Args:
        name: a MedMNIST 2-D dataset name, optionally with a ``_<size>`` suffix.
        size: 28, 64, 128 or 224 (overrides the suffix).
        dest: folder to write to; default the user cache (``~/.cache/smallmed``).
        force: download again even if a verified file exists.
        opener: ``urllib.request.urlopen``-like callable (tests pass their own).

    Example:
        >>> fetch("retinamnist", size=64)   # doctest: +SKIP
        PosixPath('/home/me/.cache/smallmed/retinamnist_64.npz')
    """
    base, suffix_size = split_name(name)
    size = size or suffix_size
    if base not in MEDMNIST:
        raise SmallmedError(f"Cannot download '{name}': known MedMNIST names are {', '.join(sorted(MEDMNIST))}.")
    info = MEDMNIST[base]
    if size not in info.md5:
        raise SmallmedError(f"{base} has no size {size}; available: {', '.join(map(str, sorted(info.md5)))}.")
    from ..io import check_out_dir

    dest = check_out_dir(Path(dest) if dest else cache_dir(), "--dest")
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / info.file(base, size)
    if target.exists():
        if force:
            target.unlink()
        elif md5sum(target) == info.md5[size]:
            return target  # verified once here, not again by download_file
        else:
            raise SmallmedError(
                f"{target} exists but its MD5 is not the official {info.md5[size]}; pass --force to replace it."
            )
    return download_file(
        info.url(base, size), target, md5=info.md5[size], opener=opener, progress=progress, what="MedMNIST file"
    )
