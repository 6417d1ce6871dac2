"""Fine-tuning methods of seed 000 as one option of the trainer (``--method``).

| method | what trains |
|---|---|
| ``full`` | every parameter |
| ``fc-train`` | only the classifier (a linear probe; frozen BatchNorm statistics) |
| ``full-svd`` | singular values of every conv, ``in x (out*h*w)`` unfolding, + classifier |
| ``full-out-svd`` | the same on the ``out x (in*h*w)`` unfolding |
| ``sp-svd`` | one SVD per kernel position, + classifier |
| ``sp-svd-9`` | ``sp-svd`` with the smallest 90% of each matrix's singular values fixed at 0 |
| ``full-svd-9`` | ``full-svd`` pruned the same way: exports exactly to two thin convs per layer |

``PROTOCOL`` holds the seed's training protocol, applied beneath a user's own settings when a
method is chosen on the command line: 1 epoch head only, Adam betas (0.9, 0.99), lr 1e-3,
plateau patience 4, batch 16. BatchNorm statistics keep updating for SVD methods (the seed
trains in train mode with BN affine frozen) and are frozen for the linear probe.
"""

from __future__ import annotations

from torch import nn

from .errors import SmallmedError
from .models import head_name
from .registry import check_choice

SVD_METHODS: dict[str, dict] = {
    "full-svd": {"mode": "full", "prune": 0.0},
    "full-out-svd": {"mode": "full-out", "prune": 0.0},
    "sp-svd": {"mode": "spatial", "prune": 0.0},
    "sp-svd-9": {"mode": "spatial", "prune": 0.9},
    "full-svd-9": {"mode": "full", "prune": 0.9},  # ours: pruned on the unfolding that exports to thin convs
}
METHODS = ("full", "fc-train", *SVD_METHODS)

PROTOCOL = {"head_epochs": 1, "betas": [0.9, 0.99], "lr": 1e-3, "patience": 4, "batch_size": 16,
            "scheduler": "plateau", "optimizer": "adam"}


def protocol_defaults(method: str) -> dict:
    """The seed's protocol for ``method``, as TrainConfig keys (user settings override them)."""
    check_choice("method", method, METHODS)
    d = dict(PROTOCOL)
    if method == "fc-train":
        d["head_epochs"] = 0
    elif method in SVD_METHODS:
        d["freeze_bn_stats"] = False
    return d


def apply_method(model: nn.Module, method: str, *, svd_train=("sigma", "head"), svd_linear: bool = False,
                 prune: float | None = None):
    """Prepare ``model`` for ``method``; returns (names of parameters that train, summary or None)."""
    check_choice("method", method, METHODS)
    summary = None
    if method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
    elif method == "fc-train":
        head = head_name(model) + "."
        for n, p in model.named_parameters():
            p.requires_grad_(n.startswith(head))
    else:
        from .reparam import apply_svd

        spec = dict(SVD_METHODS[method])
        if prune is not None:
            spec["prune"] = prune
        summary = apply_svd(model, mode=spec["mode"], prune=spec["prune"], train=tuple(svd_train), linear=svd_linear)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    if not names:
        raise SmallmedError(f"method={method!r} leaves no trainable parameter.")
    return names, summary
