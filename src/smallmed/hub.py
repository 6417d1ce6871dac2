"""Downloads, only when asked: one function for data files and pretrained weights.

``download_file`` streams to a temporary file beside the target, checks the hash (MD5, SHA-256
or a SHA-256 prefix as torchvision names its files) and renames only then, so an interrupted,
truncated or corrupted download never looks like a file. ``SMALLMED_OFFLINE=1`` refuses every
download but those from this machine (127.0.0.1 / localhost: tests serve files that way), with
one sentence naming the file and the folder where a user can place it.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

from .errors import SmallmedError


def offline() -> bool:
    return os.environ.get("SMALLMED_OFFLINE", "").lower() in ("1", "true", "yes")


def file_hash(path: str | Path, algo: str = "sha256", chunk: int = 1 << 20) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _check(digest: dict[str, str], md5: str | None, sha256: str | None) -> str | None:
    if md5 and digest["md5"] != md5:
        return f"MD5 {digest['md5']}, expected {md5}"
    if sha256 and not digest["sha256"].startswith(sha256):
        return f"SHA-256 {digest['sha256'][: len(sha256)]}..., expected {sha256}"
    return None


def download_file(
    url: str,
    target: str | Path,
    *,
    md5: str | None = None,
    sha256: str | None = None,
    opener: Callable = urllib.request.urlopen,
    progress: bool = True,
    what: str = "file",
) -> Path:
    """Download ``url`` to ``target`` with a hash check; nothing is left at ``target`` unless it verifies.

    ``sha256`` may be a prefix (torchvision's 8-hex file-name suffix). An existing ``target`` that
    verifies is returned without a download.
    """
    target = Path(target)
    if target.exists():
        have = {"md5": file_hash(target, "md5") if md5 else "", "sha256": file_hash(target) if sha256 else ""}
        if _check(have, md5, sha256) is None:
            return target
        raise SmallmedError(f"{target} exists but does not match its published hash; delete it to download again.")
    host = urllib.parse.urlparse(url).hostname or ""
    if offline() and host not in ("127.0.0.1", "localhost", "::1"):
        raise SmallmedError(
            f"SMALLMED_OFFLINE is set, so {what} {target.name} was not downloaded from {url}; "
            f"place the file at {target} (folder {target.parent}) or unset SMALLMED_OFFLINE."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.name + ".", suffix=".part", dir=target.parent)
    try:
        hs = {"md5": hashlib.md5(), "sha256": hashlib.sha256()}
        with os.fdopen(fd, "wb") as out:
            try:
                resp = opener(url, timeout=60)
            except OSError as e:
                raise SmallmedError(
                    f"Could not download {url} ({e}); check the connection, or place the {what} at {target} by hand."
                ) from None
            with resp:
                total = int(resp.headers.get("Content-Length", 0) or 0) if hasattr(resp, "headers") else 0
                bar = _bar(total, target.name) if progress else None
                got = 0
                try:
                    while block := resp.read(1 << 20):
                        out.write(block)
                        got += len(block)
                        for h in hs.values():
                            h.update(block)
                        if bar is not None:
                            bar.update(len(block))
                except (OSError, http.client.HTTPException) as e:
                    raise SmallmedError(
                        f"Download of {url} broke off after {got} bytes ({e}); nothing was saved."
                    ) from None
                finally:
                    if bar is not None:
                        bar.close()
        if total and got != total:
            raise SmallmedError(f"Download of {url} is truncated ({got} of {total} bytes); nothing was saved.")
        bad = _check({k: h.hexdigest() for k, h in hs.items()}, md5, sha256)
        if bad:
            raise SmallmedError(f"Downloaded {url} has {bad}; nothing was saved.")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _bar(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total or None, unit="B", unit_scale=True, desc=desc, leave=False)


__all__ = ["download_file", "file_hash", "offline"]
