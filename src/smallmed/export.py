"""Deploy a finished run: a plain PyTorch checkpoint, or ONNX checked against PyTorch with ONNX Runtime.

The run's model is made plain first: SVD parametrizations folded into ordinary weights (or, with
``low_rank=True`` for a pruned run, exported to two thin convs per layer), LoRA merged into its
convs. The ONNX graph takes a batch of any size (``image``: ``[batch, C, H, W]``, normalised as the
run did) and returns ``logits``; the preprocessing and class names travel as ONNX metadata.

``onnx``/``onnxruntime`` are an optional extra: ``pip install 'smallmed[export]'``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import nn

from .errors import SmallmedError
from .io import atomic_write_file
from .methods import get_method

log = logging.getLogger(__name__)
ATOL = 1e-4  # ONNX Runtime vs PyTorch, float32 logits: max absolute difference allowed


def plain_model(run, *, low_rank: bool = False, example: torch.Tensor | None = None) -> nn.Module:
    """The run's model without any reparametrisation (identical outputs), on the CPU in eval mode."""
    from .reparam import to_low_rank

    method = get_method(run.config.method)
    model = run.model.cpu().eval()
    if low_rank:
        if not method.pruned(method.settings(run.config)):
            raise SmallmedError(
                f"--low-rank needs a pruned SVD run (full-svd-9 or --prune); this run used "
                f"method={run.config.method!r}."
            )
        low, _ = to_low_rank(model, example if example is not None else _example(run, 2), layers="svd")
        return low.eval()
    merged = method.merge(model)
    return (merged if merged is not None else model).eval()


def _example(run, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, run.in_chans, run.image_size, run.image_size, generator=g)


def save_folded(run, path: str | Path, *, low_rank: bool = False) -> Path:
    """A plain checkpoint ``{"model": state_dict, "config": ...}`` that ``create_model(weights=path)`` loads."""
    model = plain_model(run, low_rank=low_rank)
    if low_rank:
        raise SmallmedError("--folded writes the dense architecture; a low-rank model is exported with --onnx.")
    payload = {"model": model.state_dict(), "config": run.config.to_dict(), "folded_from": run.config.method}
    atomic_write_file(path, lambda f: torch.save(payload, f))
    return Path(path)


def export_onnx(run, path: str | Path, *, low_rank: bool = False, opset: int = 18, check: bool = True) -> dict:
    """Write the run's plain model to ONNX (dynamic batch) and compare ONNX Runtime's outputs with PyTorch's.

    Returns ``{"path", "max_abs_diff", "atol", "batch_sizes_checked"}``; a difference above
    :data:`ATOL` is an error (nothing is left at ``path``).
    """
    try:
        import onnx  # noqa: F401  (the exporter needs it)
    except ImportError:
        raise SmallmedError("ONNX export needs onnx and onnxruntime: pip install 'smallmed[export]'.") from None
    model = plain_model(run, low_rank=low_rank)
    x = _example(run, 2)
    path = Path(path)
    meta = {
        "smallmed_image_size": str(run.image_size),
        "smallmed_in_chans": str(run.in_chans),
        "smallmed_normalize": str(run.meta.get("normalize")),
        "smallmed_mean": json.dumps(run.meta.get("mean")),
        "smallmed_std": json.dumps(run.meta.get("std")),
        "smallmed_classes": json.dumps(run.class_names),
        "smallmed_task": run.task.kind,
        "smallmed_method": run.config.method,
        "smallmed_low_rank": str(bool(low_rank)),
    }
    result: dict = {}

    def write(f) -> None:
        data = onnx_bytes(model, x, opset=opset, metadata=meta)
        if check:  # checked before anything is written
            result.update(check_onnx(model, data, x.shape[1:]))
        f.write(data)

    atomic_write_file(path, write)
    return {"path": str(path), **result}


def onnx_bytes(model: nn.Module, example: torch.Tensor, *, opset: int = 18, metadata: dict | None = None) -> bytes:
    """``model`` as a serialised ONNX graph (input ``image`` with a dynamic batch, output ``logits``)."""
    import contextlib
    import io

    batch = torch.export.Dim("batch", min=1)
    logging.getLogger("onnxscript").setLevel(logging.WARNING)  # its optimiser logs every pass at INFO
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):  # and torch.onnx prints its steps
        prog = torch.onnx.export(
            model,
            (example,),
            None,
            input_names=["image"],
            output_names=["logits"],
            dynamo=True,
            dynamic_shapes=({0: batch},),
            opset_version=opset,
            verbose=False,
        )
    # dynamo=True always returns the ONNXProgram; torch's stub allows None (the TorchScript exporter's result)
    proto = cast("torch.onnx.ONNXProgram", prog).model_proto
    for k, v in (metadata or {}).items():
        proto.metadata_props.add(key=k, value=v)
    return proto.SerializeToString()


def check_onnx(model: nn.Module, onnx_path: str | Path | bytes, shape, batch_sizes=(1, 5)) -> dict:
    """Run ``onnx_path`` (a file or the serialised model) in ONNX Runtime and PyTorch on the same random batches; raise above :data:`ATOL`."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise SmallmedError("checking an ONNX export needs onnxruntime: pip install 'smallmed[export]'.") from None
    src = onnx_path if isinstance(onnx_path, bytes) else str(onnx_path)
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    worst = 0.0
    g = torch.Generator().manual_seed(1)
    for b in batch_sizes:
        xb = torch.randn(b, *shape, generator=g)
        with torch.no_grad():
            ref = model(xb).numpy()
        got = sess.run(None, {"image": xb.numpy()})[0]
        worst = max(worst, float(np.abs(got - ref).max()))
    if worst > ATOL:
        raise SmallmedError(f"ONNX Runtime's outputs differ from PyTorch's by {worst:.2e} (> {ATOL:g}); not exported.")
    return {"max_abs_diff": worst, "atol": ATOL, "batch_sizes_checked": list(batch_sizes)}


__all__ = ["ATOL", "check_onnx", "export_onnx", "onnx_bytes", "plain_model", "save_folded"]
