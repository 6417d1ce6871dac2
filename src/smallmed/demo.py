"""``make demo``: the main job on the default data.

Runs the SVD study's ``demo`` preset on PneumoniaMNIST (downloaded, MD5-checked, when it is not
already on disk): a ResNet-18 pretrained here on chest X-rays (ChestMNIST) or, where ChestMNIST
cannot be had, on RSNA bone-age hand radiographs, then the linear probe, full fine-tuning, SVD
fine-tuning and LoRA on 1/8 of the training split, with early stopping. The verdicts come from a
paired bootstrap over the 624 test images. The console shows one progress bar over runs and the
final table; each run's log is its folder's ``train.log``. The source model is cached and shared
with ``smallmed study svd``. A second call reuses finished runs; ``--fresh`` starts over.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def run_demo(out: str = "runs/demo", *, fresh: bool = False, workers: int = 1) -> Path:
    from .data import fetch, resolve_data
    from .errors import SmallmedError
    from .studies.svd import PRESETS, resolve_source, run_svd_study

    study = PRESETS["demo"]
    try:
        resolve_data(study.data)
    except SmallmedError:
        print("PneumoniaMNIST not found locally: downloading the official file (MD5-checked)...")
        fetch(study.data)  # one sentence if offline
    study = resolve_source(study)  # ChestMNIST, else bone-age hands, else one sentence naming both
    out_path = Path(out)
    if fresh and out_path.exists():
        shutil.rmtree(out_path)
    report = run_svd_study(study, out_path, workers=workers, bar=True)
    text = report.read_text().splitlines()
    start = next(i for i, line in enumerate(text) if line.startswith("## Fraction"))
    end = next(i for i, line in enumerate(text) if line.startswith("## Verdict"))
    print("\n".join(text[start:end] + text[end : end + 6]))
    print(f"\nreport: {report} (results.csv, auc_vs_fraction.png and every run's folder beside it)")
    return report
