"""The OpenVINO engine (CPU): the trunk converted to OpenVINO, the head (pooling, whitening, L2
normalisation) run by torch in float32 after it, so GeM's power never leaves fp32.

The converted trunk (dynamic batch, height and width; fc7 nets at their fixed input) is kept under
`<cache>/engines/` keyed by the network's fingerprint, the OpenVINO version, the weights' precision
(fp32, or int8 with the calibration set's digest), written atomically (a folder renamed into
place), and read back by the next process instead of converting again. The inference precision is
always set explicitly: OpenVINO's default on AVX512-BF16/AMX CPUs would be bf16.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from deepret.engines.calibration import calibration_tensors
from deepret.errors import DeepretError
from deepret.fileio import fsync_dir
from deepret.models import RetrievalNet, l2n, model_fingerprint

OV_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32"}  # int8: its unquantized ops in f32
COMPILED_KEPT = 4  # compiled models this process keeps (oldest dropped first)
_COMPILED: dict = {}
CONVERSIONS = {"count": 0}  # conversions done by this process (a cached model is read, not converted)


class ConversionError(Exception):
    """OpenVINO cannot convert or compile the network (the reason in one line)."""


def engines_dir(cache_dir: str | Path | None = None) -> Path:
    from deepret.features import default_cache_dir

    return Path(cache_dir) if cache_dir is not None else default_cache_dir() / "engines"


class OpenVINOEngine:
    """`net`'s trunk compiled by OpenVINO for the CPU in `precision` (fp32, bf16, fp16 or int8)."""

    name = "openvino"

    def __init__(self, net: RetrievalNet, precision: str, cache_dir: str | Path | None = None,
                 calibration: Sequence | None = None, calibration_size: int | None = None,
                 calibration_id: str | None = None) -> None:
        import openvino as ov

        self.net, self.precision = net.eval(), precision
        self.net.to("cpu", memory_format=torch.contiguous_format)
        calib = None
        weights = "fp32"
        if precision == "int8":
            if not calibration:
                raise DeepretError("precision int8 needs calibration photos (not the images evaluated): "
                                   "give a folder of them, e.g. ../shared/data/landmarks-mini")
            if calibration_id is not None:  # the photos' identity: decoded only if a conversion is needed
                weights = f"int8-{calibration_id}-{calibration_size}"
            else:
                calib = calibration_tensors(net, calibration, calibration_size)
                digest = hashlib.sha1()
                for x in calib:
                    digest.update(str(tuple(x.shape)).encode())
                    digest.update(x.numpy().tobytes())
                weights = f"int8-{digest.hexdigest()[:16]}"
        key = hashlib.sha1(f"{model_fingerprint(net)}|{ov.__version__}|{weights}|trunk-v1".encode()).hexdigest()[:20]
        self.path = engines_dir(cache_dir) / f"{net.meta.get('name', 'net').replace('/', '_')}-{key}" / "trunk.xml"
        self.from_cache = self.path.is_file()
        if not self.from_cache:
            if precision == "int8" and calib is None:
                calib = calibration_tensors(net, calibration, calibration_size)
            _save_atomically(self._convert(calib), self.path)
        config = {"INFERENCE_PRECISION_HINT": OV_HINTS[precision], "INFERENCE_NUM_THREADS": torch.get_num_threads(),
                  "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
        memo = (str(self.path), *config.values())
        if memo not in _COMPILED:  # compiled once per process (extract() compiles at every call)
            core = ov.Core()
            try:
                compiled = core.compile_model(core.read_model(self.path), "CPU", config)
            except Exception as exc:  # OpenVINO raises plain RuntimeErrors
                raise ConversionError(f"compiling failed: {_first_line(exc)}") from exc
            while len(_COMPILED) >= COMPILED_KEPT:
                _COMPILED.pop(next(iter(_COMPILED)))
            _COMPILED[memo] = compiled
        self.compiled = _COMPILED[memo]
        reported = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.inference_precision = next((h for h in OV_HINTS.values() if getattr(ov.Type, h) == reported), str(reported))
        if self.inference_precision != OV_HINTS[precision]:  # never another precision silently
            raise DeepretError(f"precision {precision}: this CPU runs OpenVINO in {self.inference_precision} "
                               "instead: use fp32")
        self.request = self.compiled.create_infer_request()

    def _convert(self, calib: list[torch.Tensor] | None):
        import openvino as ov

        CONVERSIONS["count"] += 1
        side = self.net.input_size
        example = torch.zeros(1, 3, side or 224, side or 224)
        shape = (-1, 3, side, side) if side else (-1, 3, -1, -1)
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                model = ov.convert_model(self.net.trunk, example_input=example, input=[shape])
        except Exception as exc:  # the frontends raise many kinds
            raise ConversionError(_conversion_reason(exc)) from exc
        if calib is not None:
            import nncf

            model = nncf.quantize(model, nncf.Dataset([x.numpy() for x in calib]), subset_size=len(calib))
        return model

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.request.infer([np.ascontiguousarray(x.detach().cpu().numpy())], share_inputs=True)
        features = torch.from_numpy(np.array(out[0], dtype=np.float32, copy=True))
        v = l2n(self.net.pool_map(features))
        return l2n(self.net.whiten(v)) if self.net.whiten is not None else v


def _save_atomically(model, path: Path) -> None:
    """ov.save_model into a temporary folder beside `path`'s, renamed into place (another process
    that got there first wins). Weights stay fp32: no fp16 compression."""
    import openvino as ov

    folder = path.parent
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    try:
        ov.save_model(model, tmp / path.name, compress_to_fp16=False)
        for f in tmp.iterdir():
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not path.is_file():
                raise
        fsync_dir(folder.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{exc.__class__.__name__}: {text.splitlines()[0] if text else ''}"[:200]


def _conversion_reason(exc: BaseException) -> str:
    """The unconverted operations named in OpenVINO's report, else its first line."""
    ops = sorted({w.strip(" -,;:") for w in str(exc).split() if "::" in w and w.startswith(("aten::", "prim::"))})
    return f"no conversion for {', '.join(ops)}" if ops else f"conversion failed: {_first_line(exc)}"
