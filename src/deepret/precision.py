"""Numeric precision of the forward pass: fp32, or bf16/fp16 autocast with channels-last tensors.

`auto` picks, per backbone and device, the fastest precision that kept oxford5k-mini mAP within
0.3 points of fp32 (REDUCED_OK below). On a CPU bf16 only pays where the hardware has bf16
instructions (AVX512-BF16 or AMX); elsewhere it is slower than fp32, so `auto` stays fp32 there.
GeM's power and the L2 normalisation run in fp32 whatever the precision (RetrievalNet.pool_map).
"""
from __future__ import annotations

import functools
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

from deepret.errors import DeepretError

if TYPE_CHECKING:
    import torch
    from torch import nn

# torch is imported by the functions that use it: the names and parse_precision (the CLI's
# --precision type) load without it
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "int8")  # int8: the openvino engine only (deepret.engines)
ENGINES = ("auto", "torch", "openvino")  # auto: openvino on the CPU, torch on CUDA
DTYPES = {"bf16": "bfloat16", "fp16": "float16"}  # torch dtypes by name

# Reduced precisions that keep oxford5k-mini mAP within 0.3 points of fp32, per backbone (in the
# order `auto` prefers them). Measured with bench/precision_table.py at each network's evaluation
# size; table, commands and the rparis6k-mini columns in docs/benchmarks.md ("Precision"):
# EfficientNet-Lite with real weights, fp32/bf16/fp16 (Lite2's bf16 lost 0.32); AlexNet and
# ResNet18/34/50 with random weights (no ImageNet weights offline), fp32/bf16 only. Backbones not
# measured (ResNet101/152, VGG16, any other timm model) stay fp32 under `auto`.
REDUCED_OK: dict[str, tuple[str, ...]] = {
    "efficientnet_lite0": ("bf16", "fp16"),
    "efficientnet_lite1": ("bf16", "fp16"),
    "efficientnet_lite2": ("fp16",),
    "alexnet": ("bf16",),
    "resnet18": ("bf16",),
    "resnet34": ("bf16",),
    "resnet50": ("bf16",),
}
MAP_TOLERANCE = 0.3  # mAP points from fp32 that `auto` accepts


def parse_precision(text: str) -> str:
    """Check a --precision value: auto, fp32, bf16, fp16 or int8 (case-insensitive)."""
    value = str(text).strip().lower()
    if value not in PRECISIONS:
        raise DeepretError(f"precision {text!r} is unknown: use one of {', '.join(PRECISIONS)}")
    return value


def parse_engine(text: str) -> str:
    """Check an --engine value: auto, torch or openvino (case-insensitive)."""
    value = str(text).strip().lower()
    if value not in ENGINES:
        raise DeepretError(f"engine {text!r} is unknown: use one of {', '.join(ENGINES)}")
    return value


def resolve_engine(requested: str, device: torch.device | str, precision: str = "auto") -> str:
    """The concrete engine of `requested` on `device` for the requested `precision`: auto ->
    openvino on the CPU (where it is installed) for auto, fp32 and int8, torch elsewhere (bf16/fp16
    asked for: torch's autocast, what REDUCED_OK measured); openvino off the CPU is an error."""
    import torch

    requested, device = parse_engine(requested), torch.device(device)
    if requested == "auto":
        ov = device.type == "cpu" and openvino_available() and parse_precision(precision) in ("auto", "fp32", "int8")
        return "openvino" if ov else "torch"
    if requested == "openvino":
        if device.type != "cpu":
            raise DeepretError(f"--engine openvino runs on the CPU, not {device.type}: use --engine torch there")
        if not openvino_available():
            raise DeepretError("--engine openvino: the openvino package is not installed: pip install openvino nncf")
    return requested


@functools.cache
def openvino_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("openvino") is not None


@functools.cache
def _cpuinfo(*keys: str) -> str | None:
    """The value of the first /proc/cpuinfo line starting with one of `keys` (None where there is none,
    e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(keys):
            return line.split(":", 1)[1].strip()
    return None


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    return frozenset((_cpuinfo("flags", "Features") or "").split())


def cpu_description() -> str:
    """This CPU's model name and its vector units that decide speed, e.g. 'AMD EPYC (avx2, avx512f,
    avx512_bf16)': what a speed figure names as its machine."""
    import platform

    name = _cpuinfo("model name") or platform.processor() or platform.machine()
    units = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in cpu_flags()]
    return f"{name} ({', '.join(units)})" if units else name


def cpu_has_fast(precision: str) -> bool:
    """Whether this CPU computes `precision` in hardware (bf16: AVX512-BF16/AMX-BF16; fp16:
    AVX512-FP16/AMX-FP16) and oneDNN can use it; fp32 always."""
    import torch

    if precision == "fp32":
        return True
    wanted = {"bf16": ("avx512_bf16", "amx_bf16"), "fp16": ("avx512_fp16", "amx_fp16")}[precision]
    if not torch.backends.mkldnn.is_available() or not any(f in cpu_flags() for f in wanted):
        return False
    check = {"bf16": "_is_mkldnn_bf16_supported", "fp16": "_is_mkldnn_fp16_supported"}[precision]
    probe = getattr(torch.ops.mkldnn, check, None)
    return bool(probe()) if probe is not None else True


def resolve_precision(requested: str, backbone: str | None, device: torch.device | str,
                      engine: str = "torch") -> str:
    """The concrete precision (fp32, bf16, fp16, int8) of `requested` for `backbone` on `device`
    with the concrete `engine`. int8 needs openvino; under openvino `auto` is fp32 (REDUCED_OK was
    measured with torch's autocast, and int8 needs calibration photos)."""
    import torch

    requested, device = parse_precision(requested), torch.device(device)
    if requested == "int8" and engine != "openvino":
        raise DeepretError("--precision int8 runs only on the openvino engine (CPU): use --engine openvino, "
                           "or fp32/bf16/fp16 with torch")
    if engine == "openvino":
        return "fp32" if requested == "auto" else requested
    if requested == "auto":
        ok = REDUCED_OK.get(backbone or "", ())
        # on the CPU only bf16: fp16 autocast was slower than fp32 there (docs/benchmarks.md)
        order = {"cuda": ("fp16", "bf16"), "cpu": ("bf16",)}.get(device.type, ())
        usable = [p for p in order if p in ok and runs_fast(p, device)]
        return usable[0] if usable else "fp32"
    if device.type not in ("cpu", "cuda") and requested != "fp32":
        raise DeepretError(f"--precision {requested} needs a CPU or CUDA device, not {device.type}: use fp32")
    if device.type == "cuda" and requested == "bf16" and not torch.cuda.is_bf16_supported():
        raise DeepretError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no bf16: use fp16 or fp32")
    return requested


def runs_fast(precision: str, device: torch.device | str) -> bool:
    """Whether `precision` runs at hardware speed on `device` (fp32 always; elsewhere it is emulated)."""
    import torch

    device = torch.device(device)
    if precision == "fp32":
        return True
    if precision == "int8":  # OpenVINO's int8 kernels (AVX2 and up)
        return device.type == "cpu"
    if device.type == "cuda":
        return precision == "fp16" or torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_fast(precision)


def interchangeable(a: str, b: str, backbone: str | None) -> bool:
    """Whether descriptors made in precisions `a` and `b` may share an index: the same, or both within
    MAP_TOLERANCE of fp32 for `backbone` (REDUCED_OK)."""
    accepted = {"fp32", *REDUCED_OK.get(backbone or "", ())}
    return a == b or (a in accepted and b in accepted)


def portable_precision(stored: str, backbone: str | None, device: torch.device | str) -> str:
    """The precision in which to describe more images (queries, updates) for descriptors stored in
    `stored`, on `device`: `stored` where it runs fast there; else what `auto` means there, when the
    two are interchangeable (a bf16 index from an AMX machine queried on an AVX2 one gets fp32);
    else `stored`, slow but the same numbers."""
    if runs_fast(stored, device):
        return stored
    here = resolve_precision("auto", backbone, device)
    return here if interchangeable(here, stored, backbone) else stored


def autocast(device: torch.device | str, precision: str) -> AbstractContextManager:
    """The autocast region of a concrete precision (nothing for fp32)."""
    import torch

    if precision == "fp32":
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=getattr(torch, DTYPES[precision]))


def prepare_model(net: nn.Module, device: torch.device | str, precision: str) -> nn.Module:
    """Move `net` to `device`; reduced precisions also get channels-last weights (and cuDNN's
    autotuner on CUDA). fp32 gets (back) the contiguous layout, so its results are the plain ones."""
    import torch

    device = torch.device(device)
    if precision == "fp32":
        return net.to(device, memory_format=torch.contiguous_format)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return net.to(device, memory_format=torch.channels_last)


def prepare_input(x: torch.Tensor, precision: str) -> torch.Tensor:
    """An image batch in the layout the network was prepared for."""
    import torch

    if precision != "fp32" and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x
