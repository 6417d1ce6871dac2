"""``smallmed explain``: occlusion sensitivity maps for a finished run's images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .errors import SmallmedError


def explain_run(
    run_dir: str | Path,
    images: list[str] | None = None,
    *,
    split: str = "test",
    n: int = 4,
    patch: int | None = None,
    stride: int | None = None,
    out: str | Path | None = None,
) -> list[Path]:
    """Write one overlay PNG per image (files, or the first ``n`` of the run's ``split``);
    the map is for the true class where known, else the predicted one."""
    from .analysis.erf import occlusion_map, save_overlay
    from .data import load_dataset, read_image
    from .data.dataset import Split
    from .data.torchdata import ArrayDataset
    from .train.inference import load_run

    run = load_run(run_dir)
    if run.task.kind not in ("binary", "multiclass"):
        raise SmallmedError(f"{run_dir}: occlusion maps need a single-label classification run, not {run.task.kind}.")
    size = run.meta["image_size"]
    labels: list[int | None]  # None: an image file's label is unknown, its prediction stands in
    if images:
        chans = 1 if run.in_chans == 1 else 3
        arrays = np.stack([read_image(p, channels=chans, size=size) for p in images])
        sp = Split(arrays, np.zeros(len(arrays), dtype=np.int64))
        labels, names = [None] * len(images), [Path(p).stem for p in images]
    else:
        ds = load_dataset(run.config.data, data_dir=run.config.data_dir, split_seed=run.config.split_seed)
        if split not in ds.splits:
            raise SmallmedError(f"split={split!r}: expected train, val or test.")
        full = ds.splits[split]
        idx = np.arange(min(n, len(full.labels)))
        sp = full.subset(idx)
        labels, names = [int(np.asarray(sp.labels[i]).ravel()[0]) for i in idx], [f"{split}_{i}" for i in idx]
    data = ArrayDataset(sp, run.transform())
    out_dir = Path(out) if out else Path(run_dir) / "explain"
    patch = patch or max(2, size // 8)
    stride = stride or max(1, patch // 2)
    classes = run.class_names
    written = []
    dev = next(run.model.parameters()).device
    for k in range(len(data)):
        x, _ = data[k]
        with torch.no_grad():
            logits = run.model(x[None].to(dev)).float()
        pred = int(logits.argmax(1)) if logits.shape[1] > 1 else int(logits[0, 0] > 0)
        label = labels[k]
        target = label if label is not None else pred
        heat = occlusion_map(run.model, x, target if logits.shape[1] > 1 else 0, patch=patch, stride=stride)
        title = f"class '{classes[target]}' (predicted '{classes[pred]}'): drop when occluded"
        written.append(save_overlay(x.numpy(), heat, out_dir / f"{names[k]}_occlusion.png", title))
    return written
