"""``lora``: LoRA (Hu et al. 2022) on every conv with a kernel larger than 1x1, through Hugging Face PEFT."""

from __future__ import annotations

from .base import Method, register_method

RANK = 4  # the rank when the config leaves lora_rank unset


@register_method
class LoRA(Method):
    name = "lora"
    paper = "LoRA (Hu et al. 2022)"
    trains = "rank-r factors on every k > 1 conv, the classifier"
    roles = frozenset({"head", "lora"})
    uses = ("lora_rank",)
    protocol = {"freeze_bn_stats": False, "lora_rank": RANK}
    dora = False  # DoRA subclasses this with a learned magnitude per output channel

    def settings(self, cfg) -> dict:
        return {"lora_rank": int(cfg.lora_rank if cfg.lora_rank is not None else RANK)}

    def apply(self, model, settings):
        from ..reparam.lora import apply_lora

        return apply_lora(model, rank=int(settings.get("lora_rank", RANK)), dora=self.dora)

    def merge(self, model):
        from ..reparam.lora import merge_lora

        return merge_lora(model)

    def report(self, model, *, built, run_dir, example) -> dict:
        return {"lora": built.svd_summary}
