"""Joints of the RA2 pipeline: landmark names, labelme files, flipping, crops, and which crop each of
the 86 assessments is scored from.

Landmarks per image (the RA2 examples' labelme files): hands 13 points (``mcp_ip`` = thumb IP,
``pip_2-5``, ``mcp_1-5``, wrist ``w1-w3``), feet 6 (``mtp`` = great-toe IP, ``mtp_1-5``). Right
limbs are mirrored to the left before localisation and scoring (seed 003), so one model serves
both sides; coordinates are mirrored back for output.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SmallmedError
from .schema import SCHEMA, Assessment

HAND_POINTS = (
    "mcp_ip",
    "pip_2",
    "pip_3",
    "pip_4",
    "pip_5",
    "mcp_1",
    "mcp_2",
    "mcp_3",
    "mcp_4",
    "mcp_5",
    "w1",
    "w2",
    "w3",
)
FOOT_POINTS = ("mtp", "mtp_1", "mtp_2", "mtp_3", "mtp_4", "mtp_5")
LABELME_NAMES = {
    **{p: f"{i}_{p}" for i, p in enumerate(HAND_POINTS[:10])},
    "w1": "w1",
    "w2": "w2",
    "w3": "w3",
    **{p: p for p in FOOT_POINTS},
}
# the 10 RA2 hand joints that a 21-point hand keypoint set (wrist + 4 per finger, base to tip) also marks
HAND21 = {
    "mcp_ip": "thumb3",
    "pip_2": "forefinger2",
    "pip_3": "middle_finger2",
    "pip_4": "ring_finger2",
    "pip_5": "pinky_finger2",
    "mcp_1": "thumb2",
    "mcp_2": "forefinger1",
    "mcp_3": "middle_finger1",
    "mcp_4": "ring_finger1",
    "mcp_5": "pinky_finger1",
}
LIMB_POINTS = {"LH": HAND_POINTS, "RH": HAND_POINTS, "LF": FOOT_POINTS, "RF": FOOT_POINTS}

# crop side as a fraction of the image width: finger/toe joints and the whole carpus
JOINT_CROP, WRIST_CROP = 0.14, 0.32


def points_for(a: Assessment) -> tuple[str, ...]:
    """The landmark(s) whose centre the crop of assessment ``a`` is taken around."""
    if a.joint == "wrist":
        return ("w1", "w2", "w3")  # the carpus: one crop around the three wrist points
    if a.limb.endswith("F"):
        return ("mtp",) if a.site == "ip" else (f"mtp_{a.site}",)
    if a.site == "ip":
        return ("mcp_ip",)
    return (f"{a.joint}_{a.site}",)


def crop_size(a: Assessment) -> float:
    return WRIST_CROP if a.joint == "wrist" else JOINT_CROP


def read_landmarks(path: str | Path, limb: str | None = None) -> dict[str, tuple[float, float]]:
    """{point: (x, y)} from a labelme file; names are checked against the limb's list when given."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
        shapes = d["shapes"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SmallmedError(f"{path}: not a labelme landmark file ({e}).") from None
    back = {v: k for k, v in LABELME_NAMES.items()}
    out = {}
    for s in shapes:
        label = str(s.get("label", ""))
        name = back.get(label, label)
        pts = s.get("points") or []
        if not pts:
            continue
        out[name] = (float(pts[0][0]), float(pts[0][1]))
    if limb is not None:
        unknown = sorted(set(out) - set(LIMB_POINTS[limb]))
        if unknown:
            raise SmallmedError(
                f"{path}: point(s) {', '.join(unknown)} are not {limb} landmarks "
                f"(expected {', '.join(LABELME_NAMES[p] for p in LIMB_POINTS[limb])})."
            )
    return out


def write_landmarks(
    points: dict[str, tuple[float, float]],
    image_path: str,
    size: tuple[int, int],
    scores: dict[str, float] | None = None,
) -> dict:
    """A labelme dict of points in original pixels (the format the RA2 examples use; labelme 5's shape fields,
    ``imageData`` null so labelme reads the image from ``image_path``, relative to the JSON file)."""
    w, h = size
    shapes: list[dict[str, object]] = [
        {
            "label": LABELME_NAMES.get(n, n),
            "points": [[float(x), float(y)]],
            "shape_type": "point",
            "group_id": None,
            "description": "",
            "mask": None,
            "flags": {},
            **({"score": float(scores[n])} if scores and n in scores else {}),
        }
        for n, (x, y) in points.items()
    ]
    return {
        "version": "5.5.0",
        "flags": {},
        "shapes": shapes,
        "imagePath": image_path,
        "imageData": None,
        "imageHeight": int(h),
        "imageWidth": int(w),
    }


def flip_points(points: dict[str, tuple[float, float]], width: int) -> dict[str, tuple[float, float]]:
    """Mirror x about the image's vertical centre line (pixel centres: x -> width - 1 - x).

    Example:
        >>> flip_points({"a": (0.0, 5.0)}, 10)
        {'a': (9.0, 5.0)}
    """
    return {k: (width - 1 - x, y) for k, (x, y) in points.items()}


def to_left(image: np.ndarray, limb: str) -> np.ndarray:
    """A right-limb image mirrored to look like a left one (left images unchanged)."""
    return np.ascontiguousarray(image[:, ::-1]) if limb.startswith("R") else image


@dataclass
class Detection:
    label: str
    score: float
    xy: tuple[float, float]


def assign_joints(detections: list[Detection], classes: tuple[str, ...]) -> dict[str, Detection]:
    """One detection per class: the most confident of each class; a class with none takes a redundant
    (not the best of its class) detection of another class, most confident first (seed 003's
    post-processing). Classes still empty are left out.

    Example:
        >>> d = [Detection("a", .9, (0, 0)), Detection("a", .6, (5, 5)), Detection("b", .8, (9, 9))]
        >>> {k: v.xy for k, v in assign_joints(d, ("a", "b", "c")).items()}
        {'a': (0, 0), 'b': (9, 9), 'c': (5, 5)}
    """
    best: dict[str, Detection] = {}
    for d in sorted(detections, key=lambda d: -d.score):
        if d.label in classes and d.label not in best:
            best[d.label] = d
    used = {id(d) for d in best.values()}
    spare = [d for d in sorted(detections, key=lambda d: -d.score) if id(d) not in used]
    for c in classes:
        if c not in best and spare:
            d = spare.pop(0)
            best[c] = Detection(c, d.score, d.xy)
    return {c: best[c] for c in classes if c in best}


def crop(image: np.ndarray, center: tuple[float, float], side: float, out: int) -> np.ndarray:
    """A square crop of ``side`` pixels around ``center`` (zero-padded at the border), resized to ``out``."""
    from PIL import Image

    h, w = image.shape[:2]
    half = side / 2
    x0, y0 = int(round(center[0] - half)), int(round(center[1] - half))
    s = max(2, int(round(side)))
    canvas = np.zeros((s, s), dtype=image.dtype)
    xs, ys = max(0, x0), max(0, y0)
    xe, ye = min(w, x0 + s), min(h, y0 + s)
    if xe > xs and ye > ys:
        canvas[ys - y0 : ye - y0, xs - x0 : xe - x0] = image[ys:ye, xs:xe]
    return np.asarray(Image.fromarray(canvas).resize((out, out), Image.Resampling.BILINEAR))


def _crop_centres(points: dict[str, tuple[float, float]], limb: str):
    """(assessment, centre) of every assessment of ``limb`` whose landmarks are all in ``points``."""
    for a in SCHEMA:
        if a.limb == limb and all(n in points for n in points_for(a)):
            yield a, np.mean([points[n] for n in points_for(a)], axis=0)


def crops_for_limb(
    image: np.ndarray, points: dict[str, tuple[float, float]], limb: str, out: int
) -> dict[str, np.ndarray]:
    """Crop of every assessment of ``limb`` from a left-oriented image and its points: {column: [out, out]}."""
    w = image.shape[1]
    return {
        a.column: crop(image, (float(c[0]), float(c[1])), crop_size(a) * w, out) for a, c in _crop_centres(points, limb)
    }


def crop_boxes(points: dict[str, tuple[float, float]], limb: str, width: int) -> dict[str, tuple[float, float, float]]:
    """{column: (x centre, y centre, side)} of every assessment's crop, in the original image's pixels
    (``points`` in the original image too; right limbs are mirrored as for cropping, then back)."""
    right = limb.startswith("R")
    left = flip_points(points, width) if right else points
    return {
        a.column: (float(width - 1 - c[0] if right else c[0]), float(c[1]), crop_size(a) * width)
        for a, c in _crop_centres(left, limb)
    }


def draw_overlay(
    image: np.ndarray,
    points: dict[str, tuple[float, float]],
    limb: str,
    scores: dict[str, float],
    path: str | Path,
    title: str = "",
) -> None:
    """The radiograph with its joints (dots), each assessment's crop box and its score, as a PNG: how a
    rheumatologist checks a result at a glance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from ..io import atomic_savefig

    h, w = image.shape[:2]
    fig, ax = plt.subplots(figsize=(6, 6 * h / max(w, 1)))
    ax.imshow(image, cmap="gray")
    for _name, (x, y) in points.items():
        ax.plot(x, y, "o", ms=3, color="#ffcc00")
    for col, (cx, cy, side) in crop_boxes(points, limb, w).items():
        score = scores.get(col)
        color = "#33cc33" if not score else ("#ff9900" if score < 2 else "#ff3333")
        ax.add_patch(Rectangle((cx - side / 2, cy - side / 2), side, side, fill=False, lw=0.7, ec=color))
        kind = "E" if "_E__" in col else "J"
        ax.text(
            cx - side / 2,
            cy - side / 2,
            f"{kind} {score:.1f}" if score is not None else f"{kind} -",
            color=color,
            fontsize=5,
            va="bottom",
        )
    ax.set_title(title or limb, fontsize=8)
    ax.axis("off")
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)
