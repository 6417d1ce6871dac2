"""``dora``: DoRA (Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation"), through Hugging Face PEFT.

Each adapted conv's weight is split into a magnitude per output channel and a direction; the
direction gets LoRA's rank-r update and the magnitude trains on its own. Same targets, rank and
merge as :mod:`smallmed.methods.lora`; the magnitude vectors carry LoRA's role.
"""

from __future__ import annotations

from .base import register_method
from .lora import LoRA


@register_method
class DoRA(LoRA):
    name = "dora"
    paper = "DoRA (Liu et al. 2024)"
    trains = "rank-r factors and a magnitude per output channel on every k > 1 conv, the classifier"
    dora = True
