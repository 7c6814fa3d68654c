"""Learn a whitening for a retrieval network from labelled images and store it in the network."""
from __future__ import annotations

from itertools import combinations

import numpy as np

from deepret.datasets import LabelledImages
from deepret.extract import ExtractSettings, extract, resolve_settings
from deepret.models import RetrievalNet
from deepret.whiten import Whitening, fit_whitening


def matching_pairs(data: LabelledImages) -> tuple[list[int], list[int]]:
    """Every pair of images of the same class, as (query indices, positive indices)."""
    pairs = [pair for ix in data.by_class().values() for pair in combinations(ix, 2)]
    return [a for a, _ in pairs], [b for _, b in pairs]


def learn_whitening(net: RetrievalNet, data: LabelledImages, method: str = "pca", dim: int | None = None,
                    size: int | None = None, shrinkage: float = 0.0, device=None, workers: int | None = None,
                    progress: bool = True, precision: str = "fp32") -> Whitening:
    """Fit PCA-whitening or Lw on the pooled descriptors of `data` and install it in `net`
    (replacing any whitening it had); returns the fitted object. `size` None: the net's default size."""
    net.whiten, net.meta["whitening"] = None, None
    size = resolve_settings(net, ExtractSettings(size=size)).size
    pooled = extract(net, data.paths, settings=ExtractSettings(size=size, precision=precision), device=device,
                     workers=workers, desc="descriptors for whitening", progress=progress).vectors
    pairs = matching_pairs(data) if method == "lw" else None
    whitening = fit_whitening(method, pooled.astype(np.float64), pairs=pairs, dim=dim, shrinkage=shrinkage)
    net.set_whitening(*whitening.as_linear(), method=method)
    net.meta["whitening"].update({"trained_on": data.source, "images": len(data), "size": size})
    return whitening
