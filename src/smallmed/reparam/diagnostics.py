"""Seed 000's diagnostics: does fine-tuning keep the pretrained singular basis?

- R ratio: with U, V from the pretrained weight M, S = U^T M' V for another weight M' of the
  same layer, R = sum_i S_ii^2 / sum_{i != j} S_ij^2. Large R: M' is nearly diagonal in the
  pretrained basis (the seed reports 0.91 fine-tuned vs 0.008 from random init).
- sigma dynamics of an SVD-tuned model: pretrained vs tuned singular values, normalised by each
  layer's maximum; their correlation and the share that went to ~0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .svd import SVDWeight, _weight_parametrizations, svd_modules


def r_ratio(pretrained: torch.Tensor, other: torch.Tensor, mode: str = "full", groups: int = 1) -> float:
    """R of one layer: U, V from ``pretrained``, applied to ``other`` (same shape).

    R = sum_i S_ii^2 / off with S = U^T M' V over the *full* bases; off is everything else of
    ||M'||_F^2, including the part of M' outside the span of the pretrained singular vectors
    (the thin bases alone would miss it and overstate R).
    """
    p = SVDWeight(pretrained, groups, mode)
    mats = p._unfold(other.detach().to(p.U.dtype))
    s = p.U.transpose(1, 2) @ mats @ p.Vh.transpose(1, 2)  # [B, r, r]
    diag = torch.diagonal(s, dim1=1, dim2=2).pow(2).sum()
    off = mats.pow(2).sum() - diag  # orthonormal full bases preserve the Frobenius norm
    return float(diag / off.clamp(min=1e-30))


def r_ratios(
    pretrained: nn.Module | dict, other: nn.Module | dict, mode: str = "full", min_kernel: int = 2, min_in: int = 2
) -> dict:
    """R per conv layer (k >= ``min_kernel``, in >= ``min_in``) and its mean/median over layers.

    Both arguments may be models or state dicts with the same conv weight names. Layers whose
    weights did not change (e.g. the best epoch was the head-only one) are left out; if none
    changed, ``n`` is 0 and the mean is nan.
    """
    a = pretrained.state_dict() if isinstance(pretrained, nn.Module) else pretrained
    b = other.state_dict() if isinstance(other, nn.Module) else other
    layers = {}
    for k, w in a.items():
        if k.endswith("weight") and w.ndim == 4 and k in b and b[k].shape == w.shape:
            if w.shape[-1] >= min_kernel and w.shape[1] >= min_in and not torch.equal(w, b[k]):
                # an unchanged weight has no off-diagonal mass: R is infinite and says nothing
                layers[k[: -len(".weight")]] = r_ratio(w.float(), b[k].float(), mode)
    vals = np.array(list(layers.values()))
    return {
        "layers": layers,
        "mean": float(vals.mean()) if len(vals) else float("nan"),
        "median": float(np.median(vals)) if len(vals) else float("nan"),
        "n": len(vals),
    }


def sigma_dynamics(model: nn.Module, zero: float = 0.01) -> dict:
    """Pretrained vs tuned singular values of every SVD layer (active ones only).

    Values are normalised by each layer's maximum (the seed's figure 4); ``zero`` is the
    normalised level counted as "went to ~0".
    """
    before, after, per_layer = [], [], {}
    for name, m, p in svd_modules(model):
        theta = _weight_parametrizations(m).original.detach()
        s_new = p.sigma(theta).flatten()
        s_old = p.sigma0.flatten()
        active = p.mask.flatten() > 0
        s_new, s_old = s_new[active], s_old[active]
        if s_old.numel() == 0:
            continue
        b = (s_old / s_old.max().clamp(min=1e-30)).cpu().numpy()
        a = (s_new / s_new.max().clamp(min=1e-30)).cpu().numpy()
        before.append(b)
        after.append(a)
        corr = float(np.corrcoef(s_old.cpu().numpy(), s_new.cpu().numpy())[0, 1]) if len(b) > 1 else float("nan")
        per_layer[name] = {
            "n": int(len(b)),
            "corr": corr,
            "rel_change": float((s_new - s_old).norm() / s_old.norm().clamp(min=1e-30)),
        }
    if not before:
        return {}
    b, a = np.concatenate(before), np.concatenate(after)
    corrs = [v["corr"] for v in per_layer.values() if np.isfinite(v["corr"])]
    return {
        "n_sigma": int(len(b)),
        "corr_pooled_normalised": float(np.corrcoef(b, a)[0, 1]) if len(b) > 1 else float("nan"),
        "corr_mean_per_layer": float(np.mean(corrs)) if corrs else float("nan"),
        "frac_zero_before": float((b < zero).mean()),
        "frac_zero_after": float((a < zero).mean()),
        "frac_grew": float((a > b).mean()),
        "zero_level": zero,
        "layers": per_layer,
        "_before": b,
        "_after": a,
    }


def plot_sigma(dyn: dict, path: str | Path, title: str = "") -> None:
    from ..report.plots import _save, plt

    b, a = dyn["_before"], dyn["_after"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    bins = np.linspace(0, 1, 41)
    ax1.hist(b, bins=bins, alpha=0.6, label="pretrained")
    ax1.hist(a, bins=bins, alpha=0.6, label="tuned")
    ax1.set_xlabel("singular value / layer max")
    ax1.set_ylabel("count")
    ax1.set_yscale("log")
    ax1.legend()
    ax2.scatter(b, a, s=2, alpha=0.3)
    ax2.plot([0, 1], [0, 1], ":", color="grey")
    ax2.set_xlabel("pretrained (normalised)")
    ax2.set_ylabel("tuned (normalised)")
    fig.suptitle(
        title
        or (
            f"singular values: {100 * dyn['frac_zero_before']:.1f}% -> {100 * dyn['frac_zero_after']:.1f}% "
            f"below {dyn['zero_level']} of layer max; corr {dyn['corr_pooled_normalised']:.3f}"
        )
    )
    _save(fig, Path(path))


def write_svd_diagnostics(model: nn.Module, run_dir: str | Path) -> dict:
    """``svd_diagnostics.json`` and ``sigma_hist.png`` for an SVD-tuned model; returns the summary."""
    from ..io import atomic_write_json

    dyn = sigma_dynamics(model)
    if not dyn:
        return {}
    run_dir = Path(run_dir)
    plot_sigma(dyn, run_dir / "sigma_hist.png")
    out = {k: v for k, v in dyn.items() if not k.startswith("_")}
    atomic_write_json(run_dir / "svd_diagnostics.json", out)
    return {k: v for k, v in out.items() if k != "layers"}
