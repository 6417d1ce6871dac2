"""Tiny generated data and helpers shared by the tests.

Generated images are learnable on purpose: class k has a bright square at a class-specific
place on a noisy background, so a few steps of a tiny CNN separate the classes and a test that
expects learning can fail when training is broken.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if os.environ.get("SMALLMED_DATA_DIR"):
    SHARED = Path(os.environ["SMALLMED_DATA_DIR"])

# tests never touch the network: every smallmed download refuses, but those served from 127.0.0.1
os.environ["SMALLMED_OFFLINE"] = "1"
# runs write no figures (seconds each) unless a test asks for them with the `figures` fixture
os.environ["SMALLMED_FIGURES"] = "0"
os.environ.setdefault("HF_HUB_OFFLINE", "1")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one thread per worker: `make test` runs a worker per core, and tiny models scale badly over threads
    torch.set_num_threads(1)
elif "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(min(2, os.cpu_count() or 1))


def make_images(labels: np.ndarray, size: int = 16, channels: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = len(labels)
    imgs = rng.integers(0, 60, size=(n, size, size, channels)).astype(np.uint8)
    q = size // 4
    for i, y in enumerate(np.atleast_2d(labels.T).T if labels.ndim == 2 else labels):
        classes = np.flatnonzero(y) if np.ndim(y) else [int(y)]
        for k in classes:
            r, c = (k % 3) * q, (k // 3) * q
            imgs[i, r : r + q, c : c + q, :] = 220
    return imgs


def make_medmnist(path: Path, *, n=(64, 24, 24), size=16, channels=1, classes=2, multilabel=False, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n):
        if multilabel:
            labels = rng.integers(0, 2, size=(count, classes)).astype(np.uint8)
        else:
            labels = (np.arange(count) % classes).astype(np.uint8)[:, None]
        imgs = make_images(labels if multilabel else labels[:, 0], size, channels, seed + count)
        if channels == 1:
            imgs = imgs[..., 0]
        arrays[f"{split}_images"] = imgs
        arrays[f"{split}_labels"] = labels
    np.savez(path, **arrays)
    return path


@pytest.fixture
def tiny_npz(tmp_path) -> Path:
    return make_medmnist(tmp_path / "tiny.npz")


@pytest.fixture
def tiny_cfg(tiny_npz, tmp_path):
    from smallmed import TrainConfig

    def make(**kw):
        # figures cost seconds per run: the tests that read them ask for them (figures=True)
        base = dict(
            data=str(tiny_npz),
            model="small_cnn",
            epochs=2,
            batch_size=16,
            lr=3e-3,
            out=str(tmp_path / "run"),
            progress=False,
            augment="none",
            figures=False,
        )
        base.update(kw)
        return TrainConfig(**base)

    return make


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED / "pneumoniamnist.npz").exists():
        pytest.skip(f"real data not present at {SHARED} (set SMALLMED_DATA_DIR to run these)")
    return SHARED


@pytest.fixture
def http_root(tmp_path):
    """A folder served over HTTP on 127.0.0.1: (folder, base URL ending in '/'). Downloads in tests come from here."""
    import http.server
    import threading
    from functools import partial

    root = tmp_path / "served"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{srv.server_address[1]}/"
    srv.shutdown()


@pytest.fixture
def figures(monkeypatch):
    """Runs in this test write their figures (the suite turns them off through SMALLMED_FIGURES=0)."""
    monkeypatch.setenv("SMALLMED_FIGURES", "1")
