"""``full``: every parameter trains (the reference every other method is compared with)."""

from __future__ import annotations

from .base import Method, register_method


@register_method
class Full(Method):
    name = "full"
    paper = "full fine-tuning"
    trains = "every parameter"

    def report(self, model, *, built, run_dir, example) -> dict:
        if built.pretrained_state is None:
            return {}
        from ..reparam.diagnostics import r_ratios

        # how far fine-tuning moved the weights from the pretrained ones (the SVD paper's R ratio)
        r = r_ratios(built.pretrained_state, model.state_dict())
        return {"r_ratio": {k: r[k] for k in ("mean", "median", "n")}}
