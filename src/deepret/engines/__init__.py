"""Compiled networks: a normalised float32 (B, 3, H, W) batch in, what `net(x)` gives out.

`compile_network(net, engine, precision, device)` returns an Engine: "torch" (eager, autocast;
CUDA, training, anything OpenVINO cannot run) or "openvino" (CPU; fp32, or int8 quantized by
NNCF on calibration photos). `auto`: OpenVINO on the CPU, torch on CUDA; where OpenVINO cannot
convert a network, `auto` falls back to torch with a one-line warning.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch

from deepret.errors import DeepretError, DeepretWarning
from deepret.models import RetrievalNet
from deepret.precision import parse_engine, resolve_engine, resolve_precision
from deepret.runtime import default_device


class Engine(Protocol):
    """A compiled network: `engine(x)` on the net's device gives float32 L2-normalised descriptors."""

    name: str       # "torch" or "openvino"
    precision: str  # the concrete precision it runs in (fp32, bf16, fp16, int8)

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


def compile_network(net: RetrievalNet, engine: str = "auto", precision: str = "auto",
                    device: torch.device | str | None = None, cache_dir: str | Path | None = None,
                    calibration: Sequence[str | Path | torch.Tensor] | None = None,
                    calibration_size: int | None = None, calibration_id: str | None = None) -> Engine:
    """`net` compiled for `device` (default: CUDA if any, else the CPU) by `engine` in `precision`.

    `calibration` (int8 only): photos (paths, decoded at `calibration_size`, default the net's
    evaluation size) or preprocessed (3, H, W) / (B, 3, H, W) tensors, NOT the images evaluated;
    `calibration_id` names them in the model cache's key (else a digest of the decoded tensors).
    `cache_dir`: where converted models are kept (default deepret's cache dir, `engines/`)."""
    from deepret.engines.torch_engine import TorchEngine

    device = torch.device(device) if device is not None else default_device()
    requested = parse_engine(engine)
    name = resolve_engine(requested, device, precision)
    resolved = resolve_precision(precision, net.meta.get("backbone"), device, engine=name)
    if name == "torch":
        return TorchEngine(net, device, resolved)
    from deepret.engines.openvino_engine import ConversionError, OpenVINOEngine

    try:
        return OpenVINOEngine(net, resolved, cache_dir=cache_dir, calibration=calibration,
                              calibration_size=calibration_size, calibration_id=calibration_id)
    except ConversionError as exc:
        if requested == "openvino":
            raise DeepretError(f"--engine openvino: {exc}: use --engine torch") from None
        fallback = resolve_precision(precision, net.meta.get("backbone"), device, engine="torch")
        warnings.warn(f"OpenVINO cannot run {net.meta.get('name', 'this network')} ({exc}): using torch ({fallback})",
                      DeepretWarning, stacklevel=2)
        return TorchEngine(net, device, fallback)


__all__ = ["Engine", "compile_network"]
