"""The model names deepret knows: `<backbone>-<head>`, one row per registered backbone and head."""
from __future__ import annotations

from deepret.models.backbones import BACKBONES

DEFAULT_MODEL = "efficientnet_lite0-gem"


def list_models() -> list[dict[str, str | int]]:
    """One row per registered name: name, backbone, head, default evaluation size, where its
    pretrained weights come from (from the backbone registry)."""
    rows = []
    for spec in BACKBONES.values():
        heads = ("fc7", "gem", "mac", "spoc") if spec.fc7 else ("gem", "mac", "spoc")
        for head in heads:
            rows.append({"name": f"{spec.name}-{head}", "backbone": spec.name, "head": head,
                         "size": 224 if head == "fc7" else spec.default_size, "weights": spec.weight_source})
    return rows
