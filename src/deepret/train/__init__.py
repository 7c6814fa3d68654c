"""Finetuning: as a classifier (`train_classify`) and for ranking (`train_rank`)."""
from deepret.train.classify import train_classify
from deepret.train.rank import train_rank
from deepret.train.runner import TrainConfig

__all__ = ["TrainConfig", "train_classify", "train_rank"]
