"""``smallmed rf``, ``cost``, ``explain``, ``models`` and ``env``: looking at models and runs."""

from __future__ import annotations

import json
import logging

from .. import __version__
from ..errors import SmallmedError
from ._common import at_least, at_most

log = logging.getLogger("smallmed")


def add(sub) -> None:
    """The inspection commands."""
    rf = sub.add_parser("rf", help="receptive field of every conv/pool layer (any smallmed or torchvision model)")
    rf.add_argument("model")
    rf.add_argument("--input", type=int, default=224, help="input side in pixels")
    rf.add_argument("--channels", type=int, default=3)
    rf.add_argument("--stem", default="auto", help="smallmed models: auto (small below 64 px), small or imagenet")
    rf.add_argument("--json", action="store_true", help="rows as JSON instead of a table")
    rf.set_defaults(func=cmd_rf)

    co = sub.add_parser("cost", help="params, GMACs and speed of a model with cheap convs vs plain convs")
    co.add_argument("model")
    co.add_argument("--conv", default="sfconv", help="conv | sfconv | fconv | fconvsn | dpc")
    co.add_argument("--rank-ratio", type=float, help="sfconv, fconv, fconvsn: rank = ratio x full rank (default 0.125)")
    co.add_argument("--input", type=int, default=224)
    co.add_argument("--channels", type=int, default=3)
    co.add_argument("--batch", type=int, default=8)
    co.set_defaults(func=cmd_cost)

    ex = sub.add_parser("explain", help="occlusion sensitivity maps of a trained run (PNG overlays)")
    ex.add_argument("run_dir")
    ex.add_argument("images", nargs="*", help="image files (default: --n images of the run's --split)")
    ex.add_argument("--split", help="without images: the split to draw them from (default: test)")
    ex.add_argument("--n", type=int, help="without images: how many (default: 4)")
    ex.add_argument("--patch", type=int, help="occluding square in pixels (default: image side / 8)")
    ex.add_argument("--stride", type=int, help="default: patch / 2")
    ex.add_argument("--out", help="default: RUN_DIR/explain")
    ex.set_defaults(func=cmd_explain)

    sub.add_parser("models", help="list registered models").set_defaults(func=cmd_models)
    sub.add_parser("env", help="versions, for bug reports").set_defaults(func=cmd_env)


def _any_model(name: str, size: int, channels: int, stem: str = "auto", num_classes: int = 2):
    """A smallmed model, or any torchvision classification model by name (random init)."""
    import difflib

    import torchvision

    from ..models import MODELS, create_model

    if name in MODELS:
        return create_model(name, num_classes, in_chans=channels, input_size=size, stem=stem)
    tv = torchvision.models.list_models(module=torchvision.models)
    if name in tv:
        return torchvision.models.get_model(name, weights=None)
    close = difflib.get_close_matches(name, sorted({*MODELS, *tv}), n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise SmallmedError(
        f"Unknown model {name!r}.{hint} Expected a smallmed model ({', '.join(MODELS)}) "
        "or a torchvision classification model name."
    )


def cmd_rf(a) -> int:

    from ..analysis.receptive_field import format_table, receptive_field

    at_least(a, input=1, channels=1)
    at_most(a, input=4096, channels=64)
    rows = receptive_field(_any_model(a.model, a.input, a.channels, a.stem), (a.channels, a.input, a.input))
    if a.json:
        print(json.dumps([r.as_dict() for r in rows], indent=1))
    else:
        print(format_table(rows))
        last = rows[-1]
        print(
            f"\n{a.model} at {a.input} px: receptive field {last.r[0]:g} px, effective stride {last.S[0]:g}, "
            f"effective padding {last.P[0]:g} at {last.name}"
            + ("" if all(r.aligned for r in rows) else "; MISALIGNED merges: see the 'aligned' column")
        )
    return 0


def cmd_cost(a) -> int:
    import copy

    from ..analysis.cost import cost
    from ..reparam.factorized import factorize

    at_least(a, input=1, channels=1, batch=1)
    at_most(a, input=4096, channels=64, batch=4096)
    if a.rank_ratio is not None and a.conv not in ("sfconv", "fconv", "fconvsn"):
        raise SmallmedError(f"--rank-ratio {a.rank_ratio} has no effect with --conv {a.conv}; it applies with "
                            "--conv sfconv, fconv or fconvsn.")  # fmt: skip
    rank_ratio = 0.125 if a.rank_ratio is None else a.rank_ratio
    plain = _any_model(a.model, a.input, a.channels)
    model = copy.deepcopy(plain)
    if a.conv != "conv":
        print(factorize(model, a.conv, rank_ratio=rank_ratio if a.conv != "dpc" else None))
    c = cost(model, (a.channels, a.input, a.input), baseline=plain, batch=a.batch)
    b = c["baseline"]
    print(f"{'':<10} {'params':>12} {'GMACs':>9} {'images/s':>10}")
    print(f"{'conv':<10} {b['params']:>12,} {b['gmacs']:>9.3f} {b['images_per_s']:>10.1f}")
    print(f"{a.conv:<10} {c['params']:>12,} {c['gmacs']:>9.3f} {c['images_per_s']:>10.1f}")
    print(
        f"ratio: params {c['param_ratio']:.3f}x, speed {c['speed_ratio']:.2f}x (eval, batch {a.batch}, same process; "
        "FLOPs = 2 x MACs)"
    )
    return 0


def cmd_explain(a) -> int:
    from ..explain import explain_run

    at_least(a, n=1, patch=1, stride=1)
    if a.images and (a.n is not None or a.split is not None):
        raise SmallmedError("--n and --split choose images from the run's data; with image files given they have no "
                            "effect: drop them, or drop the files.")  # fmt: skip
    if a.out:
        from ..io import check_out_dir

        check_out_dir(a.out)
    written = explain_run(
        a.run_dir, a.images, split=a.split or "test", n=a.n or 4, patch=a.patch, stride=a.stride, out=a.out
    )
    for path in written:
        print(path)
    return 0


def cmd_models(a) -> int:
    from ..models import MODELS

    for name in MODELS.names():
        e = MODELS.get(name)
        extra = f"  weights: {', '.join(e.pretrained)}" if e.pretrained else ""
        print(f"{name:<20} norm: {'|'.join(e.norms):<8} {e.description}{extra}")
    return 0


def cmd_env(a) -> int:
    import platform

    import numpy
    import torch
    import torchvision

    info = {
        "smallmed": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "cuda": torch.cuda.is_available(),
        "threads": torch.get_num_threads(),
    }
    for mod in ("timm", "sklearn", "pydicom", "ray"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            info[mod] = "not installed"
    for k, v in info.items():
        print(f"{k:<12} {v}")
    return 0
