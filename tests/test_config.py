"""Every field declares its range, choices and the setting it depends on beside it (smallmed.fields.setting); one
check reads them: a value out of range is refused, and a value that would change nothing is refused, never ignored."""

from __future__ import annotations

import dataclasses
import math

import pytest

from smallmed import SmallmedError, TrainConfig
from smallmed.config import applies
from smallmed.fields import spec_of

BOUNDED = {f.name: spec_of(f) for f in dataclasses.fields(TrainConfig) if spec_of(f).bounded}
INTS = {"patience", "early_stop", "step_size", "lora_rank", "epochs", "batch_size", "eval_batch_size", "image_size"}


def _enabling(name: str) -> dict:
    """Settings under which ``name`` applies (its declared condition's first value)."""
    if name not in applies():
        return {}
    other, values = applies()[name]
    return {other: values[0]}


@pytest.mark.parametrize("name", sorted(BOUNDED))
def test_values_outside_each_declared_range_are_refused(name):
    s = BOUNDED[name]
    lo = s.ge if s.ge is not None else s.gt
    hi = s.le if s.le is not None else s.lt
    outside = [math.nan, math.inf, -math.inf]
    outside += [lo - 1] if lo is not None else []
    outside += [hi + 1] if hi is not None else []
    outside += [s.gt] if s.gt is not None else []
    outside += [s.lt] if s.lt is not None else []
    extra = {"epochs": 1000, **_enabling(name)} if name != "epochs" else _enabling(name)
    tuple_field = isinstance(dataclasses.asdict(TrainConfig())[name], (list, tuple)) or name == "betas"
    for bad in outside:
        value = [bad, bad] if tuple_field else bad
        with pytest.raises(SmallmedError, match=name):
            TrainConfig(**extra, **{name: value})
    inside = lo if s.ge is not None else lo + (min(1e-3, (hi - lo) / 2) if hi is not None else 1e-3)
    if name in INTS:
        inside = math.ceil(inside)
    TrainConfig(**extra, **{name: [inside, inside] if tuple_field else inside})


@pytest.mark.parametrize("name", sorted(applies()))
def test_a_setting_without_effect_is_refused_naming_what_would_apply_it(name):
    """Over every declared dependency, the fine-tuning methods' own settings included (Method.uses)."""
    other, values = applies()[name]
    value = {
        "momentum": 0.5,
        "patience": 2,
        "factor": 0.5,
        "step_size": 3,
        "prune": 0.5,
        "svd_linear": True,
        "rank_ratio": 0.5,
        "kl_weight": 0.5,
        "fd_weight": 0.5,
        "lora_rank": 8,
        "svd_train": ("sigma", "head", "bn"),
    }[name]
    elsewhere = {"optimizer": "adam", "scheduler": "cosine", "method": "full", "conv": "conv"}[other]
    with pytest.raises(SmallmedError, match=f"{name}=.*no effect.*{other}"):
        TrainConfig(epochs=4, **{other: elsewhere, name: value})
    TrainConfig(epochs=4, **{other: values[0], name: value})  # where it applies it is accepted


def test_the_cli_refuses_an_ignored_flag_in_one_sentence(tmp_path, capsys):
    from smallmed.cli import main

    assert main(["train", "--data", "x.npz", "--momentum", "0.5", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "momentum=0.5 has no effect" in err[0]
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "args, needle",
    [
        (["train", "--model", "vgg16", "--image-size", "8"], "vgg16 cannot take 8 px images"),
        (["cost", "vgg16", "--input", "8"], "vgg16 cannot take 8 px images"),
        (["cost", "resnet18", "--input", "32", "--batch", "0"], "--batch 0: expected at least 1"),
        (["train", "--model", "small_cnn", "--lr", "1e10"], "validation loss became nan at epoch 1"),
    ],
)
def test_inputs_torch_would_choke_on_get_one_sentence(tiny_npz, tmp_path, capsys, args, needle):
    from smallmed.cli import main

    if args[0] == "train":
        args = [*args, "--data", str(tiny_npz), "--epochs", "1", "--out", str(tmp_path / "r"), "--no-progress"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert needle in err and "internal error" not in err and len(err.strip().splitlines()) == 1, err


def test_a_tuple_field_parses_the_same_from_flags_and_set(tiny_npz, tmp_path):
    import yaml

    from smallmed.cli import main

    common = ["train", "--data", str(tiny_npz), "--model", "small_cnn", "--epochs", "1", "--no-progress"]
    assert main([*common, "--betas", "0.5", "0.9", "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--set", "betas=[0.5, 0.9]", "--out", str(tmp_path / "b")]) == 0
    a, b = (yaml.safe_load((tmp_path / r / "config.yaml").read_text())["betas"] for r in "ab")
    assert a == b == [0.5, 0.9]
