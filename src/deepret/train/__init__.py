"""Finetuning: as a classifier (`train_classify`) and for ranking (`train_rank`)."""
from deepret.train.classify import train_classify
from deepret.train.rank import train_rank
from deepret.train.runner import MODE_DEFAULTS, ClassifyOptions, RankOptions, TrainConfig, train_config

__all__ = ["MODE_DEFAULTS", "ClassifyOptions", "RankOptions", "TrainConfig", "train_classify", "train_config",
           "train_rank"]
