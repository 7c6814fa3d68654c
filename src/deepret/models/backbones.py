"""Backbones by name: a small registry of backbone descriptions (in the spirit of timm's
`pretrained_cfg`): how to build the architecture, its input normalisation, its trunk, where its
ImageNet weights come from, and its default evaluation size. Registered: torchvision AlexNet/VGG16/
ResNets and EfficientNet-Lite0/1/2 with packaged weights; any convolutional timm model works too.
Each gives a convolutional trunk (last conv block) or, for AlexNet/VGG16, the `fc7` trunk.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import timm
import torch
import torchvision
from torch import nn

from deepret.errors import DeepretError, WeightsUnavailableError
from deepret.models import weights as W
from deepret.models.registry import BACKBONE_ENTRIES, CIRTORCH_EVAL_SIZE, BackboneEntry

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite inputs are scaled as (x - 127) / 128 on 0..255 pixels.
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3


@dataclass(frozen=True)
class BackboneSpec:
    """What deepret knows about a backbone: architecture, normalisation, trunk, weights, default size."""

    name: str
    build: Callable[[], nn.Module]                 # the ImageNet classifier, randomly initialised
    mean: tuple[float, ...]
    std: tuple[float, ...]
    trunk: str                                     # 'features' (AlexNet/VGG), 'children' (ResNet), 'timm'
    load_imagenet: Callable[[nn.Module], str]      # puts ImageNet weights into the model, returns provenance
    weight_source: str                             # in words, for `deepret models`
    default_size: int                              # evaluation: longest image side (docs/benchmarks.md)
    fc7: bool = False                              # has AlexNet/VGG's fc7 layer
    offline: bool = False                          # its ImageNet weights come from an installed package


def _torchvision(entry: BackboneEntry) -> BackboneSpec:
    name = entry.name

    def load(model: nn.Module) -> str:
        state, provenance = W.torchvision_imagenet_state(name)
        model.load_state_dict(state)
        return provenance

    return BackboneSpec(name, lambda: torchvision.models.get_model(name, weights=None), IMAGENET_MEAN, IMAGENET_STD,
                        "features" if entry.fc7 else "children", load, entry.weights, entry.default_size,
                        fc7=entry.fc7)


def _lite(entry: BackboneEntry) -> BackboneSpec:
    variant = int(entry.name.removeprefix("efficientnet_lite"))

    def load(model: nn.Module) -> str:
        state, provenance = W.efficientnet_lite_state(variant)
        model.load_state_dict(W.map_in_order(state, model.state_dict(), provenance))
        return provenance

    return BackboneSpec(entry.name, lambda: timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False),
                        LITE_MEAN, LITE_STD, "timm", load, entry.weights, entry.default_size, offline=entry.offline)


def _timm(name: str) -> BackboneSpec:
    """Any timm model: its own pretrained_cfg gives mean/std, timm (Hugging Face hub) the weights."""
    pretrained_cfg = timm.get_pretrained_cfg(name)
    cfg = pretrained_cfg.to_dict() if pretrained_cfg is not None else {}

    def load(model: nn.Module) -> str:
        try:
            pretrained = timm.create_model(name, pretrained=True)
        except Exception as exc:
            raise WeightsUnavailableError(
                f"cannot get timm's pretrained weights for {name} ({exc.__class__.__name__}): "
                "connect to the Hugging Face hub once to fill its cache, or use --weights random"
            ) from exc
        model.load_state_dict(pretrained.state_dict())
        return f"timm pretrained weights {pretrained.pretrained_cfg.get('hf_hub_id') or name}"

    return BackboneSpec(name, lambda: timm.create_model(name, pretrained=False),
                        tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD)), "timm", load,
                        "timm pretrained weights (Hugging Face hub or its cache)", CIRTORCH_EVAL_SIZE)


# Built from the torch-free table of deepret.models.registry (what `deepret models` lists).
BACKBONES: dict[str, BackboneSpec] = {
    entry.name: (_lite if entry.family == "lite" else _torchvision)(entry) for entry in BACKBONE_ENTRIES
}
FC7_BACKBONES = tuple(n for n, s in BACKBONES.items() if s.fc7)
OFFLINE_BACKBONES = tuple(n for n, s in BACKBONES.items() if s.offline)   # real weights without internet


def backbone_spec(name: str) -> BackboneSpec:
    """The registered description of `name`, else one made for a timm model of that name."""
    if name in BACKBONES:
        return BACKBONES[name]
    if timm.is_model(name):
        return _timm(name)
    raise DeepretError(f"unknown backbone {name!r}: run `deepret models` for the names")


def default_size(name: str) -> int:
    """Default evaluation size of a backbone (registered or timm); cirtorch's 1024 if unknown."""
    spec = BACKBONES.get(name)
    return spec.default_size if spec is not None else CIRTORCH_EVAL_SIZE


@dataclass
class Backbone:
    """A built backbone: the full ImageNet classifier, its description and provenance."""

    spec: BackboneSpec
    model: nn.Module
    provenance: str

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def mean(self) -> tuple[float, ...]:
        return self.spec.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.spec.std

    def conv_trunk(self) -> nn.Module:
        """The network up to its last convolutional block (AlexNet/VGG: without the last max-pool)."""
        if self.spec.trunk == "features":
            return nn.Sequential(*list(self.model.features.children())[:-1])
        if self.spec.trunk == "children":
            return nn.Sequential(*list(self.model.children())[:-2])
        return TimmFeatures(self.model)

    def fc7_trunk(self) -> nn.Module:
        """AlexNet/VGG16 up to the ReLU after the second FC layer (4096-d on a 224x224 input)."""
        if not self.spec.fc7:
            raise DeepretError(f"head fc7 exists only for {', '.join(FC7_BACKBONES)}, not {self.name}: use -gem")
        classifier = list(self.model.classifier.children())
        # AlexNet: Dropout, Linear, ReLU, Dropout, Linear, ReLU, Linear; VGG16: Linear, ReLU, Dropout, Linear, ReLU, ...
        last_relu = [i for i, m in enumerate(classifier) if isinstance(m, nn.ReLU)][1]
        return nn.Sequential(self.model.features, self.model.avgpool, nn.Flatten(1), *classifier[: last_relu + 1])

    def classifier_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The ImageNet logits of the full classifier (used to check weights)."""
        return self.model(x)


class TimmFeatures(nn.Module):
    """A timm model's `forward_features`: its last feature map, before pooling and classifier."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def build_backbone(name: str, weights: str = "imagenet") -> Backbone:
    """Build backbone `name` with `weights`: 'imagenet', 'random', or a path to a state_dict file."""
    spec = backbone_spec(name)
    model = spec.build()
    if weights == "imagenet":
        provenance = spec.load_imagenet(model)
    elif weights == "random":
        provenance = "random initialisation (no pretrained weights)"
    else:
        _load_local(model, name, weights)
        provenance = f"local state_dict {weights}"
    return Backbone(spec, model, provenance)


def _load_local(model: nn.Module, name: str, path: str) -> None:
    """Load a state_dict file into `model`; one DeepretError naming the file when it does not fit."""
    state = W.local_state(path)
    try:
        model.load_state_dict(state)
    except Exception as exc:  # RuntimeError (keys, shapes), TypeError/AttributeError (not a dict of tensors)
        raise DeepretError(
            f"weights file {path} does not fit backbone {name} ({_mismatch(model.state_dict(), state)}): give a "
            f"state_dict saved from a {name} model (e.g. torch.save(model.state_dict(), ...)), the backbone that "
            f"file was saved from as --model <backbone>-<head>, or a deepret checkpoint as --model FILE"
        ) from exc


def _mismatch(expected: dict, state) -> str:
    """What differs between a model's state_dict and a loaded one, in a few words."""
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}, not a state_dict"
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in expected if k in state and tuple(getattr(state[k], "shape", ())) != tuple(expected[k].shape)]
    parts = [f"{len(keys)} {what}, e.g. {keys[0]}"
             for keys, what in ((missing, "missing tensors"), (unexpected, "unexpected tensors")) if keys]
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} tensors of another shape, e.g. {k} {tuple(state[k].shape)} where the model "
                     f"has {tuple(expected[k].shape)}")
    return "; ".join(parts) or "its tensors do not load"
