"""``smallmed ra2 check|evaluate|train|predict|localiser``: RA2 joint-damage scoring."""

from __future__ import annotations

import json
import logging
import sys

from ..errors import SmallmedError
from ._common import summary_line

log = logging.getLogger("smallmed")


def add(sub) -> None:
    """The RA2 commands."""
    ra = sub.add_parser("ra2", help="rheumatoid-arthritis joint damage (Sharp/van der Heijde, RA2 DREAM Challenge)")
    rsub = ra.add_subparsers(dest="ra2_command", required=True)
    rc = rsub.add_parser("check", help="validate a score table in the challenge's format and print its totals")
    rc.add_argument("table")
    rc.set_defaults(func=cmd_ra2_check)
    re_ = rsub.add_parser("evaluate", help="the challenge's three metrics and per-joint errors of a predicted table")
    re_.add_argument("pred", help="predicted scores (challenge CSV)")
    re_.add_argument("truth", help="true scores (challenge CSV)")
    re_.add_argument("--weights", help="JSON mapping score value -> weight (default: inverse frequency in the truth)")
    re_.add_argument("--json", action="store_true", help="print everything as JSON")
    re_.set_defaults(func=cmd_ra2_evaluate)
    rt = rsub.add_parser("train", help="train the three scorers (CV ensembles) on your radiographs and score table")
    rt.add_argument("--images", required=True, help="folder of PATIENT-LH/RH/LF/RF.<jpg|png|dcm>")
    rt.add_argument("--scores", required=True, help="score table in the challenge's CSV format")
    rt.add_argument("--landmarks", required=True, help="folder of PATIENT-LIMB.json labelme joint points")
    rt.add_argument("--folds", type=int, default=5)
    rt.add_argument("--epochs", type=int, default=10)
    rt.add_argument("--crop", type=int, default=64, help="scorer input side in px")
    rt.add_argument(
        "--model",
        default="resnet18",
        help="resnet18 (default: ahead of the seed's DenseNet per CPU minute on knee grades), densenet_ra2_v2 or "
        "densenet_ra2_v1 (the seed's), or any registered model",
    )
    rt.add_argument("--lr", type=float, default=1e-3)
    rt.add_argument("--seed", type=int, default=0)
    rt.add_argument(
        "--init",
        help="start every scorer from this run folder (e.g. a knee- or bone-age-trained run) "
        "or weights file; its head is replaced",
    )
    rt.add_argument("--localiser-hands", help="a keypoint run (smallmed ra2 localiser) used for hands at predict time")
    rt.add_argument(
        "--localiser-epochs",
        type=int,
        default=30,
        help="epochs of the hand / foot localisers trained on "
        "the group's own landmarks where no --localiser-* is given (0: place joints by the mean shape)",
    )
    rt.add_argument("--localiser-feet", help="a keypoint run used for feet at predict time")
    rt.add_argument("--out", required=True)
    rt.set_defaults(func=cmd_ra2_train)
    rp = rsub.add_parser("predict", help="score table (challenge CSV) for every patient in a folder of radiographs")
    rp.add_argument("run_dir")
    rp.add_argument("images", help="folder of PATIENT-LH/RH/LF/RF.<jpg|png|dcm>")
    rp.add_argument("--out", required=True, help="CSV to write")
    rp.add_argument(
        "--joints-out",
        help="a folder: one labelme file per radiograph with the joints used (open in labelme, correct, pass back "
        "to ra2 train --landmarks); a .json path: one file for all",
    )
    rp.add_argument("--landmarks", help="use these labelme points instead of locating joints")
    rp.add_argument("--overlay", help="folder for one PNG per radiograph: its joints, crop boxes and per-joint scores")
    rp.add_argument("--device", default="cpu")
    rp.set_defaults(func=cmd_ra2_predict)
    rl = rsub.add_parser("localiser", help="train a hand joint localiser from a 21-point hand keypoint .npz")
    rl.add_argument("--data", required=True, help="npz with images, keypoints_xyv, keypoint_names (21-point hands)")
    rl.add_argument(
        "--kind",
        choices=("unet", "keypoint-rcnn"),
        default="unet",
        help="heatmap U-Net (default) or torchvision's Keypoint R-CNN (the seed's detector family)",
    )
    rl.add_argument(
        "--weights-backbone",
        choices=("imagenet",),
        help="keypoint-rcnn: start the ResNet from torchvision's ImageNet weights (where present)",
    )
    rl.add_argument("--epochs", type=int, default=20)
    rl.add_argument("--image-size", type=int, default=96)
    rl.add_argument("--seed", type=int, default=0)
    rl.add_argument("--out", required=True)
    rl.set_defaults(func=cmd_ra2_localiser)


def cmd_ra2_check(a) -> int:
    from ..ra2 import read_scores, totals

    t = read_scores(a.table)
    print("Patient_ID,Overall_Tol,Overall_erosion,Overall_narrowing")
    for pid, s in totals(t).items():
        print(",".join([pid, *("" if v is None else f"{v:g}" for v in s.values())]))
    return 0


def cmd_ra2_evaluate(a) -> int:
    from ..ra2 import challenge_metrics, read_scores

    weights = None
    if a.weights:
        try:
            weights = {int(k): float(v) for k, v in json.loads(a.weights).items()}
        except (ValueError, AttributeError, TypeError):
            raise SmallmedError(f'--weights {a.weights!r}: expected JSON like \'{{"0": 1, "1": 4}}\'.') from None
    m = challenge_metrics(read_scores(a.pred, require_all=False), read_scores(a.truth), weights=weights)
    if a.json:
        print(json.dumps(m, indent=2))
        return 0
    print(f"patients {m['patients']} (without prediction: {m['patients_without_prediction']})")
    for k in ("sc1_weighted_mae_total", "mae_total", "sc2_weighted_rmse_narrowing", "sc3_weighted_rmse_erosion"):
        if k in m:
            print(f"{k:<30} {m[k]:.4f}")
    worst = sorted(m["per_joint"].items(), key=lambda kv: -kv[1]["mae"])[:10]
    print("largest per-joint MAE: " + ", ".join(f"{c} {v['mae']:.2f}" for c, v in worst))
    return 0


def cmd_ra2_train(a) -> int:
    from pathlib import Path

    from ..ra2.pipeline import RA2Config, find_images, landmark_mean_shapes, train_pipeline

    shapes = landmark_mean_shapes(find_images(a.images), a.landmarks)
    locs = {k: v for k, v in (("hand", a.localiser_hands), ("foot", a.localiser_feet)) if v}
    cfg = RA2Config(
        folds=a.folds,
        epochs=a.epochs,
        crop=a.crop,
        model=a.model,
        lr=a.lr,
        seed=a.seed,
        init=str(Path(a.init).resolve()) if a.init else None,
        localiser_epochs=a.localiser_epochs,
        localisers={k: str(Path(v).resolve()) for k, v in locs.items()},
        mean_shape=shapes,
    )
    info = train_pipeline(a.images, a.scores, a.out, landmarks=a.landmarks, cfg=cfg)
    print(f"{len(info['patients'])} patients, {info['crops']} joint crops, {len(info['folds'])} fold(s) -> {a.out}")
    for name, v in info["cv"].items():
        print(
            f"{name:<14} held-out MAE {v['mae']:.3f} over {v['n']} joints (predicting 0 everywhere: {v['mae_predict_zero']:.3f})"
        )
    return 0


def cmd_ra2_predict(a) -> int:
    from ..io import check_out_dir
    from ..ra2.pipeline import predict_pipeline

    if a.overlay:
        check_out_dir(a.overlay, "--overlay")
    if a.joints_out and not a.joints_out.lower().endswith(".json"):
        check_out_dir(a.joints_out, "--joints-out")
    table, notes = predict_pipeline(
        a.run_dir, a.images, a.out, landmarks=a.landmarks, joints_out=a.joints_out, overlay=a.overlay, device=a.device
    )
    for n in notes:
        print(f"warning: {n}", file=sys.stderr)
    print(f"{len(table.patients)} patient(s) -> {a.out}")
    return 0


def cmd_ra2_localiser(a) -> int:
    from pathlib import Path

    from ..ra2.localise import hand_keypoints_npz, unet_localiser_config
    from ..train import fit

    out = Path(a.out)
    if out.exists() and any(out.iterdir()):
        raise SmallmedError(f"{out}: folder exists and is not empty; choose another --out.")
    data = hand_keypoints_npz(a.data, out.parent / f".{out.name}-hand10.npz")
    if a.kind == "keypoint-rcnn":
        from ..ra2.detector import DetectorConfig, train_detector

        m = train_detector(
            DetectorConfig(
                data=str(data),
                epochs=a.epochs,
                image_size=a.image_size,
                seed=a.seed,
                weights_backbone=a.weights_backbone,
            ),
            out,
        )
        t = m["test"]
        print(
            f"test px_error {t['px_error']:.3f}  frac_error {t['frac_error']:.4f}  pck_0.05 {t['pck_0.05']:.3f}  "
            f"best epoch {m['best_epoch']}"
        )
        return 0
    if a.weights_backbone:
        raise SmallmedError("--weights-backbone applies to --kind keypoint-rcnn; the U-Net trains from scratch.")
    m = fit(unet_localiser_config(data, out, epochs=a.epochs, image_size=a.image_size, seed=a.seed))
    print(summary_line(m))
    return 0
