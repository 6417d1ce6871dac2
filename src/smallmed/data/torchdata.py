"""PyTorch ``Dataset`` views over a :class:`Split`."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from .dataset import Split


class ArrayDataset(Dataset):
    """Yields ``(image, target)``: the transformed image and an int64 class or float32 label vector."""

    def __init__(self, split: Split, transform=None) -> None:
        self.split = split
        self.transform = transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        img = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(self.split.images[i])).permute(2, 0, 1))
        if self.transform is not None:
            img = self.transform(img)
        y = self.split.labels[i]
        # class index -> int64; multi-label vector or regression score -> float32
        floating = np.ndim(y) or np.issubdtype(np.asarray(y).dtype, np.floating)
        target = torch.as_tensor(y, dtype=torch.float32 if floating else torch.int64)
        return img.as_subclass(torch.Tensor), target
