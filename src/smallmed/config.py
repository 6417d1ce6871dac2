"""Run configuration: one dataclass, checked at construction, saved as YAML beside the results.

Precedence: defaults < ``--config run.yaml`` < command-line flags < ``--set key=value``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from .errors import SmallmedError
from .registry import check_choice


@dataclass
class TrainConfig:
    """Everything a training run depends on. Every field is a ``smallmed train`` flag.

    Example:
        >>> cfg = TrainConfig(data="pneumoniamnist", model="resnet18", epochs=10, seed=1)
        >>> cfg.lr
        0.001
    """

    # data
    data: str = "pneumoniamnist"
    data_dir: str | None = None
    fraction: float = 1.0  # nested stratified subset of the training split (same for every method)
    split_seed: int = 0  # fixes the train/val/test split of data without an official one
    # k-fold cross-validation over train+val (a search's objective on small data): train on k-1 folds,
    # validate on fold cv_fold, patient-grouped where ids exist; 0: the split as given
    cv_folds: int = 0
    cv_fold: int = 0
    holdout: str = "test"  # the split the final metrics read: test, or val (a search trial never reads test)
    figures: bool = True  # the run's figures (curves, ROC, reliability, overlays); search trials skip them
    log: tuple[str, ...] = ()  # mirror the run to tensorboard and/or mlflow (the run folder stays the record)
    mlflow_uri: str | None = None  # MLflow tracking server (default: MLFLOW_TRACKING_URI, else RUN/mlflow.db)
    image_size: int | None = None  # model input side; None = the data's own size
    augment: str | None = None  # preset or terms, see smallmed.data.transforms (None: the recipe's)
    fit: str | None = None  # resize | pad: how images meet image_size (None: the recipe's, resize for both)
    normalize: str = "auto"  # auto = the weights' own statistics if named, else the training split's
    # model
    model: str = "resnet18"
    weights: str | None = None
    norm: str = "bn"
    stem: str = "auto"
    # cheap convolutions (seed 004), see smallmed.reparam.factorized
    conv: str = "conv"  # conv | sfconv | fconv | fconvsn | dpc: replaces the k > 1 convs
    rank_ratio: float = 0.125  # rank = floor(ratio * min(C_out, C_in*k*k)) per layer
    kl_weight: float = 0.0  # sfconv: lambda of the singular-value flattening KL term
    fd_weight: float = 0.0  # fconv: Frobenius decay weight
    # fine-tuning method (seed 000), see smallmed.methods
    method: str = "full"
    svd_train: tuple[str, ...] = ("sigma", "head")  # with SVD methods: sigma, head, bn, bias
    svd_linear: bool = False  # also decompose Linear layers other than the classifier
    prune: float | None = None  # override the method's pruned fraction of singular values
    lora_rank: int | None = None  # LoRA/DoRA: rank of the update on every k > 1 conv (None: the method's default)
    # task (classification and segmentation follow from the data; regression scores take a loss)
    # the head (--head) for graded labels: regression = a bounded score (seed 003), classification = softmax
    # (argmax and expected grade), ordinal = CORN (coral-pytorch); auto: from the data
    task: str = "auto"
    loss: str = "auto"  # regression: mae | logcosh | mse (auto = mae); fixed for the other tasks
    balance: str = "none"  # none | sampling (seed 003: undersample the most frequent label, oversample the rest) | weights (inverse frequency)
    # optimisation; recipe: baseline = the first build's defaults (Adam 1e-3, plateau, flip), strong = AdamW with
    # warmup + cosine, label smoothing, TrivialAugmentWide, MixUp/CutMix and an EMA of the weights (see RECIPES)
    recipe: str = "baseline"
    epochs: int = 10
    batch_size: int | None = None  # None: 64, or 16 under a seed-000 method (see resolve below)
    eval_batch_size: int = 256  # evaluation only (eval-mode BatchNorm: results do not depend on it)
    optimizer: str | None = None  # adam | adamw | sgd (None: the recipe's)
    lr: float | None = None
    betas: tuple[float, float] | None = None  # None: (0.9, 0.999), or (0.9, 0.99) under a seed-000 method
    momentum: float = 0.9
    weight_decay: float | None = None
    scheduler: str | None = None
    warmup_epochs: int | None = None  # linear warmup before the schedule (cosine); None: the recipe's
    label_smoothing: float | None = None  # classification: targets (1 - e) one-hot + e / K
    mixup: float | None = None  # MixUp Beta(a, a) (Zhang et al. 2018) on training batches; 0: off
    cutmix: float | None = None  # CutMix Beta(a, a) (Yun et al. 2019); with mixup: one of the two per batch
    ema: float | None = (
        None  # decay of an exponential moving average of the weights, evaluated and saved instead; 0: off
    )
    patience: int = 4  # plateau: epochs without val-loss improvement before lr *= factor
    early_stop: int = 0  # stop after this many epochs without val-loss improvement (0: run every epoch)
    select_epoch: str = "val_loss"  # the epoch kept: lowest validation loss, or the last (a fixed number of epochs)
    factor: float = 0.1
    step_size: int | None = None  # step: epochs between decays (default: half the epochs)
    head_epochs: int | None = (
        None  # two-stage: first train only the head this many epochs (None: 0, or 1 under a method)
    )
    freeze_bn_stats: bool | None = None  # frozen layers' BatchNorm statistics stay fixed too (None: yes, live for SVD)
    # RFF (seed 001): freeze the receptive-field-expanding layers at these 1-based epochs
    rff_epochs: tuple[int, ...] = ()
    rff_alternate: bool = False  # or on every other epoch (2, 4, ...)
    rff_layers: tuple[str, ...] = ()  # module names; empty: smallmed.schedules.rff_layers finds them
    # run
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # mixed precision (bfloat16) on CUDA; ignored on CPU
    num_workers: int = 0
    fprs: tuple[float, ...] = (
        1e-3,
        1e-2,
    )  # TPR at these FPRs, read off the test ROC (an optimistic, test-chosen point)
    operating_point: str = "youden"  # threshold chosen on validation: youden | sensitivity=S | specificity=S
    calibrate: str = "none"  # none | temperature (fitted on validation; numbers before and after)
    progress: bool = True
    out: str | None = None
    extra: dict = field(default_factory=dict)  # free-form notes carried into config.yaml

    def __post_init__(self) -> None:
        _coerce_fields(self)
        self._resolve_protocol()
        self.betas = tuple(float(b) for b in self.betas)  # YAML gives lists
        self.fprs = tuple(float(f) for f in self.fprs)
        self.svd_train = tuple(str(t) for t in self.svd_train)
        self.log = (self.log,) if isinstance(self.log, str) else tuple(str(t) for t in self.log)
        for t in self.svd_train:
            check_choice("svd_train", t, ("sigma", "head", "bn", "bias"))
        if self.prune is not None and not 0 <= self.prune < 1:
            raise SmallmedError(f"prune={self.prune}: expected a fraction in [0, 1).")
        check_choice("optimizer", self.optimizer, ("adam", "adamw", "sgd"))
        check_choice("loss", self.loss, ("auto", "mae", "logcosh", "mse"))
        check_choice("task", self.task, ("auto", "regression", "classification", "ordinal"))
        from .models import STEMS, model_entry

        entry = model_entry(self.model)  # unknown names: did-you-mean, before anything runs
        check_choice(f"norm for {self.model}", self.norm, entry.norms)
        check_choice("stem", self.stem, STEMS)
        from .data.transforms import parse_augment

        parse_augment(self.augment)  # a bad augmentation spec fails here, before any file is written
        check_choice("balance", self.balance, ("none", "sampling", "weights"))
        check_choice("scheduler", self.scheduler, ("plateau", "step", "cosine", "none"))
        check_choice("device", self.device.split(":")[0], ("auto", "cpu", "cuda", "mps"))
        check_choice("normalize", self.normalize, ("auto", "dataset", "sample", "imagenet", "half", "xrv", "none"))
        _positive(self, "epochs", "batch_size", "eval_batch_size", "lr")
        _check_ranges(self)
        _check_applies(self)
        from .reparam.factorized import CONV_VARIANTS

        check_choice("conv", self.conv, CONV_VARIANTS)
        if not 0 < self.rank_ratio <= 1:
            raise SmallmedError(f"rank_ratio={self.rank_ratio}: expected a value in (0, 1].")
        if self.kl_weight < 0 or self.fd_weight < 0:
            raise SmallmedError(f"kl_weight={self.kl_weight}, fd_weight={self.fd_weight}: expected >= 0.")
        if self.kl_weight and self.conv != "sfconv":
            raise SmallmedError(f"kl_weight={self.kl_weight} needs conv='sfconv' (the KL term is over sfconv factors).")
        if self.fd_weight and self.conv != "fconv":
            raise SmallmedError(f"fd_weight={self.fd_weight} needs conv='fconv'.")
        if not 0 < self.fraction <= 1:
            raise SmallmedError(f"fraction={self.fraction}: expected a value in (0, 1].")
        bad = [e for e in self.rff_epochs if not 1 <= e <= self.epochs]
        if bad:
            raise SmallmedError(
                f"rff_epochs={list(self.rff_epochs)}: epoch {bad[0]} is outside 1..epochs ({self.epochs})."
            )
        if not 0 <= self.head_epochs <= self.epochs:
            raise SmallmedError(f"head_epochs={self.head_epochs}: expected 0..epochs ({self.epochs}).")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise SmallmedError(f"betas={self.betas}: expected two values in [0, 1).")
        if self.image_size is not None and self.image_size < 4:
            raise SmallmedError(f"image_size={self.image_size}: expected at least 4 px.")
        if not self.fprs or not all(0 <= f < 1 for f in self.fprs):
            raise SmallmedError(f"fprs={self.fprs}: expected false-positive rates in [0, 1).")
        if self.weight_decay < 0 or self.patience < 0 or self.num_workers < 0 or self.early_stop < 0:
            raise SmallmedError("weight_decay, patience, early_stop and num_workers must not be negative.")
        from .metrics.clinical import parse_rule

        parse_rule(self.operating_point)
        check_choice("calibrate", self.calibrate, ("none", "temperature"))
        check_choice("fit", self.fit, ("resize", "pad"))
        if not 0 <= self.label_smoothing < 1:
            raise SmallmedError(f"label_smoothing={self.label_smoothing}: expected a value in [0, 1).")
        for name in ("mixup", "cutmix"):
            v = getattr(self, name)
            if not (v == 0 or 0 < v < float("inf")):
                raise SmallmedError(f"{name}={v}: expected 0 (off) or a positive Beta parameter.")
        if not (self.ema == 0 or 0 < self.ema < 1):
            raise SmallmedError(f"ema={self.ema}: expected 0 (off) or a decay in (0, 1).")
        if not 0 <= self.warmup_epochs < self.epochs or (self.warmup_epochs and self.scheduler != "cosine"):
            raise SmallmedError(
                f"warmup_epochs={self.warmup_epochs}: expected 0..epochs-1 ({self.epochs - 1}), with "
                "scheduler='cosine' (the warmup leads into it)."
            )
        check_choice("select_epoch", self.select_epoch, ("val_loss", "last"))
        check_choice("holdout", self.holdout, ("test", "val"))
        for name in self.log:
            check_choice("log", name, ("tensorboard", "mlflow"))
        if self.mlflow_uri and "mlflow" not in self.log:
            raise SmallmedError(f"mlflow_uri={self.mlflow_uri!r} has no effect without log mlflow (--log mlflow).")
        if self.cv_folds == 1 or not 0 <= self.cv_folds <= 100:
            raise SmallmedError(f"cv_folds={self.cv_folds}: expected 0 (the split as given) or 2..100 folds.")
        if self.cv_fold and not self.cv_folds:
            raise SmallmedError(
                f"cv_fold={self.cv_fold} has no effect with cv_folds=0; it applies with cv_folds 2 or more."
            )
        if self.cv_folds and not 0 <= self.cv_fold < self.cv_folds:
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
        if "warmup_epochs" in unset and (self.scheduler != "cosine" or self.warmup_epochs >= self.epochs):
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
        d["betas"], d["fprs"], d["svd_train"] = list(self.betas), list(self.fprs), list(self.svd_train)
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

_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def _coerce(name: str, value, hint):
    """``value`` as the field's type, or a SmallmedError naming the key (YAML reads ``1e-3`` as a string)."""
    import types
    import typing

    optional = type(None) in typing.get_args(hint)
    if value is None:
        if optional:
            return None
        raise SmallmedError(f"{name}=None: expected a value ({getattr(hint, '__name__', hint)}).")
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) and args else hint
    origin = typing.get_origin(base)
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
                return value.strip().lower() in _TRUE
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError
        if base is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str):
                f = float(value)
                if not f.is_integer():
                    raise ValueError
                return int(f)
            if isinstance(value, int):
                return value
            raise ValueError
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base is str:
            if isinstance(value, (dict, list, tuple)):
                raise ValueError
            return str(value)
        if origin is tuple:
            items = value if isinstance(value, (list, tuple)) else [value]
            inner = [a for a in typing.get_args(base) if a is not Ellipsis]
            kind = inner[0] if inner else str
            return tuple(_coerce(name, v, kind) for v in items)
    except (TypeError, ValueError, OverflowError):
        kind = getattr(base, "__name__", str(base))
        raise SmallmedError(f"{name}={value!r}: expected {'a' if kind != 'int' else 'an'} {kind}.") from None
    return value


def _coerce_fields(cfg) -> None:
    import typing

    hints = typing.get_type_hints(type(cfg))
    for f in fields(cfg):
        if f.name in ("extra",):
            continue
        setattr(cfg, f.name, _coerce(f.name, getattr(cfg, f.name), hints[f.name]))
    seed = getattr(cfg, "seed", 0)
    if not 0 <= seed < 2**32:
        raise SmallmedError(f"seed={seed}: expected an integer in [0, 2**32).")


# value ranges beside nothing else: (low, high, low open, high open); every one also finite
RANGES = {
    "lr": (0, math.inf, True, True),
    "momentum": (0, 1, False, True),
    "weight_decay": (0, 10, False, False),
    "factor": (0, 1, True, True),
    "patience": (0, 1000, False, False),
    "early_stop": (0, 1000, False, False),
    "step_size": (1, 10**6, False, False),
    "lora_rank": (1, 4096, False, False),
}

# a setting that changes nothing unless another has one of these values: (that setting, its values)
APPLIES = {
    "momentum": ("optimizer", ("sgd",)),
    "patience": ("scheduler", ("plateau",)),
    "factor": ("scheduler", ("plateau", "step")),
    "step_size": ("scheduler", ("step",)),
    "rank_ratio": ("conv", ("sfconv", "fconv", "fconvsn")),
}


def applies() -> dict[str, tuple[str, tuple]]:
    """:data:`APPLIES` and, for each config field some fine-tuning method reads (``lora_rank``, ``prune``), the
    methods that read it: declared by the methods themselves (``Method.uses``)."""
    from .methods import method_fields

    return {**APPLIES, **{name: ("method", users) for name, users in method_fields().items()}}


def _check_ranges(cfg) -> None:
    import math

    for name, (lo, hi, lo_open, hi_open) in RANGES.items():
        v = getattr(cfg, name)
        if v is None:
            continue
        bad = not math.isfinite(v) or v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi)
        if bad:
            lb, hb = "(" if lo_open else "[", ")" if hi_open else "]"
            raise SmallmedError(f"{name}={v}: expected a finite value in {lb}{lo}, {hi}{hb}.")


def _check_applies(cfg) -> None:
    """Refuse a setting changed from its default where it would change nothing, naming what would make it apply."""
    defaults = {f.name: f.default for f in fields(cfg)}
    for name, (other, values) in applies().items():
        v = getattr(cfg, name)
        if isinstance(v, list):
            v = tuple(v)
        if v not in (None, defaults[name]) and getattr(cfg, other) not in values:
            raise SmallmedError(
                f"{name}={v!r} has no effect with {other}={getattr(cfg, other)!r}; it applies with "
                f"{other} {' or '.join(map(repr, values))}."
            )
    if cfg.rff_layers and not (cfg.rff_epochs or cfg.rff_alternate):
        raise SmallmedError(
            "rff_layers has no effect without rff_epochs or rff_alternate (the epochs that freeze them)."
        )


def _positive(cfg, *names: str) -> None:
    for n in names:
        v = getattr(cfg, n)
        if not v > 0:
            raise SmallmedError(f"{n}={v}: expected a positive value.")


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise SmallmedError(f"{path}: config file not found.")
    try:
        d = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise SmallmedError(f"{path}: not valid YAML ({e}).") from None
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
