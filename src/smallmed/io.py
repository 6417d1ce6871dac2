"""Files that never end half-written, and the run-folder lock: the package's leaf module.

Every writer puts its bytes in a temporary file in the same folder, then renames it over the
target, so a crash or a kill leaves either the old file or the new one. This module imports
nothing of smallmed but the error type, so data, models, reports and studies can all use it.
Checkpoints are torch files written the same way and read safely (``weights_only=True``); torch is
imported inside those functions so the command line starts without it.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import SmallmedError

# a write that failed for want of room or a working disk: the file is named in one sentence, not a traceback
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS}


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    existed = path.exists()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
        except (OSError, RuntimeError) as e:
            # torch.save reports a failed write as a RuntimeError raised while handling the OSError
            cause = e if isinstance(e, OSError) else e.__context__
            if not isinstance(cause, OSError) or cause.errno not in _WRITE_ERRNOS:
                raise
            kept = "the previous version was kept" if existed else "nothing was written"
            raise SmallmedError(f"{path}: could not be written ({cause.strerror or cause}); {kept}.") from e
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give what the user's umask gives a new file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    _atomic(Path(path), lambda f: f.write(data))


def atomic_write_file(path: str | Path, write) -> None:
    """``write(f)`` into a temporary file beside ``path``, renamed over it only when complete."""
    _atomic(Path(path), write)


def atomic_write_text(path: str | Path, text: str) -> None:
    _atomic(Path(path), lambda f: f.write(text.encode()))


def atomic_write_csv(path: str | Path, rows: list[dict]) -> None:
    """Rows of dicts as a CSV file, atomically; the header is every key in order of first appearance
    (a row without a key leaves its cell empty)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _finite(o):
    """NaN and infinities become null: strict JSON parsers reject bare NaN."""
    if isinstance(o, float):
        return o if o == o and o not in (float("inf"), float("-inf")) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    if hasattr(o, "item") and getattr(o, "ndim", 1) == 0:
        return _finite(o.item())
    return o


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Strict JSON (NaN -> null), atomically."""
    atomic_write_text(path, json.dumps(_finite(obj), indent=2, default=_json_default, allow_nan=False) + "\n")


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def check_out_dir(path: str | Path, flag: str = "--out") -> Path:
    """Refuse, before any work, an output folder that is a file, lies under a file or cannot be written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SmallmedError(f"{flag} {path}: exists and is a file; expected a folder.")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise SmallmedError(f"{flag} {path}: {probe} is a file, so no folder can be made under it.")
    if not os.access(probe, os.W_OK | os.X_OK) or str(probe.resolve()).startswith(("/proc", "/sys")):
        raise SmallmedError(f"{flag} {path}: {probe} is not writable.")
    return path


class RunLock:
    """``out/.lock`` holding this process's pid: a second command writing the same folder refuses in one
    sentence; a lock left by a killed process (its pid no longer runs) is taken over."""

    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / ".lock"
        self.held = False

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    pid = int(self.path.read_text().strip() or 0)
                except (OSError, ValueError):
                    pid = 0
                if pid and pid != os.getpid() and _alive(pid):
                    raise SmallmedError(
                        f"{self.path.parent}: another smallmed process (pid {pid}) is writing this "
                        "folder; wait for it or choose another --out."
                    ) from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            self.held = True
            return self
        raise SmallmedError(f"{self.path}: could not take the lock.")

    def __exit__(self, *exc) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def atomic_savefig(fig, path: str | Path, dpi: int = 120) -> None:
    """``fig.savefig`` as PNG through a temporary file."""
    _atomic(Path(path), lambda f: fig.savefig(f, format="png", dpi=dpi, bbox_inches="tight"))


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` that never leaves a partial file."""
    import torch

    _atomic(Path(path), lambda f: torch.save(obj, f))


def load_checkpoint(path: str | Path) -> dict:
    """Read a smallmed checkpoint safely (``weights_only=True``)."""
    import torch

    path = Path(path)
    if not path.exists():
        raise SmallmedError(f"{path}: checkpoint not found.")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise SmallmedError(f"{path}: not a readable checkpoint ({load_failure(e)}).") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise SmallmedError(f"{path}: not a smallmed checkpoint (no 'model' entry).")
    return ckpt


def load_failure(e: Exception) -> str:
    """torch.load's reason in a few words, without its advice to load unsafely."""
    text = str(e)
    if "weights_only" in text or "Unsupported global" in text or "WeightsUnpickler" in text:
        return "it holds Python objects that a safe load refuses; smallmed never unpickles arbitrary code"
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    return first[:200]
