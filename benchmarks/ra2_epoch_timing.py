"""Time per training epoch of the RA2 knee recipes, for planning the study's presets.

    python benchmarks/ra2_epoch_timing.py SIZE MODEL [THREADS]

Runs 31 training batches of 32 knees (the seed's augmentation and sampling, regression head) and
prints images per second and the implied time of one sampled epoch (7,580 knees). A benchmark,
not a test: one measurement, on whatever else the machine is doing.
"""

from __future__ import annotations

import sys
import time

import torch

from smallmed.config import TrainConfig
from smallmed.train.setup import prepare

EPOCH = 7580  # knees per epoch under the seed's sampling (the most frequent grade undersampled, the rest oversampled)


def main(size: int, model: str, threads: int = 2, batches: int = 31) -> None:
    torch.set_num_threads(threads)
    cfg = TrainConfig(data="knee_oa_kl_96.npz", model=model, task="regression", image_size=size, batch_size=32,
                      normalize="sample", augment="scale=0.9-1.1,translate=0.1,rotate=30", balance="sampling",
                      progress=False, epochs=1)
    setup = prepare(cfg)
    net = setup.built.model.train()
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    t, n = time.time(), 0
    for i, (x, y) in enumerate(setup.loader("train", train=True)):
        loss = setup.task.loss(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        n += len(x)
        if i + 1 == batches:
            break
    rate = n / (time.time() - t)
    print(model, size, "img/s", rate, f"epoch({EPOCH}) s", EPOCH / rate)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], *(int(a) for a in sys.argv[3:4]))
