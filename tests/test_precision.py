"""Precision (fp32 / bf16 / fp16 autocast), GeM in fp32 under autocast, the decoding thread."""
import threading

import numpy as np
import pytest
import torch
from conftest import require_data

import deepret.precision as P
from deepret.cli import main
from deepret.errors import DeepretError
from deepret.extract import ExtractSettings, _collate, _decoded_in_thread, _Images, extract, plan_batches
from deepret.imageio import ImageSource, image_size
from deepret.models import create_model, gem


@pytest.fixture
def photos():
    return sorted(require_data("oxford5k-mini", "jpg").glob("*.jpg"))[:4]


def test_precision_values_are_checked():
    assert [P.parse_precision(v) for v in ("auto", "FP32", " bf16", "fp16")] == ["auto", "fp32", "bf16", "fp16"]
    with pytest.raises(DeepretError, match="fp8.*auto, fp32, bf16, fp16"):
        P.parse_precision("fp8")
    assert ExtractSettings(precision="BF16").precision == "bf16"
    with pytest.raises(DeepretError, match="half"):
        ExtractSettings(precision="half")
    assert ExtractSettings().to_dict()["precision"] == "auto"  # part of the feature cache key


def test_cli_rejects_an_unknown_precision(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--dataset", "x", "--root", ".", "--precision", "fp8"])
    assert exc.value.code == 2 and "fp8" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "rank", "--data", "x", "--out", "y", "--precision", "int8"])


def test_auto_follows_the_table_and_the_hardware(monkeypatch):
    monkeypatch.setitem(P.REDUCED_OK, "netA", ("bf16", "fp16"))
    monkeypatch.setitem(P.REDUCED_OK, "netB", ())
    monkeypatch.setattr(P, "cpu_has_fast", lambda p: True)
    assert P.resolve_precision("auto", "netA", "cpu") == "bf16"
    assert P.resolve_precision("auto", "netB", "cpu") == "fp32"
    assert P.resolve_precision("auto", "some_timm_model", "cpu") == "fp32"  # not measured: fp32
    monkeypatch.setattr(P, "cpu_has_fast", lambda p: p == "fp32")
    assert P.resolve_precision("auto", "netA", "cpu") == "fp32"  # no bf16 instructions: bf16 would be slower
    assert P.resolve_precision("bf16", "netB", "cpu") == "bf16"  # asked for explicitly
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert P.resolve_precision("auto", "netA", "cuda") == "fp16"
    monkeypatch.setitem(P.REDUCED_OK, "netA", ("bf16",))
    assert P.resolve_precision("auto", "netA", "cuda") == "fp32"  # bf16 only, and this GPU has none


def test_stored_precision_is_kept_where_it_runs_fast_and_swapped_where_interchangeable(monkeypatch):
    monkeypatch.setitem(P.REDUCED_OK, "netA", ("bf16", "fp16"))
    monkeypatch.setattr(P, "cpu_has_fast", lambda p: p == "fp32")
    assert P.interchangeable("bf16", "fp32", "netA") and P.interchangeable("fp16", "bf16", "netA")
    assert not P.interchangeable("bf16", "fp32", "other") and P.interchangeable("bf16", "bf16", "other")
    assert P.portable_precision("bf16", "netA", "cpu") == "fp32"  # emulated here, and fp32 is as good
    assert P.portable_precision("fp16", "netA", "cpu") == "fp32"  # e.g. an index built on a GPU
    assert P.portable_precision("bf16", "other", "cpu") == "bf16"  # not measured: the stored numbers
    assert P.portable_precision("fp32", "netA", "cpu") == "fp32"
    monkeypatch.setattr(P, "cpu_has_fast", lambda p: True)
    assert P.portable_precision("bf16", "netA", "cpu") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert P.runs_fast("fp16", "cuda") and not P.runs_fast("bf16", "cuda")
    assert P.portable_precision("bf16", "netA", "cuda") == "fp16"


def test_gem_and_l2n_stay_fp32_under_autocast():
    torch.manual_seed(0)
    net = create_model("resnet18-gem", weights="random").eval()
    fmap = torch.rand(2, 512, 5, 7) * 40  # x ** 3 of these in bf16 loses ~3 significant digits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pooled = net.pool_map(fmap.bfloat16())
        out = net(torch.randn(1, 3, 64, 64))
    assert pooled.dtype == torch.float32 and out.dtype == torch.float32
    torch.testing.assert_close(pooled, gem(fmap.bfloat16().float(), 3.0), rtol=1e-6, atol=1e-6)
    assert torch.allclose(out.norm(dim=1), torch.ones(1), atol=1e-6)


def test_reduced_precision_descriptors_match_fp32(lite0, photos):
    ref = extract(lite0, photos, settings=ExtractSettings(size=256, precision="fp32"), workers=0, progress=False).vectors
    for precision in ("bf16", "fp16"):
        got = extract(lite0, photos, settings=ExtractSettings(size=256, precision=precision), workers=0,
                      progress=False).vectors
        assert got.dtype == np.float32
        cosines = (got * ref).sum(1)
        assert cosines.min() >= 0.99 and not np.allclose(got, ref, atol=1e-7), (precision, cosines)


def test_decoding_thread_gives_the_plain_batches(lite0, photos):
    dataset = _Images(ImageSource(photos), lite0.meta["input"]["mean"], lite0.meta["input"]["std"])
    batches = plan_batches([image_size(p) for p in photos], 160, 32, 160 * 160 * 2)
    plain = [_collate([dataset[key] for key in batch]) for batch in batches]
    threaded = list(_decoded_in_thread(dataset, batches, ahead=1))
    assert len(threaded) == len(plain) > 1
    for (i, x, errors), (j, y, thread_errors) in zip(plain, threaded):
        assert i == j and torch.equal(x, y) and errors == thread_errors == {}


def test_decoding_thread_passes_image_errors_on_as_values():
    class OneBroken:
        def __getitem__(self, key):
            return (key[0], "is corrupt") if key[0] == 1 else (key[0], torch.zeros(3, 4, 4))

    got = list(_decoded_in_thread(OneBroken(), [[(0, 4, 4), (1, 4, 4)], [(1, 4, 4)]], ahead=1))
    assert [(idx, errors) for idx, _, errors in got] == [([0], {1: "is corrupt"}), ([], {1: "is corrupt"})]
    assert got[0][1].shape == (1, 3, 4, 4) and got[1][1] is None


def test_decoding_thread_hands_errors_over_and_stops_when_closed(photos):
    class Failing:
        def __getitem__(self, key):
            if key[0] == 2:
                raise RuntimeError("decoder crashed on item 2")
            return key[0], torch.zeros(3, 4, 4)

    batches = [[(i, 4, 4)] for i in range(4)]
    got = []
    with pytest.raises(RuntimeError, match="item 2"):
        for idx, _, errors in _decoded_in_thread(Failing(), batches, ahead=1):
            assert errors == {}
            got += idx
    assert got == [0, 1]
    early = _decoded_in_thread(Failing(), [[(0, 4, 4)]] * 50, ahead=1)
    next(early)
    early.close()
    assert not any(t.name == "deepret-decode" for t in threading.enumerate())


def test_training_step_in_bf16(tmp_path):
    from deepret.datasets import load_labelled
    from deepret.train import TrainConfig, train_classify

    data = load_labelled(require_data("landmarks-mini"))
    cfg = TrainConfig(out=tmp_path / "run", epochs=1, size=64, batch_size=8, progress=False, precision="bf16")
    last = train_classify(data, "efficientnet_lite0-gem", cfg)
    ckpt = torch.load(last, weights_only=False)
    assert ckpt["train"]["config"]["precision"] == "bf16"
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    log = (tmp_path / "run" / "log.jsonl").read_text()
    assert log.count('"loss"') == 3  # 23 images in batches of 8
