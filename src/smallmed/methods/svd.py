"""The SVD fine-tuning family: only singular values train (plus the classifier and whatever ``svd_train`` adds).

SVF (Sun et al. 2022) on the ``out x (in*h*w)`` unfolding, and the variants of the singular-value
fine-tuning paper this package restates: the ``in x (out*h*w)`` unfolding, one SVD per kernel position,
and the smallest 90 % of each matrix's singular values fixed at 0 (pruned).

| method | unfolding | pruned |
|---|---|---|
| ``full-svd`` | ``in x (out*h*w)`` | 0 |
| ``full-out-svd`` | ``out x (in*h*w)`` (SVF) | 0 |
| ``sp-svd`` | one per kernel position | 0 |
| ``sp-svd-9`` | one per kernel position | 0.9 |
| ``full-svd-9`` | ``in x (out*h*w)`` | 0.9 (exports exactly to two thin convs per layer) |
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .base import Method, register_method


class _SVD(Method):
    mode: str = "full"
    prune: float = 0.0
    paper = "SVD fine-tuning (the restated paper)"
    trains = "singular values of every conv, the classifier"
    roles = frozenset({"sigma", "head"})  # and whatever svd_train adds (trained_roles)
    uses = ("prune", "svd_linear", "svd_train")
    protocol = {"freeze_bn_stats": False}  # the seed trains in train mode: BatchNorm statistics keep updating

    def settings(self, cfg) -> dict:
        from ..reparam.svd import SVDConfig

        prune = self.prune if cfg.prune is None else cfg.prune
        svd = SVDConfig(mode=self.mode, prune=prune, train=tuple(cfg.svd_train), linear=cfg.svd_linear)
        return {
            "svd": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(svd).items()},
            "svd_train": list(cfg.svd_train),
        }

    def _config(self, settings: dict):
        from ..reparam.svd import SVDConfig

        if settings.get("svd"):
            fields: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in settings["svd"].items()}
            return SVDConfig(**fields)
        return SVDConfig(mode=self.mode, prune=self.prune, train=tuple(settings.get("svd_train", ("sigma", "head"))))

    def trained_roles(self, settings: dict) -> set[str]:
        return {"sigma", "head", *self._config(settings).train}

    def apply(self, model, settings):
        from ..reparam import apply_svd

        return apply_svd(model, self._config(settings))

    def merge(self, model):
        from ..reparam import fold

        return fold(model)

    def pruned(self, settings: dict) -> bool:
        return self._config(settings).prune > 0

    def report(self, model, *, built, run_dir, example) -> dict:
        from ..reparam import svd_modules, to_low_rank
        from ..reparam.diagnostics import write_svd_diagnostics

        if not svd_modules(model):
            return {}
        s = built.svd_summary
        out = {
            "svd": {
                "summary": {
                    "mode": s.mode,
                    "prune": s.prune,
                    "layers": len(s.rows),
                    "sigma_active": s.sigma_active,
                    "trainable_by_role": s.groups,
                },
                **write_svd_diagnostics(model, run_dir),
            }
        }
        if s.prune > 0:
            _, rep = to_low_rank(model, example[:32].cpu(), layers="svd")
            keys = (
                "params_dense",
                "params_low_rank",
                "flops_dense",
                "flops_low_rank",
                "images_per_s_dense",
                "images_per_s_low_rank",
                "max_abs_diff",
            )
            out["low_rank"] = {**{k: getattr(rep, k) for k in keys}, "speedup": rep.speedup}
        return out


@register_method
class FullSVD(_SVD):
    name, mode = "full-svd", "full"


@register_method
class FullOutSVD(_SVD):
    name, mode, paper = "full-out-svd", "full-out", "SVF (Sun et al. 2022)"


@register_method
class SpatialSVD(_SVD):
    name, mode = "sp-svd", "spatial"
    trains = "one SVD per kernel position: singular values, the classifier"


@register_method
class SpatialSVDPruned(_SVD):
    name, mode, prune = "sp-svd-9", "spatial", 0.9
    trains = "sp-svd with the smallest 90% of each matrix's singular values fixed at 0"


@register_method
class FullSVDPruned(_SVD):
    name, mode, prune = "full-svd-9", "full", 0.9
    trains = "full-svd pruned the same way: exports exactly to two thin convs per layer"
