"""The model names deepret knows: `<backbone>-<head>`, one row per registered backbone and head."""
from __future__ import annotations

# Chosen by the rule of docs/benchmarks.md (size sweep): the most accurate registered model with
# offline weights (mean mAP of oxford5k-mini and rparis6k-mini at its default size) unless it
# extracts under 5 images/s on a 2-core CPU there. Lite2 at 384 px: mean 78.09, 7.8 images/s.
DEFAULT_MODEL = "efficientnet_lite2-gem"


def list_models() -> list[dict[str, str | int]]:
    """One row per registered name: name, backbone, head, default evaluation size, where its
    pretrained weights come from (from the backbone registry, which loads torch: imported here, so
    that DEFAULT_MODEL can be read without it)."""
    from deepret.models.backbones import BACKBONES

    rows = []
    for spec in BACKBONES.values():
        heads = ("fc7", "gem", "mac", "spoc") if spec.fc7 else ("gem", "mac", "spoc")
        for head in heads:
            rows.append({"name": f"{spec.name}-{head}", "backbone": spec.name, "head": head,
                         "size": 224 if head == "fc7" else spec.default_size, "weights": spec.weight_source})
    return rows
