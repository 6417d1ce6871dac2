"""``make demo``: the main job on the shipped default data.

Runs ``smallmed study svd --preset quick`` on PneumoniaMNIST: a ResNet-18 pretrained here on the
RSNA bone-age hand radiographs (a real X-ray source, not random init; no ImageNet weights are
shipped for dense-conv models), then full fine-tuning, the linear probe and three SVD variants
on nested 1/8 and 1/32 training subsets over three seeds, with a report. About 9 minutes on 2 CPU
cores. A second call resumes (finished runs are reused); ``--fresh`` starts over.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def run_demo(out: str = "runs/demo", *, fresh: bool = False, workers: int = 1) -> Path:
    from .data import fetch, resolve_data
    from .errors import SmallmedError
    from .studies.svd import PRESETS, run_svd_study

    study = PRESETS["quick"]
    try:
        resolve_data(study.data)
    except SmallmedError:
        print("PneumoniaMNIST not found locally: downloading the official file (MD5-verified)...")
        fetch(study.data)  # a clear error if offline
    resolve_data(study.source_data)  # the source has no public direct download: say so before any work
    out_path = Path(out)
    if fresh and out_path.exists():
        shutil.rmtree(out_path)
    report = run_svd_study(study, out_path, workers=workers)
    print(f"\nreport: {report} (results.csv, auc_vs_fraction.png and every run's folder beside it)")
    return report
