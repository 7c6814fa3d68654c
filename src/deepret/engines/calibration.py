"""int8 calibration inputs built with deepret's own preprocessing (decode, resize, normalise)."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from deepret.errors import DeepretError
from deepret.imageio import PHOTO_SUFFIXES, ImageError, image_size, open_rgb, target_shape, to_tensor
from deepret.models import RetrievalNet


def calibration_photos(source: str | Path) -> list[Path]:
    """The photos of a folder (recursively, sorted), of a `.txt` list (one path a line, relative to the
    list's folder or absolute: e.g. an index's sample of its collection) or the one photo `source` names."""
    source = Path(source)
    if source.is_file() and source.suffix.lower() == ".txt":
        photos = [source.parent / os.fsdecode(line) for line in source.read_bytes().splitlines() if line.strip()]
        if not photos:
            raise DeepretError(f"calibration list {source} names no photos: list photos that are not evaluated")
        return photos
    if source.is_file():
        return [source]
    photos = sorted(p for p in source.rglob("*") if p.suffix.lower() in PHOTO_SUFFIXES) if source.is_dir() else []
    if not photos:
        raise DeepretError(f"calibration {source}: no photos there: give a folder of photos that are not evaluated")
    return photos


def calibration_tensors(net: RetrievalNet, items: Sequence[str | Path | torch.Tensor],
                        size: int | None = None, round_to: int = 32) -> list[torch.Tensor]:
    """One (1, 3, H, W) float32 batch per item: tensors as given (a batch split in images), paths (a
    folder: its photos) decoded and resized as extraction does, to `size` (default the net's)."""
    side = size or net.default_size
    mean, std = net.meta["input"]["mean"], net.meta["input"]["std"]
    out: list[torch.Tensor] = []
    for item in items:
        if torch.is_tensor(item):
            out.extend(x.unsqueeze(0).float().cpu() for x in (item if item.dim() == 4 else item.unsqueeze(0)))
            continue
        for path in calibration_photos(item):
            try:
                w, h = image_size(path)
                shape = (net.input_size,) * 2 if net.input_size else target_shape(w, h, side, round_to)
                out.append(to_tensor(open_rgb(path, draft_to=shape[::-1]), shape, mean, std).unsqueeze(0))
            except ImageError as exc:
                raise DeepretError(f"calibration photo {path}: {exc.reason}: replace or remove it") from None
    return out


def write_calibration_sample(list_path: Path, root: Path, photos: Sequence[str], n: int = 64) -> Path:
    """Write (once: kept if it exists) a `.txt` list of `n` of `photos` (paths relative to `root`),
    evenly spaced over their sorted order so that every part of a collection is sampled. Names are
    written as the file system's bytes (a name that is not UTF-8 reads back as the same file); a name
    holding a line break cannot be listed and is left out of the sample."""
    from deepret.fileio import atomic_write_bytes

    if not list_path.is_file():
        photos = sorted(p for p in photos if "\n" not in p and "\r" not in p)
        step = max(len(photos) / n, 1.0)
        chosen = [photos[int(i * step)] for i in range(min(n, len(photos)))]
        if not chosen:
            raise DeepretError(f"no photos under {root} to calibrate int8 on: add photos or give --calibration")
        atomic_write_bytes(list_path, b"".join(os.fsencode(root / p) + b"\n" for p in chosen))
    return list_path
