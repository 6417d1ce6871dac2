"""Where data lives: an explicit path, then ``--data-dir``, then ``$SMALLMED_DATA_DIR``, then a cache."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import SmallmedError
from .catalog import LOCAL_ONLY, MEDMNIST, known_names, split_name


def cache_dir() -> Path:
    """The per-user download cache: ``$XDG_CACHE_HOME/smallmed`` (default ``~/.cache/smallmed``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "smallmed"


def search_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    dirs = []
    if data_dir:
        dirs.append(Path(data_dir))
    if os.environ.get("SMALLMED_DATA_DIR"):
        dirs.append(Path(os.environ["SMALLMED_DATA_DIR"]))
    dirs.append(cache_dir())
    return dirs


def file_for_name(name: str) -> str:
    if name in LOCAL_ONLY:
        return LOCAL_ONLY[name]
    base, size = split_name(name)
    if base in MEDMNIST:
        return MEDMNIST[base].file(base, size)
    return name


def resolve_data(spec: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> Path:
    """Turn a dataset name or path into an existing path.

    Example:
        >>> resolve_data("pneumoniamnist")   # doctest: +SKIP
        PosixPath('/.../pneumoniamnist.npz')
    """
    path = Path(spec).expanduser()
    if path.exists():
        return path
    fname = file_for_name(str(spec))
    looked = []
    for d in search_dirs(data_dir):
        cand = d / fname
        looked.append(str(cand))
        if cand.exists():
            return cand
    base, _ = split_name(str(spec))
    hint = (
        f" Download it with `smallmed data fetch {spec}`."
        if base in MEDMNIST
        else f" Known names: {', '.join(known_names())}."
    )
    raise SmallmedError(f"Data '{spec}' not found; looked at {', '.join([str(path), *looked])}.{hint}")
