"""Run configuration: one dataclass, checked at construction, saved as YAML beside the results.

Precedence: defaults < ``--config run.yaml`` < command-line flags < ``--set key=value``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Literal, TypeVar

import yaml

from .errors import SmallmedError
from .fields import check_fields, coerce_fields, declared_applies, setting
from .registry import check_choice


def _methods() -> tuple[str, ...]:
    from .methods import method_names

    return tuple(method_names())


def _convs() -> tuple[str, ...]:
    from .reparam.factorized import CONV_VARIANTS

    return tuple(CONV_VARIANTS)


SEED = {"ge": 0, "lt": 2**32}

T = TypeVar("T")


def resolved(value: T | None, name: str) -> T:
    """A field declared ``X | None`` that construction fills (``TrainConfig._resolve_protocol``: the recipe's or
    the method's default when unset), read where it is known to be set.

    Example:
        >>> resolved(TrainConfig().lr, "lr")
        0.001
    """
    if value is None:
        raise SmallmedError(f"{name}=None: a TrainConfig sets it on construction; it was cleared afterwards.")
    return value


@dataclass
class TrainConfig:
    """Everything a training run depends on. Every field is a ``smallmed train`` flag; its type, range, choices and
    the setting it depends on are declared beside it (:func:`smallmed.fields.setting`) and checked by one check for
    flags, YAML, ``--set`` and Python alike.

    Example:
        >>> cfg = TrainConfig(data="pneumoniamnist", model="resnet18", epochs=10, seed=1)
        >>> cfg.lr
        0.001
    """

    # data
    data: str = setting("pneumoniamnist", help="a dataset name (smallmed data stats) or a file/folder")
    data_dir: str | None = setting(None, help="the data directory (default: SMALLMED_DATA_DIR, else the user cache)")
    fraction: float = setting(
        1.0, gt=0, le=1, help="nested stratified subset of the training split (the same for every method)"
    )
    split_seed: int = setting(
        0, **SEED, help="fixes the train/val/test split of data without an official one, and the cv folds"
    )
    cv_folds: int = setting(
        0, ge=0, le=100, help="k-fold cross-validation over train+val, patient-grouped (0: the split as given)"
    )
    cv_fold: int = setting(0, ge=0, help="the held-out fold, 0..cv_folds-1")
    holdout: Literal["test", "val"] = setting(
        "test", help="the split the final metrics read (a search trial reads val, never test)"
    )
    figures: bool = setting(True, help="write the run's figures (curves, ROC, reliability, overlays)")
    log: tuple[Literal["tensorboard", "mlflow"], ...] = setting(
        (), help="mirror the run to tensorboard and/or mlflow (the run folder stays the record)"
    )
    mlflow_uri: str | None = setting(
        None, help="MLflow tracking server (default: MLFLOW_TRACKING_URI, else RUN/mlflow.db)"
    )
    image_size: int | None = setting(None, ge=4, le=4096, help="model input side (default: the data's own size)")
    augment: str | None = setting(None, help="preset or terms, see smallmed.data.transforms (default: the recipe's)")
    fit: Literal["resize", "pad"] | None = setting(None, help="how images meet image_size (default: the recipe's)")
    normalize: Literal["auto", "dataset", "sample", "imagenet", "half", "xrv", "none"] = setting(
        "auto", help="auto: the weights' own statistics if named, else the training split's"
    )
    # model
    model: str = setting("resnet18", help="a model family (smallmed models)")
    weights: str | None = setting(None, help="pretrained weights: a name, a .safetensors file or a run folder")
    norm: str = setting("bn", help="normalization layers (the model's own choices)")
    stem: Literal["auto", "imagenet", "small"] = setting("auto", help="the model's first layers")
    # cheap convolutions (seed 004), see smallmed.reparam.factorized
    conv: str = setting("conv", choices=_convs, help="replaces the k > 1 convs")
    rank_ratio: float = setting(
        0.125,
        gt=0,
        le=1,
        applies=("conv", ("sfconv", "fconv", "fconvsn")),
        help="rank = floor(ratio * min(C_out, C_in*k*k)) per layer",
    )
    kl_weight: float = setting(
        0.0, ge=0, le=1e6, applies=("conv", ("sfconv",)), help="lambda of the singular-value flattening KL term"
    )
    fd_weight: float = setting(0.0, ge=0, le=1e6, applies=("conv", ("fconv",)), help="Frobenius decay weight")
    # fine-tuning method (seed 000), see smallmed.methods
    method: str = setting("full", choices=_methods, help="fine-tuning method (smallmed.methods)")
    svd_train: tuple[Literal["sigma", "head", "bn", "bias"], ...] = setting(
        ("sigma", "head"), help="with SVD methods: the parameters that train"
    )
    svd_linear: bool = setting(False, help="also decompose Linear layers other than the classifier")
    prune: float | None = setting(None, ge=0, lt=1, help="override the method's pruned fraction of singular values")
    lora_rank: int | None = setting(
        None, ge=1, le=4096, help="LoRA/DoRA: rank of the update on every k > 1 conv (default: the method's)"
    )
    # task (classification and segmentation follow from the data; regression scores take a loss)
    task: Literal["auto", "regression", "classification", "ordinal"] = setting(
        "auto",
        flags=("--head",),
        help="the head for graded labels: regression = a bounded score, classification = softmax, ordinal = CORN",
    )
    loss: Literal["auto", "mae", "logcosh", "mse"] = setting("auto", help="regression loss (auto: mae)")
    balance: Literal["none", "sampling", "weights"] = setting(
        "none", help="sampling: undersample the most frequent label, oversample the rest; weights: inverse frequency"
    )
    # optimisation; recipe: baseline = the first build's defaults (Adam 1e-3, plateau, flip), strong = AdamW with
    # warmup + cosine, label smoothing, TrivialAugmentWide, MixUp/CutMix and an EMA of the weights (see RECIPES)
    recipe: Literal["baseline", "strong"] = setting("baseline", help="the defaults beneath your settings")
    epochs: int = setting(10, ge=1, le=10**5)
    batch_size: int | None = setting(None, ge=1, le=10**6, help="default: 64, or 16 under a seed-000 method")
    eval_batch_size: int = setting(256, ge=1, le=10**6, help="evaluation only (results do not depend on it)")
    optimizer: Literal["adam", "adamw", "sgd"] | None = setting(None, help="default: the recipe's")
    lr: float | None = setting(None, gt=0, help="learning rate (default: the recipe's)")
    betas: tuple[float, float] | None = setting(
        None, ge=0, lt=1, help="Adam betas (default: 0.9 0.999, or 0.9 0.99 under a seed-000 method)"
    )
    momentum: float = setting(0.9, ge=0, lt=1, applies=("optimizer", ("sgd",)))
    weight_decay: float | None = setting(None, ge=0, le=10)
    scheduler: Literal["plateau", "step", "cosine", "none"] | None = setting(None, help="default: the recipe's")
    warmup_epochs: int | None = setting(None, ge=0, help="linear warmup into the cosine schedule")
    label_smoothing: float | None = setting(None, ge=0, lt=1, help="classification targets (1 - e) one-hot + e / K")
    mixup: float | None = setting(None, ge=0, le=1e3, help="MixUp Beta(a, a) (Zhang et al. 2018); 0: off")
    cutmix: float | None = setting(None, ge=0, le=1e3, help="CutMix Beta(a, a) (Yun et al. 2019); 0: off")
    ema: float | None = setting(None, ge=0, lt=1, help="decay of an EMA of the weights, evaluated and saved; 0: off")
    patience: int = setting(
        4, ge=0, le=1000, applies=("scheduler", ("plateau",)), help="plateau: epochs without improvement"
    )
    early_stop: int = setting(0, ge=0, le=1000, help="stop after this many epochs without val-loss improvement")
    select_epoch: Literal["val_loss", "last"] = setting("val_loss", help="the epoch kept")
    bn_stats: Literal["running", "recompute"] = setting(
        "running",
        help="recompute: BatchNorm statistics recomputed on the training images before each validation (precise "
        "BN, Wu & Johnson 2021; layers a method froze keep theirs), for sets so small that the running averages "
        "lag the weights",
    )
    factor: float = setting(0.1, gt=0, lt=1, applies=("scheduler", ("plateau", "step")), help="lr *= factor")
    step_size: int | None = setting(
        None, ge=1, le=10**6, applies=("scheduler", ("step",)), help="epochs between decays (default: half)"
    )
    head_epochs: int | None = setting(None, ge=0, help="two-stage: first train only the head this many epochs")
    freeze_bn_stats: bool | None = setting(None, help="frozen layers' BatchNorm statistics stay fixed too")
    # RFF (seed 001): freeze the receptive-field-expanding layers at these 1-based epochs
    rff_epochs: tuple[int, ...] = setting((), ge=1, help="RFF: freeze the receptive-field layers at these epochs")
    rff_alternate: bool = setting(False, help="RFF: freeze them on every other epoch (2, 4, ...)")
    rff_layers: tuple[str, ...] = setting((), help="RFF: module names (default: found by smallmed.schedules)")
    # run
    seed: int = setting(0, **SEED)
    device: str = setting("auto", help="auto, cpu, cuda[:N] or mps")
    amp: bool = setting(True, help="bfloat16 mixed precision on CUDA (ignored on CPU)")
    num_workers: int = setting(0, ge=0, le=256)
    fprs: tuple[float, ...] = setting(
        (1e-3, 1e-2), ge=0, lt=1, help="TPR at these FPRs, read off the test ROC (an optimistic, test-chosen point)"
    )
    operating_point: str = setting(
        "youden", help="threshold chosen on validation: youden | sensitivity=S | specificity=S"
    )
    calibrate: Literal["none", "temperature"] = setting("none", help="temperature: fitted on validation")
    progress: bool = setting(True, help="progress bars")
    out: str | None = setting(None, help="the run folder")
    extra: dict = field(default_factory=dict)  # free-form notes carried into config.yaml

    def __post_init__(self) -> None:
        coerce_fields(self)
        self._resolve_protocol()
        check_fields(self, applies=applies())
        from .models import model_entry

        entry = model_entry(self.model)  # unknown names: did-you-mean, before anything runs
        check_choice(f"norm for {self.model}", self.norm, entry.norms)
        from .data.transforms import parse_augment

        parse_augment(self.augment)  # a bad augmentation spec fails here, before any file is written
        check_choice("device", self.device.split(":")[0], ("auto", "cpu", "cuda", "mps"))
        if self.rff_layers and not (self.rff_epochs or self.rff_alternate):
            raise SmallmedError(
                "rff_layers has no effect without rff_epochs or rff_alternate (the epochs that freeze them)."
            )
        bad = [e for e in self.rff_epochs if e > self.epochs]
        if bad:
            raise SmallmedError(
                f"rff_epochs={list(self.rff_epochs)}: epoch {bad[0]} is outside 1..epochs ({self.epochs})."
            )
        if resolved(self.head_epochs, "head_epochs") > self.epochs:
            raise SmallmedError(f"head_epochs={self.head_epochs}: expected 0..epochs ({self.epochs}).")
        if not self.fprs:
            raise SmallmedError("fprs=[]: expected at least one false-positive rate in [0, 1).")
        from .metrics.clinical import parse_rule

        parse_rule(self.operating_point)
        if resolved(self.warmup_epochs, "warmup_epochs") >= self.epochs or (
            self.warmup_epochs and self.scheduler != "cosine"
        ):
            raise SmallmedError(
                f"warmup_epochs={self.warmup_epochs}: expected 0..epochs-1 ({self.epochs - 1}), with "
                "scheduler='cosine' (the warmup leads into it)."
            )
        if self.mlflow_uri and "mlflow" not in self.log:
            raise SmallmedError(f"mlflow_uri={self.mlflow_uri!r} has no effect without log mlflow (--log mlflow).")
        if self.cv_folds == 1:
            raise SmallmedError(f"cv_folds={self.cv_folds}: expected 0 (the split as given) or 2..100 folds.")
        if self.cv_fold and not self.cv_folds:
            raise SmallmedError(
                f"cv_fold={self.cv_fold} has no effect with cv_folds=0; it applies with cv_folds 2 or more."
            )
        if self.cv_folds and not self.cv_fold < self.cv_folds:
            raise SmallmedError(f"cv_fold={self.cv_fold}: expected 0..{self.cv_folds - 1} (cv_folds={self.cv_folds}).")
        if self.cv_folds and self.holdout != "val":
            raise SmallmedError(
                f"cv_folds={self.cv_folds} pools train and val into folds: set holdout='val' (the held-out "
                "fold), so that the test split is left for the final evaluation."
            )
        if self.select_epoch == "last" and self.early_stop:
            raise SmallmedError(
                f"early_stop={self.early_stop} needs select_epoch='val_loss'; with 'last' every epoch runs."
            )

    def _resolve_protocol(self) -> None:
        """Fill the fields left at None: seed 000's protocol under a fine-tuning method other than
        ``full``, the generic defaults otherwise. Explicit values always win, so
        ``TrainConfig(method="full-svd")``, ``for_method`` and the CLI give the same run."""
        from .methods import get_method, protocol_defaults

        method = get_method(self.method)
        check_choice("recipe", self.recipe, tuple(RECIPES))
        base = {**RECIPES[self.recipe], **GENERIC_DEFAULTS}
        if self.method != "full":
            # a method's protocol (its paper's) sits above the baseline recipe; the strong recipe keeps its own
            # optimiser, schedule and learning rate and takes only the protocol's batch, betas and stages
            own = set(RECIPES["strong"]) if self.recipe == "strong" else set()
            base.update({k: v for k, v in protocol_defaults(self.method).items() if k in base and k not in own})
        for k, v in method.protocol.items():  # the method's own settings (lora_rank) take its default when unset
            if k in method.uses and getattr(self, k) is None:
                setattr(self, k, v)
        unset = {k for k in base if getattr(self, k) is None}
        for k, v in base.items():
            if k in unset:
                setattr(self, k, v)
        # the recipe's warmup leads into its cosine schedule: with another schedule, or too few epochs, it is dropped
        if "warmup_epochs" in unset and (
            self.scheduler != "cosine" or resolved(self.warmup_epochs, "warmup_epochs") >= self.epochs
        ):
            self.warmup_epochs = 0
        if "weight_decay" in unset and self.optimizer != "adamw" and self.recipe == "strong":
            self.weight_decay = 0.0  # the strong recipe's decay is AdamW's decoupled one, not an L2 term for Adam/SGD

    @classmethod
    def from_sources(
        cls, *, yaml_path: str | Path | None = None, flags: dict | None = None, sets: list[str] | None = None
    ) -> TrainConfig:
        """Defaults < YAML file < flags < ``--set key=value`` items; any ``method`` brings its protocol
        beneath everything the user set.

        Example:
            >>> TrainConfig.from_sources(flags={"method": "sp-svd"}, sets=["lr=3e-4"]).batch_size
            16
        """
        base = load_yaml(yaml_path) if yaml_path else {}
        merged = {**base, **{k: v for k, v in (flags or {}).items() if v is not None}, **parse_set(sets or [])}
        if merged.get("method"):
            from .methods import protocol_defaults

            merged = {**protocol_defaults(str(merged["method"])), **merged}
        return cls.from_dict(merged, source=str(yaml_path) if yaml_path else "config")

    @property
    def factorize(self):
        """The factorized-conv settings as a :class:`smallmed.reparam.FactorizeConfig` (None for plain convs)."""
        from .reparam.factorized import FactorizeConfig

        if self.conv == "conv":
            return None
        return FactorizeConfig(method=self.conv, rank_ratio=None if self.conv == "dpc" else self.rank_ratio)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"], d["fprs"] = list(resolved(self.betas, "betas")), list(self.fprs)
        d["svd_train"] = list(self.svd_train)
        d["log"] = list(self.log)
        return d

    @classmethod
    def from_dict(cls, d: dict, *, source: str = "config") -> TrainConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            check_choice(f"{source} key", unknown[0], sorted(names))
        return cls(**d)

    @classmethod
    def from_saved(cls, d: dict, *, source: str = "config") -> TrainConfig:
        """A config saved by a run folder: fields that a later smallmed refuses as having no effect (their
        value never changed anything) are read back at their defaults, so old runs load, resume and compare."""
        d = dict(d)
        defaults = {f.name: f.default for f in fields(cls)}
        for name, (other, values) in applies().items():
            if name in d and d.get(other, defaults.get(other)) not in values:
                d[name] = defaults[name]
        return cls.from_dict(d, source=source)

    @classmethod
    def for_method(cls, method: str, **kw) -> TrainConfig:
        """A config with seed 000's protocol for ``method`` beneath ``kw``.

        Example:
            >>> TrainConfig.for_method("sp-svd", data="pneumoniamnist").batch_size
            16
        """
        from .methods import protocol_defaults

        return cls.from_dict({**protocol_defaults(method), "method": method, **kw})  # same as the CLI

    def with_overrides(self, **kw) -> TrainConfig:
        d = self.to_dict()
        d.update({k: v for k, v in kw.items() if v is not None})
        return TrainConfig.from_dict(d)


GENERIC_DEFAULTS = {"batch_size": 64, "betas": (0.9, 0.999), "head_epochs": 0, "freeze_bn_stats": True}

# the two named recipes: values beneath a method's protocol and the user's own settings
RECIPES = {
    "baseline": {
        "augment": "flip",
        "fit": "resize",
        "optimizer": "adam",
        "lr": 1e-3,
        "weight_decay": 0.0,
        "scheduler": "plateau",
        "warmup_epochs": 0,
        "label_smoothing": 0.0,
        "mixup": 0.0,
        "cutmix": 0.0,
        "ema": 0.0,
    },
    # built from MedMNIST+ (Doerrich et al. 2025) and timm's recipes, sized for small sets
    "strong": {
        "augment": "trivial",
        "fit": "resize",
        "optimizer": "adamw",
        "lr": 1e-3,
        "weight_decay": 0.05,
        "scheduler": "cosine",
        "warmup_epochs": 1,
        "label_smoothing": 0.1,
        "mixup": 0.2,
        "cutmix": 1.0,
        "ema": 0.99,
    },
}


def applies() -> dict[str, tuple[str, tuple]]:
    """The fields' declared ``applies`` conditions and, for each config field some fine-tuning method reads
    (``lora_rank``, ``prune``), the methods that read it: declared by the methods themselves (``Method.uses``)."""
    from .methods import method_fields

    return {**declared_applies(TrainConfig), **{name: ("method", users) for name, users in method_fields().items()}}


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise SmallmedError(f"{path}: config file not found.")
    if not path.is_file():
        raise SmallmedError(f"{path}: is a folder; expected a YAML file.")
    try:
        d = yaml.safe_load(path.read_text()) or {}
    except UnicodeDecodeError:
        raise SmallmedError(f"{path}: not a text file; expected YAML.") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SmallmedError(f"{path}: not valid YAML ({what}{where}).") from None
    if not isinstance(d, dict):
        raise SmallmedError(f"{path}: expected a mapping of config keys, found {type(d).__name__}.")
    return d


def parse_set(items: list[str]) -> dict:
    """``["lr=3e-4", "betas=[0.9,0.99]"]`` -> {"lr": 0.0003, "betas": [0.9, 0.99]} (YAML-typed)."""
    out = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise SmallmedError(f"--set {item!r}: expected key=value.")
        out[key.strip().replace("-", "_")] = yaml.safe_load(value)
    return out


def dump_yaml(d: dict) -> str:
    return yaml.safe_dump(d, sort_keys=False)
