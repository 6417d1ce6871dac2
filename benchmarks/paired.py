"""Paired differences over seeds from a study's results.csv (one row per cell), against a baseline.

    python benchmarks/paired.py docs/studies/sfconv-quick/results.csv --by variant --baseline conv --metric auc
"""

from __future__ import annotations

import argparse
import csv

from smallmed.studies.stats import fmt_paired, paired


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("results")
    p.add_argument("--by", required=True, help="column naming the compared methods")
    p.add_argument("--baseline", required=True)
    p.add_argument("--metric", required=True)
    p.add_argument("--group", help="a column to compare within (e.g. fraction)")
    a = p.parse_args()
    rows = list(csv.DictReader(open(a.results, newline="")))
    groups = sorted({r[a.group] for r in rows}) if a.group else [None]
    for g in groups:
        by: dict[str, dict[str, float]] = {}
        for r in rows:
            if g is None or r[a.group] == g:
                by.setdefault(r[a.by], {})[r["seed"]] = float(r[a.metric])
        for v, vals in by.items():
            if v == a.baseline:
                continue
            seeds = sorted(set(vals) & set(by[a.baseline]))
            pr = paired([vals[s] for s in seeds], [by[a.baseline][s] for s in seeds])
            head = f"{a.group}={g} " if g is not None else ""
            print(f"{head}{v} - {a.baseline} ({a.metric}, {len(seeds)} seeds): "
                  + (fmt_paired(pr) if len(seeds) >= 3 else f"{pr['mean']:+.4f} (n too small for an interval)"))


if __name__ == "__main__":
    main()
