"""``make demo``: the main job on the default data.

Runs the SVD study's ``demo`` preset on PneumoniaMNIST (downloaded, MD5-checked, when it is not
already on disk): a ResNet-18 pretrained here on chest X-rays (ChestMNIST) or, where ChestMNIST
cannot be had, on RSNA bone-age hand radiographs, then the linear probe, full fine-tuning, SVD
fine-tuning and LoRA on 1/8 of the training split, with early stopping. The verdicts come from a
paired bootstrap over the 624 test images. The console shows one progress bar over runs and the
final table (the study's ``summary.md``); each run's log is its folder's ``train.log``. The source model
(3 epochs here, to keep a first demo on a fresh 2-core machine under 10 minutes) is cached in
``~/.cache/smallmed/sources``. A second call reuses finished runs; ``--fresh`` starts over.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def run_demo(out: str = "runs/demo", *, fresh: bool = False, workers: int = 1) -> Path:
    from .data import fetch, resolve_data
    from .errors import SettingsChangedError, SmallmedError
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
    try:
        report = run_svd_study(study, out_path, workers=workers, bar=True)
    except SettingsChangedError:
        # the demo's own folder from an earlier smallmed (e.g. its source had 6 epochs): a demo is redone, not refused
        print(f"{out_path}: a demo run with other settings (an earlier smallmed); starting it over.")
        report = run_svd_study(study, out_path, workers=workers, bar=True, fresh=True)
    print((report.parent / "summary.md").read_text().rstrip())
    print(f"\nreport: {report} (results.csv, auc_vs_fraction.png and every run's folder beside it)")
    return report
