"""cirtorch checkpoints (filipradenovic/cnnimageretrieval-pytorch) as deepret networks.

The checkpoints are written here in cirtorch's format (its key names and meta, random weights): the
published files cannot be downloaded on these machines. The reference descriptors follow cirtorch's
ImageRetrievalNet.forward, whitenapply and its test-time preprocessing (ImagesFromList: crop, then
imresize = PIL thumbnail with ANTIALIAS, ToTensor, Normalize), written out below from torchvision
modules and formulas, not from deepret's code."""
import json
import pickle
import subprocess
import sys
import urllib.error

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import require_data
from PIL import Image
from torch import nn

import deepret
from deepret.errors import DeepretError, WeightsUnavailableError
from deepret.models import create_model, get_model, list_models, save
from deepret.models.registry import CIRTORCH_MODELS
from deepret.models.weights import hub_checkpoint_path
from deepret.whiten import LearnedWhitening

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
P_GEM = 2.7


class CirtorchNet:
    """The parts of a cirtorch network, random: features (torchvision children without pool and fc),
    GeM p, the FC whitening (-w) and an Lw {'m', 'P'} as numpy arrays, as cirtorch's whitenlearn gives."""

    def __init__(self, arch: str = "resnet18", whitening: bool = True, lw: bool = True, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.classifier = torchvision.models.get_model(arch, weights=None).eval()
        children = list(self.classifier.children())[:-2] if arch.startswith("resnet") \
            else list(self.classifier.features.children())[:-1]
        self.arch, self.features = arch, nn.Sequential(*children).eval()
        self.dim = 512 if arch in ("resnet18", "resnet34", "vgg16") else 2048
        self.whiten = None
        if whitening:
            self.whiten = nn.Linear(self.dim, self.dim)
            with torch.no_grad():  # a well-conditioned random rotation-like map, as a learned one is
                self.whiten.weight.copy_(torch.eye(self.dim) + 0.3 * torch.randn(self.dim, self.dim) / self.dim ** 0.5)
                self.whiten.bias.copy_(0.01 * torch.randn(self.dim))
        self.lw = None
        if lw:
            rng = np.random.default_rng(seed)
            self.lw = {"m": (0.02 * rng.normal(size=(self.dim, 1))).astype(np.float32),
                       "P": (np.eye(self.dim) + 0.3 * rng.normal(size=(self.dim, self.dim)) / self.dim ** 0.5
                             ).astype(np.float32)}

    def checkpoint(self, path, pooling: str = "gem", legacy: bool = False, **meta_extra):
        """Write the network as cirtorch saves it: {'meta', 'state_dict'} (and what train.py adds)."""
        state = {f"features.{k}": v for k, v in self.features.state_dict().items()}
        if pooling == "gem":
            state["pool.p"] = torch.ones(1) * P_GEM
        if self.whiten is not None:
            state.update({f"whiten.{k}": v for k, v in self.whiten.state_dict().items()})
        meta = {"architecture": self.arch, "local_whitening": False, "pooling": pooling, "regional": False,
                "whitening": self.whiten is not None, "mean": MEAN, "std": STD, "outputdim": self.dim}
        if self.lw is not None:
            ms = {"m": self.lw["m"] * 0.5, "P": self.lw["P"][::-1].copy()}  # another one, to see which is taken
            meta["Lw"] = {"retrieval-SfM-30k": {"ss": ms, "ms": ms}, "retrieval-SfM-120k": {"ss": self.lw, "ms": ms}}
        meta.update(meta_extra)
        torch.save({"meta": meta, "state_dict": state, "epoch": 30, "min_loss": 0.1}, path,
                   _use_new_zipfile_serialization=not legacy)
        return path

    @torch.no_grad()
    def descriptor(self, x: torch.Tensor) -> np.ndarray:
        """cirtorch's forward (features, GeM, L2N, whiten, L2N) and whitenapply(v, m, P): (D,) per image."""
        o = self.features(x)
        o = F.avg_pool2d(o.clamp(min=1e-6).pow(P_GEM), (o.size(-2), o.size(-1))).pow(1.0 / P_GEM)
        o = o / (o.norm(p=2, dim=1, keepdim=True) + 1e-6)
        o = o.squeeze(-1).squeeze(-1)
        if self.whiten is not None:
            o = self.whiten(o)
            o = o / (o.norm(p=2, dim=1, keepdim=True) + 1e-6)
        v = o.permute(1, 0).double().numpy()  # D x N columns, as cirtorch's vecs
        if self.lw is not None:
            v = self.lw["P"].astype(np.float64) @ (v - self.lw["m"])
            v = v / (np.linalg.norm(v, axis=0, keepdims=True) + 1e-6)
        return v.T


def cirtorch_input(path, bbx, size: int) -> torch.Tensor:
    """cirtorch's ImagesFromList at test time: RGB, crop to bbx, thumbnail (ANTIALIAS = LANCZOS), normalise."""
    with open(path, "rb") as f:
        img = Image.open(f).convert("RGB")
    if bbx is not None:
        img = img.crop(bbx)
    img.thumbnail((size, size), Image.LANCZOS)
    x = torchvision.transforms.functional.to_tensor(img)
    return torchvision.transforms.functional.normalize(x, MEAN, STD)[None]


def cosines(a, b) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize("whitening,lw", [(True, True), (True, False), (False, True), (False, False)])
def test_a_cirtorch_checkpoint_gives_cirtorchs_descriptors(tmp_path, whitening, lw):
    ref = CirtorchNet(whitening=whitening, lw=lw)
    net = deepret.load(ref.checkpoint(tmp_path / "net.pth"))
    x = torch.randn(3, 3, 200, 150)
    with torch.no_grad():
        ours = net(x).numpy()
    assert cosines(ours, ref.descriptor(x)).min() >= 0.9999
    assert net.dim == 512 and net.meta["backbone"] == "resnet18" and abs(net.gem_p() - P_GEM) < 1e-6
    assert net.meta["cirtorch"]["lw"] == ("retrieval-SfM-120k (ss)" if lw else None)
    assert net.meta["checkpoint"] == str(tmp_path / "net.pth") and "cirtorch checkpoint net.pth" in net.meta["provenance"]
    # saved by deepret, it is a deepret checkpoint that rebuilds the same network
    again = deepret.load(save(net, tmp_path / "deepret.pt"))
    with torch.no_grad():
        assert torch.allclose(again(x), net(x), atol=1e-6)
    assert again.meta["name"] == net.meta["name"] == "cirtorch-net"


@pytest.mark.parametrize("whitening,lw", [(True, False), (False, True)])
def test_it_is_deeprets_own_network_with_those_weights(tmp_path, whitening, lw):
    """resnet18-gem built by deepret from the torchvision weights (--weights FILE), GeM p, and the
    whitening installed with set_whitening (FC layer, or deepret's LearnedWhitening of cirtorch's m, P)."""
    ref = CirtorchNet(whitening=whitening, lw=lw, seed=3)
    torch.save(ref.classifier.state_dict(), tmp_path / "resnet18.pth")
    own = create_model("resnet18-gem", weights=str(tmp_path / "resnet18.pth"), p=P_GEM)
    if whitening:
        own.set_whitening(ref.whiten.weight.detach(), ref.whiten.bias.detach(), method="fc")
    else:
        own.set_whitening(*LearnedWhitening.fitted(ref.lw["m"], ref.lw["P"]).as_linear(), method="lw")
    loaded = get_model(str(ref.checkpoint(tmp_path / "cirtorch.pth", legacy=True)))  # torch<1.6 file format
    x = torch.randn(2, 3, 180, 240)
    with torch.no_grad():
        assert cosines(loaded(x), own(x)).min() >= 0.9999
    assert loaded.meta["input"]["mean"] == MEAN and loaded.default_size == 1024


def test_gemmp_mac_spoc_and_a_vgg16(tmp_path):
    ref = CirtorchNet("resnet18", whitening=False, lw=False, seed=1)
    state_p = torch.linspace(2.0, 4.0, 512)
    path = tmp_path / "gemmp.pth"
    ref.checkpoint(path, pooling="gemmp")
    ckpt = torch.load(path, weights_only=False)
    ckpt["state_dict"]["pool.p"] = state_p
    torch.save(ckpt, path)
    net = deepret.load(path)
    assert net.meta["gem"]["per_channel"] and torch.equal(net.pool.p, state_p)
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        f = ref.features(x).clamp(min=1e-6)
        expected = F.normalize(f.pow(state_p.view(1, -1, 1, 1)).mean((-2, -1)).pow(1 / state_p), dim=1)
        assert cosines(net(x), expected).min() >= 0.9999
        for pooling, op in (("mac", lambda t: t.amax((-2, -1))), ("spoc", lambda t: t.mean((-2, -1)))):
            other = deepret.load(ref.checkpoint(tmp_path / f"{pooling}.pth", pooling=pooling))
            assert other.meta["head"] == pooling
            assert cosines(other(x), op(ref.features(x))).min() >= 0.9999
    vgg = CirtorchNet("vgg16", whitening=True, lw=False, seed=2)
    net = deepret.load(vgg.checkpoint(tmp_path / "vgg.pth"))
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        assert cosines(net(x), vgg.descriptor(x)).min() >= 0.9999


@pytest.mark.parametrize("meta,words", [
    ({"regional": True}, "regional pooling (R-gem), which deepret does not support"),
    ({"local_whitening": True}, "local_whitening"),
    ({"pooling": "rmac"}, "pools with 'rmac'"),
    ({"architecture": "densenet121"}, "architecture 'densenet121'"),
    ({"outputdim": 2048}, "outputdim 2048 is not resnet18's 512"),
])
def test_unsupported_cirtorch_networks_are_refused_in_one_line(tmp_path, capsys, data_root, meta, words):
    from deepret.cli import main

    path = CirtorchNet(whitening=False, lw=False).checkpoint(tmp_path / "other.pth", **meta)
    with pytest.raises(DeepretError) as err:
        deepret.load(path)
    assert words in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)
    assert main(["eval", "--dataset", "oxford5k-mini", "--root", str(data_root), "--model", str(path)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deepret: error: cirtorch checkpoint") and words in lines[0]


def test_damaged_cirtorch_checkpoints_are_one_line_errors(tmp_path):
    ref = CirtorchNet(whitening=True, lw=True)
    path = ref.checkpoint(tmp_path / "a.pth")
    ckpt = torch.load(path, weights_only=False)
    del ckpt["state_dict"]["whiten.bias"]
    torch.save(ckpt, tmp_path / "nobias.pth")
    ckpt = torch.load(path, weights_only=False)
    ckpt["meta"]["Lw"]["retrieval-SfM-120k"]["ss"]["P"] = np.ones((7, 3))
    torch.save(ckpt, tmp_path / "lw.pth")
    ckpt = torch.load(path, weights_only=False)
    ckpt["state_dict"]["features.0.weight"] = torch.zeros(3, 3)
    torch.save(ckpt, tmp_path / "shape.pth")
    for name, words in (("nobias.pth", "has no whiten.bias"), ("lw.pth", "Lw 'retrieval-SfM-120k' (ss) does not fit"),
                        ("shape.pth", "does not describe a cirtorch network deepret builds")):
        with pytest.raises(DeepretError) as err:
            deepret.load(tmp_path / name)
        assert words in str(err.value) and name in str(err.value) and "\n" not in str(err.value), str(err.value)


def test_only_numbers_load_from_a_cirtorch_file(tmp_path, capsys):
    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    path = CirtorchNet(whitening=False, lw=False).checkpoint(tmp_path / "evil.pth", extra=Evil())
    with pytest.raises(DeepretError, match="evil.pth"):
        deepret.load(path)
    ckpt = torch.load(CirtorchNet(whitening=False, lw=True).checkpoint(tmp_path / "obj.pth"), weights_only=False)
    ckpt["meta"]["Lw"]["retrieval-SfM-120k"]["ss"]["m"] = np.array([Evil()], dtype=object)
    torch.save(ckpt, tmp_path / "obj.pth")
    with pytest.raises(DeepretError, match="obj.pth"):
        deepret.load(tmp_path / "obj.pth")
    assert "code ran" not in capsys.readouterr().out


def test_a_numpy_1_file_loads(tmp_path):
    """Files written under numpy 1 name numpy.core.multiarray (numpy 2: numpy._core): rewritten here
    in a legacy-format (protocol 2, text GLOBAL opcodes) file, as cirtorch's published files are."""
    path = CirtorchNet(whitening=False, lw=True).checkpoint(tmp_path / "np2.pth", legacy=True)
    raw = path.read_bytes()
    assert b"numpy._core.multiarray" in raw
    (tmp_path / "np1.pth").write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(deepret.load(tmp_path / "np1.pth")(x), deepret.load(path)(x), atol=1e-6)


@pytest.mark.fast  # a Python without torch
def test_deepret_models_lists_the_published_networks_without_torch():
    probe = ("import runpy, sys\nsys.argv = ['deepret', 'models']\n"
             "try:\n    runpy.run_module('deepret', run_name='__main__')\nexcept SystemExit as exc:\n"
             "    assert not exc.code, exc.code\n"
             "heavy = sorted({'torch', 'torchvision', 'timm'} & set(sys.modules))\n"
             "assert not heavy, heavy\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    for name in CIRTORCH_MODELS:
        assert any(line.split()[0] == name for line in done.stdout.splitlines() if line.strip()), name
    assert "gl18-tl-resnet101-gem-w-a4d43db.pth" in done.stdout
    rows = {r["name"]: r for r in list_models()}
    assert rows["retrievalSfM120k-resnet101-gem"]["backbone"] == "resnet101" and rows["resnet50-gem"]["size"] == 1024


def test_the_backbone_registry_is_the_torch_free_table():
    from deepret.models.backbones import BACKBONES
    from deepret.models.registry import BACKBONE_ENTRIES

    assert list(BACKBONES) == [e.name for e in BACKBONE_ENTRIES]
    assert all(BACKBONES[e.name].default_size == e.default_size and BACKBONES[e.name].fc7 == e.fc7
               for e in BACKBONE_ENTRIES)


def test_published_names_load_from_the_hub_cache_and_fail_offline_in_one_line(tmp_path, monkeypatch):
    name = "gl18-tl-resnet50-gem-w"
    url = CIRTORCH_MODELS[name].url
    assert url == "http://cmp.felk.cvut.cz/cnnimageretrieval/data/networks/gl18/gl18-tl-resnet50-gem-w-83fdc30.pth"

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsUnavailableError) as err:
        get_model(name)
    cached = hub_checkpoint_path(url)
    assert f"cannot download the cirtorch network {name} from {url} (URLError): put that file at {cached}" \
        == str(err.value)
    assert isinstance(err.value.__cause__, urllib.error.URLError)
    with pytest.raises(DeepretError, match="leave out --weights random"):
        get_model(name, weights="random")
    # a file at that place (here random resnet18 weights in cirtorch's format) is used, no network touched
    assert not cached.exists()
    ref = CirtorchNet(whitening=True, lw=False, seed=4)
    ref.checkpoint(cached)
    net = get_model(name)
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        assert cosines(net(x), ref.descriptor(x)).min() >= 0.9999
    assert net.meta["name"] == name and net.meta["cirtorch"]["url"] == url
    assert "from the torch hub cache" in net.meta["provenance"]
    # a downloaded file (the download simulated by a copy): the same, said in its provenance
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda u, dst, **kw: ref.checkpoint(dst))
    cached.unlink()
    assert f"downloaded from {url}" in get_model(name).meta["provenance"]


def _query_boxes(root, name):
    with open(root / name / f"gnd_{name}.pkl", "rb") as f:
        gnd = pickle.load(f)
    return gnd


def test_cirtorch_preprocessing_against_deeprets(tmp_path):
    """Real photos (oxford5k-mini database images and cropped queries) through cirtorch's
    preprocessing and through deepret.extract without upscaling (cirtorch's thumbnail only shrinks).
    deepret decodes JPEGs in draft mode and resizes bilinearly (cirtorch: full decode, Lanczos) and
    rounds the shorter side to 32 px: with round_to=1 each descriptor is closest to its own cirtorch
    descriptor once the component every random-weight descriptor shares is left out; the 32 px
    rounding moves them further (figures printed, in docs/models.md)."""
    from deepret.extract import ExtractSettings, extract

    root = require_data("oxford5k-mini")
    gnd = _query_boxes(root.parent, "oxford5k-mini")
    ref = CirtorchNet(whitening=True, lw=True, seed=5)
    net = deepret.load(ref.checkpoint(tmp_path / "net.pth"))
    size = 256
    names = gnd["imlist"][:6]
    queries = [q for q, name in enumerate(gnd["qimlist"]) if name not in names][:3]  # photos not in the six
    images = [root / "jpg" / f"{n}.jpg" for n in names] + [root / "jpg" / f"{gnd['qimlist'][q]}.jpg" for q in queries]
    boxes = [None] * len(names) + [tuple(gnd["gnd"][q]["bbx"]) for q in queries]
    theirs = np.vstack([ref.descriptor(cirtorch_input(p, b, size)) for p, b in zip(images, boxes)])
    common = theirs.mean(axis=0)  # random weights: every descriptor shares one large component
    same, centred, nearest_other = {}, {}, {}
    for round_to in (1, 32):
        settings = ExtractSettings(size=size, upscale=False, engine="torch", precision="fp32", round_to=round_to)
        ours = extract(net, images, boxes, settings=settings, device="cpu", workers=0, progress=False).vectors
        same[round_to] = cosines(ours, theirs)
        centred[round_to] = cosines(ours - common, theirs - common)
        others = np.array([cosines(np.repeat([o], len(theirs), 0) - common, theirs - common) for o in ours])
        np.fill_diagonal(others, -1)
        nearest_other[round_to] = others.max(axis=1)
    print("min cosine to cirtorch's", {k: round(float(v.min()), 4) for k, v in same.items()},
          "centred", {k: round(float(v.min()), 3) for k, v in centred.items()},
          "max centred cosine to another photo's", {k: round(float(v.max()), 3) for k, v in nearest_other.items()})
    assert (centred[1] > nearest_other[1]).all(), (centred[1], nearest_other[1])
    assert centred[1].min() >= 0.95 and same[1].min() >= 0.999 and same[32].min() >= 0.99, (same, centred)


def _eval(data_root, dataset, model, tmp_path, *extra):
    from deepret.cli import main

    report = tmp_path / f"{dataset}.json"
    code = main(["eval", "--dataset", dataset, "--root", str(data_root), "--model", str(model), "--size", "256",
                 "--engine", "torch", "--precision", "fp32", "--quiet", "--workers", "0", "--json", str(report),
                 "--no-upscale", "--round-to", "1", *extra])
    assert code == 0
    return json.loads(report.read_text())


@pytest.mark.parametrize("dataset", ["oxford5k-mini", "rparis6k-mini"])
def test_a_cirtorch_checkpoint_evaluates_through_the_cli(tmp_path, capsys, data_root, dataset):
    from deepret.cli import main
    from deepret.extract import ExtractSettings, extract

    require_data(dataset)
    ref = CirtorchNet(whitening=True, lw=True, seed=6)
    path = ref.checkpoint(tmp_path / "rSfM120k-test-resnet18-gem-w.pth")
    report = _eval(data_root, dataset, path, tmp_path)
    protocols = report["protocols"]
    assert set(protocols) == ({"old"} if dataset == "oxford5k-mini" else {"easy", "medium", "hard"})
    assert all(p["mAP"] is not None and 0.0 <= p["mAP"] <= 100.0 for p in protocols.values()), protocols
    assert report["model"]["name"] == "cirtorch-rSfM120k-test-resnet18-gem-w"
    assert "cirtorch checkpoint" in report["model"]["provenance"]
    out = capsys.readouterr().out
    assert "cirtorch checkpoint rSfM120k-test-resnet18-gem-w.pth (resnet18, gem, cirtorch FC layer + lw)" in out
    # the descriptors the CLI evaluated (from its feature cache) are deepret's network's
    assert main(["extract", "--dataset", dataset, "--root", str(data_root), "--model", str(path), "--size", "256",
                 "--engine", "torch", "--precision", "fp32", "--quiet", "--workers", "0",
                 "--no-upscale", "--round-to", "1", "--out", str(tmp_path / "f.npz")]) == 0
    assert "(cached)" in capsys.readouterr().err
    with np.load(tmp_path / "f.npz") as z:
        db = z["db"]
    from deepret.datasets import load_benchmark

    bench = load_benchmark(dataset, data_root)
    first = [bench.image_path(i) for i in range(4)]
    net = deepret.load(path)
    assert (report["settings"]["round_to"], report["settings"]["upscale"]) == (1, False)  # cirtorch's resizing
    settings = ExtractSettings(size=256, engine="torch", precision="fp32", upscale=False, round_to=1)
    ours = extract(net, first, settings=settings, device="cpu", workers=0, progress=False).vectors
    assert cosines(db[:4], ours).min() >= 0.9999


def test_openvino_and_multiscale_extraction_run_the_whitening_stages(tmp_path):
    """The FC whitening + Lw stages run the same on the OpenVINO engine; several scales average the
    whitened single-scale descriptors (deepret's rule for whitened networks; cirtorch instead applies
    its multi-scale Lw to the scales' GeM power mean: docs/benchmarks.md)."""
    from deepret.extract import ExtractSettings, extract
    from deepret.models import l2n

    root = require_data("oxford5k-mini")
    net = deepret.load(CirtorchNet(whitening=True, lw=True, seed=7).checkpoint(tmp_path / "net.pth"))
    images = sorted((root / "jpg").glob("*.jpg"))[:3]

    def run(size, scales=(1.0,), engine="torch"):
        settings = ExtractSettings(size=size, scales=scales, engine=engine, precision="fp32")
        return extract(net, images, settings=settings, device="cpu", workers=0, progress=False).vectors

    multi = run(160, (1.0, 0.7))
    assert cosines(run(160, (1.0, 0.7), engine="openvino"), multi).min() >= 0.9999
    expected = l2n(torch.from_numpy(run(160) + run(112))).numpy()  # 112 = 160 x 0.7
    assert cosines(multi, expected).min() >= 0.9999
