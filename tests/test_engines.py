"""Compiled networks (deepret.engines): OpenVINO matches torch, its cache, precision hint, fallback, int8."""
import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from conftest import require_data
from torch import nn

import deepret.engines.openvino_engine as OV
from deepret.engines import compile_network
from deepret.errors import DeepretError, DeepretWarning
from deepret.extract import ExtractSettings, extract, resolve_settings
from deepret.models import GeM, RetrievalNet, create_model
from deepret.precision import parse_precision, resolve_precision


@pytest.fixture
def photos():
    return sorted(require_data("oxford5k-mini", "jpg").glob("*.jpg"))[:3]


def _cos(a, b) -> float:
    return float((torch.as_tensor(a) * torch.as_tensor(b)).sum(1).min())


def test_openvino_matches_torch_on_real_photos_and_reports_f32(lite0, photos, tmp_path):
    ref = extract(lite0, photos, settings=ExtractSettings(size=256, engine="torch", precision="fp32"),
                  device="cpu", workers=0, progress=False).vectors
    got = extract(lite0, photos, settings=ExtractSettings(size=256, engine="openvino"), device="cpu", workers=0,
                  progress=False).vectors
    assert _cos(ref, got) >= 0.9999
    engine = compile_network(lite0, "openvino", "fp32", "cpu", cache_dir=tmp_path)
    assert (engine.name, engine.precision, engine.inference_precision) == ("openvino", "fp32", "f32")  # not bf16


@pytest.mark.parametrize("name", ["alexnet-fc7", "resnet18-gem"])
def test_openvino_matches_torch_with_learned_p_and_whitening(name, tmp_path):
    torch.manual_seed(0)
    net = create_model(name, weights="random", learn_p=True, per_channel_p=True)
    with torch.no_grad():
        if isinstance(net.pool, GeM):
            net.pool.p.uniform_(2.0, 4.0)
        net.set_whitening(torch.randn(64, net.dim) / net.dim ** 0.5, torch.randn(64) * 0.01, "test")
    side = net.input_size or 160
    x = torch.rand(2, 3, side, side if net.input_size else 128) * 2 - 1
    with torch.no_grad():
        ref = net(x)
    got = compile_network(net, "openvino", "fp32", "cpu", cache_dir=tmp_path)(x)
    assert got.shape == (2, 64) and _cos(ref, got) >= 0.9999


def test_a_recurring_shape_gets_its_own_fixed_shape_model(monkeypatch, tmp_path):
    torch.manual_seed(0)
    net = create_model("resnet18-gem", weights="random")
    monkeypatch.setattr(OV, "STATIC_AFTER", 3)
    monkeypatch.setattr(OV, "_STATIC", {})
    monkeypatch.setattr(OV, "_SEEN", {})
    engine = compile_network(net, "openvino", "fp32", "cpu", cache_dir=tmp_path)
    x = torch.rand(2, 3, 96, 128) * 2 - 1
    with torch.no_grad():
        ref = net(x)
    first = engine(x)  # 2 images seen: the dynamic model
    assert not OV._STATIC and _cos(ref, first) >= 0.9999
    second = engine(x)  # 4 >= 3: compiled for (1, 3, 96, 128)
    (key, compiled), = OV._STATIC.items()
    assert key[-2:] == (96, 128) and list(compiled.input(0).get_shape()) == [1, 3, 96, 128]
    assert _cos(ref, second) >= 0.9999 and _cos(first, second) >= 0.99999
    other = engine(torch.rand(1, 3, 64, 96))  # another shape, seen once: dynamic again
    assert other.shape == (1, net.dim) and len(OV._STATIC) == 1
    # engines of other threads (the web app's searches) share the compiled model, not its request
    engines = [compile_network(net, "openvino", "fp32", "cpu", cache_dir=tmp_path) for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda e: [e(x) for _ in range(5)], engines))
    assert all(_cos(ref, v) >= 0.9999 for out in outs for v in out) and len(OV._STATIC) == 1


def test_converted_model_is_cached_and_read_back(tmp_path):
    torch.manual_seed(0)
    net = create_model("resnet18-gem", weights="random")
    before = OV.CONVERSIONS["count"]
    first = compile_network(net, "openvino", "fp32", "cpu", cache_dir=tmp_path)
    assert not first.from_cache and OV.CONVERSIONS["count"] == before + 1
    assert first.path.parent.parent == tmp_path and first.path.with_suffix(".bin").is_file()
    mtime = first.path.stat().st_mtime_ns
    second = compile_network(net, "openvino", "fp32", "cpu", cache_dir=tmp_path)
    assert second.from_cache and OV.CONVERSIONS["count"] == before + 1 and first.path.stat().st_mtime_ns == mtime
    assert not list(tmp_path.glob(".*.tmp"))  # nothing half-written left
    x = torch.rand(1, 3, 96, 160)
    assert torch.allclose(first(x), second(x))
    with torch.no_grad():
        net.pool.p.fill_(4.0)  # other weights: another file
    assert not compile_network(net, "openvino", "fp32", "cpu", cache_dir=tmp_path).from_cache


class _Lgamma(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)

    def forward(self, x):
        return torch.lgamma(self.conv(x).abs() + 1)


def test_a_network_openvino_cannot_convert_falls_back_or_raises(tmp_path):
    meta = {"name": "lgamma-gem", "backbone": "lgamma", "dim": 8, "whitening": None,
            "input": {"size": None, "default_size": 64, "mean": [0.5] * 3, "std": [0.5] * 3}}
    net = RetrievalNet(_Lgamma(), GeM(), meta).eval()
    with pytest.raises(DeepretError, match="openvino.*aten::lgamma.*--engine torch"):
        compile_network(net, "openvino", "fp32", "cpu", cache_dir=tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine = compile_network(net, "auto", "fp32", "cpu", cache_dir=tmp_path)
    assert engine.name == "torch"
    assert [w for w in caught if "OpenVINO cannot run lgamma-gem" in str(w.message) and w.category is DeepretWarning]
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(engine(x), net(x))


def test_int8_from_calibration_photos_stays_close(lite0, photos, tmp_path):
    calib = sorted(require_data("landmarks-mini").rglob("*.jpg"))[:4]  # not the photos evaluated
    engine = compile_network(lite0, "openvino", "int8", "cpu", cache_dir=tmp_path, calibration=calib,
                             calibration_size=192)
    assert (engine.name, engine.precision, engine.inference_precision) == ("openvino", "int8", "f32")
    assert compile_network(lite0, "openvino", "int8", "cpu", cache_dir=tmp_path, calibration=calib,
                           calibration_size=192).from_cache
    fp32 = compile_network(lite0, "openvino", "fp32", "cpu", cache_dir=tmp_path)
    assert fp32.path != engine.path
    from deepret.engines.calibration import calibration_tensors
    xs = calibration_tensors(lite0, photos, 192)
    assert min(_cos(engine(x), fp32(x)) for x in xs) > 0.95
    with pytest.raises(DeepretError, match="calibration"):
        compile_network(lite0, "openvino", "int8", "cpu", cache_dir=tmp_path)


def test_engine_and_int8_rules():
    assert parse_precision("INT8") == "int8"
    with pytest.raises(DeepretError, match="int8.*openvino"):
        resolve_precision("int8", "resnet18", "cpu")  # the torch engine
    assert resolve_precision("auto", "efficientnet_lite0", "cpu", engine="openvino") == "fp32"
    with pytest.raises(DeepretError, match="engine 'tensorrt'"):
        ExtractSettings(engine="tensorrt")
    with pytest.raises(DeepretError, match="openvino runs on the CPU"):
        compile_network(create_model("resnet18-gem", weights="random"), "openvino", "fp32", "cuda")
    stored = ExtractSettings(size=64, precision="fp32").to_dict()
    del stored["engine"], stored["calibration"], stored["calibration_id"]  # written before the fields
    assert ExtractSettings.from_dict(stored).engine == "torch"
    assert ExtractSettings.from_dict(ExtractSettings().to_dict()).engine == "auto"


def test_resolved_settings_name_the_engine_and_the_calibration(lite0):
    got = resolve_settings(lite0, ExtractSettings(), "cpu")
    assert (got.engine, got.precision) == ("openvino", "fp32")
    root = require_data("landmarks-mini")
    int8 = resolve_settings(lite0, ExtractSettings(precision="int8", calibration=str(root)), "cpu")
    assert int8.calibration == str(root.resolve()) and len(int8.calibration_id) == 16
    assert "calibration_id" in int8.to_dict()  # part of the feature cache key
    with pytest.raises(DeepretError, match="int8 needs calibration"):
        resolve_settings(lite0, ExtractSettings(precision="int8"), "cpu")


def test_calibration_sample_lists_any_file_name_and_reads_it_back(tmp_path):
    import os

    from PIL import Image

    from deepret.engines.calibration import calibration_photos, write_calibration_sample

    root = tmp_path / "photos"
    root.mkdir()
    odd = os.fsdecode(b"caf\xe9.jpg")  # Latin-1 bytes: not UTF-8
    names = [odd, "plain.jpg", "two\nlines.jpg"]
    for name in names:
        Image.new("RGB", (8, 8)).save(os.fsencode(root / name), "JPEG")
    listed = write_calibration_sample(tmp_path / "calibration.txt", root, names)
    photos = calibration_photos(listed)
    assert sorted(p.name for p in photos) == sorted([odd, "plain.jpg"])  # a name with a line break left out
    assert all(p.is_file() for p in photos)  # each line names the very file, its bytes as on disk
    (tmp_path / "crlf.txt").write_bytes(b"photos/plain.jpg\r\n\r\n")
    assert [p.name for p in calibration_photos(tmp_path / "crlf.txt")] == ["plain.jpg"]
