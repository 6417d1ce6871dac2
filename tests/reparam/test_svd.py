"""SVD fine-tuning: round trips after perturbation, parameter counts, pruning, fold, low-rank export."""

import pytest
import torch
from torch import nn

from smallmed import SmallmedError, create_model
from smallmed.reparam import apply_svd, fold, svd_modules, to_low_rank
from smallmed.roles import head_name


class Grouped(nn.Module):
    """Grouped, depthwise and 1x1 convs with stride/dilation, plus a linear head."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8)  # depthwise
        self.c = nn.Conv2d(8, 12, 3, padding=2, dilation=2, groups=2)
        self.d = nn.Conv2d(12, 6, 1)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        x = torch.relu(self.a(x))
        x = torch.relu(self.b(x))
        x = torch.relu(self.c(x))
        return self.fc(self.d(x).mean((2, 3)))


def _models():
    torch.manual_seed(0)
    return [
        ("resnet18", create_model("resnet18", 3, input_size=32).eval(), torch.randn(2, 3, 32, 32)),
        ("densenet121", create_model("densenet121", 3, input_size=32).eval(), torch.randn(2, 3, 32, 32)),
        ("grouped", Grouped().eval(), torch.randn(2, 4, 12, 12)),
    ]


def _expected_sigma(model, mode):
    n = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            out, in_g, kh, kw = m.weight.shape
            g = m.groups
            out_g = out // g
            n += (
                g
                * {
                    "full": min(in_g, out_g * kh * kw),
                    "full-out": min(out_g, in_g * kh * kw),
                    "spatial": min(in_g, out_g) * kh * kw,
                }[mode]
            )
    return n


@pytest.mark.parametrize("mode", ["full", "full-out", "spatial"])
def test_outputs_unchanged_counts_match_formulas_and_fold_after_perturbation(mode):
    for name, model, x in _models():
        y0 = model(x)
        expected = _expected_sigma(model, mode)
        summary = apply_svd(model, mode=mode)
        assert torch.allclose(model(x), y0, atol=1e-4, rtol=1e-4), name
        assert summary.sigma_params == expected, name
        head = sum(p.numel() for p in model.get_submodule(head_name(model)).parameters())
        assert summary.trainable == expected + head
        with torch.no_grad():  # a fold test at identity proves nothing: move the singular values
            for _, m, _ in svd_modules(model):
                m.parametrizations.weight.original.mul_(1.05)
        y1 = model(x)
        assert not torch.allclose(y1, y0, atol=1e-4)
        folded = fold(model)
        assert not svd_modules(folded) and svd_modules(model)  # folding a copy leaves the original intact
        assert torch.allclose(folded(x), y1, atol=1e-5, rtol=1e-5)
        plain = type(model)() if name == "grouped" else create_model(name, 3, input_size=32)
        plain.load_state_dict(folded.state_dict())  # loads into the unmodified architecture
        assert torch.allclose(plain.eval()(x), y1, atol=1e-5, rtol=1e-5)


def test_only_sigma_and_head_change_and_pruned_stay_exactly_zero():
    torch.manual_seed(0)
    model = Grouped()
    apply_svd(model, mode="spatial", prune=0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05, weight_decay=0.1)
    for _ in range(5):
        loss = model(torch.randn(4, 4, 12, 12)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith("parametrizations.weight.original") or k.startswith("fc.") for k in changed)
    pruned = 0
    for _, m, p in svd_modules(model):
        sigma = p.sigma(m.parametrizations.weight.original)
        assert (sigma[p.mask == 0] == 0).all()
        assert (p.mask.sum(-1) >= 1).all()  # at least one value per matrix survives (depthwise: rank 1)
        pruned += int((p.mask == 0).sum())
    assert pruned > 0


def test_train_extras_bn_and_bias():
    model = create_model("resnet18", 2, input_size=32)
    s = apply_svd(model, mode="full", train=("sigma", "head", "bn"))
    bn = sum(p.numel() for m in model.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    assert s.groups["bn"] == bn and s.trainable == s.sigma_params + bn + 2 * 512 + 2


def test_bad_input():
    with pytest.raises(SmallmedError, match="no eligible layer"):
        apply_svd(nn.Sequential(nn.Linear(3, 2)))
    with pytest.raises(SmallmedError, match="prune=1.0"):
        apply_svd(Grouped(), prune=1.0)
    with pytest.raises(SmallmedError, match="Did you mean 'spatial'"):
        apply_svd(Grouped(), mode="spatal")
    with pytest.raises(SmallmedError, match="fold: the model has no SVD"):
        fold(Grouped())


def test_low_rank_export_is_exact_for_pruned_full_svd_and_smaller():
    torch.manual_seed(0)
    model = Grouped().eval()
    apply_svd(model, mode="full", prune=0.6)
    with torch.no_grad():
        for _, m, _ in svd_modules(model):
            m.parametrizations.weight.original.mul_(1.1)
    x = torch.randn(3, 4, 12, 12)
    low, rep = to_low_rank(model, x, measure=False)
    assert rep.rows and rep.params_low_rank < rep.params_dense and rep.flops_low_rank < rep.flops_dense
    assert torch.allclose(low(x), model(x), atol=1e-5)
    assert not svd_modules(low)
    # energy truncation on a plain model: approximate, but close for energy near 1
    plain = Grouped().eval()
    low2, rep2 = to_low_rank(plain, x, layers="all", energy=0.999, measure=False)
    assert (low2(x) - plain(x)).abs().max() < 0.05


def test_svd_method_run_writes_diagnostics_and_a_plain_checkpoint(tiny_cfg, tmp_path):
    from smallmed import TrainConfig, fit

    src = fit(tiny_cfg(epochs=2, out=str(tmp_path / "src")))
    assert src["method"] == "full"
    cfg = TrainConfig.for_method(
        "full-svd-9",
        data=tiny_cfg().data,
        model="small_cnn",
        epochs=2,
        weights=str(tmp_path / "src" / "best.pt"),
        out=str(tmp_path / "svd"),
        progress=False,
        augment="none",
    )
    m = fit(cfg)
    run = tmp_path / "svd"
    assert (run / "sigma_hist.png").exists() and (run / "svd_diagnostics.json").exists()
    assert m["trainable_params"] < m["total_params"] / 10
    assert m["low_rank"]["params_low_rank"] < m["low_rank"]["params_dense"]
    plain = create_model("small_cnn", 2, in_chans=1, input_size=16)
    plain.load_state_dict(torch.load(run / "folded.pt", weights_only=True)["model"])
    with pytest.raises(SmallmedError, match="SVD-parametrised weights; load the plain .*folded.pt"):
        create_model("small_cnn", 2, in_chans=1, input_size=16, weights=run / "best.pt")
    from smallmed import evaluate_run

    assert evaluate_run(run, device="cpu")["auc"] == pytest.approx(m["test"]["auc"])
    full = fit(
        TrainConfig.for_method(
            "full",
            data=cfg.data,
            model="small_cnn",
            epochs=2,
            progress=False,
            weights=str(tmp_path / "src" / "best.pt"),
            out=str(tmp_path / "ft"),
        )
    )
    assert full["r_ratio"]["n"] > 0 and full["r_ratio"]["mean"] > 0


def test_svd_study_tiny_grid_resumes_and_reports(tmp_path, tiny_npz, monkeypatch):
    import dataclasses as dc

    from smallmed.studies import svd as study_mod
    from smallmed.studies.stats import mean_ci, paired

    src = tmp_path / "src"
    from smallmed import TrainConfig, fit

    fit(TrainConfig(data=str(tiny_npz), model="small_cnn", epochs=1, out=str(src), progress=False, augment="none"))
    study = dc.replace(
        study_mod.PRESETS["quick"],
        data=str(tiny_npz),
        model="small_cnn",
        image_size=16,
        methods=("full", "full-svd"),
        fractions=(1.0, 0.5),
        seeds=(0, 1),
        epochs=2,
        augment="none",
        weights=str(src / "best.pt"),
    )
    report = study_mod.run_svd_study(study, tmp_path / "study")
    text = report.read_text()
    assert (
        "## Fraction 1/2 (32 training images)" in text
        and "| SVD, in x out*k*k (Vaulin) |" in text
        and "vs full" in text
    )
    assert "Convergence check" in text and "DeLong p" in text
    summary = (tmp_path / "study" / "summary.md").read_text()  # what smallmed demo prints: tables and verdicts only
    assert summary.startswith("## Fraction 1 ") and "## Verdict per fraction" in summary
    assert "Convergence check" not in summary and all(line in text for line in summary.splitlines())
    rows = (tmp_path / "study" / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2 * 2 * 2
    # the same subset for every method at a fraction and seed
    sub = {r.split(",")[1]: r.split(",")[3] for r in rows[1:] if r.startswith("0.5,") and ",0," in r}
    assert len(set(sub.values())) == 1
    # a second call redoes nothing
    calls = []
    monkeypatch.setattr("smallmed.train.fit", lambda *a, **k: calls.append(1))
    study_mod.run_svd_study(study, tmp_path / "study")
    assert not calls
    assert mean_ci([1.0, 2.0, 3.0])["lo"] < 2.0 < mean_ci([1.0, 2.0, 3.0])["hi"]
    assert paired([1.0, 2.0, 3.5], [0.5, 1.0, 2.0])["wins"] == 3


def test_svd_study_checks_its_grid_before_pretraining_the_source(tmp_path, tiny_npz):
    import dataclasses as dc

    from smallmed.studies import svd as study_mod

    base = dc.replace(study_mod.PRESETS["quick"], data=str(tiny_npz), model="small_cnn", image_size=16)
    with pytest.raises(SmallmedError, match="fractions=0.0"):
        study_mod.run_svd_study(dc.replace(base, fractions=(0.0,)), tmp_path / "s")
    with pytest.raises(SmallmedError, match="Did you mean 'sp-svd'"):
        study_mod.run_svd_study(dc.replace(base, methods=("full", "sp-sv")), tmp_path / "s")
    with pytest.raises(SmallmedError, match="nope.pt: file not found"):
        study_mod.run_svd_study(dc.replace(base, weights=str(tmp_path / "nope.pt")), tmp_path / "s")
    assert not (tmp_path / "s").exists()  # nothing was written, no source was trained


@pytest.mark.parametrize("mode", ["full", "full-out"])
@pytest.mark.parametrize("prune", [0.0, 0.5])
def test_factored_forward_matches_the_rebuilt_weight_in_outputs_and_sigma_gradients(mode, prune, monkeypatch):
    """The two-conv path (chosen by cost) must compute what the rebuilt weight computes."""
    from smallmed.reparam import svd as svd_mod

    torch.manual_seed(0)
    model = Grouped()
    x = torch.randn(8, 4, 12, 12)
    apply_svd(model, mode=mode, prune=prune)
    with torch.no_grad():
        for _, m, _ in svd_modules(model):
            m.parametrizations.weight.original.mul_(1.1)
    runs = {}
    for path in ("always", "never"):
        monkeypatch.setattr(svd_mod, "FACTORED_PATH", path)
        model.zero_grad()
        y = model(x)
        y.square().sum().backward()
        runs[path] = (y.detach(), [m.parametrizations.weight.original.grad.clone() for _, m, _ in svd_modules(model)])
    assert torch.allclose(runs["always"][0], runs["never"][0], atol=1e-5, rtol=1e-4)
    for a, b in zip(runs["always"][1], runs["never"][1]):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-3)
    calls = []
    monkeypatch.setattr(svd_mod.F, "conv2d", lambda *a, **k: calls.append(1) or torch.conv2d(*a, **k))
    counts = {}
    for path in ("always", "never"):
        monkeypatch.setattr(svd_mod, "FACTORED_PATH", path)
        calls.clear()
        model(x)
        counts[path] = len(calls)
    assert counts["always"] == 2 * counts["never"], counts  # two thin convs per layer: the path was taken


def test_pruned_factors_follow_a_loaded_state_dict():
    torch.manual_seed(0)
    src, dst = Grouped(), Grouped()
    apply_svd(src, mode="spatial", prune=0.5)
    apply_svd(dst, mode="spatial", prune=0.5)  # different random weights: different U, Vh
    x = torch.randn(2, 4, 12, 12)
    dst.load_state_dict(src.state_dict())
    assert torch.allclose(dst.eval()(x), src.eval()(x), atol=1e-6)


def test_r_ratio_skips_unchanged_weights():
    from smallmed.reparam.diagnostics import r_ratios

    m = create_model("resnet18", 2, input_size=32)
    r = r_ratios(m.state_dict(), m.state_dict())
    assert r["n"] == 0 and r["mean"] != r["mean"]  # nan: nothing changed, nothing to say


def test_source_auto_prefers_chestmnist_then_bone_age_and_says_what_is_missing(tmp_path, monkeypatch):
    import dataclasses as dc

    from conftest import make_medmnist

    from smallmed.studies.svd import PRESETS, resolve_source, source_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("SMALLMED_DATA_DIR", raising=False)  # only this test's folder holds data
    data = tmp_path / "data"
    data.mkdir()
    study = dc.replace(PRESETS["demo"], data_dir=str(data))
    with pytest.raises(SmallmedError, match="no source data.*chestmnist_64.*rsna-boneage"):
        resolve_source(study)  # offline in the tests: the download is refused, not attempted
    make_medmnist(data / "rsna_boneage_hands_100px.npz", n=(40, 10, 10), classes=5)
    assert resolve_source(study).source_data == "rsna-boneage"
    make_medmnist(data / "chestmnist_64.npz", n=(40, 10, 10), classes=14, multilabel=True)
    chosen = resolve_source(study)
    assert (chosen.source_data, chosen.source_fraction) == ("chestmnist_64", 0.15)
    # one cached source per recipe and data file, shared by every preset with the same source settings
    assert source_dir(chosen) == source_dir(dc.replace(chosen, methods=("full",), seeds=(5,)))
    assert source_dir(chosen) != source_dir(dc.replace(chosen, source_epochs=chosen.source_epochs + 1))
