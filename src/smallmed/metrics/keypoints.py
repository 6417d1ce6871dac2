"""Localisation error of keypoints: Euclidean pixel error, error as a fraction of the image width,
per joint, over visible keypoints only."""

from __future__ import annotations

import numpy as np


def keypoint_errors(
    pred: np.ndarray, true: np.ndarray, visible: np.ndarray, width: np.ndarray | float, names: list[str] | None = None
) -> dict:
    """Mean pixel error, mean error / image width, the share within 5 % of the width (PCK@0.05), per joint.

    Args:
        pred, true: [N, K, 2] (x, y) in pixels. visible: [N, K] (0 = not annotated).
        width: the image width, scalar or [N, K] / [N] (per image).

    Example:
        >>> e = keypoint_errors(np.array([[[3.0, 4.0]]]), np.zeros((1, 1, 2)), np.ones((1, 1)), 100.0, ["a"])
        >>> e["px_error"], e["frac_error"], e["per_joint"]["a"]["px_error"]
        (5.0, 0.05, 5.0)
    """
    d = np.linalg.norm(np.asarray(pred, float) - np.asarray(true, float), axis=-1)
    vis = np.asarray(visible) > 0
    w = np.broadcast_to(np.asarray(width, float).reshape(np.shape(width) + (1,) * (2 - np.ndim(width))), d.shape)
    frac = d / w
    names = names or [str(i) for i in range(d.shape[1])]
    per = {}
    for j, n in enumerate(names):
        v = vis[:, j]
        per[n] = {
            "px_error": float(d[v, j].mean()) if v.any() else float("nan"),
            "frac_error": float(frac[v, j].mean()) if v.any() else float("nan"),
            "n": int(v.sum()),
        }
    return {
        "px_error": float(d[vis].mean()) if vis.any() else float("nan"),
        "frac_error": float(frac[vis].mean()) if vis.any() else float("nan"),
        "pck_0.05": float((frac[vis] <= 0.05).mean()) if vis.any() else float("nan"),
        "n": int(vis.sum()),
        "per_joint": per,
    }
