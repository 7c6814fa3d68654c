import urllib.error

import pytest
import torch
import torchvision
from conftest import require_data

import deepret
from deepret.errors import DeepretError
from deepret.imageio import open_rgb, to_tensor
from deepret.models import create_model, get_model, list_models, save
from deepret.models.backbones import build_backbone
from deepret.models.weights import hub_checkpoint_path

PALACE, SUSPENSION_BRIDGE, PIER = 698, 839, 718


def imagenet_top1(backbone, path) -> int:
    x = to_tensor(open_rgb(path), (224, 224), backbone.mean, backbone.std)
    backbone.model.eval()
    with torch.no_grad():
        return int(backbone.classifier_logits(x[None]).argmax())


@pytest.mark.parametrize("weights", ["imagenet", "random"])
def test_lite0_weight_mapping_classifies_real_photos(weights):
    """The packaged Lite0 weights, mapped onto timm's network, name real landmarks' classes."""
    root = require_data("landmarks-mini")
    torch.manual_seed(0)
    backbone = build_backbone("efficientnet_lite0", weights)
    san_marco = [imagenet_top1(backbone, p) for p in sorted((root / "piazza_san_marco").glob("*.jpg"))]
    bridge = [imagenet_top1(backbone, p) for p in sorted((root / "london_bridge").glob("*.jpg"))]
    right = san_marco.count(PALACE) + sum(c in (SUSPENSION_BRIDGE, PIER) for c in bridge)
    if weights == "imagenet":
        assert san_marco == [PALACE] * 5, san_marco
        assert right >= 7, (san_marco, bridge)
    else:
        assert right <= 2, (san_marco, bridge)


def _fake_torchvision_weights(arch: str) -> dict:
    """A random state_dict of `arch` written where torch hub caches its ImageNet file."""
    torch.manual_seed(1)
    state = torchvision.models.get_model(arch, weights=None).state_dict()
    path = hub_checkpoint_path(torchvision.models.get_model_weights(arch).DEFAULT.url)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return state


def _no_network(*args, **kwargs):
    raise AssertionError("the network was touched although the cache is warm")


@pytest.mark.parametrize("name,dim", [("alexnet-fc7", 4096), ("alexnet-gem", 256), ("resnet18-gem", 512)])
def test_torchvision_imagenet_weights_load_from_a_warm_hub_cache(monkeypatch, name, dim):
    state = _fake_torchvision_weights(name.split("-")[0])
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", _no_network)
    net = create_model(name, weights="imagenet")
    assert net.dim == dim and "torch hub cache" in net.meta["provenance"]
    ours = net.state_dict()
    first_conv = next(k for k in state if k.endswith("weight") and state[k].dim() == 4)
    assert any(torch.equal(v, state[first_conv]) for v in ours.values())
    out = net(torch.rand(2, 3, 224, 224))
    assert out.shape == (2, dim) and torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)


def test_alexnet_fc7_is_the_second_fc_layer_of_the_classifier():
    _fake_torchvision_weights("alexnet")
    net = create_model("alexnet-fc7")
    alexnet = torchvision.models.alexnet()
    alexnet.load_state_dict(torch.load(hub_checkpoint_path(torchvision.models.AlexNet_Weights.DEFAULT.url)))
    alexnet.eval()
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        fc7 = alexnet.classifier[:6](torch.flatten(alexnet.avgpool(alexnet.features(x)), 1))
        assert torch.allclose(net(x), torch.nn.functional.normalize(fc7), atol=1e-5)
    assert net.input_size == 224


def _offline(url, **kwargs):
    raise urllib.error.URLError("Name or service not known")


def test_missing_weights_offline_name_the_file_to_put(monkeypatch):
    from deepret.errors import WeightsUnavailableError

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", _offline)
    with pytest.raises(WeightsUnavailableError) as err:  # its own type (the study catches it), cause kept
        create_model("resnet50-gem")
    expected = hub_checkpoint_path(torchvision.models.ResNet50_Weights.DEFAULT.url)
    assert str(expected) in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value.__cause__, urllib.error.URLError)


def test_any_timm_model_by_name(monkeypatch):
    net = create_model("resnet10t-gem", weights="random")
    assert net.dim == 512 and net(torch.rand(1, 3, 96, 128)).shape == (1, 512)
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail at once, no retries
    with pytest.raises(DeepretError, match="resnet10t"):
        create_model("resnet10t-gem", weights="imagenet")


@pytest.mark.parametrize("name,match", [("foo-gem", "unknown backbone 'foo'"), ("resnet18", "<backbone>-<head>"),
                                        ("resnet18-fc7", "fc7 exists only"), ("resnet18-avg", "<backbone>-<head>")])
def test_bad_model_names(name, match):
    with pytest.raises(DeepretError, match=match):
        create_model(name, weights="random")


def test_registry_lists_the_study_models():
    names = {row["name"] for row in list_models()}
    assert {"alexnet-fc7", "alexnet-gem", "resnet18-gem", "resnet50-gem", "efficientnet_lite0-gem", "vgg16-mac"} <= names


def test_checkpoint_rebuilds_the_network_exactly(tmp_path):
    torch.manual_seed(0)
    net = create_model("resnet18-gem", weights="random", p=2.5, learn_p=True, per_channel_p=True)
    with torch.no_grad():
        net.pool.p.add_(torch.rand_like(net.pool.p))
    net.set_whitening(torch.randn(64, 512), torch.randn(64), method="pca")
    path = save(net, tmp_path / "ckpt" / "net.pt", epoch=3)
    loaded = deepret.load(path)
    x = torch.rand(2, 3, 160, 120)
    assert torch.allclose(loaded(x), net(x), atol=1e-6)
    assert loaded.dim == 64 and loaded.meta["whitening"]["method"] == "pca"
    assert {k: v for k, v in loaded.meta.items() if k != "checkpoint"} == net.meta
    assert isinstance(get_model(str(path)), type(net))
    assert [p.name for p in path.parent.iterdir()] == ["net.pt"]  # no temp file left


def test_local_state_dict_weights(tmp_path):
    torch.manual_seed(2)
    source = torchvision.models.resnet18()
    torch.save(source.state_dict(), tmp_path / "r18.pth")
    net = create_model("resnet18-gem", weights=str(tmp_path / "r18.pth"))
    assert torch.equal(net.trunk[0].weight, source.conv1.weight)
    with pytest.raises(DeepretError, match="missing.pth"):
        create_model("resnet18-gem", weights=str(tmp_path / "missing.pth"))


def test_state_dict_of_another_architecture_is_a_clear_error_with_its_cause(tmp_path, capsys, data_root):
    from deepret.cli import main

    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "r34.pth")   # more blocks: extra keys
    torch.save(torchvision.models.alexnet().state_dict(), tmp_path / "alex.pth")  # nothing in common
    wide = torchvision.models.resnet18(num_classes=10).state_dict()               # same keys, fc of another shape
    torch.save(wide, tmp_path / "r18-10.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")                                  # not a state_dict at all
    for name, words in (("r34.pth", "unexpected tensors, e.g. layer1.2."),
                        ("alex.pth", "missing tensors, e.g. conv1.weight"),
                        ("r18-10.pth", "2 tensors of another shape, e.g. fc.weight (10, 512) where the model has (1000, 512)"),
                        ("list.pth", "it holds a list, not a state_dict")):
        with pytest.raises(DeepretError) as err:
            create_model("resnet18-gem", weights=str(tmp_path / name))
        text = str(err.value)
        assert text.startswith(f"weights file {tmp_path / name} does not fit backbone resnet18 (") and words in text
        assert "\n" not in text and "--model" in text
        assert isinstance(err.value.__cause__, (RuntimeError, TypeError, AttributeError))  # chained for --debug
    assert main(["eval", "--dataset", "oxford5k-mini", "--root", str(data_root), "--model", "resnet18-gem",
                 "--weights", str(tmp_path / "alex.pth")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("deepret: error: ") and "alex.pth does not fit" in err[0], err


def test_corrupt_checkpoint_is_a_one_line_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(DeepretError, match="bad.pt"):
        deepret.load(bad)


def test_backbone_registry_describes_each_backbone_and_its_default_size(tmp_path):
    from deepret.models.backbones import BACKBONES, backbone_spec

    assert {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "alexnet", "resnet50"} <= set(BACKBONES)
    rows = {r["name"]: r for r in list_models()}
    assert rows["efficientnet_lite2-gem"]["size"] == BACKBONES["efficientnet_lite2"].default_size
    assert rows["alexnet-fc7"]["size"] == 224 and rows["resnet50-gem"]["size"] == 1024
    assert backbone_spec("resnet10t").trunk == "timm"  # any timm model gets a description too
    torch.manual_seed(0)
    net = create_model("resnet18-gem", weights="random")
    assert net.default_size == net.meta["input"]["default_size"] == 1024
    net.meta["input"]["default_size"] = 320  # kept in the checkpoint meta
    assert deepret.load(save(net, tmp_path / "a.pt")).default_size == 320
    del net.meta["input"]["default_size"]  # a checkpoint from before: the registry's
    assert deepret.load(save(net, tmp_path / "b.pt")).default_size == 1024


def test_resolve_settings_fills_the_size_from_the_network(monkeypatch):
    from deepret.extract import ExtractSettings, resolve_settings

    torch.manual_seed(0)
    net = create_model("resnet18-gem", weights="random")
    net.meta["input"]["default_size"] = 288
    assert resolve_settings(net, ExtractSettings()).size == 288
    assert resolve_settings(net, None).size == 288
    # precision auto becomes a concrete one, which depends on the device and the CPU's bf16 instructions:
    # fix both (P.cpu_has_fast) so that the test means the same on every machine
    import deepret.precision as P

    for fast, expected in ((False, "fp32"), (True, "bf16")):  # resnet18 kept its mAP in bf16 (REDUCED_OK)
        monkeypatch.setattr(P, "cpu_has_fast", lambda precision, fast=fast: fast)
        assert resolve_settings(net, ExtractSettings(size=200, flip=True, engine="torch"), "cpu") == \
            ExtractSettings(size=200, flip=True, precision=expected, engine="torch")
        # engine auto on the CPU: OpenVINO, whose auto precision is fp32 (REDUCED_OK measured torch's autocast)
        assert resolve_settings(net, ExtractSettings(size=200), "cpu") == \
            ExtractSettings(size=200, precision="fp32", engine="openvino")
        explicit = resolve_settings(net, ExtractSettings(precision="fp16"), "cpu")
        assert (explicit.precision, explicit.engine) == ("fp16", "torch")  # explicit: kept, on torch's autocast
    assert resolve_settings(net, None).precision in ("fp32", "bf16", "fp16")  # never "auto" on this machine
    for bad in (dict(size=0), dict(size=-5), dict(scales=(1.0, 0.0)), dict(scales=())):
        with pytest.raises(DeepretError):
            ExtractSettings(**bad)


class _Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def test_checkpoints_load_weights_only_with_clear_errors_for_foreign_files(tmp_path, capsys):
    torch.save({"meta": {"name": "resnet18-gem"}, "state_dict": {}, "x": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(DeepretError, match="evil.pt.*only its own checkpoints") as err:
        deepret.load(tmp_path / "evil.pt")
    assert "code ran" not in capsys.readouterr().out and err.value.__cause__ is not None
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "plain.pth")
    with pytest.raises(DeepretError, match="--weights FILE"):
        deepret.load(tmp_path / "plain.pth")
    torch.save({"meta": {"name": "nope-gem"}, "state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(DeepretError, match="foreign.pt"):
        deepret.load(tmp_path / "foreign.pt")
