"""Ranking losses on L2-normalised descriptors of tuples (query, positive, negative_1..n)."""
from __future__ import annotations

import torch

from deepret.train.config import DEFAULT_MARGINS  # noqa: F401 (re-exported: the margins without torch)


def _split(tuples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(T, 2 + n, D) -> query (T, D), positive (T, D), negatives (T, n, D)."""
    return tuples[:, 0], tuples[:, 1], tuples[:, 2:]


def triplet_loss(tuples: torch.Tensor, margin: float = 0.1) -> torch.Tensor:
    """Mean over tuples of sum_k max(0, |q - p|^2 - |q - n_k|^2 + margin)."""
    q, p, n = _split(tuples)
    d_pos = (q - p).pow(2).sum(-1, keepdim=True)
    d_neg = (q.unsqueeze(1) - n).pow(2).sum(-1)
    return (d_pos - d_neg + margin).clamp(min=0).sum(-1).mean()


def contrastive_loss(tuples: torch.Tensor, margin: float = 0.7) -> torch.Tensor:
    """Mean over tuples of 1/2 |q - p|^2 + sum_k 1/2 max(0, margin - |q - n_k|)^2 (Radenović et al.)."""
    q, p, n = _split(tuples)
    d_pos = (q - p).pow(2).sum(-1)
    d_neg = (q.unsqueeze(1) - n).norm(dim=-1)
    return (0.5 * d_pos + 0.5 * (margin - d_neg).clamp(min=0).pow(2).sum(-1)).mean()


LOSSES = {"triplet": triplet_loss, "contrastive": contrastive_loss}
