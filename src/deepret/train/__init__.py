"""Finetuning: as a classifier (`train_classify`) and for ranking (`train_rank`).

The names are imported on first use (deepret.lazy): the options (deepret.train.config) without torch."""
from deepret.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "deepret.train.classify": ("train_classify",),
    "deepret.train.rank": ("train_rank",),
    "deepret.train.config": ("MODE_DEFAULTS", "ClassifyOptions", "RankOptions", "TrainConfig", "train_config"),
})
