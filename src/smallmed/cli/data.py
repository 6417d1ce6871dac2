"""``smallmed data stats|audit|fetch``."""

from __future__ import annotations

import json
import logging

from ..errors import SmallmedError
from ._common import at_least

log = logging.getLogger("smallmed")


def add(sub) -> None:
    """The data commands."""
    d = sub.add_parser("data", help="inspect or download data")
    dsub = d.add_subparsers(dest="data_command", required=True)
    s = dsub.add_parser("stats", help="counts, image size, intensity mean/std/skewness/kurtosis")
    s.add_argument("data")
    s.add_argument("--data-dir")
    s.add_argument("--image-size", type=int)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_data_stats)
    au = dsub.add_parser(
        "audit", help="duplicates within and across splits, patient leakage, class balance, constant images"
    )
    au.add_argument("data")
    au.add_argument("--data-dir")
    au.add_argument("--near", type=int, default=4, help="near duplicates: perceptual-hash distance in bits (-1: skip)")
    au.add_argument("--fix", choices=("drop", "merge"), help="write a cleaned copy without the exact duplicates")
    au.add_argument("--out", help="with --fix: the cleaned .npz to write")
    au.add_argument("--json", action="store_true", help="print the findings as JSON")
    au.set_defaults(func=cmd_data_audit)
    f = dsub.add_parser("fetch", help="download an official MedMNIST file and verify its MD5")
    f.add_argument("name")
    f.add_argument("--size", type=int, choices=(28, 64, 128, 224))
    f.add_argument("--dest")
    f.add_argument("--force", action="store_true")
    f.set_defaults(func=cmd_data_fetch)


def cmd_data_stats(a) -> int:
    from ..data import dataset_stats, load_dataset
    from ..data.stats import format_stats

    at_least(a, image_size=4)
    st = dataset_stats(load_dataset(a.data, data_dir=a.data_dir, image_size=a.image_size))
    print(json.dumps(st, indent=2) if a.json else format_stats(st))
    return 0


def cmd_data_audit(a) -> int:
    from ..data import load_dataset
    from ..data.audit import audit, fix_duplicates, summary_lines

    if a.fix and not a.out:
        raise SmallmedError(
            "--fix writes a cleaned copy: give its path with --out FILE.npz (the original is never changed)."
        )
    if a.out and not a.fix:
        raise SmallmedError(f"--out {a.out} is where --fix writes its cleaned copy: add --fix drop or --fix merge.")
    ds = load_dataset(a.data, data_dir=a.data_dir)
    findings = audit(ds, near=None if a.near < 0 else a.near)
    if a.fix:
        removed = fix_duplicates(ds, findings, a.fix, a.out)
        findings["fixed"] = {"how": a.fix, "out": a.out, "removed": removed}
    if a.json:
        print(json.dumps(findings))
    else:
        print("\n".join(summary_lines(findings)))
        if a.fix:
            print(f"wrote {a.out}: removed " + ", ".join(f"{k} {v}" for k, v in findings["fixed"]["removed"].items()))
    return 0


def cmd_data_fetch(a) -> int:
    from ..data import fetch

    print(fetch(a.name, size=a.size, dest=a.dest, force=a.force))
    return 0
