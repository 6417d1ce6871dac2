"""Training-step time of SVD methods vs full fine-tuning, and the low-rank export's speed.

Same process, interleaved repeats, medians; CPU threads as set by OMP_NUM_THREADS.
Usage: python benchmarks/svd_step_time.py [--size 64] [--batch 16] [--repeats 15]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch

from smallmed import create_model
from smallmed.methods import apply_method
from smallmed.reparam import to_low_rank


def step_time(model, x, y, repeats):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    times = []
    for i in range(repeats + 3):
        t = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 3:
            times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=15)
    a = ap.parse_args()
    torch.manual_seed(0)
    base = create_model(a.model, 2, in_chans=1, input_size=a.size)
    x, y = torch.randn(a.batch, 1, a.size, a.size), torch.randint(0, 2, (a.batch,))
    models = {}
    for method in ("full", "fc-train", "full-svd", "sp-svd", "sp-svd-9", "full-svd-9"):
        m = copy.deepcopy(base)
        apply_method(m, method)
        models[method] = m
    times = {k: [] for k in models}
    for _ in range(3):  # interleave so machine noise hits every method alike
        for k, m in models.items():
            times[k].append(step_time(m, x, y, a.repeats))
    med = {k: sorted(v)[1] for k, v in times.items()}
    print(f"{a.model} {a.size}px batch {a.batch}, {torch.get_num_threads()} threads; train step median")
    print("| method | s/step | ratio to full |\n|---|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:.4f} | {v / med['full']:.2f} |")
    ex = torch.randn(32, 1, a.size, a.size)
    _, rep = to_low_rank(models["full-svd-9"].eval(), ex)
    print(f"\nlow-rank export of full-svd-9 (eval, batch 32): {rep}")


if __name__ == "__main__":
    main()
