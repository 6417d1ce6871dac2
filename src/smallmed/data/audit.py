"""``smallmed data audit``: what a dataset hides before it is trained on.

- exact duplicates (SHA-1 of the pixels and shape) within and across splits, with label conflicts;
- near duplicates: perceptual hashes (``imagehash.phash``, 64 bits) within a Hamming distance,
  found exactly with the pigeonhole rule (two hashes within ``t`` bits agree on one of ``t + 1``
  blocks), so no all-pairs comparison is needed;
- patient ids that appear in more than one split, class balance per split, constant images.

``fix_duplicates`` writes a cleaned copy (never the original): ``drop`` keeps one copy of each
exact-duplicate group in the split that is evaluated last (test, then val, then train), so a
leak is removed from the training side and the published test set stays whole; ``merge`` keeps one
copy in the earliest split (train first) with the group's majority label.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SmallmedError

SPLIT_ORDER = ("train", "val", "test")


def _label(split, i):
    y = split.labels[i]
    return y.tolist() if np.ndim(y) else int(y)


def exact_groups(ds) -> list[list[list]]:
    """Groups of identical images as ``[[split, index], ...]`` (index within that split's arrays)."""
    by: dict[str, list] = defaultdict(list)
    for s in SPLIT_ORDER:
        for i, img in enumerate(ds.splits[s].images):
            a = np.ascontiguousarray(img)
            by[hashlib.sha1(a.tobytes() + str(a.shape).encode()).hexdigest()].append([s, i])
    return [g for g in by.values() if len(g) > 1]


def _phash(img: np.ndarray) -> int:
    import imagehash
    from PIL import Image

    a = img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img
    h = imagehash.phash(Image.fromarray(a.astype(np.uint8)))
    return int("".join("1" if b else "0" for b in h.hash.flatten()), 2)


def near_groups(ds, threshold: int = 4) -> list[list[list]]:
    """Groups of images whose 64-bit perceptual hashes differ in at most ``threshold`` bits (connected
    components; exact duplicates are included as distance 0)."""
    if not 0 <= threshold < 32:
        raise SmallmedError(f"--near {threshold}: expected a Hamming distance from 0 to 31 bits.")
    items, hashes = [], []
    for s in SPLIT_ORDER:
        for i, img in enumerate(ds.splits[s].images):
            items.append([s, i])
            hashes.append(_phash(np.asarray(img)))
    h = np.array(hashes, dtype=np.uint64)
    parent = list(range(len(h)))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    blocks = threshold + 1
    edges = np.linspace(0, 64, blocks + 1).astype(int)
    for b in range(blocks):
        lo, width = edges[b], edges[b + 1] - edges[b]
        key = (h >> np.uint64(lo)) & np.uint64((1 << width) - 1)
        buckets: dict[int, list[int]] = defaultdict(list)
        for j, k in enumerate(key.tolist()):
            buckets[k].append(j)
        for members in buckets.values():
            if len(members) < 2:
                continue
            m = np.array(members)
            for a_i, a in enumerate(m[:-1]):
                rest = m[a_i + 1 :]
                dist = np.array([bin(int(x)).count("1") for x in (h[rest] ^ h[a])])
                for other in rest[dist <= threshold]:
                    ra, rb = find(int(a)), find(int(other))
                    if ra != rb:
                        parent[rb] = ra
    comps: dict[int, list] = defaultdict(list)
    for j in range(len(h)):
        comps[find(j)].append(items[j])
    return [g for g in comps.values() if len(g) > 1]


def audit(ds, *, near: int | None = 4) -> dict:
    """Every finding as plain JSON-able data (see the module docstring)."""
    exact = exact_groups(ds)
    cross = [g for g in exact if len({s for s, _ in g}) > 1]
    conflicts = [g for g in exact if len({str(_label(ds.splits[s], i)) for s, i in g}) > 1]
    out: dict = {
        "data": ds.name,
        "images": {s: int(len(ds.splits[s].images)) for s in SPLIT_ORDER},
        "exact_duplicate_groups": exact,
        "exact_duplicate_images": int(sum(len(g) - 1 for g in exact)),
        "cross_split_exact_groups": cross,
        "label_conflict_groups": conflicts,
    }
    if near is not None:
        ng = near_groups(ds, near)
        exact_sets = {frozenset(map(tuple, g)) for g in exact}
        out["near_threshold_bits"] = int(near)
        out["near_duplicate_groups"] = [g for g in ng if frozenset(map(tuple, g)) not in exact_sets]
        out["cross_split_near_groups"] = [g for g in out["near_duplicate_groups"] if len({s for s, _ in g}) > 1]
    pids = {s: ds.splits[s].patient_ids for s in SPLIT_ORDER}
    if all(p is not None for p in pids.values()):
        sets = {s: set(map(str, p)) for s, p in pids.items()}
        out["patients_in_two_splits"] = sorted(
            set().union(*[sets[a] & sets[b] for a, b in (("train", "val"), ("train", "test"), ("val", "test"))])
        )
    else:
        out["patients_in_two_splits"] = None  # no patient ids in this data
    balance = {}
    for s in SPLIT_ORDER:
        y = np.asarray(ds.splits[s].labels)
        if getattr(ds, "task", "") in ("binary", "multiclass"):
            c = Counter(y.reshape(len(y), -1)[:, 0].astype(int).tolist())
            balance[s] = {
                ds.class_names[k] if k < len(ds.class_names) else str(k): int(v) for k, v in sorted(c.items())
            }
        elif getattr(ds, "task", "") == "multilabel":
            balance[s] = {n: int(v) for n, v in zip(ds.class_names, y.sum(0).tolist())}
    out["class_balance"] = balance
    out["constant_images"] = [
        [s, i]
        for s in SPLIT_ORDER
        for i, img in enumerate(ds.splits[s].images)
        if np.asarray(img).min() == np.asarray(img).max()
    ]
    return out


def summary_lines(f: dict) -> list[str]:
    lines = [
        f"{f['data']}: {sum(f['images'].values())} images ({', '.join(f'{k} {v}' for k, v in f['images'].items())})",
        f"exact duplicates: {len(f['exact_duplicate_groups'])} groups ({f['exact_duplicate_images']} extra copies), "
        f"{len(f['cross_split_exact_groups'])} across splits, {len(f['label_conflict_groups'])} with conflicting labels",
    ]
    if "near_duplicate_groups" in f:
        lines.append(
            f"near duplicates (perceptual hash within {f['near_threshold_bits']} bits, exact ones excluded): "
            f"{len(f['near_duplicate_groups'])} groups, {len(f['cross_split_near_groups'])} across splits"
        )
    p = f["patients_in_two_splits"]
    lines.append(
        "patients in two splits: "
        + (
            "no patient ids in this data"
            if p is None
            else f"{len(p)}" + (f" ({', '.join(p[:5])}{' ...' if len(p) > 5 else ''})" if p else "")
        )
    )
    for s, c in f["class_balance"].items():
        lines.append(f"class balance {s}: " + ", ".join(f"{k} {v}" for k, v in c.items()))
    lines.append(f"constant images: {len(f['constant_images'])}")
    for g in f["cross_split_exact_groups"][:10]:
        lines.append("  across splits: " + ", ".join(f"{s}[{i}]" for s, i in g))
    return lines


def fix_duplicates(ds, findings: dict, how: str, out: str | Path) -> dict:
    """Write a cleaned copy of ``ds`` to ``out`` (MedMNIST layout .npz); returns what was removed per split."""
    from ..io import atomic_write_bytes

    if how not in ("drop", "merge"):
        raise SmallmedError(f"--fix {how}: expected drop or merge.")
    out = Path(out)
    if ds.source and out.resolve() == Path(ds.source).resolve():
        raise SmallmedError(f"--out {out} is the audited file itself; the original is never overwritten.")
    remove: dict[str, set] = {s: set() for s in SPLIT_ORDER}
    relabel: dict[tuple, object] = {}
    for g in findings["exact_duplicate_groups"]:
        order = sorted(g, key=lambda m: (SPLIT_ORDER.index(m[0]), m[1]))
        keep = order[-1] if how == "drop" else order[0]
        if how == "drop":  # the copy in the split evaluated last (test, then val), the last index within it
            keep = max(g, key=lambda m: (SPLIT_ORDER.index(m[0]), -m[1]))
        else:
            votes = Counter(str(_label(ds.splits[s], i)) for s, i in g)
            label = votes.most_common(1)[0][0]
            relabel[tuple(keep)] = next(_label(ds.splits[s], i) for s, i in g if str(_label(ds.splits[s], i)) == label)
        for s, i in g:
            if [s, i] != list(keep):
                remove[s].add(i)
    # values: arrays; typed Any because numpy's stub would check ** items against savez's allow_pickle: bool
    arrays: dict[str, Any] = {}
    for s in SPLIT_ORDER:
        sp = ds.splits[s]
        idx = np.array([i for i in range(len(sp.images)) if i not in remove[s]], dtype=np.int64)
        labels = np.array(sp.labels, copy=True)
        for (rs, ri), lab in relabel.items():
            if rs == s:
                labels[ri] = lab
        arrays[f"{s}_images"] = np.asarray(sp.images)[idx]
        arrays[f"{s}_labels"] = labels[idx].reshape(len(idx), -1) if labels.ndim == 1 else labels[idx]
        if sp.patient_ids is not None:
            arrays[f"{s}_patient_ids"] = np.asarray(sp.patient_ids).astype(str)[idx]
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, buf.getvalue())
    return {s: len(r) for s, r in remove.items()}
