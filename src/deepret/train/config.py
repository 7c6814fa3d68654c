"""The options of a training run and their defaults, without torch (the CLI reads them to build
its parser): TrainConfig, the per-mode defaults, RankOptions, ClassifyOptions, DEFAULT_MARGINS."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass
class TrainConfig:
    """Options common to `train classify` and `train rank`: the one home of the training defaults
    (the CLI, `train_config` and the study take theirs from here; batch size, image size and lr of
    the rank mode from MODE_DEFAULTS)."""

    out: Path
    epochs: int = 5
    batch_size: int = 8              # classify's; rank's in MODE_DEFAULTS
    size: int = 224
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 1e-6
    lr_decay: float = 0.99           # learning rate x this after every epoch
    lr_mult: float = 10.0            # for new layers (classifier, projection) and GeM p
    augment: str = "none"            # deepret.augment.AugmentConfig.parse grammar
    seed: int = 0
    device: str | None = None
    workers: int = 0
    val: str | None = None           # a benchmark name, e.g. oxford5k-mini
    val_root: Path | None = None
    val_every: int = 1
    val_size: int | None = None      # None: the network's default evaluation size
    resume: bool = False
    progress: bool = True
    precision: str = "fp32"          # auto, fp32, bf16 or fp16 autocast (deepret.precision)

    def to_json(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


# where the modes differ from TrainConfig's defaults (those of classify): tuples per step, training
# image side and lr of the rank mode
MODE_DEFAULTS: dict[str, dict[str, Any]] = {"classify": {}, "rank": {"batch_size": 4, "size": 362, "lr": 1e-6}}


def train_config(mode: str, out: str | Path = ".", **overrides: Any) -> TrainConfig:
    """TrainConfig of `mode` ('classify' or 'rank') with its defaults, then `overrides`."""
    return TrainConfig(out=Path(out), **{**MODE_DEFAULTS[mode], **overrides})


# how the FC projection of `train rank --proj` starts (deepret.whiten's methods)
PROJ_INITS = ("pca", "lw")

# the margin of each ranking loss when --margin is not given (deepret.train.losses)
DEFAULT_MARGINS = {"triplet": 0.1, "contrastive": 0.7}


@dataclass(frozen=True)
class RankOptions:
    """What only `train rank` takes, with its defaults (train_rank's keyword defaults are these)."""

    loss: str = "triplet"
    margin: float | None = None      # None: DEFAULT_MARGINS[loss]
    negatives: int = 5               # hard negatives per tuple
    pool_size: int = 200             # random pool to mine negatives from
    queries: int = 100               # tuples per epoch
    proj: int | None = None          # FC projection after pooling (None: none)
    proj_init: str = "pca"           # its start: 'pca' (PCA-whitening) or 'lw' (learned whitening, same-class pairs)
    proj_shrinkage: float | None = None  # eigenvalue shrinkage of that start; None: 0 for pca, 1 for lw
    learn_p: bool = False
    multires: tuple[float, ...] = (1.0,)


@dataclass(frozen=True)
class ClassifyOptions:
    """What only `train classify` takes, with its defaults."""

    init: str = "xavier"
    freeze: int = 0                  # first N blocks of the backbone frozen (deepret.train.classify.trunk_blocks)
    val_fraction: float = 0.0        # images held out for accuracy
