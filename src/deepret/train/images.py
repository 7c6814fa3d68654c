"""Training images as tensors: corrupt files are skipped and reported, not fatal."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset

from deepret.errors import DeepretError
from deepret.imageio import open_rgb


class TrainImages(Dataset):
    """Item i -> (i, transformed image) or (i, error message) when the file cannot be decoded."""

    def __init__(self, paths: Sequence, transform: Callable) -> None:
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, self.transform(open_rgb(self.paths[i]))
        except DeepretError as exc:
            return i, str(exc)


def collate_skipping(items) -> tuple[list[int], torch.Tensor | None, list[str]]:
    """Stack the decodable images; return (their indices, batch or None, errors of the others)."""
    good = [(i, x) for i, x in items if not isinstance(x, str)]
    errors = [x for _, x in items if isinstance(x, str)]
    batch = torch.stack([x for _, x in good]) if good else None
    return [i for i, _ in good], batch, errors
