"""Fine-tuning methods as one option of the trainer (``--method``).

SVD fine-tuning (Sun et al. 2022 SVF; the spatial and pruned variants of the singular-value
fine-tuning paper this package restates) beside the baselines a reader tries first:

| method | what trains |
|---|---|
| ``full`` | every parameter |
| ``fc-train`` | only the classifier (a linear probe; frozen BatchNorm statistics) |
| ``bitfit`` | norm weights and biases and every bias, + classifier (BitFit, Ben Zaken et al. 2022) |
| ``lora`` | rank-``lora_rank`` LoRA factors on every k > 1 conv via PEFT, + classifier (Hu et al. 2022) |
| ``full-svd`` | singular values of every conv, ``in x (out*h*w)`` unfolding, + classifier |
| ``full-out-svd`` | the same on the ``out x (in*h*w)`` unfolding: SVF (Sun et al. 2022) |
| ``sp-svd`` | one SVD per kernel position, + classifier |
| ``sp-svd-9`` | ``sp-svd`` with the smallest 90% of each matrix's singular values fixed at 0 |
| ``full-svd-9`` | ``full-svd`` pruned the same way: exports exactly to two thin convs per layer |

``PROTOCOL`` holds the seed's training protocol, applied beneath a user's own settings when a
method is chosen on the command line: 1 epoch head only, Adam betas (0.9, 0.99), lr 1e-3,
plateau patience 4, batch 16. BatchNorm statistics keep updating for SVD methods (the seed
trains in train mode with BN affine frozen) and are frozen for the linear probe.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import SmallmedError
from .registry import check_choice

SVD_METHODS: dict[str, dict] = {
    "full-svd": {"mode": "full", "prune": 0.0},
    "full-out-svd": {"mode": "full-out", "prune": 0.0},
    "sp-svd": {"mode": "spatial", "prune": 0.0},
    "sp-svd-9": {"mode": "spatial", "prune": 0.9},
    "full-svd-9": {"mode": "full", "prune": 0.9},  # ours: pruned on the unfolding that exports to thin convs
}
METHODS = ("full", "fc-train", "bitfit", "lora", *SVD_METHODS)
PEFT_METHODS = ("bitfit", "lora")  # parameter-efficient baselines: BN statistics keep updating, as for SVD

PROTOCOL = {"head_epochs": 1, "betas": [0.9, 0.99], "lr": 1e-3, "patience": 4, "batch_size": 16,
            "scheduler": "plateau", "optimizer": "adam"}


def protocol_defaults(method: str) -> dict:
    """The seed's protocol for ``method``, as TrainConfig keys (user settings override them)."""
    check_choice("method", method, METHODS)
    d = dict(PROTOCOL)
    if method == "fc-train":
        d["head_epochs"] = 0
    elif method in SVD_METHODS or method in PEFT_METHODS:
        d["freeze_bn_stats"] = False
    return d


def apply_method(model: nn.Module, method: str, *, svd=None, svd_train=("sigma", "head"), svd_linear: bool = False,
                 prune: float | None = None, lora_rank: int = 4):
    """Prepare ``model`` for ``method``; returns (names of parameters that train, SVD summary or None).

    ``svd`` is an :class:`smallmed.reparam.SVDConfig`; without it one is made from the method's
    table entry and the keywords.
    """
    from .roles import set_trainable

    check_choice("method", method, METHODS)
    summary = None
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    elif method == "fc-train":
        set_trainable(model, {"head"})
    elif method == "bitfit":
        set_trainable(model, {"head", "bn", "bias"})
    elif method == "lora":
        from .reparam.lora import apply_lora

        summary = apply_lora(model, rank=lora_rank)
        set_trainable(model, {"head", "lora"})
    else:
        from .reparam import apply_svd
        from .reparam.svd import SVDConfig

        if svd is None:
            spec = dict(SVD_METHODS[method])
            if prune is not None:
                spec["prune"] = prune
            svd = SVDConfig(mode=spec["mode"], prune=spec["prune"], train=tuple(svd_train), linear=svd_linear)
        summary = apply_svd(model, svd)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    if not names:
        raise SmallmedError(f"method={method!r} leaves no trainable parameter.")
    return names, summary


def on_fit_end(model: nn.Module, *, cfg, built, run_dir, example: torch.Tensor) -> dict:
    """A method's own end-of-run work, called once by :func:`smallmed.fit` on the best model.

    SVD methods: sigma dynamics and histograms, a plain folded checkpoint (``folded.pt``) and, when
    pruned, the low-rank export's params/FLOPs/speed; ``full`` from pretrained weights: seed 000's
    R ratio against them. Returns what goes into ``metrics.json``.
    """
    from .analysis.svd import r_ratios, write_svd_diagnostics
    from .reparam import fold, svd_modules, to_low_rank
    from .roles import unwrap
    from .train.checkpoint import atomic_save

    out: dict = {}
    model = unwrap(model)
    device = next(model.parameters()).device
    model = model.cpu().eval()
    s = built.svd_summary
    try:
        if svd_modules(model):
            out["svd"] = {"summary": {"mode": s.mode, "prune": s.prune, "layers": len(s.rows),
                                      "sigma_active": s.sigma_active, "trainable_by_role": s.groups},
                          **write_svd_diagnostics(model, run_dir)}
            atomic_save({"model": fold(model).state_dict(), "config": cfg.to_dict(), "folded_from": cfg.method},
                        run_dir / "folded.pt")
            if s.prune > 0:
                _, rep = to_low_rank(model, example[:32].cpu(), layers="svd")
                out["low_rank"] = {k: getattr(rep, k) for k in ("params_dense", "params_low_rank", "flops_dense",
                                                                 "flops_low_rank", "images_per_s_dense",
                                                                 "images_per_s_low_rank", "max_abs_diff")}
                out["low_rank"]["speedup"] = rep.speedup
        elif cfg.method == "lora":
            from .reparam.lora import merge_lora

            out["lora"] = built.svd_summary
            atomic_save({"model": merge_lora(model).state_dict(), "config": cfg.to_dict(), "folded_from": cfg.method},
                        run_dir / "folded.pt")
        elif built.pretrained_state is not None:
            r = r_ratios(built.pretrained_state, model.state_dict())
            out["r_ratio"] = {k: r[k] for k in ("mean", "median", "n")}
        out["stored_bytes"] = _stored_bytes(model, cfg, built, run_dir)
    finally:
        model.to(device)
    return out


def _stored_bytes(model: nn.Module, cfg, built, run_dir) -> int:
    """Bytes a task costs to keep: its adapter file (written here) beside a shared base, or the whole model."""
    if cfg.method != "full" and built.base_hash:
        from .adapters import save_adapter

        return save_adapter(model, run_dir / "adapter.safetensors").stat().st_size
    return int(sum(t.numel() * t.element_size() for t in model.state_dict().values()))
