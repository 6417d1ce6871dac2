"""Adapter sizes per method, and ONNX Runtime vs PyTorch CPU throughput of the folded and the low-rank ResNet-18.

One process, interleaved repeats, medians; ratios against PyTorch on the folded (dense) model measured
in the same run. Threads: OMP_NUM_THREADS for PyTorch, the same count for ONNX Runtime.

Usage: OMP_NUM_THREADS=2 python benchmarks/onnx_throughput.py [--size 64] [--batch 32] [--repeats 15] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from smallmed import create_model
from smallmed.adapters import adapter_state, base_fingerprint, save_adapter
from smallmed.export import onnx_bytes
from smallmed.methods import apply_method
from smallmed.reparam import fold, to_low_rank


def onnx_session(model, x, threads):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(onnx_bytes(model, x), opts, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        diff = float(np.abs(sess.run(None, {"image": x.numpy()})[0] - model(x).numpy()).max())
    return sess, diff


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--out")
    a = ap.parse_args()
    threads = int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads()))
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    lines = [f"# Adapters and ONNX Runtime vs PyTorch (ResNet-18, 1 channel, {a.size} px, batch {a.batch}, "
             f"{threads} CPU threads, torch {torch.__version__})", ""]

    # adapter sizes: what one more task costs beside a shared backbone
    base = create_model("resnet18", 2, in_chans=1, input_size=a.size)
    full_bytes = sum(t.numel() * t.element_size() for t in base.state_dict().values())
    lines += ["| method | trainable params | adapter file | vs the whole model |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for method in ("fc-train", "bitfit", "lora", "full-svd", "full-out-svd", "sp-svd", "sp-svd-9"):
            m = create_model("resnet18", 2, in_chans=1, input_size=a.size)
            h = base_fingerprint(m)
            apply_method(m, method, lora_rank=4)
            settings = {"freeze_bn_stats": method == "fc-train", "svd_train": ["sigma", "head"], "lora_rank": 4}
            n = sum(t.numel() for k, t in adapter_state(m, method, settings).items() if "running" not in k
                    and "num_batches" not in k)
            path = save_adapter(m, Path(tmp) / f"{method}.safetensors", method=method, settings=settings, base_hash=h)
            size = path.stat().st_size
            lines.append(f"| {method}{' (rank 4)' if method == 'lora' else ''} | {n:,} | {size / 1e3:.0f} KB | "
                         f"{size / full_bytes:.2%} |")
    lines += [f"| full | {sum(p.numel() for p in base.parameters()):,} | {full_bytes / 1e6:.1f} MB (the model) | 100% |", ""]

    # throughput: folded dense vs low-rank (90% pruned full-svd), PyTorch vs ONNX Runtime
    svd = create_model("resnet18", 2, in_chans=1, input_size=a.size)
    apply_method(svd, "full-svd-9")
    x = torch.randn(a.batch, 1, a.size, a.size)
    dense = fold(svd).eval()
    low, _ = to_low_rank(svd, x[:8], layers="svd")
    low.eval()
    cands = {"PyTorch, folded": dense, "PyTorch, low-rank": low}
    sessions = {}
    for name, model in (("ONNX Runtime, folded", dense), ("ONNX Runtime, low-rank", low)):
        sessions[name], diff = onnx_session(model, x, threads)
        lines.append(f"{name}: max |ONNX Runtime - PyTorch| = {diff:.1e}")
    lines.append("")
    times = {k: [] for k in [*cands, *sessions]}
    with torch.no_grad():
        for _ in range(3):  # warm-up
            for m in cands.values():
                m(x)
            for s in sessions.values():
                s.run(None, {"image": x.numpy()})
        for _ in range(a.repeats):  # interleaved
            for k, m in cands.items():
                t = time.perf_counter()
                m(x)
                times[k].append(time.perf_counter() - t)
            for k, s in sessions.items():
                t = time.perf_counter()
                s.run(None, {"image": x.numpy()})
                times[k].append(time.perf_counter() - t)
    med = {k: float(np.median(v)) for k, v in times.items()}
    ref = med["PyTorch, folded"]
    params = {"folded": sum(p.numel() for p in dense.parameters()), "low-rank": sum(p.numel() for p in low.parameters())}
    lines += ["| runtime, model | params | images/s (median of %d) | vs PyTorch folded |" % a.repeats, "|---|---|---|---|"]
    for k, v in med.items():
        lines.append(f"| {k} | {params['low-rank' if 'low-rank' in k else 'folded']:,} | {a.batch / v:.0f} | {ref / v:.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        Path(a.out).write_text(text)


if __name__ == "__main__":
    main()
