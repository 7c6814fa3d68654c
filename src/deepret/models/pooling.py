"""Global pooling of a feature map: functional ops (mac, spoc, gem) and their modules.

The functional forms take a (B, C, H, W) tensor and return (B, C); the modules hold the GeM
exponent p, fixed or learnable, one scalar or one per channel (as in cirtorch).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def mac(x: torch.Tensor) -> torch.Tensor:
    """Maximum activation of convolutions: the spatial max of each channel."""
    return x.amax(dim=(-2, -1))


def spoc(x: torch.Tensor) -> torch.Tensor:
    """Sum-pooled convolutional features (the spatial mean; L2 normalisation follows anyway)."""
    return x.mean(dim=(-2, -1))


def gem(x: torch.Tensor, p: torch.Tensor | float = 3.0, eps: float = 1e-6) -> torch.Tensor:
    """Generalised mean: (mean(clamp(x, eps) ** p)) ** (1 / p) per channel; p scalar or (C,)."""
    if not torch.is_tensor(p):
        p = torch.tensor(float(p), dtype=x.dtype, device=x.device)
    p_map = p.view(1, -1, 1, 1) if p.numel() > 1 else p
    pooled = x.clamp(min=eps).pow(p_map).mean(dim=(-2, -1))
    return pooled.pow(1.0 / p.view(1, -1) if p.numel() > 1 else 1.0 / p)


class MAC(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mac(x)


class SPoC(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return spoc(x)


class GeM(nn.Module):
    """GeM pooling; `learn_p` makes p a parameter, `per_channel` gives each of `channels` its own p."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learn_p: bool = False,
                 per_channel: bool = False, channels: int | None = None) -> None:
        super().__init__()
        if per_channel and not channels:
            raise ValueError("GeM(per_channel=True) needs the number of channels")
        shape = (channels,) if per_channel else (1,)
        p_init = torch.full(shape, float(p))
        if learn_p:
            self.p = nn.Parameter(p_init)
        else:
            self.register_buffer("p", p_init)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gem(x, self.p, self.eps)

    def extra_repr(self) -> str:
        p = self.p.detach()
        shown = f"{p.item():.4f}" if p.numel() == 1 else f"per-channel mean {p.mean().item():.4f}"
        return f"p={shown}, eps={self.eps}"


POOLINGS = {"mac": MAC, "spoc": SPoC, "gem": GeM}


def l2n(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """L2-normalise each row."""
    return F.normalize(x, p=2, dim=-1, eps=eps)
