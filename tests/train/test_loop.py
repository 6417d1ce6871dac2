"""Issue: one training loop for every task, and numbers that are exactly right.

Each test here failed on the code before the redesign (noted per test)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from smallmed import SmallmedError, TrainConfig, fit, resume
from smallmed.errors import NonFiniteLossError

ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------------------------- numbers


def test_r_ratio_matches_full_basis_oracle():
    """Before: off-diagonal energy ignored M' outside the pretrained span (R ~9x too high)."""
    from smallmed.reparam.diagnostics import r_ratio

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(16, 8, 3, 3, generator=g), torch.randn(16, 8, 3, 3, generator=g)
    m_a = a.permute(1, 0, 2, 3).reshape(8, -1).double()  # the "full" mode's in x (out*h*w) unfolding
    m_b = b.permute(1, 0, 2, 3).reshape(8, -1).double()
    U, _, Vh = torch.linalg.svd(m_a, full_matrices=True)
    s = U.T @ m_b @ Vh.T
    diag = torch.diagonal(s).pow(2).sum()
    oracle = float(diag / (s.pow(2).sum() - diag))
    assert r_ratio(a, b, "full") == pytest.approx(oracle, rel=1e-6)


def test_tpr_at_fpr_on_tie_chain_equals_brute_force_and_bootstrap_kernel():
    """Before: roc_curve(drop_intermediate=True) dropped reachable points."""
    from smallmed.metrics import tpr_at_fpr
    from smallmed.metrics.classification import _fast_auc_tpr

    rng = np.random.default_rng(3)
    for _trial in range(30):
        y = rng.integers(0, 2, 60)
        y[:2] = [0, 1]
        s = rng.integers(0, 6, 60).astype(float) / 5  # many ties across classes
        for fpr in (0.0, 0.05, 0.1, 0.3):
            best = 0.0
            for t in np.concatenate([np.unique(s), [np.inf]]):
                pred = s >= t
                f = (pred & (y == 0)).sum() / (y == 0).sum()
                if f <= fpr + 1e-12:
                    best = max(best, (pred & (y == 1)).sum() / (y == 1).sum())
            assert tpr_at_fpr(y, s, fpr) == pytest.approx(best)
            assert _fast_auc_tpr(y, s, fpr)[1] == pytest.approx(best)


def test_fconvsn_reproduces_dense_conv_at_full_rank():
    """Before: spectral normalisation divided the factors' gain away (outputs off by sigma1*sigma2)."""
    from smallmed.reparam.factorized import FactorizedConv2d

    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    x = torch.randn(2, 4, 8, 8)
    for kind in ("sfconv", "fconv", "fconvsn"):
        f = FactorizedConv2d.from_conv(conv, rank=6, kind=kind).eval()
        torch.testing.assert_close(f(x), conv(x), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(f.dense_weight(), conv.weight, atol=1e-4, rtol=1e-4)


def test_fold_returns_a_plain_copy_and_leaves_the_model():
    """Before: fold worked in place and left frozen parameters behind."""
    from smallmed import apply_svd, create_model, fold
    from smallmed.reparam import svd_modules

    model = create_model("small_cnn", 2, in_chans=1, input_size=16)
    apply_svd(model, mode="full", train=("sigma", "head"))
    with torch.no_grad():
        for _, m, _ in svd_modules(model):
            m.parametrizations.weight.original.mul_(1.1)  # perturb before folding: identity proves nothing
    x = torch.randn(3, 1, 16, 16)
    model.eval()
    plain = fold(model)
    assert svd_modules(model) and not svd_modules(plain)
    assert all(p.requires_grad for p in plain.parameters())
    torch.testing.assert_close(plain.eval()(x), model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("section", ["## On any PyTorch model"])
def test_readme_example_runs_as_written(section):
    text = (ROOT / "README.md").read_text()
    block = re.search(re.escape(section) + r".*?```python\n(.*?)```", text, re.S).group(1)
    exec(compile(block, "README.md", "exec"), {})


def test_low_rank_export_checks_layers_and_counts_flops_per_image():
    from smallmed import apply_svd, create_model, to_low_rank
    from smallmed.analysis.cost import flops_per_image

    model = create_model("small_cnn", 2, in_chans=1, input_size=16)
    apply_svd(model, mode="full", prune=0.5)
    with pytest.raises(SmallmedError, match="layers='conv'"):
        to_low_rank(model, torch.randn(4, 1, 16, 16), layers="conv")
    _, rep = to_low_rank(model, torch.randn(4, 1, 16, 16), measure=False)
    _, rep8 = to_low_rank(model, torch.randn(8, 1, 16, 16), measure=False)
    assert rep.flops_dense == rep8.flops_dense  # per image, not per batch
    plain = create_model("small_cnn", 2, in_chans=1, input_size=16)
    assert rep.flops_dense == flops_per_image(plain, torch.randn(4, 1, 16, 16))


# ------------------------------------------------------------------------------------------------ config


def test_method_protocol_is_the_same_from_every_entry_point():
    """Before: TrainConfig(method=...) trained with batch 64 while the CLI used the seed's 16."""
    a = TrainConfig(method="full-svd")
    b = TrainConfig.for_method("full-svd")
    c = TrainConfig.from_sources(flags={"method": "full-svd"})
    for cfg in (a, b, c):
        assert (cfg.batch_size, cfg.head_epochs, cfg.betas, cfg.freeze_bn_stats) == (16, 1, (0.9, 0.99), False)
    assert TrainConfig(method="full-svd", batch_size=8).batch_size == 8  # the user's value wins
    assert TrainConfig().batch_size == 64


def test_yaml_flags_set_precedence(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("lr: 1e-3\nepochs: 3\nbatch_size: 8\n")  # YAML 1.1 reads 1e-3 as a string: coerced
    cfg = TrainConfig.from_sources(yaml_path=p, flags={"epochs": 5}, sets=["batch_size=4"])
    assert (cfg.lr, cfg.epochs, cfg.batch_size) == (1e-3, 5, 4)
    with pytest.raises(SmallmedError, match="epochs='abc'"):
        TrainConfig.from_sources(sets=["epochs=abc"])
    with pytest.raises(SmallmedError, match="seed"):
        TrainConfig(seed=-1)
    assert TrainConfig.from_dict({"progress": "no"}).progress is False


def test_fit_does_not_mutate_the_callers_config(tiny_cfg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # out=None writes under ./runs
    cfg = tiny_cfg(epochs=1, out=None)
    fit(cfg)
    assert cfg.out is None


def test_roles_norm_layers_and_get_classifier():
    from smallmed.roles import head_name, parameter_roles

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.gn = nn.GroupNorm(2, 4)
            self.ln = nn.LayerNorm(4)
            self.out = nn.Conv2d(4, 2, 1)

        def get_classifier(self):
            return self.out

    roles = parameter_roles(Net())
    assert head_name(Net()) == "out"
    assert roles["gn.weight"] == roles["ln.bias"] == "bn" and roles["out.weight"] == "head"


def test_load_weights_adapts_channels_only_at_the_stem():
    """Before: any conv whose in-channel count differed was silently summed/repeated."""
    from smallmed import create_model, load_weights

    src = create_model("small_cnn", 2, in_chans=3, input_size=16)
    dst = create_model("small_cnn", 2, in_chans=1, input_size=16)
    report = load_weights(dst, src.state_dict())  # the stem adapts from RGB to gray
    assert len(report.adapted) == 1
    state = dict(src.state_dict())
    convs = [k for k, v in state.items() if v.ndim == 4]
    second = convs[1]
    w = state[second]
    state[second] = torch.cat([w, w], 1)  # a later conv with the wrong width
    with pytest.raises(SmallmedError, match=re.escape(second)):
        load_weights(create_model("small_cnn", 2, in_chans=3, input_size=16), state)


# -------------------------------------------------------------------------------------------------- loop


class _WorsenLast:
    """Callback: at the last epoch's start, scramble the weights so that epoch is clearly worse."""

    def __init__(self, last):
        self.last = last

    def on_epoch_start(self, epoch, model):
        if epoch == self.last:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p) * 3)

    def on_batch_end(self, *a):
        pass


def test_best_checkpoint_holds_the_best_epoch(tiny_cfg, tmp_path):
    cfg = tiny_cfg(epochs=3, lr=1e-6, optimizer="sgd", scheduler="none")
    m = fit(cfg, callbacks=[_WorsenLast(2)])
    hist = [json.loads(json.dumps(r)) for r in __import__("csv").DictReader(open(Path(cfg.out) / "history.csv"))]
    losses = [float(r["val_loss"]) for r in hist]
    assert m["best_epoch"] == int(np.argmin(losses)) + 1 != 3
    best = torch.load(Path(cfg.out) / "best.pt", weights_only=True)
    assert best["epoch"] + 1 == m["best_epoch"]


def test_kl_regulariser_lowers_the_kl_term(tiny_cfg, tmp_path):
    from smallmed import load_run
    from smallmed.reparam.factorized import kl_flatten_loss

    ends = []
    for w in (0.0, 1.0):
        out = tmp_path / f"kl{w}"
        fit(tiny_cfg(conv="sfconv", rank_ratio=0.5, kl_weight=w, epochs=3, out=str(out)))
        ends.append(float(kl_flatten_loss(load_run(out).model)))
    assert ends[1] < ends[0]


def test_non_finite_regulariser_stops_with_one_sentence(tiny_cfg, monkeypatch):
    from smallmed.train import loop

    monkeypatch.setattr(loop, "_regulariser", lambda model, cfg: torch.tensor(float("nan")))
    with pytest.raises(NonFiniteLossError, match="regulariser became nan"):
        fit(tiny_cfg(epochs=1))


def test_trainable_params_right_after_resume_killed_in_final_evaluation(tiny_cfg):
    cfg = tiny_cfg(epochs=2, method="fc-train")
    m1 = fit(cfg)
    (Path(cfg.out) / "metrics.json").unlink()  # as if killed while evaluating the best epoch
    m2 = resume(cfg.out)
    assert m2["trainable_params"] == m1["trainable_params"] > 0
    assert m2["test"]["auc"] == pytest.approx(m1["test"]["auc"])


def test_evaluate_refuses_data_with_other_classes(tiny_cfg, tmp_path):
    from conftest import make_medmnist

    from smallmed import evaluate_run

    cfg = tiny_cfg(epochs=1)
    fit(cfg)
    other = make_medmnist(tmp_path / "three.npz", classes=3)
    with pytest.raises(SmallmedError, match="differ from the run's"):
        evaluate_run(cfg.out, data=str(other))


def test_import_does_not_touch_pyplot():
    code = "import sys, smallmed; print('matplotlib.pyplot' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# ------------------------------------------------------------------------------------------ segmentation


def _seg_npz(path: Path, n=40, size=32) -> Path:
    from conftest import make_images

    rng = np.random.default_rng(0)
    images = make_images(np.zeros(n, dtype=int), size)[..., 0]
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        r, c = rng.integers(4, size - 12, 2)
        images[i, r : r + 8, c : c + 8] = 230
        masks[i, r : r + 8, c : c + 8] = 1
    np.savez(path, images=images, masks=masks)
    return path


def test_unet_with_svd_method_and_ra2_augment_trains_what_it_says(tmp_path):
    """Before: --method full-svd and --augment ra2 were silently dropped for a U-Net."""
    data = _seg_npz(tmp_path / "seg.npz")
    cfg = TrainConfig(
        data=str(data),
        model="unet",
        epochs=1,
        method="full-svd",
        augment="ra2",
        progress=False,
        out=str(tmp_path / "u"),
        lr=1e-3,
    )
    m = fit(cfg)
    assert m["task"] == "segmentation" and m["method"] == "full-svd"
    assert m["svd"]["summary"]["layers"] > 0 and (tmp_path / "u" / "folded.pt").exists()
    assert m["trainable_params"] < m["total_params"] / 10


def test_unet_refuses_rff(tmp_path):
    data = _seg_npz(tmp_path / "seg.npz")
    with pytest.raises(SmallmedError, match="receptive-field freezing"):
        fit(
            TrainConfig(
                data=str(data), model="unet", epochs=2, rff_epochs=(1,), progress=False, out=str(tmp_path / "u")
            )
        )
    assert not (tmp_path / "u").exists()


class _Stop:
    def __init__(self, at):
        self.at = at

    def on_epoch_start(self, epoch, model):
        if epoch == self.at:
            raise KeyboardInterrupt

    def on_batch_end(self, *a):
        pass


def test_segmentation_killed_and_resumed_gives_the_same_dice(tmp_path):
    data = _seg_npz(tmp_path / "seg.npz")
    base = dict(data=str(data), model="unet", epochs=2, progress=False, augment="flip", lr=1e-3)
    full = fit(TrainConfig(**base, out=str(tmp_path / "a")))
    with pytest.raises(KeyboardInterrupt):
        fit(TrainConfig(**base, out=str(tmp_path / "b")), callbacks=[_Stop(1)])
    again = resume(tmp_path / "b")
    assert again["test"]["dice"] == pytest.approx(full["test"]["dice"], abs=1e-6)
    from smallmed import load_run

    run = load_run(tmp_path / "b")  # the one loader rebuilds segmentation runs too
    assert run.task.kind == "segmentation"


# -------------------------------------------------------------------------------------------- regression


def _reg_npz(path: Path, n=(60, 20, 20), size=16) -> Path:
    """A learnable bounded score 0-4: brightness of a square grows with the score."""
    rng = np.random.default_rng(1)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n):
        y = rng.integers(0, 5, count)
        x = rng.integers(0, 40, (count, size, size)).astype(np.uint8)
        for i, v in enumerate(y):
            x[i, 4:12, 4:12] = 60 + 45 * v
        arrays[f"{split}_images"], arrays[f"{split}_scores"] = x, y.astype(np.float32)
    np.savez(path, **arrays, score_range=np.array([0.0, 4.0]))
    return path


@pytest.mark.parametrize("loss,balance", [("mae", "sampling"), ("logcosh", "weights")])
def test_regression_is_a_task_of_the_same_loop(tmp_path, loss, balance):
    data = _reg_npz(tmp_path / "reg.npz")
    cfg = TrainConfig(
        data=str(data),
        model="small_cnn",
        epochs=4,
        lr=3e-3,
        loss=loss,
        balance=balance,
        progress=False,
        augment="none",
        out=str(tmp_path / "r"),
    )
    m = fit(cfg)
    assert m["task"] == "regression"
    t = m["test"]
    assert 0 <= t["ci95"]["mae"][0] <= t["mae"] <= t["ci95"]["mae"][1]
    assert t["mae"] < 1.2  # predicting the mean score gives ~1.2 on uniform 0-4
    from smallmed import load_run

    run = load_run(tmp_path / "r")
    assert (run.task.low, run.task.high) == (0.0, 4.0)


def test_loss_option_refused_for_classification(tiny_cfg):
    with pytest.raises(SmallmedError, match="applies to regression"):
        fit(tiny_cfg(loss="logcosh"))


def test_integer_grades_as_regression(tmp_path, figures):
    from conftest import make_medmnist

    from smallmed import load_run

    data = make_medmnist(tmp_path / "grades.npz", classes=5, n=(80, 20, 20))
    m = fit(
        TrainConfig(
            data=str(data),
            model="small_cnn",
            task="regression",
            epochs=2,
            progress=False,
            augment="none",
            out=str(tmp_path / "g"),
        )
    )
    assert m["task"] == "regression" and 0 <= m["test"]["acc"] <= 1
    run = load_run(tmp_path / "g")
    assert (run.task.low, run.task.high) == (0.0, 4.0)
    from smallmed import evaluate_run

    assert "mae" in evaluate_run(tmp_path / "g", device="cpu")
    # predicted vs true, residuals and the confusion of rounded grades, shown in the report
    assert (tmp_path / "g" / "regression_test.png").stat().st_size > 1000
    assert "regression_test.png" in (tmp_path / "g" / "report.md").read_text()
    with pytest.raises(SmallmedError, match="task='regression'"):
        fit(
            TrainConfig(
                data=str(_seg_npz(tmp_path / "s.npz")),
                model="unet",
                task="regression",
                epochs=1,
                progress=False,
                out=str(tmp_path / "x"),
            )
        )


def test_readme_speaks_to_a_user_elsewhere():
    text = (ROOT / "README.md").read_text()
    assert "../shared" not in text and not re.search(r"seed 00\d", text)
    assert len(text.splitlines()) < 326  # shorter than the README it replaced


def test_progress_updates_a_pipe_every_30_seconds_and_a_terminal_every_batch(monkeypatch):
    """A run piped to a log (``make demo | tee``) must not look hung: its bar writes at least every 30 s."""
    import io

    from smallmed.train import loop

    class Stream(io.StringIO):
        tty = False

        def isatty(self):
            return self.tty

    stream = Stream()
    monkeypatch.setattr(sys, "stderr", stream)
    assert loop._progress([1, 2], "epoch 1/1", False) == [1, 2]  # off: the iterable itself
    piped = loop._progress(range(3), "epoch 1/1", True)
    assert piped.mininterval == 30 and list(piped) == [0, 1, 2] and "epoch 1/1" in stream.getvalue()
    stream.tty = True
    assert loop._progress(range(3), "epoch 1/1", True).mininterval < 1
