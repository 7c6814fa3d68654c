"""The OpenVINO engine (CPU): the trunk converted to OpenVINO, the head (pooling, whitening, L2
normalisation) run by torch in float32 after it, so GeM's power never leaves fp32.

Images go through one at a time (on the CPU a whole batch's activations leave the caches), and an
image shape seen STATIC_AFTER times in the process gets a model compiled for that fixed shape
(OpenVINO's dynamic-shape kernels are slower): measured in docs/benchmarks.md.

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
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from deepret.engines.calibration import calibration_tensors
from deepret.errors import DeepretError
from deepret.fileio import fsync_dir
from deepret.models import RetrievalNet, l2n, model_fingerprint
from deepret.precision import cpu_flags

OV_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32"}  # int8: its unquantized ops in f32
COMPILED_KEPT = 4  # compiled models this process keeps (oldest dropped first)
STATIC_AFTER = 32  # images of one shape after which it gets its own fixed-shape model (compiling: ~0.3 s)
STATIC_KEPT = 8  # fixed-shape models this process keeps (oldest dropped first)
_COMPILED: dict = {}
_STATIC: dict = {}  # (model path, config, H, W) -> the model compiled for (1, 3, H, W)
_SEEN: dict = {}  # (model path, config, H, W) -> images of that shape run so far
_STATIC_LOCK = threading.Lock()
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
            weights += f"-{overflow_fix()}"  # the quantized weights depend on it
        key = hashlib.sha1(f"{model_fingerprint(net)}|{ov.__version__}|{weights}|trunk-v1".encode()).hexdigest()[:20]
        self.path = engines_dir(cache_dir) / f"{net.meta.get('name', 'net').replace('/', '_')}-{key}" / "trunk.xml"
        self.from_cache = self.path.is_file()
        if not self.from_cache:
            if precision == "int8" and calib is None:
                calib = calibration_tensors(net, calibration, calibration_size)
            _save_atomically(self._convert(calib), self.path)
        config = {"INFERENCE_PRECISION_HINT": OV_HINTS[precision], "INFERENCE_NUM_THREADS": torch.get_num_threads(),
                  "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY"}
        self.config, self.memo = config, (str(self.path), *config.values())
        if self.memo not in _COMPILED:  # compiled once per process (extract() compiles at every call)
            _keep(_COMPILED, self.memo, self._compile(), COMPILED_KEPT)
        self.compiled = _COMPILED[self.memo]
        reported = self.compiled.get_property("INFERENCE_PRECISION_HINT")
        self.inference_precision = next((h for h in OV_HINTS.values() if getattr(ov.Type, h) == reported), str(reported))
        if self.inference_precision != OV_HINTS[precision]:  # never another precision silently
            raise DeepretError(f"precision {precision}: this CPU runs OpenVINO in {self.inference_precision} "
                               "instead: use fp32")
        self.request = self.compiled.create_infer_request()
        self.requests: dict = {}  # this engine's infer requests of fixed-shape models

    def _compile(self, shape: list[int] | None = None):
        """The saved trunk compiled for the CPU, reshaped to the fixed input `shape` when given."""
        import openvino as ov

        core = ov.Core()
        try:
            model = core.read_model(self.path)
            if shape is not None:
                model.reshape(shape)
            return core.compile_model(model, "CPU", self.config)
        except Exception as exc:  # OpenVINO raises plain RuntimeErrors
            raise ConversionError(f"compiling failed: {_first_line(exc)}") from exc

    def _request_for(self, hw: tuple[int, int], images: int):
        """The infer request for `images` more images of shape `hw`: the fixed-shape model's once
        the shape has come STATIC_AFTER times (nets without a fixed input only), else the dynamic one's."""
        if self.net.input_size:  # fc7 nets: the converted model is already of their one shape
            return self.request
        key = (*self.memo, *hw)
        if key in self.requests:
            return self.requests[key]
        with _STATIC_LOCK:
            compiled = _STATIC.get(key)
            if compiled is None:
                _SEEN[key] = _SEEN.get(key, 0) + images
                if _SEEN[key] < STATIC_AFTER:
                    return self.request
                compiled = self._compile([1, 3, *hw])
                _keep(_STATIC, key, compiled, STATIC_KEPT)
        # a compiled model serves many threads, an infer request one: each engine has its own
        self.requests[key] = compiled.create_infer_request()
        return self.requests[key]

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
            from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

            advanced = AdvancedQuantizationParameters(overflow_fix=OverflowFix(overflow_fix()))
            model = nncf.quantize(model, nncf.Dataset([x.numpy() for x in calib]), subset_size=len(calib),
                                  advanced_parameters=advanced)
        return model

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        batch = np.ascontiguousarray(x.detach().cpu().numpy())
        request = self._request_for(batch.shape[2:], len(batch))
        maps = [np.array(request.infer([batch[i:i + 1]], share_inputs=True)[0], dtype=np.float32, copy=True)
                for i in range(len(batch))]  # one image at a time: faster than the batch at once
        features = torch.from_numpy(np.concatenate(maps))
        v = l2n(self.net.pool_map(features))
        return l2n(self.net.whiten(v)) if self.net.whiten is not None else v


def overflow_fix() -> str:
    """NNCF's overflow fix for this CPU: without VNNI/AMX int8 products go through 16-bit sums
    that saturate, so every layer's weights get 7 bits ("enable"; Lite0's worst cosine to fp32 on an
    AVX2 EPYC 0.939 -> 0.954); with them only the first layer's ("first_layer_only", NNCF's default)."""
    vnni = {"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags()
    return "first_layer_only" if vnni else "enable"


def _keep(memo: dict, key, value, kept: int) -> None:
    """memo[key] = value, dropping the oldest entries beyond `kept`."""
    while len(memo) >= kept:
        memo.pop(next(iter(memo)))
    memo[key] = value


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
