"""The torch engine: the network itself, eager, in the precision's autocast (deepret.precision)."""
from __future__ import annotations

import torch

from deepret.models import RetrievalNet
from deepret.precision import autocast, prepare_input, prepare_model


class TorchEngine:
    """`net` on `device` in `precision` (fp32, or bf16/fp16 autocast with channels-last tensors)."""

    name = "torch"

    def __init__(self, net: RetrievalNet, device: torch.device, precision: str) -> None:
        self.net, self.device, self.precision = prepare_model(net, device, precision).eval(), device, precision

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with autocast(self.device, self.precision):
            return self.net(prepare_input(x, self.precision)).float()
